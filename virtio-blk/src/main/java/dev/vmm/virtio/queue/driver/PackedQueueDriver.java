package dev.vmm.virtio.queue.driver;

import static dev.vmm.virtio.queue.PackedRing.*;
import static dev.vmm.virtio.queue.VirtioRing.*;


import dev.vmm.core.linux.LibcMemory;
import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.virtio.memory.GuestMemoryException;
import dev.vmm.core.memory.RawMemory;

/**
 * The driver side of a packed virtqueue (virtio 1.2 §2.8), for tests and the benchmark: "guest
 * memory" in a memfd that a backend maps as a vhost-user region, the descriptor ring, the two
 * event suppression structures and a bump allocator for buffers. It plays what Linux's
 * {@code virtio_ring.c} packed functions do: buffer ids from a free list, lists written with
 * the first descriptor's flags stored last, used descriptors polled at one slot and skipped
 * forward by the list's length, kicks decided from the device's event suppression structure.
 *
 * <p>Besides well-formed submissions it writes malformed rings on purpose ({@link #submitList}
 * with any id and flags, {@link #submitEndlessList}, {@link #submitWrongWrap},
 * {@link #writeDesc} ...): the driver is the adversary of the device under test.
 *
 * <p>Layout (offsets in the memory): descriptor ring at 0, driver event suppression and device
 * event suppression each on the next 4 KiB boundary, buffers after that. Thread contract: one
 * thread; not thread-safe. Memory accesses stay inside its own mapping ({@link #host} checks
 * every range).
 */
public final class PackedQueueDriver implements AutoCloseable {
    private static final long PAGE = 4096;

    private final int size;
    private final long features;
    private final boolean eventIdx;
    private final DriverMemory mem;
    private final long base; // mem.base: our mapping, host address == the "frontend userspace address"
    private final long gpaBase;
    private final long descOff, driverEventOff, deviceEventOff, dataOff;

    // ---- buffer ids and ring space ----
    private final int[] freeIds;       // stack of free buffer ids
    private int freeIdCount;
    private final int[] listLen;       // descriptors occupied by each id in flight (0: free)
    private final long[] indirectGpa;  // cached indirect table per id
    private final int[] indirectCap;
    private int freeSlots;

    // ---- ring positions (§2.8.1: wrap counters start at 1) ----
    private int nextAvail;
    private boolean availWrap = true;
    private int nextUsed;
    private boolean usedWrap = true;
    /** Descriptors made available since the last kick decision. */
    private int addedSinceKick;

    /**
     * @param queueSize      1..32768, any value (packed rings need no power of two)
     * @param memorySize     bytes of "guest RAM" (rings plus buffers), a multiple of 4096
     * @param guestPhysBase  guest-physical address of the memory's first byte (4 KiB aligned)
     * @param features       negotiated features (EVENT_IDX changes the kick decision)
     */
    public PackedQueueDriver(int queueSize, long memorySize, long guestPhysBase, long features) throws LibcMemory.ErrnoException {
        if (queueSize <= 0 || queueSize > MAX_PACKED_QUEUE_SIZE) throw new IllegalArgumentException("queue size " + queueSize);
        this.size = queueSize;
        this.features = features;
        this.eventIdx = has(features, VIRTIO_F_EVENT_IDX);
        this.descOff = 0;
        this.driverEventOff = align(packedRingSize(size), PAGE);
        this.deviceEventOff = driverEventOff + PAGE;
        this.dataOff = deviceEventOff + PAGE;
        if (memorySize % PAGE != 0 || memorySize <= dataOff) throw new IllegalArgumentException("memory size " + memorySize);
        this.mem = DriverMemory.create("pvq-driver", memorySize, guestPhysBase, dataOff);
        this.base = mem.base;
        this.gpaBase = guestPhysBase;
        freeIds = new int[size];
        for (int i = 0; i < size; i++) freeIds[i] = size - 1 - i; // pops 0, 1, 2 ...
        freeIdCount = size;
        listLen = new int[size];
        indirectGpa = new long[size];
        indirectCap = new int[size];
        freeSlots = size;
    }

    private static long align(long v, long a) { return (v + a - 1) & -a; }

    // ---------------------------------------------------------------- memory

    /** The memfd (owned by this driver; closed by {@link #close()}). */
    public int fd() { return mem.fd; }

    public long memorySize() { return mem.size; }

    public long guestPhysBase() { return gpaBase; }

    /** Our mapping's address: plays the frontend's userspace address (vhost-user "uva"). */
    public long userAddress() { return base; }

    public int queueSize() { return size; }
    public long features() { return features; }

    public long descGpa() { return gpaBase + descOff; }
    public long driverEventGpa() { return gpaBase + driverEventOff; }
    public long deviceEventGpa() { return gpaBase + deviceEventOff; }
    public long descUserAddr() { return base + descOff; }
    /** vhost-user SET_VRING_ADDR's "avail" address for a packed ring. */
    public long driverEventUserAddr() { return base + driverEventOff; }
    /** vhost-user SET_VRING_ADDR's "used" address for a packed ring. */
    public long deviceEventUserAddr() { return base + deviceEventOff; }

    /** Adds this memory as a region of a backend's {@link GuestMemory}, the way SET_MEM_TABLE would. */
    public void shareWith(GuestMemory memory) throws GuestMemoryException {
        mem.shareWith(memory);
    }

    /** Allocates {@code bytes} of buffer space (64-byte aligned); returns its guest-physical address. */
    public long alloc(long bytes) {
        return mem.alloc(bytes);
    }

    /** Our host address of {@code [gpa, gpa + len)}; throws if outside our memory. */
    public long host(long gpa, long len) {
        return mem.host(gpa, len);
    }

    // ---------------------------------------------------------------- well-formed submission

    /** Ring slots not occupied by buffers in flight. */
    public int freeDescriptors() { return freeSlots; }

    /** Buffer ids not in flight. */
    public int freeIds() { return freeIdCount; }

    /** Next slot the driver writes, and its wrap counter. */
    public int nextAvail() { return nextAvail; }
    public boolean availWrap() { return availWrap; }
    /** Next slot the driver polls for a used descriptor, and the used wrap counter it expects. */
    public int nextUsed() { return nextUsed; }
    public boolean usedWrap() { return usedWrap; }

    /**
     * Submits a direct list of {@code n} elements ({@code gpa[i]}, {@code len[i]}); the first
     * {@code readable} are device-readable, the rest device-writable. Returns the buffer id, or
     * -1 when fewer than {@code n} slots or no id are free.
     */
    public int submit(long[] gpa, int[] len, int readable, int n) {
        if (n <= 0 || n > freeSlots || freeIdCount == 0) return -1;
        int id = freeIds[--freeIdCount];
        int first = nextAvail;
        boolean firstWrap = availWrap;
        for (int i = 0; i < n; i++) {
            int flags = (i >= readable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
            writeNext(gpa[i], len[i] & 0xFFFFFFFFL, i + 1 < n ? 0 : id, flags, i == 0);
        }
        publishFirst(first, firstWrap, (readable == 0 ? VIRTQ_DESC_F_WRITE : 0) | (n > 1 ? VIRTQ_DESC_F_NEXT : 0));
        track(id, n);
        return id;
    }

    /** Like {@link #submit} through one ring descriptor pointing at an indirect table. */
    public int submitIndirect(long[] gpa, int[] len, int readable, int n) {
        if (n <= 0 || freeSlots == 0 || freeIdCount == 0) return -1;
        int id = freeIds[--freeIdCount];
        long table = indirectTable(id, n);
        for (int i = 0; i < n; i++) {
            writeTableDesc(table, i, gpa[i], len[i] & 0xFFFFFFFFL, 0, i >= readable ? VIRTQ_DESC_F_WRITE : 0);
        }
        int first = nextAvail;
        boolean firstWrap = availWrap;
        writeNext(table, (long) n * PACKED_DESC_SIZE, id, VIRTQ_DESC_F_INDIRECT, true);
        publishFirst(first, firstWrap, VIRTQ_DESC_F_INDIRECT);
        track(id, 1);
        return id;
    }

    /** An indirect table of at least {@code n} entries owned by {@code id}, reused across submissions. */
    public long indirectTable(int id, int n) {
        if (indirectCap[id] < n) {
            indirectGpa[id] = alloc((long) n * PACKED_DESC_SIZE);
            indirectCap[id] = n;
        }
        return indirectGpa[id];
    }

    private void track(int id, int n) {
        if (id >= 0 && id < size) listLen[id] = n;
        freeSlots -= n;
        addedSinceKick += n;
    }

    /**
     * Writes the descriptor at {@code nextAvail} and advances. The first descriptor of a list
     * gets everything but its flags (stored by {@link #publishFirst}); the others get their
     * flags with the AVAIL/USED bits of the wrap counter at their slot.
     */
    private void writeNext(long addr, long len, int id, int flags, boolean first) {
        long d = base + descOff + (long) PACKED_DESC_SIZE * nextAvail;
        RawMemory.putLe64(d, addr);
        RawMemory.putLe32(d + 8, (int) len);
        RawMemory.putLe16(d + 12, id);
        if (!first) RawMemory.putLe16(d + 14, flags | availBits(availWrap));
        if (++nextAvail == size) {
            nextAvail = 0;
            availWrap = !availWrap;
        }
    }

    /** Makes a list available: its first descriptor's flags, with release (§2.8.21.3.1). */
    private void publishFirst(int slot, boolean wrap, int flags) {
        RawMemory.putLe16Release(base + descOff + (long) PACKED_DESC_SIZE * slot + 14, flags | availBits(wrap));
    }

    /** AVAIL = wrap, USED = !wrap: "available" for the device (§2.8.1). */
    public static int availBits(boolean wrap) {
        return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
    }

    /**
     * Consumes used descriptors: up to {@code ids.length} of them into {@code ids} and
     * {@code lens}, freeing their slots and ids. Returns how many. An id the driver did not
     * submit is reported and skipped as one slot.
     */
    public int pollUsed(int[] ids, int[] lens) {
        int n = 0;
        while (n < ids.length) {
            long d = base + descOff + (long) PACKED_DESC_SIZE * nextUsed;
            // Acquire: pairs with the device's release store of the used flags (§2.8.22).
            int flags = RawMemory.getLe16Acquire(d + 14);
            boolean used = (flags & VIRTQ_DESC_F_USED) != 0;
            boolean avail = (flags & VIRTQ_DESC_F_AVAIL) != 0;
            if (used != usedWrap || avail != usedWrap) break;
            int id = RawMemory.getLe16(d + 12);
            ids[n] = id;
            lens[n] = (flags & VIRTQ_DESC_F_WRITE) != 0 ? RawMemory.getLe32(d + 8) : 0;
            n++;
            int skip = 1;
            if (id < size && listLen[id] != 0) {
                skip = listLen[id];
                listLen[id] = 0;
                freeIds[freeIdCount++] = id;
            }
            freeSlots += skip;
            nextUsed += skip;
            if (nextUsed >= size) {
                nextUsed -= size;
                usedWrap = !usedWrap;
            }
        }
        return n;
    }

    /**
     * Whether the device wants a kick for what was made available since the last call: its
     * Device Event Suppression flags, and with EVENT_IDX its off_wrap (Linux
     * {@code virtqueue_kick_prepare_packed}).
     */
    public boolean needsKick() {
        // Full fence: our flags stores before the load of the device's suppression structure.
        RawMemory.fullFence();
        int added = addedSinceKick;
        addedSinceKick = 0;
        if (added == 0) return false;
        int flags = deviceEventFlags();
        if (flags != RING_EVENT_FLAGS_DESC || !eventIdx) return flags != RING_EVENT_FLAGS_DISABLE;
        int offWrap = deviceEventOffWrap();
        int event = offWrap & 0x7FFF;
        if (((offWrap >>> RING_EVENT_WRAP_SHIFT) != 0) != availWrap) event -= size;
        int newIdx = nextAvail;
        int old = newIdx - added;
        return needEvent(event & 0xFFFF, newIdx, old & 0xFFFF);
    }

    /** Writes the Driver Event Suppression structure (which used events we want notified). */
    public void setDriverEvent(int flags, int offWrap) {
        RawMemory.putLe16(base + driverEventOff + EVENT_OFF_WRAP, offWrap);
        RawMemory.putLe16Release(base + driverEventOff + EVENT_FLAGS, flags);
    }

    /** off_wrap of slot {@code slot} with wrap counter {@code wrap}. */
    public static int offWrap(int slot, boolean wrap) { return slot | (wrap ? 1 << RING_EVENT_WRAP_SHIFT : 0); }

    /** The device's event suppression flags. */
    public int deviceEventFlags() { return RawMemory.getLe16(base + deviceEventOff + EVENT_FLAGS); }

    /** The device's event suppression off_wrap. */
    public int deviceEventOffWrap() { return RawMemory.getLe16(base + deviceEventOff + EVENT_OFF_WRAP); }

    // ---------------------------------------------------------------- raw and malicious writes

    /** Writes ring descriptor {@code slot} verbatim (no bookkeeping, no wrap bits added). */
    public void writeDesc(int slot, long addr, long len, int id, int flags) {
        if (slot < 0 || slot >= size) throw new IndexOutOfBoundsException(slot);
        writeRaw(base + descOff + (long) PACKED_DESC_SIZE * slot, addr, len, id, flags);
    }

    /** Writes entry {@code index} of an indirect table at guest-physical {@code tableGpa}. */
    public void writeTableDesc(long tableGpa, int index, long addr, long len, int id, int flags) {
        writeRaw(host(tableGpa + (long) PACKED_DESC_SIZE * index, PACKED_DESC_SIZE), addr, len, id, flags);
    }

    private static void writeRaw(long p, long addr, long len, int id, int flags) {
        RawMemory.putLe64(p, addr);
        RawMemory.putLe32(p + 8, (int) len);
        RawMemory.putLe16(p + 12, id);
        RawMemory.putLe16(p + 14, flags);
    }

    /**
     * Makes a list of {@code n} descriptors available with arbitrary contents: element
     * {@code i} gets {@code addr[i]}, {@code len[i]}, {@code flags[i]} (NEXT is added on all
     * but the last, AVAIL/USED for its slot) and the last one gets {@code id}, any 16-bit
     * value. A free id is taken from the free list when {@code id} is one, so that a request
     * error's completion frees it again. Returns {@code id}.
     */
    public int submitList(long[] addr, long[] len, int[] flags, int id, int n) {
        if (n <= 0 || n > freeSlots) throw new IllegalStateException("no room for " + n + " descriptors");
        takeId(id);
        int first = nextAvail;
        boolean firstWrap = availWrap;
        for (int i = 0; i < n; i++) {
            int f = flags[i] | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
            writeNext(addr[i], len[i], i + 1 < n ? 0 : id, f, i == 0);
        }
        publishFirst(first, firstWrap, flags[0] | (n > 1 ? VIRTQ_DESC_F_NEXT : 0));
        track(id, n);
        return id;
    }

    /** One descriptor with arbitrary address, length and flags (NEXT removed), a free id. Returns it. */
    public int submitRaw(long addr, long len, int flags) {
        if (freeIdCount == 0) throw new IllegalStateException("no free id");
        int id = freeIds[freeIdCount - 1];
        return submitList(new long[] {addr}, new long[] {len}, new int[] {flags & ~VIRTQ_DESC_F_NEXT}, id, 1);
    }

    private void takeId(int id) {
        for (int i = 0; i < freeIdCount; i++) {
            if (freeIds[i] == id) {
                freeIds[i] = freeIds[--freeIdCount];
                return;
            }
        }
    }

    /**
     * Makes every slot of the ring available with NEXT set on all of them: a list that never
     * ends (the packed form of a descriptor loop). Needs an empty ring.
     */
    public void submitEndlessList(long gpa, int len) {
        if (freeSlots != size) throw new IllegalStateException("ring not empty");
        int first = nextAvail;
        boolean firstWrap = availWrap;
        for (int i = 0; i < size; i++) writeNext(gpa, len, 0, VIRTQ_DESC_F_NEXT, i == 0);
        publishFirst(first, firstWrap, VIRTQ_DESC_F_NEXT);
        freeSlots = 0;
    }

    /**
     * Writes a single-descriptor buffer at {@code nextAvail} whose AVAIL/USED bits belong to the
     * other wrap counter (or both equal when {@code bothEqual}): not available to a correct
     * device. Does not advance; {@link #submit} later overwrites it.
     */
    public void submitWrongWrap(long gpa, int len, boolean bothEqual) {
        int bits = bothEqual ? (availWrap ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0) : availBits(!availWrap);
        writeDesc(nextAvail, gpa, len, freeIds[freeIdCount - 1], bits);
    }

    /**
     * Submits a two-descriptor list whose second descriptor carries the wrong wrap bits (a
     * list whose tail the driver "forgot" to make available). Returns the id it carries.
     */
    public int submitTornList(long gpa, int len) {
        int id = submit(new long[] {gpa, gpa}, new int[] {len, len}, 2, 2);
        int second = (nextAvail - 1 + size) % size;
        boolean wrapAtSecond = nextAvail == 0 ? !availWrap : availWrap; // the list ended the lap
        long d = base + descOff + (long) PACKED_DESC_SIZE * second;
        RawMemory.putLe16(d + 14, availBits(!wrapAtSecond));
        return id;
    }

    /** Unmaps the memory and closes the memfd. */
    @Override
    public void close() {
        mem.close();
    }
}
