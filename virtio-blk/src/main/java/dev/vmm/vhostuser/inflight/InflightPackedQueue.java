package dev.vmm.vhostuser.inflight;

import static dev.vmm.virtio.queue.PackedRing.VIRTQ_DESC_F_AVAIL;
import static dev.vmm.virtio.queue.PackedRing.VIRTQ_DESC_F_USED;

import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.PackedDescriptorList;
import java.lang.invoke.VarHandle;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.function.IntUnaryOperator;

/**
 * One packed virtqueue's part of the in-flight area (vhost-user.rst, "Inflight I/O tracking",
 * "For packed virtqueue"): shared memory the front-end keeps across a back-end restart, in which
 * the back-end records the descriptors of every buffer it has taken and not completed, and the
 * ring's used position, so that a restarted back-end can resubmit those buffers and continue the
 * ring where the guest expects it. A packed ring needs both: its slots are reused for used
 * descriptors (completing a buffer may overwrite the descriptors of another still in flight), and
 * there is no used index in guest memory from which the front-end could restore the positions.
 *
 * <pre>
 * QueueRegionPacked (32 bytes + 32 per descriptor, rounded up to 64; little-endian):
 *   0 u64 features (0)        8 u16 version (1; 0 = fresh)  10 u16 desc_num
 *  12 u16 free_head          14 u16 old_free_head          16 u16 used_idx
 *  18 u16 old_used_idx       20 u8 used_wrap_counter        21 u8 old_used_wrap_counter
 *  22 u8 padding[7]          32 DescStatePacked desc[desc_num]  (C alignment of the u64s)
 * DescStatePacked (32 bytes):
 *   0 u8 inflight   1 u8 padding   2 u16 next   4 u16 last   6 u16 num   8 u64 counter
 *  16 u16 id       18 u16 flags   20 u32 len   24 u64 addr
 * </pre>
 *
 * <p>The entries form a free list (through {@code next}; {@code desc_num} ends it). Taking a
 * buffer of n ring descriptors moves n entries off the free list, one per descriptor, the first
 * ("head") carrying {@code inflight}, {@code counter}, {@code num} and {@code last}; the store of
 * {@code old_free_head} commits it. Completing a batch links its entries back onto the free list
 * and advances {@code used_idx}/{@code used_wrap_counter}, the ring publish follows, then
 * {@code inflight} is cleared and the {@code old_*} fields commit the batch. A restart decides
 * from the ring (are the batch's first slot's flags still "available"?) whether to roll the
 * uncommitted batch back or forward, and resubmits every head still in flight in counter order.
 *
 * <p>Batches: the engine links a batch in {@link #beforePublish()}, after all the buffers of
 * that wake-up were taken, so a pop never meets an uncommitted batch on the free list and
 * {@code free_head == old_free_head} whenever a buffer is recorded.
 *
 * <p>Beyond the spec: the rollback check also compares the wrap counters (a batch of exactly
 * desc_num descriptors leaves {@code used_idx == old_used_idx}); a batch whose
 * {@code old_free_head} is stored counts as published (its other {@code old_*} fields may be
 * torn).
 *
 * <p>The front-end owns the memory and may rewrite it at any time: the area is read only in
 * {@link #start}, where every value read is checked before use as an index or position, and is
 * write-only afterwards. Steady state works from a copy in Java ({@link #next}, {@link #freeHead},
 * {@link #lastOf}, {@link #numOf}, the used position), so whatever the front-end writes there,
 * every store below stays inside the region; it only corrupts what a later restart recovers,
 * which that restart checks again.
 *
 * <p>Thread contract: the queue's IOThread only. The region was bounds-checked at mapping (its
 * size is at least {@link #regionSize(int)}); every access below stays inside it.
 */
public final class InflightPackedQueue implements InflightTracker {
    public static final int VERSION = 1;
    /** Most completions the caller publishes at once beyond a resubmission (its per-wake-up budget). */
    public static final int MAX_BATCH = InflightQueue.MAX_BATCH;

    // QueueRegionPacked field offsets
    private static final int VERSION_OFF = 8;
    private static final int DESC_NUM = 10;
    private static final int FREE_HEAD = 12;
    private static final int OLD_FREE_HEAD = 14;
    private static final int USED_IDX = 16;
    private static final int OLD_USED_IDX = 18;
    private static final int USED_WRAP_COUNTER = 20;
    private static final int OLD_USED_WRAP_COUNTER = 21;
    private static final int HEADER = 32;
    // DescStatePacked field offsets
    private static final int DESC_STATE = 32;
    private static final int INFLIGHT = 0;
    private static final int NEXT = 2;
    private static final int LAST = 4;
    private static final int NUM = 6;
    private static final int COUNTER = 8;
    private static final int ID = 16;
    private static final int FLAGS = 18;
    private static final int LEN = 20;
    private static final int ADDR = 24;

    private final long base;
    private final int queueSize;
    /** Where the ring fills {@link #popped}'s descriptors ({@code PackedVirtqueue.recordPopsInto}). */
    private final PackedDescriptorList popList;
    private long counter;

    // ---- steady state: what this tracker last wrote, never read back from the area ----
    /** Head entry of each buffer id in flight, or -1. */
    private final int[] headOfId;
    /** Each entry's {@code next} (the free list's links); {@code queueSize} ends the list. */
    private final int[] next;
    /** {@code free_head}; {@code queueSize} when the list is empty. */
    private int freeHead;
    /** Per head entry in flight: its {@code last} and {@code num}, each < queueSize / <= queueSize. */
    private final int[] lastOf;
    private final int[] numOf;
    /** {@code used_idx} and {@code used_wrap_counter}. */
    private int usedSlot;
    private boolean usedWrap;
    /** Head entries completed in the batch being published. */
    private final int[] batch;
    private int batchLength;

    /**
     * {@code base} points at a region of {@link #regionSize(int) regionSize(queueSize)} bytes.
     * {@link #start} must be called before anything else.
     */
    public InflightPackedQueue(long base, int queueSize) {
        this.base = base;
        this.queueSize = queueSize;
        this.popList = new PackedDescriptorList(queueSize);
        this.headOfId = new int[queueSize];
        Arrays.fill(headOfId, -1);
        this.next = new int[queueSize];
        this.lastOf = new int[queueSize];
        this.numOf = new int[queueSize];
        this.batch = new int[queueSize + MAX_BATCH];
    }

    /** Bytes of one queue's region: DPDK's size (header and entries, rounded up to 64). */
    public static long regionSize(int queueSize) {
        long raw = HEADER + (long) DESC_STATE * queueSize;
        return (raw + 63) & ~63L;
    }

    /** The list the queue must record each popped buffer into, before {@link #popped} is called. */
    public PackedDescriptorList popList() { return popList; }

    private long desc(int e) { return base + HEADER + (long) DESC_STATE * e; }

    private int u16(int off) { return RawMemory.getLe16(base + off); }

    /**
     * What a restart recovered: the buffers to take again, oldest first, and the ring positions
     * to continue from (the avail position is the used one plus the slots of those buffers).
     */
    public record Recovery(List<PackedDescriptorList> resubmit, int availSlot, boolean availWrap, int usedSlot, boolean usedWrap) {}

    /**
     * At ring start. A fresh region (version 0), or one made for another queue size or not
     * readable as ours, is initialised from the ring's current used position and null is
     * returned (the front-end's SET_VRING_BASE stands). Otherwise the previous back-end's state is
     * recovered (see the class comment) and returned.
     *
     * @param ringFlags the flags of a ring slot in guest memory now (acquire)
     */
    public Recovery start(int usedSlot, boolean usedWrap, IntUnaryOperator ringFlags) {
        if (u16(VERSION_OFF) == VERSION && u16(DESC_NUM) == queueSize) {
            Recovery r = recover(ringFlags);
            if (r != null) return r;
        }
        Arrays.fill(headOfId, -1);
        RawMemory.fill(base, HEADER + (long) DESC_STATE * queueSize, 0);
        RawMemory.putLe16(base + DESC_NUM, queueSize);
        for (int e = 0; e < queueSize; e++) {
            next[e] = e + 1; // desc_num ends the list
            RawMemory.putLe16(desc(e) + NEXT, e + 1);
        }
        freeHead = 0;
        this.usedSlot = usedSlot;
        this.usedWrap = usedWrap;
        RawMemory.putLe16(base + USED_IDX, usedSlot);
        RawMemory.putLe16(base + OLD_USED_IDX, usedSlot);
        RawMemory.putByte(base + USED_WRAP_COUNTER, usedWrap ? 1 : 0);
        RawMemory.putByte(base + OLD_USED_WRAP_COUNTER, usedWrap ? 1 : 0);
        VarHandle.releaseFence();
        RawMemory.putLe16(base + VERSION_OFF, VERSION);
        counter = 1;
        return null;
    }

    /** The spec's "When reconnecting"; null when the region cannot be ours (start it afresh). */
    private Recovery recover(IntUnaryOperator ringFlags) {
        // Each field is read once: the front-end may change it between two reads.
        int oldUsed = u16(OLD_USED_IDX);
        boolean oldWrap = RawMemory.getByte(base + OLD_USED_WRAP_COUNTER) != 0;
        int oldFreeHead = u16(OLD_FREE_HEAD);
        int curFreeHead = u16(FREE_HEAD);
        int curUsed = u16(USED_IDX);
        boolean curWrap = RawMemory.getByte(base + USED_WRAP_COUNTER) != 0;
        if (oldUsed >= queueSize || oldFreeHead > queueSize || curFreeHead > queueSize || curUsed >= queueSize) {
            return null;
        }
        if (curUsed != oldUsed || curWrap != oldWrap) {
            // A batch was linked and maybe published. If its commit had begun (old_free_head is
            // stored first, and linking always moves free_head), it was published. Otherwise
            // old_used_idx/old_used_wrap_counter still name its first used descriptor, whose flags
            // were stored last: if they no longer say "available" in that lap, the driver may have
            // seen the batch, so commit it; else roll it back below.
            int availableFlags = oldWrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
            if (curFreeHead == oldFreeHead
                    || (ringFlags.applyAsInt(oldUsed) & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)) != availableFlags) {
                commit(curFreeHead, curUsed, curWrap);
                oldFreeHead = curFreeHead;
                oldUsed = curUsed;
                oldWrap = curWrap;
            }
        }
        // Roll back any in-progress update: a half-recorded pop, an unpublished batch. free_head
        // last: while it differs from old_free_head a crash here still reads as "not committed".
        RawMemory.putByte(base + USED_WRAP_COUNTER, oldWrap ? 1 : 0);
        RawMemory.putLe16(base + USED_IDX, oldUsed);
        VarHandle.releaseFence();
        RawMemory.putLe16(base + FREE_HEAD, oldFreeHead);
        // The links as they are now; the walks below check each against the queue size. Values
        // beyond it end a list, as desc_num does.
        for (int e = 0; e < queueSize; e++) next[e] = Math.min(RawMemory.getLe16(desc(e) + NEXT), queueSize);
        // Nothing on the free list is in flight (a half-recorded head, a committed batch).
        boolean[] free = new boolean[queueSize];
        int e = oldFreeHead;
        for (int n = 0; e < queueSize; n++) {
            if (n == queueSize || free[e]) return null; // a loop: not a list we wrote
            free[e] = true;
            RawMemory.putByte(desc(e) + INFLIGHT, 0);
            e = next[e];
        }
        // Every head still in flight, with its descriptors (num entries from the head through next).
        List<long[]> heads = new ArrayList<>(); // {counter, head}
        int slots = 0;
        long max = 0;
        for (int h = 0; h < queueSize; h++) {
            if (RawMemory.getByte(desc(h) + INFLIGHT) != 1) continue;
            long c = RawMemory.getLe64(desc(h) + COUNTER);
            int num = RawMemory.getLe16(desc(h) + NUM);
            heads.add(new long[] {c, h, num});
            slots += num;
            max = Math.max(max, c);
        }
        if (slots > queueSize) return null; // more slots in flight than the ring has
        heads.sort(Comparator.comparingLong((long[] a) -> a[0]));
        List<PackedDescriptorList> resubmit = new ArrayList<>(heads.size());
        boolean[] seen = free;
        for (long[] hc : heads) {
            int h = (int) hc[1];
            int num = (int) hc[2];
            PackedDescriptorList list = new PackedDescriptorList(Math.max(num, 1));
            int d = h;
            for (int k = 0; k < num; k++) {
                if (d >= queueSize || seen[d]) return null; // shared or free entries: not ours
                seen[d] = true;
                long at = desc(d);
                list.add(RawMemory.getLe64(at + ADDR), RawMemory.getLe32(at + LEN), RawMemory.getLe16(at + FLAGS));
                if (k == num - 1) {
                    if (d != RawMemory.getLe16(desc(h) + LAST)) return null;
                    list.setId(RawMemory.getLe16(at + ID));
                    lastOf[h] = d;
                } else {
                    d = next[d];
                }
            }
            if (num == 0 || list.id() >= queueSize || headOfId[list.id()] >= 0) return null;
            headOfId[list.id()] = h;
            numOf[h] = num;
            resubmit.add(list);
        }
        counter = max + 1;
        freeHead = oldFreeHead;
        usedSlot = oldUsed;
        usedWrap = oldWrap;
        // The previous back-end took the buffers in flight from consecutive slots after the used
        // position (a driver reuses a slot only after it was used), so the next one starts there.
        int avail = oldUsed + slots;
        boolean availWrap = oldWrap;
        if (avail >= queueSize) {
            avail -= queueSize;
            availWrap = !availWrap;
        }
        return new Recovery(resubmit, avail, availWrap, oldUsed, oldWrap);
    }

    /**
     * old_* = current, old_free_head first (fenced): once it is stored, a restart commits the
     * batch whatever old_used_idx/old_used_wrap_counter hold. Those two cannot be stored at once,
     * and a torn pair (one lap's index with the other lap's counter) could make a slot the device
     * skipped, still "available" from an older lap, look like an unpublished batch.
     */
    private void commit(int freeHead, int used, boolean wrap) {
        RawMemory.putLe16(base + OLD_FREE_HEAD, freeHead);
        VarHandle.releaseFence();
        RawMemory.putLe16(base + OLD_USED_IDX, used);
        RawMemory.putByte(base + OLD_USED_WRAP_COUNTER, wrap ? 1 : 0);
    }

    /**
     * The buffer {@code id} was taken; its descriptors are in {@link #popList()}.
     *
     * @throws IllegalStateException when the free list runs out or the list is not that buffer's
     *         (more buffers in flight than the ring has, or a bug): the queue must stop
     */
    @Override
    public void popped(int id) {
        PackedDescriptorList l = popList;
        int n = l.count();
        if (l.id() != id || n == 0 || id < 0 || id >= queueSize) throw new IllegalStateException("recorded list is not buffer " + id);
        int h = freeHead; // == old_free_head: no batch is being linked (class comment)
        if (h >= queueSize) throw new IllegalStateException("in-flight area: no free entry for buffer " + id);
        long head = desc(h);
        RawMemory.putLe16(head + NUM, 0);
        RawMemory.putLe64(head + COUNTER, counter++);
        RawMemory.putByte(head + INFLIGHT, 1);
        int f = h;
        int last = h;
        for (int i = 0; i < n; i++) {
            // f < queueSize: next[] holds only values <= queueSize (start, beforePublish)
            if (f >= queueSize) throw new IllegalStateException("in-flight area: free list ran out for buffer " + id);
            if (i == n - 1) {
                RawMemory.putLe16(head + LAST, f);
                last = f;
            }
            RawMemory.putLe16(head + NUM, i + 1);
            long d = desc(f);
            RawMemory.putLe64(d + ADDR, l.addr(i));
            RawMemory.putLe32(d + LEN, l.len(i));
            RawMemory.putLe16(d + FLAGS, l.flags(i));
            RawMemory.putLe16(d + ID, id);
            f = next[f];
            RawMemory.putLe16(base + FREE_HEAD, f);
        }
        // The whole record before the commit: a crash before it leaves a half-recorded head on the
        // free list, which a restart clears.
        VarHandle.releaseFence();
        RawMemory.putLe16(base + OLD_FREE_HEAD, f);
        freeHead = f;
        lastOf[h] = last;
        numOf[h] = n;
        headOfId[id] = h;
    }

    @Override
    public void completing(int id) {
        if (id < 0 || id >= queueSize || headOfId[id] < 0) throw new IllegalStateException("buffer " + id + " is not in flight");
        if (batchLength == batch.length) return; // cannot happen with the caller's budget; never overflow
        batch[batchLength++] = headOfId[id];
        headOfId[id] = -1;
    }

    /** Links the batch onto the free list and advances used_idx; all stored before the ring publish. */
    @Override
    public void beforePublish() {
        if (batchLength == 0) return;
        int fh = freeHead;
        int used = usedSlot;
        boolean wrap = usedWrap;
        for (int i = 0; i < batchLength; i++) {
            int h = batch[i];
            int last = lastOf[h]; // < queueSize: from popped() or a checked recovery, not the area
            RawMemory.putLe16(desc(last) + NEXT, fh);
            next[last] = fh;
            fh = h;
            used += numOf[h]; // each <= queueSize: one wrap at most
            if (used >= queueSize) {
                used -= queueSize;
                wrap = !wrap;
            }
        }
        freeHead = fh;
        usedSlot = used;
        usedWrap = wrap;
        RawMemory.putLe16(base + FREE_HEAD, fh);
        RawMemory.putLe16(base + USED_IDX, used);
        RawMemory.putByte(base + USED_WRAP_COUNTER, wrap ? 1 : 0);
        // Pairs with a restart's read of the ring: the record of the batch before its flags.
        VarHandle.releaseFence();
    }

    /**
     * The batch is visible to the driver: clears it and commits. {@code lastUsedIdx} (the ring's
     * used slot with its wrap counter in bit 15) is not needed: the region computes its own.
     */
    @Override
    public void published(int lastUsedIdx) {
        if (batchLength == 0) return;
        VarHandle.releaseFence();
        for (int i = 0; i < batchLength; i++) RawMemory.putByte(desc(batch[i]) + INFLIGHT, 0);
        VarHandle.releaseFence();
        commit(freeHead, usedSlot, usedWrap);
        batchLength = 0;
    }

    /**
     * The used position this region records, in {@code lastUsedIdx} form, read from the area
     * (tests, checks; not used by the tracker).
     */
    public int usedIdx() {
        return u16(USED_IDX) | (RawMemory.getByte(base + USED_WRAP_COUNTER) != 0 ? 1 << 15 : 0);
    }
}
