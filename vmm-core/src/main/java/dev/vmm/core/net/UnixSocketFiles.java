package dev.vmm.core.net;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcSocket;
import java.io.IOException;
import java.net.ConnectException;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;

/**
 * The rules every listening unix socket of the daemon follows (NBD server, QMP monitors): a
 * stale socket file left by a dead server is replaced, a live one or any other file is an error,
 * and the socket is created mode 0600 (qemu-storage-daemon leaves it to the umask; we are
 * stricter: "Unix sockets created 0600 unless told otherwise") before it listens: {@link #listen}.
 *
 * <p>Thread contract: stateless; control plane only (it connects, binds and deletes files).
 */
public final class UnixSocketFiles {
    /** Longest path a {@code sockaddr_un} holds, without its terminating NUL. */
    public static final int MAX_PATH_BYTES = 107;

    private UnixSocketFiles() {}

    /** Before bind: replaces a stale socket file; a socket in use or any other file is an error. */
    public static void prepare(Path p) throws IOException {
        if (!Files.exists(p, LinkOption.NOFOLLOW_LINKS)) return;
        int mode = (Integer) Files.getAttribute(p, "unix:mode", LinkOption.NOFOLLOW_LINKS);
        if ((mode & 0170000) != 0140000) throw new IOException(p + " exists and is not a socket");
        // A non-blocking probe: a live server with a full backlog must not hang our start.
        try (SocketChannel c = SocketChannel.open(java.net.StandardProtocolFamily.UNIX)) {
            c.configureBlocking(false);
            c.connect(UnixDomainSocketAddress.of(p)); // connected: somebody listens
        } catch (ConnectException stale) { // ECONNREFUSED: nobody listens
            Files.delete(p);
            return;
        } catch (java.net.SocketException backlogFull) {
            // EAGAIN: somebody listens but does not accept
        }
        throw new IOException(p + " is in use by another server");
    }

    /**
     * A listening unix socket at {@code p} that only the owner may connect to, whatever the
     * umask: a stale socket file is replaced ({@link #prepare}), the socket is made 0600 and
     * bound, and only then listens, so nobody can connect in between (Netty's bind() binds and listens
     * in one step, which leaves that window open). Returns the file descriptor (non-blocking,
     * close-on-exec), owned by the caller; on failure nothing is left behind.
     */
    public static int listen(Path p, int backlog) throws IOException {
        prepare(p);
        String path = p.toString();
        int fd;
        try {
            fd = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_STREAM | LibcSocket.SOCK_CLOEXEC | LibcSocket.SOCK_NONBLOCK, 0);
        } catch (LastErrorException e) {
            throw new IOException("socket(AF_UNIX): " + LibC.describe(e.getErrorCode()));
        }
        try (Memory addr = LibcSocket.sockaddrUn(path)) {
            // bind() creates the file with the socket inode's mode minus the umask: 0600 from the
            // first moment, and nothing to chmod by path afterwards (a path can be swapped).
            LibcSocket.fchmod(fd, 0600);
            LibcSocket.bind(fd, Pointer.nativeValue(addr), LibcSocket.SOCKADDR_UN_SIZEOF);
        } catch (IllegalArgumentException e) { // the path does not fit in sun_path
            LibcSocket.closeQuietly(fd);
            throw new IOException(e.getMessage());
        } catch (LastErrorException e) {
            LibcSocket.closeQuietly(fd);
            throw new IOException("cannot bind " + path + ": " + LibC.describe(e.getErrorCode()));
        }
        try {
            LibcSocket.listen(fd, backlog);
        } catch (LastErrorException e) {
            LibcSocket.closeQuietly(fd);
            removeQuietly(p);
            throw new IOException("cannot listen on " + path + ": " + LibC.describe(e.getErrorCode()));
        }
        return fd;
    }

    /** Removes the socket file at shutdown; best effort (the next start replaces a stale one). */
    public static void removeQuietly(Path p) {
        try {
            Files.deleteIfExists(p);
        } catch (IOException ignored) {
            // best effort, see above
        }
    }
}
