package dev.vmm.virtio.queue;

/**
 * The raw ring descriptors of one buffer of a packed virtqueue, as the device took them (address,
 * length, flags; the buffer id is that of the last one, virtio 1.2 §2.8.6). Filled by
 * {@link PackedVirtqueue#pop} when recording is on, so an in-flight tracker can save them
 * (vhost-user.rst, "Inflight I/O tracking", DescStatePacked), and read by
 * {@link PackedVirtqueue#popRecorded} to take a buffer again after a back-end restart, when its
 * ring slots may already hold other used descriptors.
 *
 * <p>Thread contract: the queue's IOThread only. Preallocated for a whole ring (a list longer
 * than the queue size breaks the queue), so filling it never allocates.
 */
public final class PackedDescriptorList {
    private final long[] addr;
    private final int[] len;
    private final short[] flags;
    private int count;
    private int id;

    public PackedDescriptorList(int capacity) {
        addr = new long[capacity];
        len = new int[capacity];
        flags = new short[capacity];
    }

    public int capacity() { return addr.length; }

    /** Descriptors in the list (ring slots the buffer occupied). */
    public int count() { return count; }

    /** The buffer id (the last descriptor's id). */
    public int id() { return id; }

    public long addr(int i) { return addr[i]; }

    /** Length as the driver wrote it (unsigned 32 bits in an int). */
    public int len(int i) { return len[i]; }

    /** Flags as the driver wrote them (16 bits). */
    public int flags(int i) { return flags[i] & 0xFFFF; }

    public void clear() {
        count = 0;
        id = 0;
    }

    /** Appends one descriptor; false when full (the caller's list is longer than the ring). */
    public boolean add(long a, int l, int f) {
        if (count == addr.length) return false;
        addr[count] = a;
        len[count] = l;
        flags[count] = (short) f;
        count++;
        return true;
    }

    public void setId(int id) { this.id = id; }
}
