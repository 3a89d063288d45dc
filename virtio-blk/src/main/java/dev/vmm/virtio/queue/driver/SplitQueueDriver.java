package dev.vmm.virtio.queue.driver;

import static dev.vmm.virtio.queue.VirtioRing.*;


import dev.vmm.core.linux.LibcMemory;
import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.virtio.memory.GuestMemoryException;
import dev.vmm.core.memory.RawMemory;

/**
 * The DRIVER side of one split virtqueue, as a guest kernel would run it: a test double for the
 * device code, also meant for a Java vhost-user frontend and benchmarks. It owns a memfd-backed
 * "guest RAM" (shareable with a backend: {@link #fd()}, {@link #memorySize()},
 * {@link #userAddress()} as the frontend's userspace address, {@link #guestPhysBase()}), lays the
 * rings out at its start, hands out buffer space from the rest, and keeps descriptors on a free
 * list.
 *
 * <p>Besides well-formed submissions it writes malformed rings on purpose ({@link #writeDesc},
 * {@link #publishHead}, {@link #setAvailIdx}, {@link #submitLoop} ...): the driver is the
 * adversary of the device under test.
 *
 * <p>Layout (offsets in the memory): descriptor table at 0, available ring and used ring each on
 * the next 4 KiB boundary, buffers after that. Thread contract: one thread; not thread-safe.
 * Memory accesses stay inside its own mapping ({@link #host} checks every range).
 */
public final class SplitQueueDriver implements AutoCloseable {
    private static final long PAGE = 4096;

    private final int size;
    private final int mask;
    private final long features;
    private final boolean eventIdx;
    private final DriverMemory mem;
    private final long base; // mem.base: our mapping, host address == the "frontend userspace address"
    private final long gpaBase;
    private final long descOff, availOff, usedOff, dataOff;

    // ---- descriptor bookkeeping (driver-private shadow; the ring may be overwritten on purpose) ----
    private final int[] shadowNext;
    private final int[] chainLen;      // descriptors in the ring held by each head (0: not in flight)
    private final long[] indirectGpa;  // cached indirect table per head
    private final int[] indirectCap;
    private int freeHead;
    private int freeCount;

    private int availIdx;     // next avail->idx value we will publish
    private int kickedAvail;  // avail idx at the last kick decision
    private int lastUsedSeen; // used entries consumed by pollUsed

    /**
     * @param queueSize      power of two, 1..32768
     * @param memorySize     bytes of "guest RAM" (rings plus buffers), a multiple of 4096
     * @param guestPhysBase  guest-physical address of the memory's first byte (4 KiB aligned)
     * @param features       negotiated features (EVENT_IDX changes the kick decision)
     */
    public SplitQueueDriver(int queueSize, long memorySize, long guestPhysBase, long features) throws LibcMemory.ErrnoException {
        this(queueSize, memorySize, guestPhysBase, features, -1, 0, 0);
    }

    /**
     * A driver on a slice of memory someone else owns (a frontend's one guest-RAM memfd carved
     * into per-queue slices): {@code [sliceBase, sliceBase + memorySize)} of our address space,
     * which is {@code [fdOffset, ...)} of {@code fd}. The slice is neither unmapped nor closed by
     * {@link #close()}.
     */
    public static SplitQueueDriver onSlice(int queueSize, int fd, long fdOffset, long sliceBase, long memorySize,
            long guestPhysBase, long features) throws LibcMemory.ErrnoException {
        if (fd < 0 || sliceBase == 0) throw new IllegalArgumentException("slice needs an fd and a mapping");
        return new SplitQueueDriver(queueSize, memorySize, guestPhysBase, features, fd, fdOffset, sliceBase);
    }

    private SplitQueueDriver(int queueSize, long memorySize, long guestPhysBase, long features, int sliceFd,
            long sliceOffset, long sliceBase) throws LibcMemory.ErrnoException {
        if (queueSize <= 0 || queueSize > MAX_QUEUE_SIZE || Integer.bitCount(queueSize) != 1) {
            throw new IllegalArgumentException("queue size " + queueSize);
        }
        this.size = queueSize;
        this.mask = queueSize - 1;
        this.features = features;
        this.eventIdx = has(features, VIRTIO_F_EVENT_IDX);
        this.descOff = 0;
        this.availOff = align(descTableSize(size), PAGE);
        this.usedOff = availOff + align(availRingSize(size), PAGE);
        this.dataOff = usedOff + align(usedRingSize(size), PAGE);
        if (memorySize % PAGE != 0 || memorySize <= dataOff) throw new IllegalArgumentException("memory size " + memorySize);
        this.mem = sliceFd >= 0
                ? DriverMemory.slice(sliceFd, sliceOffset, sliceBase, memorySize, guestPhysBase, dataOff)
                : DriverMemory.create("vq-driver", memorySize, guestPhysBase, dataOff);
        this.base = mem.base;
        this.gpaBase = guestPhysBase;
        shadowNext = new int[size];
        chainLen = new int[size];
        indirectGpa = new long[size];
        indirectCap = new int[size];
        for (int i = 0; i < size; i++) shadowNext[i] = i + 1;
        freeHead = 0;
        freeCount = size;
    }

    private static long align(long v, long a) { return (v + a - 1) & -a; }

    // ---------------------------------------------------------------- memory

    /** The memfd (owned by this driver; closed by {@link #close()}). */
    public int fd() { return mem.fd; }

    /** Bytes of memory. */
    public long memorySize() { return mem.size; }

    /** Guest-physical address of the first byte. */
    public long guestPhysBase() { return gpaBase; }

    /** Our mapping's address: plays the frontend's userspace address (vhost-user "uva"). */
    public long userAddress() { return base; }

    public int queueSize() { return size; }
    public long features() { return features; }

    public long descGpa() { return gpaBase + descOff; }
    public long availGpa() { return gpaBase + availOff; }
    public long usedGpa() { return gpaBase + usedOff; }
    public long descUserAddr() { return base + descOff; }
    public long availUserAddr() { return base + availOff; }
    public long usedUserAddr() { return base + usedOff; }

    /**
     * Adds this memory as a region of a backend's {@link GuestMemory}, the way SET_MEM_TABLE
     * would: a dup of the memfd (GuestMemory takes ownership of it), our gpa base, our mapping
     * address as uva, offset 0.
     */
    public void shareWith(GuestMemory memory) throws GuestMemoryException {
        mem.shareWith(memory);
    }

    /** Allocates {@code bytes} of buffer space (64-byte aligned); returns its guest-physical address. */
    public long alloc(long bytes) {
        return mem.alloc(bytes);
    }

    /** Forgets all buffer allocations (descriptor tables included); rings stay. */
    public void resetBuffers() {
        mem.resetBuffers();
        java.util.Arrays.fill(indirectCap, 0);
    }

    /** Our host address of {@code [gpa, gpa + len)}; throws if outside our memory. */
    public long host(long gpa, long len) {
        return mem.host(gpa, len);
    }

    // ---------------------------------------------------------------- well-formed submission

    /** Free descriptors in the ring. */
    public int freeDescriptors() { return freeCount; }

    private int takeFree() {
        if (freeCount == 0) throw new IllegalStateException("no free descriptor");
        int d = freeHead;
        freeHead = shadowNext[d];
        freeCount--;
        return d;
    }

    /**
     * Submits a direct chain of {@code n} segments ({@code gpa[i]}, {@code len[i]}); the first
     * {@code readable} are device-readable, the rest device-writable. Returns the head, or -1 when
     * fewer than {@code n} descriptors are free.
     */
    public int submit(long[] gpa, int[] len, int readable, int n) {
        if (n <= 0 || n > freeCount) return -1;
        int head = takeFree();
        int d = head;
        for (int i = 0; i < n; i++) {
            int next = i + 1 < n ? takeFree() : 0;
            int flags = (i >= readable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
            writeDesc(d, gpa[i], len[i], flags, next);
            shadowNext[d] = next;
            d = next;
        }
        chainLen[head] = n;
        publishHead(head);
        return head;
    }

    /** Like {@link #submit} through one ring descriptor pointing at an indirect table. */
    public int submitIndirect(long[] gpa, int[] len, int readable, int n) {
        if (n <= 0 || freeCount == 0) return -1;
        int head = takeFree();
        long table = indirectTable(head, n);
        for (int i = 0; i < n; i++) {
            int flags = (i >= readable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
            writeTableDesc(table, i, gpa[i], len[i], flags, i + 1 < n ? i + 1 : 0);
        }
        writeDesc(head, table, (long) n * DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
        shadowNext[head] = 0;
        chainLen[head] = 1;
        publishHead(head);
        return head;
    }

    /** An indirect table of at least {@code n} entries owned by {@code head}, reused across submissions. */
    public long indirectTable(int head, int n) {
        if (indirectCap[head] < n) {
            indirectGpa[head] = alloc((long) n * DESC_SIZE);
            indirectCap[head] = n;
        }
        return indirectGpa[head];
    }

    /**
     * Consumes new used elements: up to {@code heads.length} of them into {@code heads} and
     * {@code lens}, freeing their descriptors. Returns how many.
     */
    public int pollUsed(int[] heads, int[] lens) {
        // Acquire: pairs with the device's release store of used->idx (§2.7.14).
        int idx = RawMemory.getLe16Acquire(base + usedOff + 2);
        int n = 0;
        while (lastUsedSeen != idx && n < heads.length) {
            long e = base + usedOff + 4 + (long) USED_ELEM_SIZE * (lastUsedSeen & mask);
            int head = RawMemory.getLe32(e);
            heads[n] = head;
            lens[n] = RawMemory.getLe32(e + 4);
            n++;
            lastUsedSeen = (lastUsedSeen + 1) & 0xFFFF;
            if (head >= 0 && head < size) freeChain(head);
        }
        return n;
    }

    private void freeChain(int head) {
        int n = chainLen[head];
        chainLen[head] = 0;
        int d = head;
        for (int i = 0; i < n; i++) {
            int next = shadowNext[d];
            shadowNext[d] = freeHead;
            freeHead = d;
            freeCount++;
            d = next;
        }
    }

    /**
     * Whether the device wants a kick for what was published since the last call: EVENT_IDX's
     * avail_event, or the used ring's NO_NOTIFY flag.
     */
    public boolean needsKick() {
        // Full fence: our avail->idx store before the load of the device's suppression field.
        RawMemory.fullFence();
        int old = kickedAvail;
        kickedAvail = availIdx;
        if (eventIdx) {
            return needEvent(availEvent(), availIdx, old);
        }
        return old != availIdx && (RawMemory.getLe16(base + usedOff) & VIRTQ_USED_F_NO_NOTIFY) == 0;
    }

    /** Sets used_event (avail->ring[size]): with EVENT_IDX, interrupt me when used idx passes it. */
    public void setUsedEvent(int idx) { RawMemory.putLe16(base + availOff + 4 + 2L * size, idx); }

    /** Sets or clears VIRTQ_AVAIL_F_NO_INTERRUPT in avail->flags. */
    public void setNoInterrupt(boolean on) { RawMemory.putLe16(base + availOff, on ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0); }

    /** The device's avail_event (used->ring[size]). */
    public int availEvent() { return RawMemory.getLe16(base + usedOff + 4 + (long) USED_ELEM_SIZE * size); }

    /** used->flags as the device left it. */
    public int usedFlags() { return RawMemory.getLe16(base + usedOff); }

    /** used->idx as the device published it. */
    public int usedIdx() { return RawMemory.getLe16Acquire(base + usedOff + 2); }

    /** used->idx value up to which {@link #pollUsed} consumed (the driver's last_used_idx). */
    public int lastUsedIdx() { return lastUsedSeen; }

    /** Next avail->idx value the driver publishes. */
    public int availIdx() { return availIdx; }

    /**
     * Starts both indices at {@code idx} (as if a previous session had run that far): for 16-bit
     * wraparound tests. Call before creating the device's queue, then give the device the same
     * value with setLastAvailIdx.
     */
    public void startAt(int idx) {
        availIdx = idx & 0xFFFF;
        kickedAvail = availIdx;
        lastUsedSeen = availIdx;
        RawMemory.putLe16(base + availOff + 2, availIdx);
        RawMemory.putLe16(base + usedOff + 2, availIdx);
    }

    // ---------------------------------------------------------------- raw and malicious writes

    /** Writes ring descriptor {@code index} verbatim (no bookkeeping). */
    public void writeDesc(int index, long addr, long len, int flags, int next) {
        if (index < 0 || index >= size) throw new IndexOutOfBoundsException(index);
        writeRaw(base + descOff + (long) DESC_SIZE * index, addr, len, flags, next);
    }

    /** Writes entry {@code index} of a descriptor table at guest-physical {@code tableGpa}. */
    public void writeTableDesc(long tableGpa, int index, long addr, long len, int flags, int next) {
        writeRaw(host(tableGpa + (long) DESC_SIZE * index, DESC_SIZE), addr, len, flags, next);
    }

    private static void writeRaw(long p, long addr, long len, int flags, int next) {
        RawMemory.putLe64(p, addr);
        RawMemory.putLe32(p + 8, (int) len);
        RawMemory.putLe16(p + 12, flags);
        RawMemory.putLe16(p + 14, next);
    }

    /** Puts {@code head} (any 16-bit value) into the next avail slot and publishes avail->idx. */
    public void publishHead(int head) {
        RawMemory.putLe16(base + availOff + 4 + 2L * (availIdx & mask), head);
        availIdx = (availIdx + 1) & 0xFFFF;
        // Release: the descriptors and the ring entry before the index (§2.7.13.3).
        RawMemory.putLe16Release(base + availOff + 2, availIdx);
    }

    /** Stores any avail->idx (an index jump when it is more than the queue size ahead). */
    public void setAvailIdx(int idx) {
        availIdx = idx & 0xFFFF;
        RawMemory.putLe16Release(base + availOff + 2, availIdx);
    }

    /** Submits a two-descriptor loop a → b → a. Returns the head. */
    public int submitLoop(long gpa, int len) {
        int a = takeFree();
        int b = takeFree();
        writeDesc(a, gpa, len, VIRTQ_DESC_F_NEXT, b);
        writeDesc(b, gpa, len, VIRTQ_DESC_F_NEXT, a);
        shadowNext[a] = b;
        shadowNext[b] = 0;
        chainLen[a] = 2;
        publishHead(a);
        return a;
    }

    /** Submits one descriptor with arbitrary address, length and flags. Returns the head. */
    public int submitRaw(long addr, long len, int flags) {
        int a = takeFree();
        writeDesc(a, addr, len, flags & ~VIRTQ_DESC_F_NEXT, 0);
        shadowNext[a] = 0;
        chainLen[a] = 1;
        publishHead(a);
        return a;
    }

    /**
     * Submits an indirect descriptor whose table's entry 0 is itself INDIRECT (forbidden nesting,
     * §2.7.5.3.1). Returns the head.
     */
    public int submitNestedIndirect(long bufGpa, int bufLen) {
        int head = takeFree();
        long inner = indirectTable(head, 2);
        long outer = alloc(DESC_SIZE);
        writeTableDesc(inner, 0, bufGpa, bufLen, 0, 0);
        writeTableDesc(outer, 0, inner, DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
        writeDesc(head, outer, DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
        shadowNext[head] = 0;
        chainLen[head] = 1;
        publishHead(head);
        return head;
    }

    /** Unmaps the memory and closes the memfd (a slice's owner does that for a slice). */
    @Override
    public void close() {
        mem.close();
    }
}
