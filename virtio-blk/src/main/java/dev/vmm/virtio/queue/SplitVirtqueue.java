package dev.vmm.virtio.queue;

import static dev.vmm.virtio.queue.VirtioRing.*;

import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.virtio.memory.GuestMemoryException;
import dev.vmm.core.memory.RawMemory;

/**
 * The device side of a split virtqueue (virtio 1.2 §2.7), in guest memory shared by a
 * vhost-user frontend.
 *
 * <p><b>Memory safety.</b> The three rings are translated once, at construction, and each must
 * lie entirely inside one guest-memory region ({@link GuestMemory#uvaToHost}); afterwards every
 * ring access uses an index masked with {@code size - 1}, so it stays inside the checked ring.
 * Descriptor tables (direct: the checked ring; indirect: a table translated for its whole
 * length) are indexed only with values checked against their entry count. Buffers are
 * translated for their full length before they reach a {@link DescriptorChain}. Each descriptor
 * is read once into locals and only those values are used, so a guest rewriting a descriptor
 * while we read it gains nothing (no double fetch).
 *
 * <p><b>Memory ordering</b> (driver side: Linux {@code virtio_ring.c}; device side: QEMU
 * {@code virtio.c}):
 * <ul>
 * <li>avail->idx is read with acquire; pairs with the driver's write barrier before its store
 * of avail->idx (§2.7.13.3 "Updating idx"), so the avail ring entries and descriptors it
 * covers are read after it.</li>
 * <li>used->idx is stored with release after the used elements (§2.7.14 "Receiving Used
 * Buffers From The Device": the driver reads used->idx, then the elements).</li>
 * <li>Before deciding to notify, a full fence orders the used->idx store before the load of
 * used_event / avail flags (§2.7.7 "Used Buffer Notification Suppression"); the driver does
 * the mirror image before reading avail_event. Without it both sides could miss each other.</li>
 * <li>Re-enabling notifications stores avail_event (or clears NO_NOTIFY), full fence, then
 * re-reads avail->idx (§2.7.10 "Available Buffer Notification Suppression").</li>
 * </ul>
 *
 * <p><b>Thread contract.</b> Confined to the device's IOThread; the control plane may call
 * {@link #setLastAvailIdx}/{@link #lastAvailIdx} only while the queue is stopped. The region
 * table MUST NOT change while the queue exists: after SET_MEM_TABLE the owner builds a new
 * queue (the rings' host addresses are cached here).
 */
public final class SplitVirtqueue implements Virtqueue {
    /** Largest indirect table accepted, in descriptors (as large as the largest ring). */
    public static final int MAX_INDIRECT_DESCRIPTORS = MAX_QUEUE_SIZE;

    private final GuestMemory memory;
    private final int size;
    private final int mask;
    private final boolean eventIdx;
    private final boolean indirect;

    // Host addresses of the rings, each checked to lie wholly inside one region.
    private final long desc;
    private final long avail;
    private final long used;
    /** &avail->ring[size]: used_event (driver's wish for our notifications). */
    private final long usedEventAddr;
    /** &used->ring[size]: avail_event (our wish for the driver's kicks). */
    private final long availEventAddr;

    // ---- device state, IOThread-confined; indices are 16-bit, free-running mod 2^16 ----
    private int lastAvail;
    /** avail->idx as last read; entries in [lastAvail, shadowAvail) are known available. */
    private int shadowAvail;
    /** Next used index to write; published to used->idx by publishUsed(). */
    private int usedIdx;
    /** used->idx as last published. */
    private int publishedUsed;
    /** Used index at the last notify decision (EVENT_IDX's "old"). */
    private int signalledUsed;
    private boolean signalledUsedValid;
    private boolean notificationsEnabled = true;
    private boolean broken;

    /**
     * A queue whose ring addresses are the frontend's userspace addresses, as vhost-user
     * SET_VRING_ADDR gives them.
     *
     * @throws VirtqueueException (BROKEN) for a bad size, a misaligned ring or a ring not
     *         wholly inside one region
     */
    public static SplitVirtqueue ofUserAddresses(GuestMemory memory, int size, long descUva, long availUva,
            long usedUva, long features) throws VirtqueueException {
        return new SplitVirtqueue(memory, size, descUva, availUva, usedUva, features, true);
    }

    /** A queue whose ring addresses are guest-physical (virtio-pci/mmio transports, tests). */
    public static SplitVirtqueue ofGuestPhysical(GuestMemory memory, int size, long descGpa, long availGpa,
            long usedGpa, long features) throws VirtqueueException {
        return new SplitVirtqueue(memory, size, descGpa, availGpa, usedGpa, features, false);
    }

    private SplitVirtqueue(GuestMemory memory, int size, long descAddr, long availAddr, long usedAddr,
            long features, boolean userAddresses) throws VirtqueueException {
        if (size <= 0 || size > MAX_QUEUE_SIZE || Integer.bitCount(size) != 1) {
            throw VirtqueueException.broken("queue size " + size + " is not a power of two in 1.." + MAX_QUEUE_SIZE);
        }
        this.memory = memory;
        this.size = size;
        this.mask = size - 1;
        this.eventIdx = has(features, VIRTIO_F_EVENT_IDX);
        this.indirect = has(features, VIRTIO_F_INDIRECT_DESC);
        this.desc = ring("descriptor table", descAddr, descTableSize(size), DESC_ALIGN, userAddresses);
        this.avail = ring("available ring", availAddr, availRingSize(size), AVAIL_ALIGN, userAddresses);
        this.used = ring("used ring", usedAddr, usedRingSize(size), USED_ALIGN, userAddresses);
        this.usedEventAddr = avail + 4 + 2L * size;           // last le16 of the checked avail ring
        this.availEventAddr = used + 4 + (long) USED_ELEM_SIZE * size; // last le16 of the used ring
        // Continue from the used index in memory (a reconnecting frontend keeps its rings), as
        // libvhost-user does; the avail index comes from SET_VRING_BASE.
        this.usedIdx = RawMemory.getLe16Acquire(used + 2); // inside the checked used ring
        this.publishedUsed = usedIdx;
        this.signalledUsed = usedIdx;
    }

    private long ring(String what, long addr, long bytes, int align, boolean userAddresses) throws VirtqueueException {
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

    @Override
    public boolean pop(DescriptorChain out) throws VirtqueueException {
        if (broken) throw VirtqueueException.broken("queue is broken; reset required");
        if (shadowAvail == lastAvail) {
            // Acquire: pairs with the driver's barrier before its avail->idx store (§2.7.13.3);
            // avail ring entries and descriptors below are read after this load.
            int idx = RawMemory.getLe16Acquire(avail + 2); // inside the checked avail ring
            int pending = (idx - lastAvail) & 0xFFFF;
            if (pending > size) {
                throw markBroken("avail idx moved from " + lastAvail + " to " + idx + ", more than the queue size " + size);
            }
            shadowAvail = idx;
            if (pending == 0) return false;
        }
        // Bounds: slot < size, and the avail ring was checked for 6 + 2*size bytes.
        int head = RawMemory.getLe16(avail + 4 + 2L * (lastAvail & mask));
        lastAvail = (lastAvail + 1) & 0xFFFF;
        if (eventIdx && notificationsEnabled) {
            // Tell the driver which index to kick at next (§2.7.10); a hint, ordered by the fence
            // in enableNotification() when it matters.
            RawMemory.putLe16(availEventAddr, lastAvail);
        }
        if (head >= size) {
            // A head outside the table cannot even be completed (QEMU: virtio_error).
            throw markBroken("avail ring entry " + ((lastAvail - 1) & 0xFFFF) + " names head " + head + " >= queue size " + size);
        }
        walk(head, out);
        return true;
    }

    /**
     * Re-reads the chain at {@code head} without touching the avail ring: for resubmitting a
     * request a previous back-end popped but never completed (vhost-user in-flight tracking).
     * Validated exactly as {@link #pop} does.
     */
    public void popHead(int head, DescriptorChain out) throws VirtqueueException {
        if (broken) throw VirtqueueException.broken("queue is broken; reset required");
        if (head < 0 || head >= size) throw markBroken("in-flight head " + head + " >= queue size " + size);
        walk(head, out);
    }

    /** used->idx as it is in guest memory now (acquire). */
    public int usedIdxInRing() {
        return RawMemory.getLe16Acquire(used + 2); // inside the checked used ring
    }

    /**
     * Walks the chain at {@code head} into {@code out}, validating each descriptor
     * (§2.7.5.2 device/driver requirements, §2.7.5.3 indirect descriptors).
     */
    private void walk(int head, DescriptorChain out) throws VirtqueueException {
        out.reset(head);
        long table = desc;        // current descriptor table (host address, checked)
        int tableLen = size;      // its entry count
        int budget = size;        // descriptors we may still visit: loop and length limit
        boolean inIndirect = false;
        boolean sawWritable = false;
        int i = head;
        while (true) {
            if (--budget < 0) {
                throw VirtqueueException.request(head, inIndirect
                        ? "indirect chain longer than its table (loop?)"
                        : "chain longer than the queue size " + size + " (loop?)");
            }
            // Bounds: 0 <= i < tableLen, and the table was checked for 16*tableLen bytes.
            long d = table + (long) DESC_SIZE * i;
            long addr = RawMemory.getLe64(d);
            long len = RawMemory.getLe32(d + 8) & 0xFFFFFFFFL;
            int flags = RawMemory.getLe16(d + 12);
            int next = RawMemory.getLe16(d + 14);

            if ((flags & VIRTQ_DESC_F_INDIRECT) != 0) {
                if (!indirect) throw VirtqueueException.request(head, "INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC");
                if (inIndirect) throw VirtqueueException.request(head, "INDIRECT descriptor inside an indirect table");
                if ((flags & VIRTQ_DESC_F_NEXT) != 0) throw VirtqueueException.request(head, "descriptor has both INDIRECT and NEXT");
                if (len == 0 || len % DESC_SIZE != 0 || len / DESC_SIZE > MAX_INDIRECT_DESCRIPTORS) {
                    throw VirtqueueException.request(head, "indirect table length " + len + " is not a positive multiple of 16 up to "
                            + MAX_INDIRECT_DESCRIPTORS + " entries");
                }
                try {
                    table = memory.gpaToHost(addr, len);
                } catch (GuestMemoryException e) {
                    throw VirtqueueException.request(head, "indirect table: " + e.getMessage());
                }
                tableLen = (int) (len / DESC_SIZE);
                budget = tableLen;
                inIndirect = true;
                i = 0;
                continue; // the table replaces the rest of the chain
            }

            if (len == 0) throw VirtqueueException.request(head, "zero-length descriptor " + i);
            boolean writable = (flags & VIRTQ_DESC_F_WRITE) != 0;
            if (!writable && sawWritable) {
                throw VirtqueueException.request(head, "device-readable descriptor after a device-writable one");
            }
            sawWritable |= writable;
            long host;
            try {
                host = memory.gpaToHost(addr, len);
            } catch (GuestMemoryException e) {
                throw VirtqueueException.request(head, "descriptor " + i + ": " + e.getMessage());
            }
            if (!out.add(host, len, writable)) {
                throw VirtqueueException.request(head, "more than " + out.capacity() + " segments");
            }
            if ((flags & VIRTQ_DESC_F_NEXT) == 0) return;
            if (next >= tableLen) throw VirtqueueException.request(head, "next index " + next + " >= table size " + tableLen);
            i = next;
        }
    }

    @Override
    public void pushUsed(int head, int writtenLength) {
        if (head < 0 || head >= size) throw new IllegalArgumentException("head " + head + " of queue size " + size);
        // Bounds: slot < size, and the used ring was checked for 6 + 8*size bytes.
        long elem = used + 4 + (long) USED_ELEM_SIZE * (usedIdx & mask);
        RawMemory.putLe32(elem, head);
        RawMemory.putLe32(elem + 4, writtenLength);
        usedIdx = (usedIdx + 1) & 0xFFFF;
    }

    @Override
    public void publishUsed() {
        if (publishedUsed == usedIdx) return;
        // Release: the used elements above become visible no later than the index; pairs with
        // the driver's read barrier after loading used->idx (§2.7.14).
        RawMemory.putLe16Release(used + 2, usedIdx); // inside the checked used ring
        publishedUsed = usedIdx;
    }

    @Override
    public boolean needsNotify() {
        // Full fence: our used->idx store must be visible before we read the driver's
        // suppression fields, or we may skip a notification the driver is waiting for (§2.7.7).
        RawMemory.fullFence();
        int newIdx = publishedUsed;
        int old = signalledUsed;
        if (!eventIdx) {
            signalledUsed = newIdx;
            if (newIdx == old) return false;
            return (RawMemory.getLe16(avail) & VIRTQ_AVAIL_F_NO_INTERRUPT) == 0; // avail->flags, checked ring
        }
        int usedEvent = RawMemory.getLe16(usedEventAddr); // inside the checked avail ring
        boolean valid = signalledUsedValid;
        signalledUsed = newIdx;
        signalledUsedValid = true;
        return !valid || needEvent(usedEvent, newIdx, old);
    }

    @Override
    public boolean enableNotification() {
        notificationsEnabled = true;
        if (eventIdx) {
            RawMemory.putLe16(availEventAddr, shadowAvail); // inside the checked used ring
        } else {
            int flags = RawMemory.getLe16(used); // used->flags is device-owned
            RawMemory.putLe16(used, flags & ~VIRTQ_USED_F_NO_NOTIFY);
        }
        // Full fence: the store above must be visible before we re-read avail->idx; the driver
        // stores avail->idx, fences, then reads our field (§2.7.10). One of us sees the other.
        RawMemory.fullFence();
        int idx = RawMemory.getLe16Acquire(avail + 2);
        return idx != lastAvail;
    }

    @Override
    public void disableNotification() {
        notificationsEnabled = false;
        if (!eventIdx) {
            int flags = RawMemory.getLe16(used);
            RawMemory.putLe16(used, flags | VIRTQ_USED_F_NO_NOTIFY);
        }
        // With EVENT_IDX, avail_event simply stops advancing: the driver kicks at most once more.
    }

    @Override
    public int lastAvailIdx() { return lastAvail; }

    @Override
    public void setLastAvailIdx(int idx) {
        lastAvail = idx & 0xFFFF;
        shadowAvail = lastAvail;
        signalledUsedValid = false;
    }

    @Override
    public int lastUsedIdx() { return usedIdx; }

    /** Number of available buffers not yet popped, as last seen (no memory access). */
    public int pendingSeen() { return (shadowAvail - lastAvail) & 0xFFFF; }
}
