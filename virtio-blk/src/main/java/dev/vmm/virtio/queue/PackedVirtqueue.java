package dev.vmm.virtio.queue;

import static dev.vmm.virtio.queue.PackedRing.*;
import static dev.vmm.virtio.queue.VirtioRing.*;

import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.virtio.memory.GuestMemoryException;
import dev.vmm.core.memory.RawMemory;

/**
 * The device side of a packed virtqueue (virtio 1.2 §2.8, negotiated with VIRTIO_F_RING_PACKED),
 * in guest memory shared by a vhost-user frontend. One descriptor ring that both sides write,
 * plus two 4-byte event suppression structures: the Driver Area (driver → device: when to send
 * used buffer notifications) and the Device Area (device → driver: when to kick).
 *
 * <p><b>Positions.</b> The device keeps two ring positions, each with its own wrap counter
 * (§2.8.1, both start at 1): {@code nextAvail/availWrap}, where the next driver descriptor is
 * expected, and {@code nextUsed/usedWrap}, where the next used descriptor is written. A
 * descriptor at {@code nextAvail} is available when its AVAIL bit equals {@code availWrap} and
 * its USED bit does not. A list of descriptors linked by NEXT occupies consecutive slots (it
 * may wrap around the end of the ring); its buffer id is in its last descriptor. The device
 * writes ONE used descriptor per buffer at {@code nextUsed} and skips forward by the number of
 * descriptors the buffer occupied (§2.8.7), which it remembers per buffer id
 * ({@code inFlight[id]}), so completions may come in any order.
 *
 * <p><b>Memory safety.</b> The ring and both event structures are translated once, at
 * construction, and each lies entirely inside one guest-memory region; every ring access uses a
 * position in {@code [0, size)}. Indirect tables are translated for their whole length and
 * indexed below their entry count. Buffers are translated for their full length before they
 * reach a {@link DescriptorChain}. Each descriptor is read once into locals (no double fetch).
 *
 * <p><b>Validation</b> (as strict as {@link SplitVirtqueue}). Request errors (REQUEST, the
 * buffer id is known and completed with length 0): zero-length element, element or indirect
 * table outside guest memory, readable element after a writable one, INDIRECT without
 * VIRTIO_F_INDIRECT_DESC, INDIRECT in a list linked by NEXT or with NEXT itself (§2.8.6.1:
 * "MUST NOT write direct descriptors with DESC_F_INDIRECT set in a scatter-gather list"), an
 * indirect table whose length is not a positive multiple of 16 or larger than
 * {@link #MAX_INDIRECT_DESCRIPTORS}, more segments than the chain holds. Queue errors (BROKEN:
 * the id cannot be known or trusted, so nothing can be completed): a list that is still linked
 * after Queue Size descriptors (the packed form of a loop, §2.8.5.1 "MUST NOT create a
 * descriptor list longer than the Queue Size"), a later descriptor of a list whose AVAIL/USED
 * bits do not say "available" (a wrap counter mismatch: the driver makes the first descriptor
 * available last, so the rest must already be), a buffer id {@code >= size} or one that is
 * already in flight. In an indirect table only WRITE is interpreted; other flags and the id are
 * reserved and ignored, as §2.8.6 requires of the device.
 *
 * <p><b>Memory ordering</b> (driver side: Linux {@code virtio_ring.c} packed functions; device
 * side: QEMU {@code virtio.c}):
 * <ul>
 * <li>The flags of the descriptor at {@code nextAvail} are read with acquire; pairs with the
 * driver's write barrier before it stores the first descriptor's flags (§2.8.21.3.1 "Updating
 * flags"). The rest of the list and the buffers are read after it.</li>
 * <li>A used descriptor's id and len are stored before its flags, the flags with release
 * (§2.8.22: the driver reads flags, then id/len). In a batch the flags of the FIRST used
 * descriptor are stored last, in {@link #publishUsed()}: the driver polls only that slot, so
 * it sees the batch at once, never a part of it (§2.8.21, "defers updating the descriptor
 * flags for the first descriptor").</li>
 * <li>Before deciding to notify, a full fence orders the flags store before the load of the
 * Driver Event Suppression structure (the driver fences after re-enabling, §2.8.22).</li>
 * <li>Re-enabling kicks stores the Device Event Suppression structure (off_wrap before flags),
 * full fence, then re-reads the next descriptor's flags (§2.8.21.3.2: the driver fences between
 * its flags store and its read of our structure). One of us sees the other.</li>
 * </ul>
 *
 * <p><b>Thread contract.</b> Confined to the device's IOThread; the control plane may call
 * {@link #setLastAvailIdx}/{@link #lastAvailIdx} only while the queue is stopped. The region
 * table MUST NOT change while the queue exists (host addresses are cached here). Nothing
 * allocates on success.
 */
public final class PackedVirtqueue implements Virtqueue {
    /** Largest indirect table accepted, in descriptors (as large as the largest ring). */
    public static final int MAX_INDIRECT_DESCRIPTORS = MAX_PACKED_QUEUE_SIZE;

    private final GuestMemory memory;
    private final int size;
    private final boolean eventIdx;
    private final boolean indirect;

    // Host addresses, each checked to lie wholly inside one region.
    /** Descriptor ring: 16 * size bytes. */
    private final long desc;
    /** Driver Event Suppression (driver area, vhost-user "avail" address): read-only for us. */
    private final long driverEvent;
    /** Device Event Suppression (device area, vhost-user "used" address): written by us. */
    private final long deviceEvent;

    // ---- device state, IOThread-confined ----
    private int nextAvail;
    private boolean availWrap = true;
    private int nextUsed;
    private boolean usedWrap = true;
    /** Descriptors occupied by each buffer id popped and not yet pushed; 0: not in flight. */
    private final int[] inFlight;
    /** The first used descriptor of the unpublished batch: slot and the flags to store, or -1. */
    private int pendingSlot = -1;
    private int pendingFlags;
    /** Used position at the last notify decision (EVENT_IDX's "old"). */
    private int signalledUsed;
    private boolean signalledWrap = true;
    private boolean signalledValid;
    /** Whether something was published since the last notify decision. */
    private boolean publishedSinceSignal;
    private boolean notificationsEnabled = true;
    private boolean broken;
    /** Why the queue broke outside pop() (a bad SET_VRING_BASE), for the next pop's message. */
    private String brokenReason;
    /** Receives the raw descriptors of each buffer pop() takes (in-flight tracking), or null. */
    private PackedDescriptorList record;

    /**
     * A queue whose ring addresses are the frontend's userspace addresses, as vhost-user
     * SET_VRING_ADDR gives them: for packed rings its "avail" address is the driver area
     * (Driver Event Suppression) and its "used" address the device area (Device Event
     * Suppression).
     *
     * @throws VirtqueueException (BROKEN) for a bad size, a misaligned part or a part not
     *         wholly inside one region
     */
    public static PackedVirtqueue ofUserAddresses(GuestMemory memory, int size, long descUva, long driverEventUva,
            long deviceEventUva, long features) throws VirtqueueException {
        return new PackedVirtqueue(memory, size, descUva, driverEventUva, deviceEventUva, features, true);
    }

    /** A queue whose addresses are guest-physical (virtio-pci/mmio transports, tests). */
    public static PackedVirtqueue ofGuestPhysical(GuestMemory memory, int size, long descGpa, long driverEventGpa,
            long deviceEventGpa, long features) throws VirtqueueException {
        return new PackedVirtqueue(memory, size, descGpa, driverEventGpa, deviceEventGpa, features, false);
    }

    private PackedVirtqueue(GuestMemory memory, int size, long descAddr, long driverEventAddr, long deviceEventAddr,
            long features, boolean userAddresses) throws VirtqueueException {
        if (size <= 0 || size > MAX_PACKED_QUEUE_SIZE) {
            throw VirtqueueException.broken("packed queue size " + size + " is not in 1.." + MAX_PACKED_QUEUE_SIZE);
        }
        this.memory = memory;
        this.size = size;
        this.eventIdx = has(features, VIRTIO_F_EVENT_IDX);
        this.indirect = has(features, VIRTIO_F_INDIRECT_DESC);
        this.desc = part("descriptor ring", descAddr, packedRingSize(size), PACKED_DESC_ALIGN, userAddresses);
        this.driverEvent = part("driver event suppression", driverEventAddr, EVENT_SUPPRESS_SIZE, EVENT_SUPPRESS_ALIGN, userAddresses);
        this.deviceEvent = part("device event suppression", deviceEventAddr, EVENT_SUPPRESS_SIZE, EVENT_SUPPRESS_ALIGN, userAddresses);
        this.inFlight = new int[size];
    }

    private long part(String what, long addr, long bytes, int align, boolean userAddresses) throws VirtqueueException {
        return VirtioRing.translatePart(memory, what, addr, bytes, align, userAddresses);
    }

    @Override
    public int size() { return size; }

    @Override
    public boolean isBroken() { return broken; }

    private VirtqueueException markBroken(String message) {
        broken = true;
        return VirtqueueException.broken(message);
    }

    /** Whether {@code flags} say "available" for a driver whose wrap counter is {@code wrap}. */
    private static boolean isAvailable(int flags, boolean wrap) {
        boolean a = (flags & VIRTQ_DESC_F_AVAIL) != 0;
        boolean u = (flags & VIRTQ_DESC_F_USED) != 0;
        return a == wrap && u != wrap;
    }

    /** Host address of ring slot {@code slot}; bounds: 0 <= slot < size, ring checked for 16*size bytes. */
    private long slot(int slot) {
        return desc + (long) PACKED_DESC_SIZE * slot;
    }

    @Override
    public boolean pop(DescriptorChain out) throws VirtqueueException {
        if (broken) throw VirtqueueException.broken(brokenReason != null ? brokenReason : "queue is broken; reset required");
        // Acquire: pairs with the driver's barrier before its store of the first descriptor's
        // flags (§2.8.21.3.1); the rest of the list and the buffers are read after this load.
        int flags = RawMemory.getLe16Acquire(slot(nextAvail) + 14);
        if (!isAvailable(flags, availWrap)) return false;

        out.reset(-1);
        if (record != null) record.clear();
        int pos = nextAvail;
        boolean wrap = availWrap;
        int count = 0;
        int id;
        String error = null;     // first request error; walking continues to find the id
        boolean sawWritable = false;
        while (true) {
            long d = slot(pos);
            if (count > 0) {
                flags = RawMemory.getLe16(d + 14);
                if (!isAvailable(flags, wrap)) {
                    throw markBroken("descriptor " + pos + " continues the list at " + nextAvail
                            + " but is not available (AVAIL/USED bits do not match wrap counter " + (wrap ? 1 : 0) + ")");
                }
            }
            count++;
            long addr = RawMemory.getLe64(d);
            long len = RawMemory.getLe32(d + 8) & 0xFFFFFFFFL;
            int descId = RawMemory.getLe16(d + 12);
            boolean next = (flags & VIRTQ_DESC_F_NEXT) != 0;
            if (record != null) record.add(addr, (int) len, flags); // count <= size = its capacity
            if (error == null) {
                if ((flags & VIRTQ_DESC_F_INDIRECT) != 0) {
                    error = indirectTable(addr, len, next || count > 1, out);
                } else {
                    error = element(addr, len, (flags & VIRTQ_DESC_F_WRITE) != 0, sawWritable, pos, out);
                    sawWritable |= (flags & VIRTQ_DESC_F_WRITE) != 0;
                }
            }
            if (++pos == size) {
                pos = 0;
                wrap = !wrap;
            }
            if (!next) {
                id = descId;
                break;
            }
            if (count == size) {
                throw markBroken("descriptor list at " + nextAvail + " is still linked after " + size
                        + " descriptors, the queue size (NEXT loop)");
            }
        }
        if (id >= size) throw markBroken("buffer id " + id + " >= queue size " + size + " (list at " + nextAvail + ")");
        if (inFlight[id] != 0) throw markBroken("buffer id " + id + " made available again while in flight");
        // Consume: the list is ours until its used descriptor is written.
        nextAvail = pos;
        availWrap = wrap;
        inFlight[id] = count;
        out.setHead(id);
        if (record != null) record.setId(id);
        if (eventIdx && notificationsEnabled) {
            // Tell the driver where to kick next (§2.8.10); ordered by the fence in
            // enableNotification() when it matters.
            RawMemory.putLe16(deviceEvent + EVENT_OFF_WRAP, offWrap(nextAvail, availWrap)); // inside the checked 4 bytes
        }
        if (error != null) throw VirtqueueException.request(id, error);
        return true;
    }

    /**
     * From now on every buffer {@link #pop} takes (also one it throws REQUEST for) leaves its raw
     * descriptors in {@code list}, whose capacity must be at least the queue size; null stops it.
     */
    public void recordPopsInto(PackedDescriptorList list) {
        if (list != null && list.capacity() < size) throw new IllegalArgumentException("list capacity " + list.capacity() + " < queue size " + size);
        record = list;
    }

    /**
     * Takes again a buffer a previous back-end took (vhost-user in-flight tracking): its
     * descriptors come from {@code list}, not from the ring, whose slots may hold used
     * descriptors by now. Validated exactly as {@link #pop} does; the buffer is then in flight
     * here and occupies {@code list.count()} ring slots, as when it was first taken. Does not
     * move the avail position ({@link #restore} sets it).
     *
     * @throws VirtqueueException REQUEST with the id (complete it with length 0) for a bad
     *         element; BROKEN for an empty or over-long list, an id {@code >= size} or one in flight
     */
    public void popRecorded(PackedDescriptorList list, DescriptorChain out) throws VirtqueueException {
        if (broken) throw VirtqueueException.broken(brokenReason != null ? brokenReason : "queue is broken; reset required");
        int n = list.count();
        int id = list.id();
        if (n == 0 || n > size) throw markBroken("in-flight buffer of " + n + " descriptors in a queue of " + size);
        if (id >= size) throw markBroken("in-flight buffer id " + id + " >= queue size " + size);
        if (inFlight[id] != 0) throw markBroken("in-flight buffer id " + id + " recorded twice");
        out.reset(-1);
        String error = null;
        boolean sawWritable = false;
        for (int i = 0; i < n && error == null; i++) {
            int f = list.flags(i);
            long addr = list.addr(i);
            long len = list.len(i) & 0xFFFFFFFFL;
            if ((f & VIRTQ_DESC_F_INDIRECT) != 0) {
                error = indirectTable(addr, len, (f & VIRTQ_DESC_F_NEXT) != 0 || i > 0, out);
            } else {
                error = element(addr, len, (f & VIRTQ_DESC_F_WRITE) != 0, sawWritable, i, out);
                sawWritable |= (f & VIRTQ_DESC_F_WRITE) != 0;
            }
        }
        inFlight[id] = n;
        out.setHead(id);
        if (error != null) throw VirtqueueException.request(id, error);
    }

    /**
     * Sets both positions, as recovered from an in-flight area after a back-end restart (the
     * front-end cannot know them: a packed ring has no used index in guest memory). Forgets
     * buffers in flight; {@link #popRecorded} takes them again. A slot beyond the ring breaks
     * the queue.
     */
    public void restore(int availSlot, boolean availWrapCounter, int usedSlot, boolean usedWrapCounter) {
        setLastAvailIdx(encodeBase(availSlot, availWrapCounter, usedSlot, usedWrapCounter));
        if (broken) return;
        // setLastAvailIdx() guesses "nothing in flight" for a zero used half; here both are known.
        nextUsed = usedSlot;
        usedWrap = usedWrapCounter;
        signalledUsed = nextUsed;
        signalledWrap = usedWrap;
    }

    /** The flags of ring slot {@code slot} now (acquire); {@code 0 <= slot < size}. */
    public int descriptorFlags(int slot) {
        if (slot < 0 || slot >= size) throw new IndexOutOfBoundsException("slot " + slot + " of " + size);
        return RawMemory.getLe16Acquire(slot(slot) + 14);
    }

    /** Validates and adds one direct element; returns an error message or null. */
    private String element(long addr, long len, boolean writable, boolean sawWritable, int index, DescriptorChain out) {
        if (len == 0) return "zero-length descriptor at slot " + index;
        if (!writable && sawWritable) return "readable descriptor after a writable one at slot " + index + " (§2.8.5.1)";
        long host;
        try {
            host = memory.gpaToHost(addr, len);
        } catch (GuestMemoryException e) {
            return e.getMessage();
        }
        if (!out.add(host, len, writable)) return "more than " + out.capacity() + " segments";
        return null;
    }

    /** Validates an indirect descriptor and adds its table's elements; returns an error message or null. */
    private String indirectTable(long addr, long len, boolean inList, DescriptorChain out) {
        if (!indirect) return "INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC";
        if (inList) return "INDIRECT descriptor in a list linked by NEXT (§2.8.6.1)";
        if (len == 0 || len % PACKED_DESC_SIZE != 0 || len / PACKED_DESC_SIZE > MAX_INDIRECT_DESCRIPTORS) {
            return "indirect table length " + len + " is not a positive multiple of 16 up to "
                    + MAX_INDIRECT_DESCRIPTORS + " entries";
        }
        long table;
        try {
            table = memory.gpaToHost(addr, len);
        } catch (GuestMemoryException e) {
            return "indirect table: " + e.getMessage();
        }
        int n = (int) (len / PACKED_DESC_SIZE);
        boolean sawWritable = false;
        for (int k = 0; k < n; k++) {
            // Bounds: k < n, and the table was checked for 16*n bytes.
            long d = table + (long) PACKED_DESC_SIZE * k;
            long a = RawMemory.getLe64(d);
            long l = RawMemory.getLe32(d + 8) & 0xFFFFFFFFL;
            // Only WRITE is valid in an indirect table; the rest and the id are ignored (§2.8.6).
            boolean writable = (RawMemory.getLe16(d + 14) & VIRTQ_DESC_F_WRITE) != 0;
            String e = element(a, l, writable, sawWritable, k, out);
            if (e != null) return "indirect table entry " + k + ": " + e;
            sawWritable |= writable;
        }
        return null;
    }

    private static int offWrap(int pos, boolean wrap) {
        return pos | (wrap ? 1 << RING_EVENT_WRAP_SHIFT : 0);
    }

    @Override
    public void pushUsed(int head, int writtenLength) {
        if (head < 0 || head >= size || inFlight[head] == 0) {
            throw new IllegalArgumentException("buffer id " + head + " is not in flight (queue size " + size + ")");
        }
        long d = slot(nextUsed);
        // id and len first; the flags make the used descriptor visible (§2.8.22).
        RawMemory.putLe32(d + 8, writtenLength);
        RawMemory.putLe16(d + 12, head);
        // A used descriptor has AVAIL = USED = the device wrap counter; WRITE says data was
        // written (§2.8.3), which makes len meaningful to the driver.
        int flags = (usedWrap ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0) | (writtenLength != 0 ? VIRTQ_DESC_F_WRITE : 0);
        if (pendingSlot < 0) {
            pendingSlot = nextUsed;      // stored last, by publishUsed()
            pendingFlags = flags;
        } else {
            // Release: id/len before flags. The driver polls the pending first slot, so this
            // descriptor is not read before publishUsed() anyway.
            RawMemory.putLe16Release(d + 14, flags);
        }
        int n = inFlight[head];
        inFlight[head] = 0;
        nextUsed += n;
        if (nextUsed >= size) {
            nextUsed -= size;
            usedWrap = !usedWrap;
        }
    }

    @Override
    public void publishUsed() {
        if (pendingSlot < 0) return;
        // Release: every used descriptor of the batch (id, len, flags) before the first one's
        // flags; pairs with the driver's read barrier after it sees USED flip (§2.8.22).
        RawMemory.putLe16Release(slot(pendingSlot) + 14, pendingFlags);
        pendingSlot = -1;
        publishedSinceSignal = true;
    }

    @Override
    public boolean needsNotify() {
        // Full fence: our flags store must be visible before we read the driver's suppression
        // structure, or we may skip a notification the driver is waiting for.
        RawMemory.fullFence();
        int newIdx = nextUsed;
        boolean newWrap = usedWrap;
        int old = signalledUsed;
        boolean oldWrap = signalledWrap;
        boolean valid = signalledValid;
        boolean any = publishedSinceSignal;
        signalledUsed = newIdx;
        signalledWrap = newWrap;
        signalledValid = true;
        publishedSinceSignal = false;
        if (!any) return false;
        int flags = RawMemory.getLe16(driverEvent + EVENT_FLAGS) & RING_EVENT_FLAGS_MASK; // inside the checked 4 bytes
        if (flags == RING_EVENT_FLAGS_DISABLE) return false;
        if (flags != RING_EVENT_FLAGS_DESC || !eventIdx) return true; // ENABLE, or DESC/reserved without EVENT_IDX
        int offWrap = RawMemory.getLe16(driverEvent + EVENT_OFF_WRAP);
        if (!valid) return true;
        // vring_need_event in one linear frame: positions of the previous lap are moved back by
        // size, so new - old is the number of descriptors used since the last decision.
        int event = offWrap & 0x7FFF;
        if (((offWrap >>> RING_EVENT_WRAP_SHIFT) != 0) != newWrap) event -= size;
        if (oldWrap != newWrap) old -= size;
        return needEvent(event & 0xFFFF, newIdx, old & 0xFFFF);
    }

    @Override
    public boolean enableNotification() {
        notificationsEnabled = true;
        if (eventIdx) {
            // off_wrap before flags: the driver may read them in either order, but must never
            // see DESC with a stale offset (QEMU does the same).
            RawMemory.putLe16(deviceEvent + EVENT_OFF_WRAP, offWrap(nextAvail, availWrap));
            RawMemory.putLe16Release(deviceEvent + EVENT_FLAGS, RING_EVENT_FLAGS_DESC);
        } else {
            RawMemory.putLe16(deviceEvent + EVENT_FLAGS, RING_EVENT_FLAGS_ENABLE);
        }
        // Full fence: the store above must be visible before we re-read the next descriptor; the
        // driver stores flags, fences, then reads our structure. One of us sees the other.
        RawMemory.fullFence();
        return isAvailable(RawMemory.getLe16Acquire(slot(nextAvail) + 14), availWrap);
    }

    @Override
    public void disableNotification() {
        notificationsEnabled = false;
        RawMemory.putLe16(deviceEvent + EVENT_FLAGS, RING_EVENT_FLAGS_DISABLE); // inside the checked 4 bytes
    }

    /**
     * The vhost-user GET_VRING_BASE value for a packed ring: bits 0-14 next avail slot, bit 15
     * avail wrap counter, bits 16-30 next used slot, bit 31 used wrap counter
     * ({@link PackedRing#encodeBase}).
     */
    @Override
    public int lastAvailIdx() {
        return encodeBase(nextAvail, availWrap, nextUsed, usedWrap);
    }

    /**
     * Sets both positions from a vhost-user SET_VRING_BASE value ({@link #lastAvailIdx()}'s
     * encoding). When bits 16-31 are zero and do not describe a position at most a lap behind
     * the avail position (frontends that send only the avail half, as DPDK documents), the used
     * position is taken equal to the avail one: nothing in flight. A position beyond the ring
     * breaks the queue (the next pop throws BROKEN). Forgets buffers in flight.
     */
    @Override
    public void setLastAvailIdx(int base) {
        int a = base & 0x7FFF;
        boolean aw = (base & 1 << 15) != 0;
        int u = (base >>> 16) & 0x7FFF;
        boolean uw = (base & 1 << 31) != 0;
        java.util.Arrays.fill(inFlight, 0);
        pendingSlot = -1;
        signalledValid = false;
        publishedSinceSignal = false;
        if (a >= size || u >= size) {
            broken = true;
            brokenReason = "SET_VRING_BASE 0x" + Integer.toHexString(base) + " names a slot beyond the queue size " + size;
            return;
        }
        // Outstanding descriptors between used and avail, on a circle of two laps (the wrap
        // counters give the lap's parity).
        long availLin = a + (aw ? 0 : size);
        long usedLin = u + (uw ? 0 : size);
        long outstanding = Math.floorMod(availLin - usedLin, 2L * size);
        boolean usedGiven = (base >>> 16) != 0 ? outstanding <= size : outstanding < size;
        nextAvail = a;
        availWrap = aw;
        nextUsed = usedGiven ? u : a;
        usedWrap = usedGiven ? uw : aw;
        signalledUsed = nextUsed;
        signalledWrap = usedWrap;
    }

    /** Next used slot with the used wrap counter in bit 15. */
    @Override
    public int lastUsedIdx() { return offWrap(nextUsed, usedWrap); }

    /** Buffers popped and not yet pushed (tests, logs; O(size)). */
    public int inFlightCount() {
        int n = 0;
        for (int c : inFlight) if (c != 0) n++;
        return n;
    }
}
