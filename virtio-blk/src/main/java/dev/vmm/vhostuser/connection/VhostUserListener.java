package dev.vmm.vhostuser.connection;

import dev.vmm.core.linux.Errno;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcSocket;
import io.netty.channel.IoEvent;
import io.netty.channel.IoEventLoop;
import io.netty.channel.IoRegistration;
import io.netty.channel.epoll.EpollIoHandle;
import io.netty.channel.epoll.EpollIoOps;
import io.netty.channel.unix.FileDescriptor;
import java.io.IOException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The listening unix socket of one vhost-user device: accepts one front-end at a time
 * (vhost-user is 1:1; a second concurrent connection is closed at once with a log line) and,
 * after that front-end disconnects, the next one (QEMU {@code reconnect=1}).
 *
 * <p>The socket file is created with mode 0600 (bound, chmod-ed, then listened on, so nobody
 * can connect before the mode is set). An existing socket file nobody listens on (a crashed
 * daemon's) is replaced; a socket somebody listens on, or any other kind of file, is an error.
 * The file is unlinked on {@link #close()}.
 *
 * <p>Thread contract: {@link #open} and {@link #close()} may be called from any thread (they
 * run on the loop and wait); everything else runs on the loop.
 */
public final class VhostUserListener implements EpollIoHandle, AutoCloseable {
    private static final Logger log = LoggerFactory.getLogger(VhostUserListener.class);

    private final String path;
    /** False for an inherited socket: its file (if any) belongs to whoever bound it. */
    private final boolean ownsFile;
    private final int fd;
    private final FileDescriptor nettyFd;
    private final IoEventLoop loop;
    private final VhostUserBackendHandler handler;

    // ---- event-loop confined ----
    private IoRegistration registration;
    private VhostUserConnection active;
    private long accepted;
    private long refused;
    private volatile boolean closed; // written on the loop; read by listening() from any thread

    private VhostUserListener(String path, boolean ownsFile, int fd, IoEventLoop loop, VhostUserBackendHandler handler) {
        this.path = path;
        this.ownsFile = ownsFile;
        this.fd = fd;
        this.nettyFd = new FileDescriptor(fd);
        this.loop = loop;
        this.handler = handler;
    }

    /**
     * Creates the socket at {@code path} and starts accepting on {@code loop}; messages of the
     * front-end are handed to {@code handler} on that loop.
     */
    public static VhostUserListener open(String path, IoEventLoop loop, VhostUserBackendHandler handler) throws IOException {
        return open(path, true, createSocket(path), loop, handler);
    }

    /**
     * Accepts on a listening unix socket passed by the parent or by systemd
     * ({@code addr.type=fd}); the socket file, if any, is left in place at {@link #close()}.
     */
    public static VhostUserListener open(dev.vmm.core.net.InheritedSocket socket, IoEventLoop loop, VhostUserBackendHandler handler)
            throws IOException {
        if (!socket.unix()) throw new IOException(socket + ": vhost-user needs a unix socket (file descriptors travel with its messages)");
        return open(socket.toString(), false, socket.fd(), loop, handler);
    }

    private static VhostUserListener open(String path, boolean ownsFile, int fd, IoEventLoop loop, VhostUserBackendHandler handler)
            throws IOException {
        VhostUserListener l = new VhostUserListener(path, ownsFile, fd, loop, handler);
        CompletableFuture<Void> started = new CompletableFuture<>();
        loop.register(l).addListener(f -> {
            if (!f.isSuccess()) {
                started.completeExceptionally(f.cause());
                return;
            }
            l.registration = (IoRegistration) f.getNow();
            l.registration.submit(EpollIoOps.EPOLLIN);
            started.complete(null);
        });
        try {
            started.get();
        } catch (InterruptedException | ExecutionException e) {
            LibcSocket.closeQuietly(fd);
            if (ownsFile) unlinkQuietly(path);
            if (e instanceof InterruptedException) Thread.currentThread().interrupt();
            throw new IOException("cannot register vhost-user socket " + path + " with the event loop", e);
        }
        log.debug("vhost-user socket listening on {}", path);
        return l;
    }

    private static int createSocket(String path) throws IOException {
        try {
            return dev.vmm.core.net.UnixSocketFiles.listen(java.nio.file.Path.of(path), 1); // 0600 before it listens
        } catch (java.nio.file.InvalidPathException e) {
            throw new IOException("bad socket path " + path + ": " + e.getMessage());
        }
    }

    private static void unlinkQuietly(String path) {
        try {
            LibcSocket.unlink(path);
        } catch (LastErrorException ignored) {
            // already gone
        }
    }

    public String path() { return path; }

    @Override
    public FileDescriptor fd() { return nettyFd; }

    /** The connected front-end, or null; loop thread. */
    public VhostUserConnection active() { return active; }

    /** Front-ends accepted so far. */
    public long accepted() { return accepted; }

    /** Concurrent connections refused so far. */
    public long refused() { return refused; }

    @Override
    public void handle(IoRegistration reg, IoEvent event) {
        if (closed) return;
        while (true) {
            int c;
            try {
                c = LibcSocket.accept4(fd, 0, 0, LibcSocket.SOCK_NONBLOCK | LibcSocket.SOCK_CLOEXEC);
            } catch (LastErrorException e) {
                if (e.getErrorCode() != Errno.EAGAIN) log.warn("accept on {}: {}", path, LibC.describe(e.getErrorCode()));
                return;
            }
            if (active != null && active.peerGone()) {
                // The previous front-end is gone and a new one (QEMU reconnecting) is already here:
                // retire the old connection now instead of refusing the new one.
                log.info("{}: previous front-end hung up; taking the new connection", path);
                active.disconnect();
                active = null;
            }
            if (active != null) {
                refused++;
                log.warn("vhost-user socket {}: refusing a second front-end while one is connected", path);
                LibcSocket.closeQuietly(c);
                continue;
            }
            accepted++;
            String peer = LibcSocket.peerCredentials(c);
            String name = "vhost-user " + path + " #" + accepted + " (" + peer + ")";
            log.info("{}: front-end connected", name);
            handler.connected(peer);
            VhostUserConnection conn = new VhostUserConnection(c, loop, name, handler, this::connectionClosed);
            active = conn;
            conn.start();
        }
    }

    private void connectionClosed(VhostUserConnection c) {
        if (active == c) active = null;
    }

    /** Stops listening, closes the front-end's connection and removes the socket file. */
    @Override
    public void close() {
        if (!loop.inEventLoop()) {
            try {
                loop.submit(this::close).get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } catch (ExecutionException e) {
                log.warn("closing {}", path, e.getCause());
            }
            return;
        }
        if (closed) return;
        closed = true;
        if (active != null) active.disconnect();
        if (registration != null) registration.cancel();
        LibcSocket.closeQuietly(fd);
        if (ownsFile) unlinkQuietly(path);
    }

    /** True until {@link #close()}. */
    public boolean listening() { return !closed; }
}
