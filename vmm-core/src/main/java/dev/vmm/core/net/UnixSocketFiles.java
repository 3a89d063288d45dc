package dev.vmm.core.net;

import com.sun.jna.LastErrorException;
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
        try (SocketChannel c = SocketChannel.open(UnixDomainSocketAddress.of(p))) {
            throw new IOException(p + " is in use by another server");
        } catch (ConnectException stale) {
            Files.delete(p);
        }
    }

    /**
     * A listening unix socket at {@code p} that only the owner may connect to, whatever the
     * umask: a stale socket file is replaced ({@link #prepare}), the socket is bound, made 0600
     * and only then listens, so nobody can connect in between (Netty's bind() binds and listens
     * in one step, which leaves that window open). Returns the file descriptor (non-blocking,
     * close-on-exec), owned by the caller; on failure nothing is left behind.
     */
    public static int listen(Path p, int backlog) throws IOException {
        prepare(p);
        String path = p.toString();
        com.sun.jna.Memory addr;
        try {
            addr = LibcSocket.sockaddrUn(path);
        } catch (IllegalArgumentException e) {
            throw new IOException(e.getMessage());
        }
        int fd;
        try {
            fd = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_STREAM | LibcSocket.SOCK_CLOEXEC | LibcSocket.SOCK_NONBLOCK, 0);
        } catch (LastErrorException e) {
            throw new IOException("socket(AF_UNIX): " + LibC.describe(e.getErrorCode()));
        }
        try {
            LibcSocket.bind(fd, com.sun.jna.Pointer.nativeValue(addr), LibcSocket.SOCKADDR_UN_SIZEOF);
        } catch (LastErrorException e) {
            LibcSocket.closeQuietly(fd);
            throw new IOException("cannot bind " + path + ": " + LibC.describe(e.getErrorCode()));
        } finally {
            java.lang.ref.Reference.reachabilityFence(addr); // native memory in use until bind returns
        }
        try {
            LibcSocket.chmod(path, 0600); // before listen(): nobody can connect in between
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
