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

    /**
     * Who may connect to the daemon's socket files: {@code mode} (permission bits, owner
     * read-write at least) and the file's group, or null for the process's. Set once at start
     * ({@code vmm serve --socket-mode --socket-group}); the default is 0600, whatever the umask.
     */
    public record Access(int mode, java.nio.file.attribute.GroupPrincipal group) {
        public static final Access PRIVATE = new Access(0600, null);

        public Access {
            if ((mode & ~0777) != 0 || (mode & 0600) != 0600) {
                throw new IllegalArgumentException(String.format("socket mode %04o: permission bits with owner read and write (0600..0777)", mode));
            }
        }

        @Override
        public String toString() {
            return String.format("%04o", mode) + (group == null ? "" : " group " + group.getName());
        }
    }

    private static volatile Access access = Access.PRIVATE;

    /** The access of every socket file created from now on (process-wide: one daemon per process). */
    public static void setAccess(Access a) { access = java.util.Objects.requireNonNull(a); }

    public static Access access() { return access; }

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
     * umask (or those {@link #setAccess} allows): a stale socket file is replaced ({@link #prepare}),
     * the socket is made 0600 (or the configured mode), bound, given the configured group, and
     * only then listens, so nobody can connect in between (Netty's bind() binds and listens
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
            LibcSocket.fchmod(fd, access.mode());
            LibcSocket.bind(fd, Pointer.nativeValue(addr), LibcSocket.SOCKADDR_UN_SIZEOF);
        } catch (IllegalArgumentException e) { // the path does not fit in sun_path
            LibcSocket.closeQuietly(fd);
            throw new IOException(e.getMessage());
        } catch (LastErrorException e) {
            LibcSocket.closeQuietly(fd);
            throw new IOException("cannot bind " + path + ": " + LibC.describe(e.getErrorCode()));
        }
        Access a = access;
        if (a.mode() != 0600 || a.group() != null) {
            try { // not listening yet: nobody can connect before the group and the mode are right
                // bind() applied the umask to a wider mode (0660 & ~022 = 0640): set it exactly.
                LibcSocket.chmod(path, a.mode());
                if (a.group() != null) Files.getFileAttributeView(p, java.nio.file.attribute.PosixFileAttributeView.class, LinkOption.NOFOLLOW_LINKS)
                        .setGroup(a.group());
            } catch (IOException | LastErrorException e) {
                LibcSocket.closeQuietly(fd);
                removeQuietly(p);
                throw new IOException("cannot set the access (" + a + ") of " + path + ": "
                        + (e instanceof LastErrorException le ? LibC.describe(le.getErrorCode()) : e.getMessage()), e);
            }
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
