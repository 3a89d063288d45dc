package dev.vmm.virtio.queue;

import dev.vmm.core.linux.LibC;
import dev.vmm.core.memory.RawMemory;

/**
 * A preallocated native array of {@code struct iovec} (16 bytes: {@code void *iov_base;
 * size_t iov_len}, x86_64) for {@code BlockDriver.readv/writev}. Filled by
 * {@link DescriptorChain#fillIovecs}; reused for every request, so the data path allocates
 * nothing.
 *
 * <p>Thread contract: one owner thread (the device's IOThread). {@link #close()} frees the
 * memory; using it afterwards is a bug.
 */
public final class IovecArray implements AutoCloseable {
    private final int capacity;
    private long address;

    /** Room for {@code capacity} iovecs (at most {@link LibC#IOV_MAX}). */
    public IovecArray(int capacity) {
        if (capacity <= 0 || capacity > LibC.IOV_MAX) throw new IllegalArgumentException("capacity " + capacity);
        this.capacity = capacity;
        this.address = RawMemory.allocate((long) capacity * LibC.IOVEC_SIZEOF);
    }

    /** Native address of iovec 0, for readv/writev. */
    public long address() { return address; }

    /** Most iovecs it holds. */
    public int capacity() { return capacity; }

    /** Writes iovec {@code i}. Bounds: {@code 0 <= i < capacity}, checked. */
    void set(int i, long base, long len) {
        if (i < 0 || i >= capacity) throw new IndexOutOfBoundsException(i);
        long p = address + (long) i * LibC.IOVEC_SIZEOF; // inside our allocation: i < capacity
        RawMemory.putLe64(p, base);
        RawMemory.putLe64(p + 8, len);
    }

    /** iov_base of iovec {@code i} (tests, logs). */
    public long base(int i) {
        if (i < 0 || i >= capacity) throw new IndexOutOfBoundsException(i);
        return RawMemory.getLe64(address + (long) i * LibC.IOVEC_SIZEOF);
    }

    /** iov_len of iovec {@code i} (tests, logs). */
    public long length(int i) {
        if (i < 0 || i >= capacity) throw new IndexOutOfBoundsException(i);
        return RawMemory.getLe64(address + (long) i * LibC.IOVEC_SIZEOF + 8);
    }

    @Override
    public void close() {
        if (address != 0) {
            RawMemory.free(address);
            address = 0;
        }
    }
}
