package dev.vmm.virtio.queue;

/**
 * Constants of packed virtqueues with the spec's names and wire values (virtio 1.2 §2.8 "Packed
 * Virtqueues"). Descriptor flags NEXT, WRITE and INDIRECT keep their split-ring values
 * ({@link VirtioRing#VIRTQ_DESC_F_NEXT} ...). All fields are little-endian.
 *
 * <pre>
 * struct pvirtq_desc {              // 16 bytes, the descriptor ring holds Queue Size of them
 *     le64 addr;    // 0: buffer address (guest-physical); unused in used descriptors
 *     le32 len;     // 8: buffer length; in a used descriptor: bytes written by the device
 *     le16 id;      // 12: buffer id, in the LAST descriptor of a list
 *     le16 flags;   // 14: NEXT, WRITE, INDIRECT, AVAIL (bit 7), USED (bit 15)
 * };
 * struct pvirtq_event_suppress {    // 4 bytes, 4-byte aligned (driver area and device area)
 *     le16 desc;    // 0: off_wrap: bits 0-14 descriptor offset, bit 15 wrap counter
 *     le16 flags;   // 2: bits 0-1 RING_EVENT_FLAGS_*, bits 2-15 reserved
 * };
 * </pre>
 * Constants and stateless helpers: any thread.
 */
public final class PackedRing {
    private PackedRing() {}

    // ---- descriptor flags beyond the split ones, §2.8.1 ----
    /** Available bit: equals the Driver Ring Wrap Counter in an available descriptor. */
    public static final int VIRTQ_DESC_F_AVAIL = 1 << 7;
    /** Used bit: differs from AVAIL in an available descriptor, equals it in a used one. */
    public static final int VIRTQ_DESC_F_USED = 1 << 15;

    // ---- pvirtq_event_suppress.flags, §2.8.10 ----
    /** Notify on every event. */
    public static final int RING_EVENT_FLAGS_ENABLE = 0x0;
    /** Do not notify. */
    public static final int RING_EVENT_FLAGS_DISABLE = 0x1;
    /** Notify when the descriptor at off_wrap is made available/used (needs EVENT_IDX). */
    public static final int RING_EVENT_FLAGS_DESC = 0x2;
    /** Mask of the defined flags bits (0x3 is reserved). */
    public static final int RING_EVENT_FLAGS_MASK = 0x3;
    /** Bit of off_wrap that holds the wrap counter. */
    public static final int RING_EVENT_WRAP_SHIFT = 15;

    // ---- sizes and alignment, §2.8.10.1 ----
    /** Largest packed queue size (2^15); need not be a power of two. */
    public static final int MAX_PACKED_QUEUE_SIZE = 1 << 15;
    /** sizeof(struct pvirtq_desc). */
    public static final int PACKED_DESC_SIZE = 16;
    /** Alignment of the descriptor ring. */
    public static final int PACKED_DESC_ALIGN = 16;
    /** sizeof(struct pvirtq_event_suppress). */
    public static final int EVENT_SUPPRESS_SIZE = 4;
    /** Alignment of each event suppression structure. */
    public static final int EVENT_SUPPRESS_ALIGN = 4;

    /** Offset of the off_wrap field in an event suppression structure. */
    public static final int EVENT_OFF_WRAP = 0;
    /** Offset of the flags field in an event suppression structure. */
    public static final int EVENT_FLAGS = 2;

    /** Bytes of the descriptor ring of a queue of {@code n}. */
    public static long packedRingSize(int n) { return (long) PACKED_DESC_SIZE * n; }

    /** Name of a RING_EVENT_FLAGS value, for logs. */
    public static String eventFlagsName(int flags) {
        switch (flags & RING_EVENT_FLAGS_MASK) {
            case RING_EVENT_FLAGS_ENABLE: return "RING_EVENT_FLAGS_ENABLE";
            case RING_EVENT_FLAGS_DISABLE: return "RING_EVENT_FLAGS_DISABLE";
            case RING_EVENT_FLAGS_DESC: return "RING_EVENT_FLAGS_DESC";
            default: return "reserved(3)";
        }
    }

    /**
     * The vhost-user encoding of a packed ring's position (vhost-user.rst, "Vring descriptor
     * indices for packed virtqueues", as carried by SET_VRING_BASE / GET_VRING_BASE): bits 0-14
     * next avail descriptor, bit 15 avail wrap counter, bits 16-30 next used descriptor, bit 31
     * used wrap counter.
     */
    public static int encodeBase(int availIdx, boolean availWrap, int usedIdx, boolean usedWrap) {
        return (availIdx & 0x7FFF) | (availWrap ? 1 << 15 : 0) | (usedIdx & 0x7FFF) << 16 | (usedWrap ? 1 << 31 : 0);
    }

    /** The base of a fresh ring: both positions 0, both wrap counters 1 (§2.8.1). */
    public static final int INITIAL_BASE = encodeBase(0, true, 0, true);
}
