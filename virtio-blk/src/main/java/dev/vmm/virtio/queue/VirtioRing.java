package dev.vmm.virtio.queue;

/**
 * Constants of virtio rings and the ring-related feature bits, with the spec's names and wire
 * values (virtio 1.2 §2.7 "Split Virtqueues", §6 "Reserved Feature Bits"). All ring fields are
 * little-endian. Constants and stateless helpers: any thread.
 */
public final class VirtioRing {
    private VirtioRing() {}

    // ---- descriptor flags (le16 virtq_desc.flags), §2.7.5 ----
    /** The buffer continues via the {@code next} field. */
    public static final int VIRTQ_DESC_F_NEXT = 1;
    /** The buffer is device write-only (otherwise device read-only). */
    public static final int VIRTQ_DESC_F_WRITE = 2;
    /** The buffer holds a table of descriptors (§2.7.5.3). */
    public static final int VIRTQ_DESC_F_INDIRECT = 4;

    // ---- virtq_avail.flags (driver → device), §2.7.7 ----
    /** The driver asks not to be interrupted (ignored with EVENT_IDX). */
    public static final int VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
    // ---- virtq_used.flags (device → driver), §2.7.10 ----
    /** The device asks not to be notified (ignored with EVENT_IDX). */
    public static final int VIRTQ_USED_F_NO_NOTIFY = 1;

    // ---- feature bits ----
    /** Indirect descriptor tables. */
    public static final int VIRTIO_F_INDIRECT_DESC = 28;
    /** used_event / avail_event notification suppression. */
    public static final int VIRTIO_F_EVENT_IDX = 29;
    /** Virtio 1.x device. */
    public static final int VIRTIO_F_VERSION_1 = 32;
    /** Packed virtqueue layout (§2.8). */
    public static final int VIRTIO_F_RING_PACKED = 34;

    // ---- sizes and layout of a split ring of size N ----
    /** Largest split queue size (§2.7: "Queue Size ... maximum 32768"). */
    public static final int MAX_QUEUE_SIZE = 32768;
    /** sizeof(struct virtq_desc): le64 addr, le32 len, le16 flags, le16 next. */
    public static final int DESC_SIZE = 16;
    /** Alignment of the descriptor table. */
    public static final int DESC_ALIGN = 16;
    /** Alignment of the available ring. */
    public static final int AVAIL_ALIGN = 2;
    /** Alignment of the used ring. */
    public static final int USED_ALIGN = 4;
    /** sizeof(struct virtq_used_elem): le32 id, le32 len. */
    public static final int USED_ELEM_SIZE = 8;

    /** Bytes of the descriptor table. */
    public static long descTableSize(int n) { return (long) DESC_SIZE * n; }
    /** Bytes of the available ring: flags, idx, ring[N], used_event. */
    public static long availRingSize(int n) { return 6L + 2L * n; }
    /** Bytes of the used ring: flags, idx, ring[N], avail_event. */
    public static long usedRingSize(int n) { return 6L + (long) USED_ELEM_SIZE * n; }

    /** True when feature bit {@code bit} is set in {@code features}. */
    public static boolean has(long features, int bit) { return (features & (1L << bit)) != 0; }

    /**
     * vring_need_event (§2.7.7.1 / §2.7.10.1): with EVENT_IDX, notify when the index moved from
     * {@code oldIdx} to {@code newIdx} past {@code eventIdx}. All arithmetic is modulo 2^16.
     */
    public static boolean needEvent(int eventIdx, int newIdx, int oldIdx) {
        return ((newIdx - eventIdx - 1) & 0xFFFF) < ((newIdx - oldIdx) & 0xFFFF);
    }

    /**
     * Host address of one part of a ring (descriptor table, avail/used ring, event suppression
     * area) given as a frontend user address (vhost-user) or a guest-physical one: the part must
     * be {@code align}-aligned in both address spaces (ring fields are single atomic accesses) and
     * lie wholly inside one region.
     *
     * @throws VirtqueueException (BROKEN) otherwise
     */
    static long translatePart(dev.vmm.virtio.memory.GuestMemory memory, String what, long addr, long bytes, int align,
            boolean userAddresses) throws VirtqueueException {
        if ((addr & (align - 1)) != 0) {
            throw VirtqueueException.broken(what + " at 0x" + Long.toHexString(addr) + " is not " + align + "-byte aligned");
        }
        long host;
        try {
            host = userAddresses ? memory.uvaToHost(addr, bytes) : memory.gpaToHost(addr, bytes);
        } catch (dev.vmm.virtio.memory.GuestMemoryException e) {
            throw VirtqueueException.broken(what + ": " + e.getMessage());
        }
        if ((host & (align - 1)) != 0) throw VirtqueueException.broken(what + " maps to a misaligned host address");
        return host;
    }
}
