package dev.vmm.core.net;

import java.io.IOException;
import java.net.ConnectException;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;

/**
 * The rules every listening unix socket of the daemon follows (NBD server, QMP monitors): a
 * stale socket file left by a dead server is replaced, a live one or any other file is an error,
 * and the socket is created mode 0600 (qemu-storage-daemon leaves it to the umask; we are
 * stricter: "Unix sockets created 0600 unless told otherwise"). Netty binds and listens in one
 * step, so the mode must be right at bind time, not chmod-ed after: {@link #bindPrivately}.
 *
 * <p>Thread contract: stateless; control plane only (it connects and deletes files).
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

    /** What {@link #bindPrivately} runs: a bind that may fail. */
    @FunctionalInterface
    public interface Bind<T> {
        T bind() throws Exception;
    }

    /**
     * Runs {@code bind} with the process umask at 0177, so the socket file is born 0600: with a
     * permissive umask a socket bound and listening before a chmod could take another user's
     * connection in between. The umask is process-wide; a file another thread creates in these
     * microseconds is only made more private. Control plane only, serialized by the callers' locks.
     */
    public static <T> T bindPrivately(Bind<T> bind) throws Exception {
        synchronized (UnixSocketFiles.class) {
            int old = dev.vmm.core.linux.LibC.umask(0177);
            try {
                return bind.bind();
            } finally {
                dev.vmm.core.linux.LibC.umask(old);
            }
        }
    }

    /** After bind: only the owner may connect (a no-op after {@link #bindPrivately}; kept explicit). */
    public static void restrictToOwner(Path p) throws IOException {
        Files.setPosixFilePermissions(p, PosixFilePermissions.fromString("rw-------"));
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
