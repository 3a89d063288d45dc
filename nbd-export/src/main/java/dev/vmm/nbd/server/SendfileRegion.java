package dev.vmm.nbd.server;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import io.netty.channel.FileRegion;
import io.netty.util.AbstractReferenceCounted;
import io.netty.util.internal.PlatformDependent;
import java.io.IOException;
import java.nio.channels.WritableByteChannel;

/**
 * The data of a large READ, sent with {@code sendfile(2)} straight from the image's page cache
 * to the client's socket: one copy fewer than pread into a buffer and a write. Netty calls
 * {@link #transferTo} when the socket is writable; EAGAIN returns 0 and Netty waits for EPOLLOUT.
 *
 * <p>Thread contract: created and written on the client's event loop (the node's home thread),
 * which also owns the file descriptor's use. A file that shrank behind our back ends the
 * transfer with an IOException, which closes this client's connection: the reply header went out
 * already, so there is no other way to report it.
 */
final class SendfileRegion extends AbstractReferenceCounted implements FileRegion {
    private final int socketFd;
    private final int fileFd;
    private final long position;
    private final long count;
    private long transferred;
    /** 8 bytes for sendfile's in/out offset argument; freed on release. */
    private final long offsetSlot = PlatformDependent.allocateMemory(8);

    SendfileRegion(int socketFd, int fileFd, long position, long count) {
        this.socketFd = socketFd;
        this.fileFd = fileFd;
        this.position = position;
        this.count = count;
    }

    @Override public long position() { return position; }
    @Override public long count() { return count; }
    @Override public long transferred() { return transferred; }
    @Deprecated @Override public long transfered() { return transferred; }

    @Override
    public long transferTo(WritableByteChannel target, long at) throws IOException {
        long left = count - at;
        if (left <= 0) return 0;
        PlatformDependent.putLong(offsetSlot, position + at);
        long n;
        try {
            n = LibC.sendfile(socketFd, fileFd, offsetSlot, left);
        } catch (LastErrorException e) {
            if (e.getErrorCode() == 11) return 0; // EAGAIN: the socket buffer is full
            throw new IOException("sendfile: " + LibC.describe(e.getErrorCode()));
        }
        if (n == 0) throw new IOException("sendfile: the image ended early (truncated behind our back?)");
        transferred += n;
        return n;
    }

    @Override protected void deallocate() { PlatformDependent.freeMemory(offsetSlot); }
    @Override public FileRegion retain() { super.retain(); return this; }
    @Override public FileRegion retain(int increment) { super.retain(increment); return this; }
    @Override public FileRegion touch() { return this; }
    @Override public FileRegion touch(Object hint) { return this; }
}
