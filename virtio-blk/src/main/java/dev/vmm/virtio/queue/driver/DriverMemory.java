package dev.vmm.virtio.queue.driver;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcMemory;
import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.virtio.memory.GuestMemoryException;

/**
 * The "guest RAM" a driver-side test double lays its ring and buffers in: a memfd mapped shared
 * (so a back-end can map the same pages, as SET_MEM_TABLE arranges), or a slice of one that a
 * front-end carved into per-queue parts. Our mapping address plays the front-end's userspace
 * address (vhost-user "uva"); {@link #gpaBase} is where the memory starts in guest-physical space.
 * Buffers come from a bump allocator above the ring area.
 *
 * <p>Thread contract: owned by its driver, used by one thread at a time; not thread-safe.
 */
final class DriverMemory implements AutoCloseable {
    final int fd;
    /** Offset of our first byte in {@link #fd}. */
    final long fdOffset;
    final long size;
    final long gpaBase;
    /** Our mapping: host address == the "frontend userspace address". */
    final long base;
    private final boolean owned;
    private final long dataOff;
    private long bump;

    private DriverMemory(int fd, long fdOffset, long size, long gpaBase, long base, boolean owned, long dataOff) {
        this.fd = fd;
        this.fdOffset = fdOffset;
        this.size = size;
        this.gpaBase = gpaBase;
        this.base = base;
        this.owned = owned;
        this.dataOff = dataOff;
        this.bump = dataOff;
    }

    /** A new memfd of {@code size} bytes mapped shared; buffers are allocated from {@code dataOff} up. */
    static DriverMemory create(String name, long size, long gpaBase, long dataOff) throws LibcMemory.ErrnoException {
        int f = LibcMemory.memfdCreate(name);
        long b;
        try {
            LibcMemory.truncate(f, size);
            b = LibcMemory.mapShared(f, size, 0, true);
        } catch (LibcMemory.ErrnoException e) {
            LibC.close(f);
            throw e;
        }
        return new DriverMemory(f, 0, size, gpaBase, b, true, dataOff);
    }

    /** A slice someone else owns: neither unmapped nor closed by {@link #close()}. */
    static DriverMemory slice(int fd, long fdOffset, long base, long size, long gpaBase, long dataOff) {
        return new DriverMemory(fd, fdOffset, size, gpaBase, base, false, dataOff);
    }

    /** Guest-physical address of {@code bytes} fresh bytes (64-byte aligned). */
    long alloc(long bytes) {
        if (bytes <= 0 || bytes > size - bump) throw new IllegalStateException("driver memory exhausted: " + bytes);
        long off = bump;
        bump = (bump + bytes + 63) & -64L;
        if (bump > size) bump = size;
        return gpaBase + off;
    }

    /** Forgets every buffer allocation; the ring area stays. */
    void resetBuffers() {
        bump = dataOff;
    }

    /** Our host address of {@code [gpa, gpa + len)}; throws if it is not inside this memory. */
    long host(long gpa, long len) {
        long off = gpa - gpaBase;
        if (len < 0 || gpa < gpaBase || off > size || len > size - off) {
            throw new IndexOutOfBoundsException(String.format("0x%x+0x%x outside driver memory", gpa, len));
        }
        return base + off;
    }

    /**
     * Adds this memory as a region of a back-end's {@link GuestMemory}, the way SET_MEM_TABLE
     * would: a dup of the memfd (GuestMemory takes ownership of it), our gpa base, our mapping
     * address as uva, our offset in the memfd.
     */
    void shareWith(GuestMemory memory) throws GuestMemoryException {
        int dup;
        try {
            dup = LibcMemory.dup(fd);
        } catch (LastErrorException e) {
            throw new GuestMemoryException("dup: " + LibC.describe(e.getErrorCode()));
        }
        memory.addRegion(dup, gpaBase, size, base, fdOffset);
    }

    @Override
    public void close() {
        if (!owned) return;
        try {
            LibcMemory.unmap(base, size);
        } catch (LibcMemory.ErrnoException e) {
            throw new IllegalStateException(e);
        } finally {
            LibC.close(fd);
        }
    }
}
