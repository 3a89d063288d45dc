package dev.vmm.nbd.server;

import com.sun.jna.LastErrorException;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcSocket;
import io.netty.util.internal.PlatformDependent;

/**
 * Zero-copy receive of a large WRITE payload: {@code splice(2)} moves the bytes still waiting in
 * the client's socket into a pipe and from the pipe into the image at the request's offset, so
 * they are never copied into the JVM (one kernel copy into the page cache instead of two copies
 * through user memory). Bytes already read by Netty go through the ordinary path first; both read
 * the same socket on the same thread, so the payload stays in order.
 *
 * <p>Thread contract: one per connection, used on the connection's event loop only; owns a pipe
 * (two fds) and 8 bytes of native memory until {@link #close()}.
 */
final class SpliceReceiver implements AutoCloseable {
    /** {@code -Dvmm.nbd.splice=off} turns it off (A/B measurements). */
    static final boolean ENABLED = !"off".equals(System.getProperty("vmm.nbd.splice"));
    private static final int PIPE_SIZE = 1 << 20;
    private static final int EAGAIN = 11;

    private final int pipeRead;
    private final int pipeWrite;
    private final int pipeCapacity;
    /** The 64-bit file offset splice reads and advances; then scratch for draining. */
    private final long slot = PlatformDependent.allocateMemory(4096);
    private boolean closed;

    private SpliceReceiver(int pipeRead, int pipeWrite, int pipeCapacity) {
        this.pipeRead = pipeRead;
        this.pipeWrite = pipeWrite;
        this.pipeCapacity = pipeCapacity;
    }

    /** A receiver, or null when the kernel refuses a pipe (then the ordinary path is used). */
    static SpliceReceiver open() {
        if (!ENABLED) return null;
        long fds = PlatformDependent.allocateMemory(8);
        try {
            LibC.pipe2(fds, LibC.O_NONBLOCK | LibC.O_CLOEXEC);
            int r = PlatformDependent.getInt(fds);
            int w = PlatformDependent.getInt(fds + 4);
            int cap;
            try {
                cap = LibcSocket.fcntl(w, LibC.F_SETPIPE_SZ, PIPE_SIZE);
            } catch (LastErrorException e) {
                cap = 64 * 1024; // the default capacity
            }
            return new SpliceReceiver(r, w, cap);
        } catch (LastErrorException e) {
            return null;
        } finally {
            PlatformDependent.freeMemory(fds);
        }
    }

    /**
     * Moves up to {@code length} payload bytes from {@code socketFd} to {@code fileFd} at
     * {@code offset}. Returns the bytes moved, 0 when none are waiting (EAGAIN), -1 at end of
     * stream. A file error is thrown after the bytes taken from the socket were drained from the
     * pipe, so the stream keeps its framing.
     */
    long receive(int socketFd, int fileFd, long offset, long length) throws BlockException {
        long in;
        try {
            in = LibC.splice(socketFd, 0, pipeWrite, 0, Math.min(length, pipeCapacity), LibC.SPLICE_F_MOVE | LibC.SPLICE_F_NONBLOCK);
        } catch (LastErrorException e) {
            if (e.getErrorCode() == EAGAIN) return 0;
            return -1; // a socket error: the channel sees it on its next read and closes
        }
        if (in == 0) return -1;
        long out = 0;
        while (out < in) {
            PlatformDependent.putLong(slot, offset + out);
            try {
                long k = LibC.splice(pipeRead, 0, fileFd, slot, in - out, LibC.SPLICE_F_MOVE);
                if (k <= 0) throw new LastErrorException(5);
                out += k;
            } catch (LastErrorException e) {
                drain(in - out);
                throw new BlockException(e.getErrorCode(), "splice into the image: " + LibC.describe(e.getErrorCode()));
            }
        }
        return in;
    }

    /** Throws away {@code n} bytes sitting in the pipe (part of a payload that cannot be written). */
    private void drain(long n) {
        while (n > 0) {
            try {
                long k = LibcSocket.read(pipeRead, slot, (int) Math.min(n, 4096));
                if (k <= 0) return;
                n -= k;
            } catch (LastErrorException e) {
                return;
            }
        }
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        LibcSocket.closeQuietly(pipeRead);
        LibcSocket.closeQuietly(pipeWrite);
        PlatformDependent.freeMemory(slot);
    }
}
