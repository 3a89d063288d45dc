package dev.vmm.vhostuser.inflight;

import dev.vmm.core.memory.RawMemory;
import java.lang.invoke.VarHandle;
import java.util.Arrays;

/**
 * One split virtqueue's part of the in-flight area (vhost-user.rst, "Inflight I/O tracking"):
 * shared memory the front-end keeps across a back-end restart, in which the back-end records
 * which descriptor heads it has taken but not completed, so that a restarted back-end can
 * resubmit them and the guest sees no error.
 *
 * <pre>
 * QueueRegionSplit (16 bytes + 16 per descriptor, little-endian):
 *   0 u64 features (0)    8 u16 version (1; 0 = fresh)   10 u16 desc_num
 *  12 u16 last_batch_head 14 u16 used_idx                16 DescStateSplit desc[desc_num]
 * DescStateSplit: 0 u8 inflight, 1..5 padding, 6 u16 next, 8 u64 counter
 * </pre>
 *
 * <p>Protocol, per the spec: on pop, {@code counter} and {@code inflight=1}; before publishing a
 * batch of used entries, link them through {@code next} from {@code last_batch_head}; after
 * publishing, clear their {@code inflight} and store {@code used_idx}. Store order matters if
 * the process dies between two stores, so the phases are separated by release fences.
 *
 * <p>The front-end owns the memory and may rewrite it at any time: it is read only in
 * {@link #start} (every index read there is checked against the queue size) and is write-only
 * afterwards; the heads stored to come from the virtqueue, which checked them.
 *
 * <p>Thread contract: the queue's IOThread only. The region was bounds-checked at mapping
 * (its size is {@link #regionSize(int)}); every access below stays inside it.
 */
public final class InflightQueue implements InflightTracker {
    public static final int VERSION = 1;
    /** Most completions the caller publishes at once beyond a resubmission (its per-wake-up budget). */
    public static final int MAX_BATCH = 512;
    private static final int HEADER = 16;
    private static final int DESC_STATE = 16;

    private final long base;
    private final int queueSize;
    private long counter;
    /** Heads completed in the batch being published. */
    private final int[] batch;
    private int batchLength;

    /** {@code base} points at a region of {@link #regionSize(int) regionSize(queueSize)} bytes. */
    public InflightQueue(long base, int queueSize) {
        this.base = base;
        this.queueSize = queueSize;
        // A batch holds at most one publish's completions: the worker's budget plus resubmitted heads
        // (at most the queue size). A driver re-posting heads cannot make it overflow.
        this.batch = new int[queueSize + MAX_BATCH];
    }

    /** Bytes of one queue's region: libvhost-user's size, so any back-end can read ours. */
    public static long regionSize(int queueSize) {
        long raw = (long) DESC_STATE * queueSize + 2;
        return (raw + 63) & ~63L;
    }

    private long desc(int head) { return base + HEADER + (long) DESC_STATE * head; }

    /**
     * At ring start. A fresh region (version 0) is initialised and null is returned. Otherwise
     * the previous back-end's state is recovered: the last batch it published but did not
     * finish clearing is cleared, and the heads still in flight are returned in the order they
     * were popped (to resubmit first). {@code usedIdx} is used->idx in guest memory now.
     */
    public int[] start(int usedIdx) {
        int version = RawMemory.getLe16(base + 8);
        if (version == 0) {
            RawMemory.fill(base, HEADER + (long) DESC_STATE * queueSize, 0);
            RawMemory.putLe16(base + 10, queueSize);
            RawMemory.putLe16(base + 14, usedIdx);
            VarHandle.releaseFence();
            RawMemory.putLe16(base + 8, VERSION);
            counter = 1;
            return null;
        }
        if (RawMemory.getLe16(base + 10) != queueSize) {
            // Not an area this queue wrote (another queue size): start it afresh rather than trust it.
            RawMemory.putLe16(base + 8, 0);
            return start(usedIdx);
        }
        int recordedUsed = RawMemory.getLe16(base + 14);
        if (recordedUsed != usedIdx) {
            // Died after publishing used->idx, before clearing the batch: walk it from last_batch_head.
            int n = (usedIdx - recordedUsed) & 0xFFFF;
            int head = RawMemory.getLe16(base + 12);
            for (int i = 0; i < n && head < queueSize; i++) {
                RawMemory.putByte(desc(head), 0);
                head = RawMemory.getLe16(desc(head) + 6);
            }
            RawMemory.putLe16(base + 14, usedIdx);
        }
        int inflight = 0;
        for (int h = 0; h < queueSize; h++) if (RawMemory.getByte(desc(h)) == 1) inflight++;
        int[] heads = new int[inflight];
        long[] keys = new long[inflight];
        int k = 0;
        long max = 0;
        for (int h = 0; h < queueSize; h++) {
            if (RawMemory.getByte(desc(h)) == 1) {
                long c = RawMemory.getLe64(desc(h) + 8);
                max = Math.max(max, c);
                keys[k] = c;
                heads[k++] = h;
            }
        }
        // sort heads by counter (pop order); n is at most the queue size, done once per start
        Integer[] order = new Integer[inflight];
        for (int i = 0; i < inflight; i++) order[i] = i;
        Arrays.sort(order, (a, b) -> Long.compareUnsigned(keys[a], keys[b]));
        int[] sorted = new int[inflight];
        for (int i = 0; i < inflight; i++) sorted[i] = heads[order[i]];
        counter = max + 1;
        return sorted;
    }

    /** A head was taken from the avail ring. */
    @Override
    public void popped(int head) {
        long d = desc(head); // head < queueSize: checked by the virtqueue
        RawMemory.putLe64(d + 8, counter++);
        VarHandle.releaseFence();
        RawMemory.putByte(d, 1);
    }

    /** A head is about to be published as used (before {@code publishUsed}). */
    @Override
    public void completing(int head) {
        if (batchLength == batch.length) return; // cannot happen with the caller's budget; never overflow
        RawMemory.putLe16(desc(head) + 6, batchLength == 0 ? head : batch[batchLength - 1]);
        RawMemory.putLe16(base + 12, head);
        batch[batchLength++] = head;
    }

    /** Call before publishing used->idx: the batch links must be stored first. */
    @Override
    public void beforePublish() {
        VarHandle.releaseFence();
    }

    /** After used->idx = {@code usedIdx} was published: the batch is no longer in flight. */
    @Override
    public void published(int usedIdx) {
        if (batchLength == 0) return;
        VarHandle.releaseFence();
        for (int i = 0; i < batchLength; i++) RawMemory.putByte(desc(batch[i]), 0);
        VarHandle.releaseFence();
        RawMemory.putLe16(base + 14, usedIdx);
        batchLength = 0;
    }
}
