package dev.vmm.vhostuser.frontend;

import static dev.vmm.virtio.blk.VirtioBlk.*;

import dev.vmm.core.memory.RawMemory;
import dev.vmm.core.stats.LatencyHistogram;
import java.io.IOException;

/**
 * A fio-like job on one {@link VirtioBlkFrontend.Queue}: keeps {@code depth} requests of
 * {@code blockSize} bytes in flight (sequential or random, read or write) for a time, kicking once
 * per batch of submissions as blk-mq does, and records per-request latency. The measured loop
 * allocates nothing (the allocated bytes of the thread are part of the result) unless a request
 * fails or reads back wrong (then a description of the first one is kept).
 *
 * <p>Only requests that completed with {@code VIRTIO_BLK_S_OK} (and, for checked reads, with the
 * right data) count in {@link Result#ios}, {@link Result#bytes} and the latency histogram. Failed
 * requests are counted in {@link Result#errors}, reads with wrong data in
 * {@link Result#wrongReads}, over the whole job (ramp, measured interval and drain); a result with
 * any of them is not {@link Result#valid()}.
 *
 * <p>Data: writes stamp every 512-byte sector with {@link BlkStamp} (its byte offset's tag, and
 * the job's sequence number as generation); with {@code verifySamples > 0} the job reads back up
 * to that many written blocks afterwards and checks that each holds the last stamp written to it
 * (a block is never written twice at the same time, so "last" is well defined). With
 * {@code checkReads}, every read checks that the sectors it samples ({@link BlkStamp#sampleSectors}:
 * all of a 4 KiB read, 8 of a larger one) carry their offset's tag, after poisoning those tags in
 * the buffer before submitting: the disk must have been stamped ({@link #prefill} or an image
 * written with {@code vmm bench stamp-image}), and a benchmark write keeps it stamped.
 *
 * <p>With {@code flushEvery = N > 0} (write patterns), every N writes submitted are followed by a
 * FLUSH request, queued like the writes (fio's {@code --fsync=N} with an asynchronous engine):
 * flushes are counted in {@link Result#flushes} with their own latency histogram, not in
 * {@link Result#ios}.
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
     * @param flushEvery    a FLUSH after every this many writes (writes only; 0: none)
     * @param checkReads    check the {@link BlkStamp} tags of what reads return
     */
    public record Spec(Pattern pattern, int blockSize, int depth, long regionOffset, long regionBytes,
            long runtimeNs, long rampNs, int verifySamples, long seed, int flushEvery, boolean checkReads) {
        /** No flushes, reads not checked. */
        public Spec(Pattern pattern, int blockSize, int depth, long regionOffset, long regionBytes,
                long runtimeNs, long rampNs, int verifySamples, long seed) {
            this(pattern, blockSize, depth, regionOffset, regionBytes, runtimeNs, rampNs, verifySamples, seed, 0, false);
        }
    }

    /** Stop waiting when no request completed for this long. */
    static final long STALL_NS = 30_000_000_000L;

    /** What one job did in its measured interval (and its failures over the whole job). */
    public static final class Result {
        /** Data requests completed OK (and read back right) in the measured interval. */
        public long ios;
        public long bytes;
        public long elapsedNs;
        /** Requests of any kind (read, write, flush) that completed with a status other than OK, in the whole job. */
        public long errors;
        public String firstError;
        /** Reads that completed OK but whose checked sectors did not carry their offset's stamp, in the whole job. */
        public long wrongReads;
        public String firstWrongRead;
        /** Reads issued with their data checked (in the whole job). */
        public long checkedReads;
        public long verified;
        public long verifyFailures;
        public String firstVerifyFailure;
        /** FLUSH requests completed OK in the measured interval. */
        public long flushes;
        /** Heap bytes the job's thread allocated in the measured loop, -1 if unknown. */
        public long allocatedBytes = -1;
        public long kicks;
        public long interrupts;
        /** Latency of the data requests counted in {@link #ios}. */
        public final LatencyHistogram latencies = new LatencyHistogram();
        /** Latency of the flushes counted in {@link #flushes}. */
        public final LatencyHistogram flushLatencies = new LatencyHistogram();

        public void add(Result o) {
            ios += o.ios;
            bytes += o.bytes;
            elapsedNs = Math.max(elapsedNs, o.elapsedNs);
            errors += o.errors;
            if (firstError == null) firstError = o.firstError;
            wrongReads += o.wrongReads;
            if (firstWrongRead == null) firstWrongRead = o.firstWrongRead;
            checkedReads += o.checkedReads;
            verified += o.verified;
            verifyFailures += o.verifyFailures;
            if (firstVerifyFailure == null) firstVerifyFailure = o.firstVerifyFailure;
            flushes += o.flushes;
            allocatedBytes = allocatedBytes < 0 || o.allocatedBytes < 0 ? Math.max(allocatedBytes, o.allocatedBytes) : allocatedBytes + o.allocatedBytes;
            kicks += o.kicks;
            interrupts += o.interrupts;
            latencies.add(o.latencies);
            flushLatencies.add(o.flushLatencies);
        }

        /** No failed request, no wrong read, no wrong read-back: only then are the figures a result. */
        public boolean valid() { return errors == 0 && wrongReads == 0 && verifyFailures == 0; }

        public double iops() { return elapsedNs == 0 ? 0 : ios * 1e9 / elapsedNs; }
        public double flushesPerSec() { return elapsedNs == 0 ? 0 : flushes * 1e9 / elapsedNs; }
        public double mibPerSec() { return elapsedNs == 0 ? 0 : bytes * 1e9 / elapsedNs / (1 << 20); }
    }

    private static final byte KIND_READ = 0, KIND_WRITE = 1, KIND_FLUSH = 2;

    private final VirtioBlkFrontend.Queue q;
    private final Spec spec;
    private final long blocks;
    private final int sectorsPerBlock;
    private final long[] slotBlock;
    private final byte[] slotKind;
    private final long[] slotRequest;  // per slot: request number (read sampling)
    private final int[] sample = new int[BlkStamp.CHECKED_SECTORS];
    private final int[] lastSeq;      // per block of the region: last sequence written, 0 = never
    private final byte[] busy;        // per block: a write is in flight
    private final boolean checkReads;
    private final int flushEvery;
    private int writesSinceFlush;
    private long requests;
    private long rng;
    private long cursor;
    private int seq;
    private boolean measuring;
    private final Result r = new Result();
    /** Completed requests so far (measured and ramp), for progress lines of other threads. */
    private volatile long progress;

    public BlkWorkload(VirtioBlkFrontend.Queue q, Spec spec) {
        if (spec.blockSize() <= 0 || spec.blockSize() % SECTOR_SIZE != 0 || spec.blockSize() > q.maxIoBytes()) {
            throw new IllegalArgumentException("block size " + spec.blockSize() + " (a multiple of 512 up to " + q.maxIoBytes() + ")");
        }
        if (spec.depth() < 1 || spec.depth() > q.depth()) throw new IllegalArgumentException("depth " + spec.depth() + " > queue slots " + q.depth());
        if (spec.flushEvery() < 0) throw new IllegalArgumentException("flushEvery " + spec.flushEvery());
        if (spec.flushEvery() > 0 && !spec.pattern().write) throw new IllegalArgumentException("flushes go with write patterns only");
        this.q = q;
        this.spec = spec;
        this.blocks = spec.regionBytes() / spec.blockSize();
        if (blocks < spec.depth()) throw new IllegalArgumentException("region of " + spec.regionBytes() + " bytes is too small");
        if (blocks > Integer.MAX_VALUE) throw new IllegalArgumentException("too many blocks");
        this.sectorsPerBlock = spec.blockSize() / SECTOR_SIZE;
        this.slotBlock = new long[q.depth()];
        this.slotKind = new byte[q.depth()];
        this.slotRequest = new long[q.depth()];
        this.lastSeq = spec.pattern().write ? new int[(int) blocks] : null;
        this.busy = spec.pattern().write ? new byte[(int) blocks] : null;
        this.checkReads = spec.checkReads() && !spec.pattern().write;
        this.flushEvery = spec.flushEvery();
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
        long n = requests++;
        slotRequest[slot] = n;
        if (flushEvery > 0 && writesSinceFlush >= flushEvery) {
            writesSinceFlush = 0;
            slotKind[slot] = KIND_FLUSH;
            q.submit(slot, VIRTIO_BLK_T_FLUSH, 0, 0);
            return;
        }
        long block = nextBlock();
        slotBlock[slot] = block;
        long offset = spec.regionOffset() + block * spec.blockSize();
        long p = q.dataAddress(slot);
        if (spec.pattern().write) {
            busy[(int) block] = 1;
            int s = ++seq == 0 ? ++seq : seq;
            lastSeq[(int) block] = s;
            BlkStamp.stamp(p, offset, sectorsPerBlock, s);
            slotKind[slot] = KIND_WRITE;
            writesSinceFlush++;
            q.submit(slot, VIRTIO_BLK_T_OUT, offset >>> SECTOR_SHIFT, spec.blockSize());
        } else {
            if (checkReads) {
                int k = BlkStamp.sampleSectors(sectorsPerBlock, n, sample);
                for (int i = 0; i < k; i++) RawMemory.putLe64(p + (long) sample[i] * SECTOR_SIZE, BlkStamp.POISON);
            }
            slotKind[slot] = KIND_READ;
            q.submit(slot, VIRTIO_BLK_T_IN, offset >>> SECTOR_SHIFT, spec.blockSize());
        }
    }

    @Override
    public void complete(int slot, int status, int usedLen, long latencyNs) {
        byte kind = slotKind[slot];
        if (kind == KIND_WRITE) busy[(int) slotBlock[slot]] = 0;
        if (status != VIRTIO_BLK_S_OK) {
            if (r.errors++ == 0) {
                r.firstError = (kind == KIND_FLUSH ? "flush" : (kind == KIND_WRITE ? "write" : "read") + " at byte "
                        + (spec.regionOffset() + slotBlock[slot] * spec.blockSize())) + ": status " + status;
            }
            return;
        }
        if (kind == KIND_READ && checkReads && !readIsRight(slot)) return;
        if (measuring) {
            if (kind == KIND_FLUSH) {
                r.flushes++;
                r.flushLatencies.record(latencyNs);
            } else {
                ios++;
                bytes += spec.blockSize();
                r.latencies.record(latencyNs);
            }
        }
    }

    private long ios;
    private long bytes;

    private boolean readIsRight(int slot) {
        r.checkedReads++;
        long offset = spec.regionOffset() + slotBlock[slot] * spec.blockSize();
        long p = q.dataAddress(slot);
        int k = BlkStamp.sampleSectors(sectorsPerBlock, slotRequest[slot], sample);
        for (int i = 0; i < k; i++) {
            long a = p + (long) sample[i] * SECTOR_SIZE;
            long so = offset + (long) sample[i] * SECTOR_SIZE;
            if (!BlkStamp.tagMatches(a, so)) {
                if (r.wrongReads++ == 0) {
                    r.firstWrongRead = "read of " + spec.blockSize() + " bytes at byte " + offset + ": the sector at byte " + so + " holds "
                            + BlkStamp.describe(RawMemory.getLe64(a), RawMemory.getLe64(a + 8));
                }
                return false;
            }
        }
        return true;
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

    /** Waits up to 1 s for completions; throws when none came for {@link #STALL_NS} with requests in flight. */
    private int awaitSome(long[] lastProgress) throws IOException {
        int n = q.await(this, 1000);
        long now = System.nanoTime();
        if (n > 0 || q.inFlight() == 0) {
            lastProgress[0] = now;
        } else if (now - lastProgress[0] > STALL_NS) {
            throw new IOException("queue " + q.index() + ": no completion for " + STALL_NS / 1_000_000_000L + " s with "
                    + q.inFlight() + " requests in flight");
        }
        return n;
    }

    /** Runs ramp, then the measured interval, drains, then verifies. */
    public Result run() throws IOException {
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        com.sun.management.ThreadMXBean hs = mx instanceof com.sun.management.ThreadMXBean h && h.isThreadAllocatedMemorySupported() ? h : null;
        long tid = Thread.currentThread().getId();
        long kicks0 = 0, irq0 = 0, alloc0 = 0;
        long start = System.nanoTime();
        long measureFrom = start + spec.rampNs();
        long end = measureFrom + spec.runtimeNs();
        boolean started = spec.rampNs() == 0;
        long done = 0;
        long[] lastProgress = {start};
        q.recordLatency(false);            // latencies are recorded here, per kind, for OK requests only
        if (started) {
            measuring = true;
            alloc0 = hs != null ? hs.getThreadAllocatedBytes(tid) : 0;
        }
        topUp();
        long now = start;
        while (now < end) {
            int n = awaitSome(lastProgress);
            done += n;
            progress = done;
            now = System.nanoTime();
            if (!started && now >= measureFrom) {
                started = true;
                measuring = true;
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
        while (q.inFlight() > 0) awaitSome(lastProgress);
        r.ios = ios;
        r.bytes = bytes;
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
            if (!c.ok()) bad = "read-back at byte " + offset + ": status " + c.status();
            for (int s = 0; bad == null && s < sectorsPerBlock; s++) {
                long so = offset + (long) s * SECTOR_SIZE;
                long tag = d.getLong(s * SECTOR_SIZE);
                long got = d.getLong(s * SECTOR_SIZE + 8);
                if (tag != BlkStamp.tag(so) || got != want) {
                    bad = "sector at byte " + so + " holds " + BlkStamp.describe(tag, got) + ", want the stamp of byte offset " + so
                            + " (generation " + want + ")";
                }
            }
            if (bad != null) {
                r.verifyFailures++;
                if (r.firstVerifyFailure == null) r.firstVerifyFailure = bad;
            }
        }
        r.verified = checked;
    }

    /**
     * Writes the {@link BlkStamp} pattern (generation 0) over {@code [regionOffset, regionOffset +
     * regionBytes)} with sequential writes of up to the queue's maximum request size, {@code depth}
     * in flight, then FLUSHes (when the device offers it). Not measured. Returns the number of
     * failed requests (0: the region is stamped).
     */
    public static long prefill(VirtioBlkFrontend.Queue q, long regionOffset, long regionBytes, int depth, boolean flush) throws IOException {
        int chunk = Math.max(SECTOR_SIZE, q.maxIoBytes() / SECTOR_SIZE * SECTOR_SIZE);
        depth = Math.max(1, Math.min(depth, q.depth()));
        long[] slotOff = new long[q.depth()];
        long[] failed = {0};
        long next = regionOffset;
        long end = regionOffset + regionBytes;
        VirtioBlkFrontend.CompletionHandler h = (slot, status, used, lat) -> {
            if (status != VIRTIO_BLK_S_OK) failed[0]++;
        };
        long last = System.nanoTime();
        while (next < end || q.inFlight() > 0) {
            int submitted = 0;
            int slot;
            while (next < end && q.inFlight() < depth && (slot = q.acquire()) >= 0) {
                int len = (int) Math.min(chunk, end - next);
                BlkStamp.stamp(q.dataAddress(slot), next, len / SECTOR_SIZE, 0);
                slotOff[slot] = next;
                q.submit(slot, VIRTIO_BLK_T_OUT, next >>> SECTOR_SHIFT, len);
                next += len;
                submitted++;
            }
            if (submitted > 0) q.notifyDevice();
            if (q.await(h, 1000) > 0) last = System.nanoTime();
            else if (System.nanoTime() - last > STALL_NS) throw new IOException("prefill: no completion for 30 s");
        }
        if (flush) {
            VirtioBlkFrontend.Completion c = q.flush();
            if (!c.ok()) failed[0]++;
        }
        return failed[0];
    }

    /**
     * Reads the first, middle and last block of {@code blockSize} bytes of the region and returns
     * null when their sectors carry their stamps, else what the first wrong sector holds (the
     * disk was not stamped: reads cannot be checked).
     */
    public static String probeStamped(VirtioBlkFrontend.Queue q, long regionOffset, long regionBytes, int blockSize) throws IOException {
        long blocks = regionBytes / blockSize;
        for (long b : new long[] {0, blocks / 2, blocks - 1}) {
            long off = regionOffset + b * blockSize;
            VirtioBlkFrontend.Completion c = q.read(off, blockSize);
            if (!c.ok()) return "the read at byte " + off + " failed with status " + c.status();
            java.nio.ByteBuffer d = java.nio.ByteBuffer.wrap(c.data()).order(java.nio.ByteOrder.LITTLE_ENDIAN);
            for (int s = 0; s < blockSize / SECTOR_SIZE; s++) {
                long so = off + (long) s * SECTOR_SIZE;
                if (d.getLong(s * SECTOR_SIZE) != BlkStamp.tag(so)) {
                    return "the sector at byte " + so + " holds " + BlkStamp.describe(d.getLong(s * SECTOR_SIZE), d.getLong(s * SECTOR_SIZE + 8));
                }
            }
        }
        return null;
    }
}
