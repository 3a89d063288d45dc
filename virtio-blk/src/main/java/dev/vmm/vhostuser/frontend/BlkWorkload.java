package dev.vmm.vhostuser.frontend;

import dev.vmm.core.stats.LatencyHistogram;
import static dev.vmm.virtio.blk.VirtioBlk.*;

import dev.vmm.core.memory.RawMemory;
import java.io.IOException;

/**
 * A fio-like job on one {@link VirtioBlkFrontend.Queue}: keeps {@code depth} requests of
 * {@code blockSize} bytes in flight (sequential or random, read or write) for a time, kicking once
 * per batch of submissions as blk-mq does, and records per-request latency in the queue's
 * histogram. The measured loop allocates nothing (the allocated bytes of the thread are part of
 * the result).
 *
 * <p>Writes stamp every 512-byte sector with (byte offset, sequence number); with
 * {@code verifySamples > 0} the job reads back up to that many written blocks afterwards and
 * checks that each holds the last stamp written to it (a block is never written twice at the
 * same time, so "last" is well defined).
 *
 * <p>Thread contract: one job per queue, on the queue's thread.
 */
public final class BlkWorkload implements VirtioBlkFrontend.CompletionHandler {
    public enum Pattern {
        RANDREAD(true, false), RANDWRITE(true, true), READ(false, false), WRITE(false, true);

        final boolean random;
        final boolean write;

        Pattern(boolean random, boolean write) {
            this.random = random;
            this.write = write;
        }

        public boolean write() { return write; }
        public String spelling() { return name().toLowerCase(java.util.Locale.ROOT); }
    }

    /**
     * @param regionOffset  first byte of the disk range this job touches (block aligned)
     * @param regionBytes   size of that range
     * @param runtimeNs     measured time
     * @param rampNs        time run before measuring (not counted)
     * @param verifySamples written blocks read back and checked afterwards (writes only; 0: none)
     */
    public record Spec(Pattern pattern, int blockSize, int depth, long regionOffset, long regionBytes,
            long runtimeNs, long rampNs, int verifySamples, long seed) {}

    /** What one job did in its measured interval. */
    public static final class Result {
        public long ios;
        public long bytes;
        public long elapsedNs;
        public long errors;
        public long verified;
        public long verifyFailures;
        public String firstVerifyFailure;
        /** Heap bytes the job's thread allocated in the measured loop, -1 if unknown. */
        public long allocatedBytes = -1;
        public long kicks;
        public long interrupts;
        public final LatencyHistogram latencies = new LatencyHistogram();

        public void add(Result o) {
            ios += o.ios;
            bytes += o.bytes;
            elapsedNs = Math.max(elapsedNs, o.elapsedNs);
            errors += o.errors;
            verified += o.verified;
            verifyFailures += o.verifyFailures;
            if (firstVerifyFailure == null) firstVerifyFailure = o.firstVerifyFailure;
            allocatedBytes = allocatedBytes < 0 || o.allocatedBytes < 0 ? Math.max(allocatedBytes, o.allocatedBytes) : allocatedBytes + o.allocatedBytes;
            kicks += o.kicks;
            interrupts += o.interrupts;
            latencies.add(o.latencies);
        }

        public double iops() { return elapsedNs == 0 ? 0 : ios * 1e9 / elapsedNs; }
        public double mibPerSec() { return elapsedNs == 0 ? 0 : bytes * 1e9 / elapsedNs / (1 << 20); }
    }

    private final VirtioBlkFrontend.Queue q;
    private final Spec spec;
    private final long blocks;
    private final int sectorsPerBlock;
    private final long[] slotBlock;
    private final int[] lastSeq;      // per block of the region: last sequence written, 0 = never
    private final byte[] busy;        // per block: a write is in flight
    private long rng;
    private long cursor;
    private int seq;
    private boolean measuring;
    private long ios;
    private long bytes;
    private long errors;
    /** Completed requests so far (measured and ramp), for progress lines of other threads. */
    private volatile long progress;

    public BlkWorkload(VirtioBlkFrontend.Queue q, Spec spec) {
        if (spec.blockSize() <= 0 || spec.blockSize() % SECTOR_SIZE != 0 || spec.blockSize() > q.maxIoBytes()) {
            throw new IllegalArgumentException("block size " + spec.blockSize() + " (a multiple of 512 up to " + q.maxIoBytes() + ")");
        }
        if (spec.depth() < 1 || spec.depth() > q.depth()) throw new IllegalArgumentException("depth " + spec.depth() + " > queue slots " + q.depth());
        this.q = q;
        this.spec = spec;
        this.blocks = spec.regionBytes() / spec.blockSize();
        if (blocks < spec.depth()) throw new IllegalArgumentException("region of " + spec.regionBytes() + " bytes is too small");
        if (blocks > Integer.MAX_VALUE) throw new IllegalArgumentException("too many blocks");
        this.sectorsPerBlock = spec.blockSize() / SECTOR_SIZE;
        this.slotBlock = new long[q.depth()];
        this.lastSeq = spec.pattern().write ? new int[(int) blocks] : null;
        this.busy = spec.pattern().write ? new byte[(int) blocks] : null;
        this.rng = spec.seed() | 1;
    }

    /** Requests completed so far (any thread may read it). */
    public long progress() { return progress; }

    private long nextRandom() {
        long x = rng;                 // xorshift64: no allocation, good enough for offsets
        x ^= x << 13;
        x ^= x >>> 7;
        x ^= x << 17;
        rng = x;
        return x;
    }

    private long nextBlock() {
        long b;
        if (spec.pattern().random) {
            b = Long.remainderUnsigned(nextRandom(), blocks);
        } else {
            b = cursor;
            cursor = cursor + 1 == blocks ? 0 : cursor + 1;
        }
        if (busy != null) {
            while (busy[(int) b] != 0) b = b + 1 == blocks ? 0 : b + 1; // depth < blocks: terminates
        }
        return b;
    }

    private void submitOne(int slot) {
        long block = nextBlock();
        slotBlock[slot] = block;
        long offset = spec.regionOffset() + block * spec.blockSize();
        if (spec.pattern().write) {
            busy[(int) block] = 1;
            int s = ++seq == 0 ? ++seq : seq;
            lastSeq[(int) block] = s;
            long p = q.dataAddress(slot);
            for (int i = 0; i < sectorsPerBlock; i++) {
                RawMemory.putLe64(p + (long) i * SECTOR_SIZE, offset + (long) i * SECTOR_SIZE);
                RawMemory.putLe64(p + (long) i * SECTOR_SIZE + 8, s);
            }
            q.submit(slot, VIRTIO_BLK_T_OUT, offset >>> SECTOR_SHIFT, spec.blockSize());
        } else {
            q.submit(slot, VIRTIO_BLK_T_IN, offset >>> SECTOR_SHIFT, spec.blockSize());
        }
    }

    @Override
    public void complete(int slot, int status, int usedLen, long latencyNs) {
        if (busy != null) busy[(int) slotBlock[slot]] = 0;
        if (status != VIRTIO_BLK_S_OK) errors++;
        if (measuring) {
            ios++;
            bytes += spec.blockSize();
        }
    }

    private void topUp() {
        int slot;
        int submitted = 0;
        while (q.inFlight() < spec.depth() && (slot = q.acquire()) >= 0) {
            submitOne(slot);
            submitted++;
        }
        if (submitted > 0) q.notifyDevice();
    }

    /** Runs ramp, then the measured interval, drains, then verifies. */
    public Result run() throws IOException {
        Result r = new Result();
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        com.sun.management.ThreadMXBean hs = mx instanceof com.sun.management.ThreadMXBean h && h.isThreadAllocatedMemorySupported() ? h : null;
        long tid = Thread.currentThread().getId();
        long kicks0 = 0, irq0 = 0, alloc0 = 0;
        long start = System.nanoTime();
        long measureFrom = start + spec.rampNs();
        long end = measureFrom + spec.runtimeNs();
        boolean started = spec.rampNs() == 0;
        long done = 0;
        if (started) {
            measuring = true;
            q.recordLatency(true);
            alloc0 = hs != null ? hs.getThreadAllocatedBytes(tid) : 0;
        } else {
            q.recordLatency(false);
        }
        q.latencies().reset();
        topUp();
        long now = start;
        while (now < end) {
            int n = q.await(this, 1000);
            if (n == 0 && q.inFlight() > 0) {
                throw new IOException("queue " + q.index() + ": no completion for 1 s with " + q.inFlight() + " requests in flight");
            }
            done += n;
            progress = done;
            now = System.nanoTime();
            if (!started && now >= measureFrom) {
                started = true;
                measuring = true;
                q.recordLatency(true);
                measureFrom = now;
                end = now + spec.runtimeNs();
                kicks0 = q.kicks();
                irq0 = q.interrupts();
                alloc0 = hs != null ? hs.getThreadAllocatedBytes(tid) : 0;
            }
            if (now < end) topUp();
        }
        long alloc1 = hs != null ? hs.getThreadAllocatedBytes(tid) : -1;
        r.elapsedNs = now - measureFrom;
        measuring = false;
        r.kicks = q.kicks() - kicks0;
        r.interrupts = q.interrupts() - irq0;
        r.allocatedBytes = hs != null ? alloc1 - alloc0 : -1;
        long drainDeadline = System.nanoTime() + 30_000_000_000L;
        while (q.inFlight() > 0) {
            if (q.await(this, 1000) == 0 && System.nanoTime() > drainDeadline) throw new IOException("queue " + q.index() + ": requests never completed");
        }
        q.recordLatency(false);
        r.ios = ios;
        r.bytes = bytes;
        r.errors = errors;
        r.latencies.add(q.latencies());
        if (spec.pattern().write && spec.verifySamples() > 0) verify(r);
        return r;
    }

    private void verify(Result r) throws IOException {
        int checked = 0;
        long startBlock = Long.remainderUnsigned(nextRandom(), blocks);
        for (long i = 0; i < blocks && checked < spec.verifySamples(); i++) {
            int b = (int) ((startBlock + i) % blocks);
            int want = lastSeq[b];
            if (want == 0) continue;
            long offset = spec.regionOffset() + (long) b * spec.blockSize();
            VirtioBlkFrontend.Completion c = q.read(offset, spec.blockSize());
            checked++;
            java.nio.ByteBuffer d = java.nio.ByteBuffer.wrap(c.data()).order(java.nio.ByteOrder.LITTLE_ENDIAN);
            String bad = null;
            if (!c.ok()) bad = "status " + c.status();
            for (int s = 0; bad == null && s < sectorsPerBlock; s++) {
                long off = d.getLong(s * SECTOR_SIZE);
                long got = d.getLong(s * SECTOR_SIZE + 8);
                if (off != offset + (long) s * SECTOR_SIZE || got != want) {
                    bad = "sector at byte " + (offset + (long) s * SECTOR_SIZE) + " holds stamp (" + off + ", " + got + "), want (" + (offset + (long) s * SECTOR_SIZE) + ", " + want + ")";
                }
            }
            if (bad != null) {
                r.verifyFailures++;
                if (r.firstVerifyFailure == null) r.firstVerifyFailure = bad;
            }
        }
        r.verified = checked;
    }
}
