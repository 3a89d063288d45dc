package dev.vmm.core.job;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.NodeIo;
import dev.vmm.core.block.NodeUser;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.linux.LibC;
import dev.vmm.iothread.IOThread;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;

/**
 * QEMU's backup block job ({@code blockdev-backup}, block/backup.c with block/copy-before-write.c):
 * the target receives the source as it was at the instant the job started, while the source's
 * users keep writing.
 *
 * <p>How (docs/jobs.md): a {@link CopyBeforeWrite} layer is put in front of the source's driver in
 * its {@link NodeIo}. A {@link DirtyMap} of clusters still to copy is filled at the start (all of
 * them; for {@code incremental}/{@code bitmap} those of the sync bitmap). A write, zero write or
 * discard that touches a cluster still to copy waits until that cluster's old data was read from
 * the source and written to the target; the background loop copies the remaining clusters (none
 * for {@code sync=none}: fleecing, the job runs until cancelled) and the job completes when no
 * cluster is left and the target's flush succeeded.
 *
 * <p>The start is one instant: new requests are held, requests in flight below the layer are
 * waited for, the copy map (and the bitmap's successor) is made, then the held requests go on.
 * The job is a {@link NodeUser} of the source (a move drains its copies and resumes it on the new
 * home) and source and target are tied ({@link BlockNode#jobLink}) so they move together.
 *
 * <p>Bitmaps (QEMU's bitmap-mode): during the job the sync bitmap is busy; an anonymous successor
 * added to the node records the writes made since the start. At the end:
 * {@code on-success} after success, the bitmap becomes the successor; {@code always}, the clusters
 * copied are cleared from it and the successor is merged in; otherwise (failure, cancel,
 * {@code never}) the successor is merged back, so no write is ever lost.
 *
 * <p>Thread contract: the verbs come through {@link Job} (any thread) and are handed to the home
 * thread with {@link #post}; the layer, the copy loop and the map run on the source's home IOThread only.
 */
public final class BackupJob extends BlockJob {
    private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(BackupJob.class);

    /** QEMU's {@code MirrorSyncMode} for backup. */
    public enum Sync { FULL, TOP, NONE, INCREMENTAL, BITMAP }

    /** QEMU's {@code BitmapSyncMode}. */
    public enum BitmapMode { ON_SUCCESS, NEVER, ALWAYS }

    /**
     * The settings of one job, checked by the caller.
     *
     * @param clusterSize the copy unit (QEMU's backup cluster size: the target's cluster size, at least 64 KiB)
     * @param bitmap      the sync bitmap, or null
     */
    public record Settings(Sync sync, DirtyBitmap bitmap, BitmapMode bitmapMode, int clusterSize,
                           MirrorJob.OnError onSourceError, MirrorJob.OnError onTargetError, long speed) {}

    /** Largest background copy request (QEMU's block-copy issues up to 1 MiB per request by default too). */
    static final int MAX_COPY = 1 << 20;
    /** Background copies in flight at once. */
    static final int MAX_COPIES = 4;

    private final Settings settings;

    // ---- home-thread state (map: the clusters whose point-in-time data is not on the target yet) ----
    private CopyBeforeWrite layer;
    /** Records the writes made during the job in place of the busy sync bitmap. */
    private DirtyBitmap successor;
    private enum Phase { STARTING, COPYING, FLUSHING, STOPPING, ENDED }
    private Phase phase = Phase.STARTING;
    /** A copy-before-write node's {@code on-cbw-error=break-snapshot}: a failed copy breaks the snapshot, not the guest's write. */
    private boolean breakSnapshot;
    /** The snapshot can no longer be read (a copy failed with break-snapshot, or the layer is gone). */
    private boolean snapshotBroken;
    /** Snapshot reads waiting for busy clusters. */
    private final List<SnapshotRead> snapshotReads = new ArrayList<>();

    /**
     * The job behind a {@code copy-before-write} node (QEMU's filter without a job): a
     * {@code sync=none} backup that is not registered and sends no events; home thread state as
     * any backup. The caller starts it and waits for {@link #started()}.
     */
    static BackupJob forFilter(BlockNode source, BlockNode target, int clusterSize, boolean breakSnapshot, DirtyBitmap bitmap) {
        Settings s = new Settings(Sync.NONE, null, null, clusterSize, MirrorJob.OnError.REPORT, MirrorJob.OnError.REPORT, 0);
        BackupJob j = new BackupJob("cbw", source, target, s, true, true, (e, d) -> { }, new JobRegistry());
        j.breakSnapshot = breakSnapshot;
        j.filterBitmap = bitmap;
        return j;
    }

    /** A copy-before-write node's {@code bitmap}: only its clusters are copied, and only they can be read from the snapshot. */
    private DirtyBitmap filterBitmap;
    /** The clusters the snapshot may be read from (QEMU's access bitmap), or null for all. */
    private DirtyMap access;

    /** Home thread: the filter node goes (blockdev-del): the layer is removed at once. */
    void stopFilter() {
        snapshotBroken = true;
        stop(null);
    }

    public BackupJob(String id, BlockNode source, BlockNode target, Settings settings, boolean autoFinalize, boolean autoDismiss,
            JobEvents events, JobRegistry registry) {
        super(id, "backup", source, target, settings.speed(), autoFinalize, autoDismiss, events, registry);
        this.settings = settings;
    }

    public Settings settings() { return settings; }

    // ---- verbs, handed to the home thread ----

    @Override
    protected void onPause() {
        post(() -> paused = true);
    }

    @Override
    protected void onResume() {
        ioStatus = "ok";
        post(() -> {
            paused = false;
            pump();
        });
    }

    /** A backup has no ready state: every cancel aborts (BLOCK_JOB_CANCELLED), as QEMU's. */
    @Override
    protected void onCancel(boolean force) {
        post(() -> {
            paused = false;
            stop(null);
        });
    }

    @Override
    protected void onComplete() throws JobException {
        throw new JobException("The active block job '" + id() + "' cannot be completed"); // QEMU's wording (job has no .complete)
    }

    // ---- NodeUser: a move of the source's graph ----

    private final NodeUser user = new MoveUser() {
        @Override
        public void quiesce() { quiesced = true; }

        @Override
        public void resume() {
            quiesced = false;
            // copies on behalf of waiting guest writes were not started while quiesced
            if (layer != null) layer.retryWaiters();
            pump();
        }
    };

    // ---- the start (home thread) ----

    @Override
    void startOnHome() {
        try {
            NodeIo io = source.io();
            // The point in time: the node's io keeps new requests (before they are marked in any
            // bitmap) until every request accepted before has completed; then the layer goes in,
            // the copy map and the bitmap's successor are made, and the kept requests go on,
            // through the layer, marked into the successor.
            io.hold(() -> {
                try {
                    installLayer(io);
                    startInstant();
                } finally {
                    io.release();
                }
            });
        } catch (RuntimeException e) {
            failStart(e);
        }
    }

    private void installLayer(NodeIo io) {
        if (phase != Phase.STARTING) return; // cancelled meanwhile
        try {
            below = io.current();
            targetIo = target.io();
            unit = Math.max(settings.clusterSize(), MAX_COPY);
            alignment = Math.max(4096, Math.max(below.memoryAlignment(), targetIo.memoryAlignment()));
            layer = new CopyBeforeWrite(below);
            io.set(layer);
            source.addUser(user);
        } catch (RuntimeException e) {
            failStart(e);
        }
    }

    private void failStart(RuntimeException e) {
        started.completeExceptionally(e);
        LOG.warn("backup job {} could not start", id(), e);
        phase = Phase.STOPPING;
        failure = "the job could not start: " + e.getMessage();
        if (layer != null && source.io().current() == layer) {
            source.io().set(below);
            layer.passthrough = true;
            layer.release(source.io());
        }
        end();
    }

    /** Nothing is in flight below the layer and new requests are held: the point in time. */
    private void startInstant() {
        if (phase != Phase.STARTING) {
            started.complete(null);
            if (phase == Phase.STOPPING) check();
            return;
        }
        map = new DirtyMap(source.size(), settings.clusterSize());
        DirtyBitmap bm = settings.bitmap();
        if (settings.sync() == Sync.INCREMENTAL || settings.sync() == Sync.BITMAP) {
            markFrom(bm, map);
        } else if (filterBitmap != null) {
            markFrom(filterBitmap, map);
            access = new DirtyMap(source.size(), settings.clusterSize());
            markFrom(filterBitmap, access);
        } else {
            map.markAll();
        }
        if (bm != null) {
            // QEMU's bdrv_dirty_bitmap_create_successor: the bitmap is frozen (busy) and a successor
            // records. The bitmap's own recording flag stays (QEMU's query shows it recording then):
            // whatever it records meanwhile is also in the successor, and the end keeps it or not
            // exactly as the successor's.
            successor = new DirtyBitmap("", bm.size(), bm.granularity()); // the starter made bm busy
            successor.setRecording(bm.recording()); // QEMU: "Successor will be on or off based on our current state"
            source.addBitmap(successor); // inside the io's hold: marked from the first kept request on
        }
        len = settings.sync() == Sync.NONE ? 0 : map.dirtyBytes();
        updateProgress();
        phase = Phase.COPYING;
        started.complete(null); // after the instant: the starter's gates cover all of it
        pump();
    }

    /** Marks in {@code m} the clusters that {@code bm}'s dirty ranges touch. */
    private static void markFrom(DirtyBitmap bm, DirtyMap m) {
        for (long off = bm.nextDirty(0, bm.size()); off >= 0; ) {
            long clean = bm.nextClean(off, bm.size());
            long stop = clean < 0 ? bm.size() : clean;
            m.markRange(off, stop - off);
            off = clean < 0 ? -1 : bm.nextDirty(stop, bm.size());
        }
    }

    // ---- the background copy (home thread) ----

    private boolean mayCopy() {
        // no new background copy while a drain waits for the node (QEMU pauses a job in a drained
        // section): else a bitmap command's hold would wait for the whole backup, guest I/O held
        return !quiesced && !paused && ioStatus.equals("ok") && phase == Phase.COPYING && (layer == null || layer.draining == 0);
    }

    @Override
    void pump() {
        if (phase == Phase.ENDED || map == null) return;
        if (settings.sync() != Sync.NONE) {
            while (mayCopy() && copies < MAX_COPIES && rateAllows()) {
                long c = map.nextCopyable(cursor);
                if (c < 0 && cursor > 0) {
                    cursor = 0;
                    c = map.nextCopyable(0);
                }
                if (c < 0) break;
                startCopy(c, (int) Math.max(1, unit / map.granularity()), null);
            }
        }
        busy = copies > 0;
        updateProgress();
        check();
    }

    /**
     * Copies up to {@code maxChunks} dirty, idle clusters from {@code c}: read from below the
     * layer, write to the target. {@code forGuest} is the guest request waiting for it (a copy
     * before write: not rate limited, its failure fails that request), or null.
     */
    private void startCopy(long c, int maxChunks, CopyBeforeWrite.Waiter forGuest) {
        long off = map.offsetOf(c);
        Extent x = extent(c, maxChunks, settings.sync() == Sync.TOP);
        long n = x.chunks();
        long length = x.length();
        for (long i = 0; i < n; i++) map.setBusy(c + i, true);
        if (forGuest == null) {
            cursor = c + n;
            charge(length);
        }
        copies++;
        // no unmap: a fleecing target's hole would show its backing (the live source)
        copy(off, length, x.kind(), false, (buf, e, onTarget) -> copyDone(c, n, length, buf, e, onTarget, forGuest));
    }

    private void copyDone(long first, long count, long bytes, long buf, int errno, boolean onTarget, CopyBeforeWrite.Waiter forGuest) {
        copies--;
        if (buf != 0) freeBuffers.add(buf);
        for (long i = 0; i < count; i++) map.setBusy(first + i, false);
        if (errno == 0) {
            for (long i = 0; i < count; i++) map.clear(first + i);
            offset += bytes;
        } else if (forGuest != null && breakSnapshot) {
            // QEMU's on-cbw-error=break-snapshot: the guest's write goes on, snapshot reads fail from now on
            snapshotBroken = true;
            stop(null);
        } else if (forGuest != null) {
            // QEMU's on-cbw-error=break-guest-write: the guest write fails, the old data stays
            layer.failOverlapping(map.offsetOf(first), bytes, errno);
        } else {
            ioError(errno, onTarget);
        }
        layer.retryWaiters();
        layer.runIdleWaiters();
        retrySnapshotReads();
        pump();
    }

    // ---- snapshot-access reads (home thread) ----

    /** One read of the point-in-time view, waiting for busy clusters or in flight. */
    private final class SnapshotRead {
        final long offset;
        final long address;
        final int length;
        final IoCompletion done;
        int parts;
        int error;

        SnapshotRead(long offset, long address, int length, IoCompletion done) {
            this.offset = offset;
            this.address = address;
            this.length = length;
            this.done = done;
        }
    }

    /**
     * Reads the source as it was at the start (QEMU's snapshot-access over copy-before-write):
     * clusters already copied come from the target, the others from the source, which no write
     * may change meanwhile (the clusters are busy for the read, so a write's copy waits).
     */
    void snapshotRead(long o, long a, int l, IoCompletion c) throws BlockException {
        if (snapshotBroken || map == null || phase != Phase.COPYING) {
            throw new BlockException(Errno.EACCES, "the copy-before-write snapshot is broken or gone");
        }
        if (o < 0 || l < 0 || o + l > source.size()) throw new BlockException(Errno.EINVAL, "read beyond the end of the snapshot");
        if (access != null) {
            long last = map.chunkOf(o + l - 1);
            for (long ch = map.chunkOf(o); l > 0 && ch <= last; ch++) {
                if (!access.isDirty(ch)) {
                    throw new BlockException(Errno.EACCES, "the snapshot has no data outside the copy-before-write bitmap");
                }
            }
        }
        SnapshotRead r = new SnapshotRead(o, a, l, c);
        if (l == 0) {
            home.loop().execute(() -> c.ioDone(0));
            return;
        }
        if (!trySnapshotRead(r)) snapshotReads.add(r);
    }

    private void retrySnapshotReads() {
        if (snapshotReads.isEmpty()) return;
        List<SnapshotRead> todo = new ArrayList<>(snapshotReads);
        snapshotReads.clear();
        for (SnapshotRead r : todo) {
            if (snapshotBroken || phase != Phase.COPYING) {
                r.done.ioDone(Errno.EACCES);
            } else if (!trySnapshotRead(r)) {
                snapshotReads.add(r);
            }
        }
    }

    private boolean trySnapshotRead(SnapshotRead r) {
        long first = map.chunkOf(r.offset);
        long last = map.chunkOf(r.offset + r.length - 1);
        for (long ch = first; ch <= last; ch++) if (map.isBusy(ch)) return false;
        List<long[]> runs = new ArrayList<>(); // {from chunk, to chunk, dirty}
        for (long ch = first; ch <= last; ) {
            boolean dirty = map.isDirty(ch);
            long e = ch + 1;
            while (e <= last && map.isDirty(e) == dirty) e++;
            runs.add(new long[] {ch, e, dirty ? 1 : 0});
            ch = e;
        }
        r.parts = runs.size();
        for (long[] run : runs) {
            if (run[2] == 1) for (long ch = run[0]; ch < run[1]; ch++) map.setBusy(ch, true);
        }
        for (long[] run : runs) {
            long from = Math.max(r.offset, map.offsetOf(run[0]));
            long to = Math.min(r.offset + r.length, map.offsetOf(run[1]));
            BlockDriver where = run[2] == 1 ? below : targetIo;
            IoCompletion part = e -> snapshotPartDone(r, run, e);
            try {
                where.read(from, r.address + (from - r.offset), (int) (to - from), part);
            } catch (BlockException ex) {
                home.loop().execute(() -> part.ioDone(ex.errno()));
            }
        }
        return true;
    }

    private void snapshotPartDone(SnapshotRead r, long[] run, int errno) {
        if (run[2] == 1) for (long ch = run[0]; ch < run[1]; ch++) map.setBusy(ch, false);
        if (errno != 0 && r.error == 0) r.error = errno;
        if (--r.parts == 0) {
            try {
                r.done.ioDone(snapshotBroken ? Errno.EACCES : r.error);
            } finally {
                if (layer != null) layer.retryWaiters();
                retrySnapshotReads();
            }
        }
    }

    private void updateProgress() {
        progressCurrent = offset;
        progressTotal = Math.max(len, offset);
    }

    /** QEMU's backup error action: the policy of the side that failed. */
    private void ioError(int errno, boolean onTarget) {
        MirrorJob.OnError policy = onTarget ? settings.onTargetError() : settings.onSourceError();
        switch (errorAction(policy, errno, onTarget)) {
            case "stop" -> stopOnError(errno);
            case "report" -> {
                if (phase != Phase.STOPPING && phase != Phase.ENDED) stop(LibC.strerror(errno));
            }
            default -> { } // ignore: the cluster stays to copy and is retried
        }
    }

    /** All copied: flush the target, then succeed. */
    private void check() {
        if (phase == Phase.STOPPING) {
            if (copies == 0) end();
            return;
        }
        if (phase != Phase.COPYING || settings.sync() == Sync.NONE) return;
        if (map.dirtyCount() != 0 || copies != 0) return;
        phase = Phase.FLUSHING;
        try {
            targetIo.flush(this::flushed);
        } catch (BlockException e) {
            home.loop().execute(() -> flushed(e.errno()));
        }
    }

    private void flushed(int errno) {
        if (phase != Phase.FLUSHING) return; // cancelled meanwhile
        if (errno != 0) {
            phase = Phase.COPYING;
            stop(LibC.strerror(errno));
            return;
        }
        phase = Phase.STOPPING;
        removeLayer();
        end();
    }

    /** Cancel or a reported error: no new copies; ends once the copies in flight are done. */
    private void stop(String error) {
        if (phase == Phase.ENDED || phase == Phase.STOPPING) return;
        if (failure == null) failure = error;
        Phase was = phase;
        phase = Phase.STOPPING;
        removeLayer();
        if (was == Phase.STARTING) return; // the start instant sees STOPPING
        check();
    }

    private void removeLayer() {
        if (layer != null && !layer.passthrough) {
            if (source.io().current() == layer) source.io().set(below);
            source.io().retire(layer);
            layer.passthrough = true;
            layer.release(source.io());
            layer.retryWaiters(); // waiting guest writes go on without a copy
        }
    }

    private void end() {
        phase = Phase.ENDED;
        busy = false;
        source.removeUser(user);
        BlockNode.jobUnlink(source, target);
        freeBuffers();
        boolean aborted = failure == null && (forceCancelled() || cancelRequested());
        finishBitmap(failure == null && !aborted);
        updateProgress();
        finished(failure, aborted);
    }

    /** QEMU's backup_cleanup_sync_bitmap (abdicate or reclaim), on the home thread. */
    private void finishBitmap(boolean success) {
        DirtyBitmap bm = settings.bitmap();
        if (bm == null) return;
        if (successor == null) { // ended before its start instant
            bm.setBusy(false);
            return;
        }
        source.removeBitmap(successor);
        if (success && settings.bitmapMode() == BitmapMode.ON_SUCCESS) {
            bm.clear();
        } else if (settings.bitmapMode() == BitmapMode.ALWAYS && map != null) {
            // QEMU: the bitmap keeps only what was not copied (then the successor's writes)
            bm.clear();
            for (long c = 0; c < map.chunks(); c++) if (map.isDirty(c)) bm.set(map.offsetOf(c), map.lengthOf(c));
        }
        bm.merge(successor);
        bm.setBusy(false);
        successor = null;
    }

    /**
     * The layer in front of the source's driver: a write, zero write or discard waits until every
     * cluster it touches that is still to copy has been copied to the target; reads and flushes
     * pass. Holds every request while the job starts. Counts the requests it accepted and the
     * job's copies, so the node's drain waits for them. Home thread only.
     */
    final class CopyBeforeWrite extends Layer {
        /** Guest writes waiting for their clusters' copies, in arrival order. */
        private final List<Waiter> waiters = new ArrayList<>();
        /**
         * Reads in flight through the layer per chunk that was still to copy when they came (a
         * fleecing overlay reading its backing): a write over such a chunk waits for them, as
         * QEMU serialises its copy-before-write against them, or the reader sees the new data.
         */
        private final java.util.HashMap<Long, Integer> readers = new java.util.HashMap<>();

        CopyBeforeWrite(BlockDriver below) { super(below); }

        /** One write-like request waiting for copies. */
        final class Waiter {
            final long offset;
            final long length;
            final Submit submit;
            final IoCompletion done;

            Waiter(long offset, long length, Submit submit, IoCompletion done) {
                this.offset = offset;
                this.length = length;
                this.submit = submit;
                this.done = done;
            }
        }

        /** Submits {@code s} below, counted; a request the driver refuses at once is not left counted. */
        private void submitCounted(Submit s, IoCompletion c) throws BlockException {
            IoCompletion done = counted(c);
            try {
                s.to(d, done);
            } catch (BlockException | RuntimeException e) {
                pending--;
                runIdleWaiters();
                throw e;
            }
        }

        /** A write-like request: submitted once none of its clusters is still to copy. */
        private void guarded(long o, long l, IoCompletion c, Submit s) throws BlockException {
            if (passthrough || l <= 0 || o < 0 || o + l > source.size() || o + l < 0) {
                // out of range (a hostile offset past 2^63 is negative here): the driver refuses it
                submitCounted(s, c);
                return;
            }
            if (waiters.isEmpty() && allCopied(o, l)) {
                // the common case once a cluster was overwritten: no waiter, no allocation
                submitCounted(s, c);
                return;
            }
            pending++;
            IoCompletion finish = e -> {
                pending--;
                try {
                    c.ioDone(e);
                } finally {
                    runIdleWaiters();
                }
            };
            Waiter w = new Waiter(o, l, s, finish);
            // a request over an earlier waiting one waits behind it: writes land in arrival order
            boolean mayRun = waiters.isEmpty() || !overlapsAny(w);
            if (mayRun && tryRun(w)) return;
            waiters.add(w);
        }

        /** No cluster of the range is still to copy or busy (a copy or a snapshot read on it). */
        private boolean allCopied(long o, long l) {
            long last = map.chunkOf(o + l - 1);
            for (long ch = map.chunkOf(o); ch <= last; ch++) {
                if (map.isDirty(ch) || map.isBusy(ch) || !readers.isEmpty() && readers.containsKey(ch)) return false;
            }
            return true;
        }

        private boolean overlapsAny(Waiter w) {
            for (Waiter x : waiters) {
                if (x.offset < w.offset + w.length && w.offset < x.offset + x.length) return true;
            }
            return false;
        }

        private boolean overlapsEarlier(Waiter w) {
            for (Waiter x : waiters) {
                if (x == w) return false;
                if (x.offset < w.offset + w.length && w.offset < x.offset + x.length) return true;
            }
            return false;
        }

        /** Submits {@code w} when its clusters are copied; else starts the copies it needs. */
        private boolean tryRun(Waiter w) {
            if (!passthrough) {
                long firstC = map.chunkOf(w.offset);
                long lastC = map.chunkOf(Math.min(source.size(), w.offset + w.length) - 1);
                boolean wait = false;
                for (long ch = firstC; ch <= lastC; ch++) {
                    if (map.isBusy(ch)) {
                        wait = true;
                    } else if (map.isDirty(ch)) {
                        wait = true;
                        // also while quiesced: a move's drain waits for this request
                        if (phase == Phase.COPYING || phase == Phase.FLUSHING) startCopy(ch, 1, w);
                    }
                }
                if (!wait && !readers.isEmpty()) {
                    for (long ch = firstC; ch <= lastC && !wait; ch++) wait = readers.containsKey(ch);
                }
                if (wait) return false;
            }
            try {
                w.submit.to(d, w.done);
            } catch (BlockException e) {
                w.done.ioDone(e.errno());
            }
            return true;
        }

        /** Submits the waiting requests whose clusters are copied now (or all, once passthrough). */
        void retryWaiters() {
            List<Waiter> snapshot = new ArrayList<>(waiters);
            for (Waiter w : snapshot) {
                if (!waiters.contains(w)) continue;
                if (!passthrough && overlapsEarlier(w)) continue;
                if (tryRun(w)) waiters.remove(w);
            }
        }

        /** A copy before write failed: the waiting requests over it fail, the old data stays. */
        void failOverlapping(long o, long l, int errno) {
            for (Iterator<Waiter> it = waiters.iterator(); it.hasNext(); ) {
                Waiter w = it.next();
                if (w.offset < o + l && o < w.offset + w.length) {
                    it.remove();
                    w.done.ioDone(errno);
                }
            }
        }

        /** {@link #whenIdle} callers still waiting: the background copy starts nothing new meanwhile. */
        int draining;

        @Override
        public void whenIdle(Runnable idle) {
            draining++;
            awaitIdle(() -> {
                draining--;
                idle.run();
                if (draining == 0) post(BackupJob.this::pump); // the copies go on (a move's quiesce still stops them)
            });
        }

        // The synchronous calls (control plane, tests) pass: they run only where no job is (a
        // synchronous write here would bypass the copy, so it is refused while the job copies).
        @Override
        public void write(long o, long a, int l, boolean fua) throws BlockException {
            refuseSync();
            d.write(o, a, l, fua);
        }

        @Override
        public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException {
            refuseSync();
            d.writev(o, iov, n, t, fua);
        }

        @Override
        public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException {
            refuseSync();
            d.writeZeroes(o, l, u, f, fua);
        }

        @Override
        public void discard(long o, long l) throws BlockException {
            refuseSync();
            d.discard(o, l);
        }

        private void refuseSync() throws BlockException {
            if (!passthrough) throw new BlockException(Errno.EBUSY, "node '" + source.name() + "' is in use by backup job '" + id() + "'");
        }

        @Override
        public void read(long o, long a, int l, IoCompletion c) throws BlockException {
            if (hold(to -> to.read(o, a, l, c), c)) return;
            IoCompletion t = tracked(o, l, c);
            try {
                submitCounted((to, done) -> to.read(o, a, l, done), t);
            } catch (BlockException | RuntimeException e) {
                if (t instanceof TrackedRead r) r.end();
                throw e;
            }
        }

        @Override
        public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException {
            if (hold(to -> to.readv(o, iov, n, t, c), c)) return;
            IoCompletion tc = tracked(o, t, c);
            try {
                submitCounted((to, done) -> to.readv(o, iov, n, t, done), tc);
            } catch (BlockException | RuntimeException e) {
                if (tc instanceof TrackedRead r) r.end();
                throw e;
            }
        }

        /** {@code c}, counted in {@link #readers} on the chunks of the range still to copy (none: {@code c} itself). */
        private IoCompletion tracked(long o, long l, IoCompletion c) {
            // only sync=none (fleecing) has a point-in-time reader that reads through the source
            if (passthrough || map == null || settings.sync() != Sync.NONE || l <= 0 || o < 0 || o + l > source.size() || o + l < 0) {
                return c;
            }
            long first = map.chunkOf(o);
            long last = map.chunkOf(o + l - 1);
            List<Long> chunks = null;
            for (long ch = first; ch <= last; ch++) {
                if (!map.isDirty(ch)) continue;
                if (chunks == null) chunks = new ArrayList<>();
                chunks.add(ch);
                readers.merge(ch, 1, Integer::sum);
            }
            return chunks == null ? c : new TrackedRead(chunks, c);
        }

        /** A read counted in {@link #readers} until it completes (or its submit fails at once). */
        final class TrackedRead implements IoCompletion {
            private final List<Long> chunks;
            private final IoCompletion c;
            private boolean ended;

            TrackedRead(List<Long> chunks, IoCompletion c) {
                this.chunks = chunks;
                this.c = c;
            }

            void end() {
                if (ended) return;
                ended = true;
                for (long ch : chunks) readers.computeIfPresent(ch, (k, v) -> v == 1 ? null : v - 1);
            }

            @Override
            public void ioDone(int e) {
                end();
                try {
                    c.ioDone(e);
                } finally {
                    retryWaiters();
                }
            }
        }

        @Override
        public void flush(IoCompletion c) throws BlockException {
            if (hold(to -> to.flush(c), c)) return;
            submitCounted((to, done) -> to.flush(done), c);
        }

        @Override
        public void discard(long o, long l, IoCompletion c) throws BlockException {
            if (hold(to -> to.discard(o, l, c), c)) return;
            guarded(o, l, c, (to, done) -> to.discard(o, l, done));
        }

        @Override
        public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
            if (hold(to -> to.writeZeroes(o, l, u, f, fua, c), c)) return;
            guarded(o, l, c, (to, done) -> to.writeZeroes(o, l, u, f, fua, done));
        }

        @Override
        public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
            if (hold(to -> to.write(o, a, l, fua, c), c)) return;
            guarded(o, l, c, (to, done) -> to.write(o, a, l, fua, done));
        }

        @Override
        public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
            if (hold(to -> to.writev(o, iov, n, t, fua, c), c)) return;
            guarded(o, t, c, (to, done) -> to.writev(o, iov, n, t, fua, done));
        }
    }
}
