package dev.vmm.core.job;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.NodeIo;
import dev.vmm.core.block.NodeUser;
import dev.vmm.core.linux.LibC;
import dev.vmm.iothread.IOThread;
import java.util.ArrayDeque;

/**
 * QEMU's mirror block job ({@code blockdev-mirror}): copies the source node to the target node
 * while the source's users keep writing, until both converge; then {@code job-complete} makes the
 * source's users use the target (pivot), or {@code block-job-cancel} stops with the target in
 * sync.
 *
 * <p>How (docs/jobs.md): a {@link Filter} is put in front of the source's driver in its
 * {@link NodeIo}; every write, zero write and discard completed through it marks the job's
 * {@link DirtyMap}. The copy loop takes dirty chunks that no operation is busy with, clears them,
 * reads them from the source and writes them to the target (holes and zeros as zero writes), with
 * at most {@code buf-size} bytes in flight. In {@code write-blocking} mode a guest write also goes
 * to the target before it completes, so the copy converges under any write rate. The job is a
 * {@link NodeUser} of the source: a move quiesces it (no new copies), drains its copies with the
 * node's requests, and resumes it on the new home; source and target are tied
 * ({@link BlockNode#jobLink}) so that they move together.
 *
 * <p>Thread contract: the verbs come through {@link Job} (any thread) and are handed to the home
 * thread with {@link #post}; everything else (the filter, the copy loop, the dirty map) runs on
 * the source node's home IOThread only.
 */
public final class MirrorJob extends BlockJob {
    private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(MirrorJob.class);
    /** QEMU's block job events. */
    public static final String BLOCK_JOB_READY = "BLOCK_JOB_READY";
    public static final String BLOCK_JOB_COMPLETED = "BLOCK_JOB_COMPLETED";
    public static final String BLOCK_JOB_CANCELLED = "BLOCK_JOB_CANCELLED";
    public static final String BLOCK_JOB_ERROR = "BLOCK_JOB_ERROR";

    /** QEMU's {@code MirrorSyncMode} (minus bitmap/incremental). */
    public enum Sync { FULL, TOP, NONE }

    /** QEMU's {@code MirrorCopyMode}. */
    public enum CopyMode { BACKGROUND, WRITE_BLOCKING }

    /** QEMU's {@code BlockdevOnError} (auto is for guest devices, not jobs). */
    public enum OnError { REPORT, IGNORE, ENOSPC, STOP }

    /** The settings of one job, checked by the caller. */
    public record Settings(Sync sync, int granularity, long bufSize, CopyMode copyMode, OnError onSourceError,
                           OnError onTargetError, long speed) {}

    /** Largest copy request: QEMU's mirror copies at most 1 MiB per operation unless the granularity is larger. */
    static final int MAX_COPY = 1 << 20;

    private final Settings settings;

    // ---- home-thread state ----
    private Filter filter;
    private enum Phase { STARTING, COPYING, CONVERGING, FLUSHING, STOPPING, ENDED }
    private Phase phase = Phase.STARTING;
    private boolean pivot;
    private boolean readyReached;
    private long copyBytes;

    public MirrorJob(String id, BlockNode source, BlockNode target, Settings settings, boolean autoFinalize, boolean autoDismiss,
            JobEvents events, JobRegistry registry) {
        super(id, "mirror", source, target, settings.speed(), autoFinalize, autoDismiss, events, registry);
        this.settings = settings;
    }

    @Override
    protected void readyEvent() {
        events().emit(BLOCK_JOB_READY, progressEvent());
    }

    // ---- verbs, handed to the home thread ----

    @Override
    protected void onPause() {
        post(() -> {
            paused = true;
            interruptConvergence();
        });
    }

    @Override
    protected void onResume() {
        ioStatus = "ok";
        post(() -> {
            paused = false;
            resumeConvergence();
            pump();
        });
    }

    @Override
    protected void onCancel(boolean force) {
        post(() -> {
            paused = false;
            if (phase == Phase.ENDED || phase == Phase.STOPPING) return;
            if (force || !ioStatus.equals("ok")) {
                cancelledHard = true; // a job stopped on an error cannot converge: cancel it for good
                stop(null);
            } else {
                converge(false);
            }
        });
    }

    @Override
    protected void onComplete() {
        post(() -> converge(true));
    }

    // ---- NodeUser: a move of the source's graph ----

    /** The job as a user of its source node: a move quiesces it, drains its copies, and resumes it on the new home. */
    private final NodeUser user = new MoveUser() {
        @Override
        public void quiesce() {
            quiesced = true;
            interruptConvergence(); // held requests must not wait through a move for copies that cannot run
        }

        @Override
        public void resume() {
            quiesced = false;
            resumeConvergence();
            pump();
        }
    };

    // ---- the copy loop (home thread) ----

    @Override
    void startOnHome() {
        if (target.size() != source.size()) {
            // QEMU's mirror_run refuses this once the job runs (the job fails, its event says why)
            phase = Phase.STOPPING;
            failure = "Source and target image have different sizes";
            started.complete(null);
            end();
            return;
        }
        try {
            NodeIo io = source.io();
            below = io.current();
            targetIo = target.io();
            map = new DirtyMap(source.size(), settings.granularity());
            if (settings.sync() != Sync.NONE) map.markAll();
            unit = (int) Math.max(settings.granularity(), Math.min(MAX_COPY, settings.bufSize()));
            alignment = Math.max(4096, Math.max(below.memoryAlignment(), targetIo.memoryAlignment()));
            len = map.dirtyBytes();
            filter = new Filter(below);
            // Writes already in flight below the filter were not seen by it: hold new requests
            // until they are done, then copy (a chunk copied before such a write lands would stay stale).
            filter.holding = true;
            io.set(filter);
            source.addUser(user);
            below.whenIdle(() -> {
                started.complete(null);
                if (phase != Phase.STARTING) { // cancelled meanwhile: stop() released the held requests
                    if (phase == Phase.STOPPING) check(); // and left the end to us
                    return;
                }
                phase = Phase.COPYING;
                filter.release(filter);
                pump();
            });
        } catch (RuntimeException e) {
            // A bug or a driver refusing: the job fails instead of staying registered and linked for good.
            started.completeExceptionally(e);
            LOG.warn("mirror job {} could not start", id(), e);
            phase = Phase.STOPPING;
            failure = "the job could not start: " + e.getMessage();
            if (filter != null && source.io().current() == filter) {
                source.io().set(below);
                filter.passthrough = true;
                filter.release(source.io());
            }
            end();
        }
    }

    private boolean mayCopy() {
        return !quiesced && !paused && ioStatus.equals("ok") && (phase == Phase.COPYING || phase == Phase.CONVERGING);
    }

    /** Starts copies while there is room, then checks for ready and convergence. */
    @Override
    void pump() {
        if (phase == Phase.ENDED || map == null) return;
        while (mayCopy() && (copies == 0 || copyBytes + unit <= settings.bufSize())) {
            if (!rateAllows()) break;
            long c = map.nextCopyable(cursor);
            if (c < 0) break;
            startCopy(c);
        }
        busy = copies > 0;
        updateLen();
        check();
    }

    private void startCopy(long c) {
        long off = map.offsetOf(c);
        Extent x = extent(c, Math.max(1, unit / map.granularity()), settings.sync() == Sync.TOP);
        long n = x.chunks();
        long length = x.length();
        for (long i = 0; i < n; i++) {
            map.clear(c + i);
            map.setBusy(c + i, true);
        }
        cursor = c + n;
        copies++;
        copyBytes += length;
        charge(length);
        copy(off, length, x.kind(), true, (buf, e, onTarget) -> copyDone(c, n, length, buf, e, onTarget));
    }

    /** A copy ended: {@code errno} 0, or the error of the read ({@code onTarget} false) or of the write. */
    private void copyDone(long first, long count, long bytes, long buf, int errno, boolean onTarget) {
        copies--;
        copyBytes -= bytes;
        if (buf != 0) freeBuffers.add(buf);
        for (long i = 0; i < count; i++) map.setBusy(first + i, false);
        if (errno == 0) {
            offset += bytes;
        } else {
            for (long i = 0; i < count; i++) map.mark(first + i);
            ioError(errno, onTarget);
        }
        filter.runIdleWaiters();
        filter.startWaiting();
        pump();
    }

    private void updateLen() {
        if (map != null) len = offset + map.dirtyBytes() + copyBytes;
        progressCurrent = offset;
        progressTotal = len;
    }

    /** QEMU's mirror_error_action: the policy of the side that failed. */
    private void ioError(int errno, boolean onTarget) {
        OnError policy = onTarget ? settings.onTargetError() : settings.onSourceError();
        switch (errorAction(policy, errno, onTarget)) {
            case "stop" -> {
                interruptConvergence();
                stopOnError(errno);
            }
            case "report" -> {
                if (phase != Phase.STOPPING && phase != Phase.ENDED) stop(LibC.strerror(errno));
            }
            default -> { } // ignore: the chunk is dirty again and will be retried
        }
    }

    /** Ready after the first pass; the end of a convergence. Home thread. */
    private void check() {
        if (phase == Phase.STOPPING) {
            if (copies == 0) end();
            return;
        }
        if (map.dirtyCount() != 0 || copies != 0) return;
        if (phase == Phase.COPYING && !readyReached) {
            readyReached = true;
            updateLen();
            ready();
        }
        if (phase == Phase.CONVERGING && filter.active() == 0) {
            // Guest requests are held, nothing is dirty or in flight: source and target are equal.
            // Make the copies durable before the users depend on the target (QEMU's mirror_flush):
            // a guest that flushed the source must not lose data to a crash after the pivot.
            phase = Phase.FLUSHING; // no second pass through here; the held requests stay held
            try {
                targetIo.flush(this::converged);
            } catch (BlockException e) {
                home.loop().execute(() -> converged(e.errno()));
            }
        }
    }

    /** The target's flush at the end of a convergence: switch (or not) and release the held requests. */
    private void converged(int errno) {
        if (phase != Phase.FLUSHING) return; // cancelled meanwhile: the users stayed on the source
        if (errno != 0) {
            pivot = false;
            phase = Phase.CONVERGING;
            stop(LibC.strerror(errno)); // the users stay on the source
            return;
        }
        phase = Phase.ENDED;
        if (pivot) {
            source.io().set(target.io());
        } else {
            source.io().set(below);
        }
        source.io().retire(filter);
        filter.passthrough = true;
        filter.release(source.io());
        end();
    }

    /** Pivot ({@code complete}) or soft cancel: hold new guest requests, copy what is dirty, then switch. */
    private void converge(boolean toTarget) {
        if (phase != Phase.COPYING) return;
        if (!mayCopyNow()) {
            pivot = toTarget;
            convergencePending = true;
            return;
        }
        pivot = toTarget;
        phase = Phase.CONVERGING;
        filter.holding = true;
        pump();
    }

    /** A convergence asked for but interrupted (pause, move, stopping error): started again when the job may copy. */
    private boolean convergencePending;
    private boolean cancelledHard;

    /**
     * The job cannot copy for a while: release the requests held for the convergence (the users
     * must not wait for it) and converge again later.
     */
    private void interruptConvergence() {
        if (phase != Phase.CONVERGING) return;
        phase = Phase.COPYING;
        convergencePending = true;
        filter.release(filter);
    }

    private void resumeConvergence() {
        if (convergencePending && mayCopyNow()) {
            convergencePending = false;
            converge(pivot);
        }
    }

    private boolean mayCopyNow() {
        return !quiesced && !paused && ioStatus.equals("ok") && phase == Phase.COPYING;
    }

    /** Forced cancel or a reported error: no new copies; ends once the copies in flight are done. */
    private void stop(String error) {
        if (phase == Phase.ENDED) return;
        failure = error;
        Phase was = phase;
        phase = Phase.STOPPING;
        if (filter != null) {
            source.io().set(below);
            source.io().retire(filter);
            filter.passthrough = true;
            filter.release(source.io());
        }
        if (was == Phase.STARTING) return; // the start's whenIdle sees STOPPING
        check();
    }

    private void end() {
        phase = Phase.ENDED;
        busy = false;
        if (filter != null) filter.startWaiting();
        source.removeUser(user);
        if (!pivot) BlockNode.jobUnlink(source, target);
        freeBuffers();
        updateLen();
        boolean aborted = failure == null && (forceCancelled() || cancelledHard);
        finished(failure, aborted);
    }

    /** The pivot happened: the source's users now use the target. */
    public boolean pivoted() { return pivot && phase == Phase.ENDED; }

    /**
     * The layer in front of the source's driver: passes requests through, marks the chunks of
     * every completed write, zero write and discard dirty, in write-blocking mode writes guest
     * data to the target too before completing it, and holds new requests while the job starts
     * or converges. Counts the requests it accepted, so the node's drain waits for them.
     * Home thread only.
     */
    final class Filter extends Layer {
        /** Write-blocking writes waiting for their chunks to be free, in arrival order. */
        private final ArrayDeque<Runnable> waiting = new ArrayDeque<>();

        Filter(BlockDriver below) { super(below); }

        /** Requests accepted and not held. */
        int active() { return pending - held; }

        private IoCompletion marking(long o, long l, IoCompletion done) {
            pending++;
            return e -> {
                pending--;
                if (!passthrough) map.markRange(o, l);
                try {
                    done.ioDone(e);
                } finally {
                    idle();
                    if (!passthrough) pump();
                }
            };
        }

        @Override
        void idle() {
            runIdleWaiters();
            if (phase == Phase.CONVERGING) check();
        }

        // The synchronous calls (control plane, tests): written, then marked.
        @Override
        public void write(long o, long a, int l, boolean fua) throws BlockException {
            try {
                d.write(o, a, l, fua);
            } finally {
                if (!passthrough) map.markRange(o, l);
            }
        }

        @Override
        public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException {
            try {
                d.writev(o, iov, n, t, fua);
            } finally {
                if (!passthrough) map.markRange(o, t);
            }
        }

        @Override
        public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException {
            try {
                d.writeZeroes(o, l, u, f, fua);
            } finally {
                if (!passthrough) map.markRange(o, l);
            }
        }

        @Override
        public void discard(long o, long l) throws BlockException {
            try {
                d.discard(o, l);
            } finally {
                if (!passthrough) map.markRange(o, l);
            }
        }

        @Override
        public void read(long o, long a, int l, IoCompletion c) throws BlockException {
            if (hold(to -> to.read(o, a, l, c), c)) return;
            d.read(o, a, l, counted(c));
        }

        @Override
        public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException {
            if (hold(to -> to.readv(o, iov, n, t, c), c)) return;
            d.readv(o, iov, n, t, counted(c));
        }

        @Override
        public void flush(IoCompletion c) throws BlockException {
            if (hold(to -> to.flush(c), c)) return;
            d.flush(counted(c));
        }

        @Override
        public void discard(long o, long l, IoCompletion c) throws BlockException {
            if (hold(to -> to.discard(o, l, c), c)) return;
            d.discard(o, l, passthrough ? counted(c) : marking(o, l, c));
        }

        @Override
        public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
            if (hold(to -> to.writeZeroes(o, l, u, f, fua, c), c)) return;
            d.writeZeroes(o, l, u, f, fua, passthrough ? counted(c) : marking(o, l, c));
        }

        @Override
        public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
            if (hold(to -> to.write(o, a, l, fua, c), c)) return;
            if (passthrough) {
                d.write(o, a, l, fua, counted(c));
            } else if (settings.copyMode() == CopyMode.WRITE_BLOCKING) {
                active(o, l, c, (to, done) -> to.write(o, a, l, fua, done), (to, done) -> to.write(o, a, l, false, done));
            } else {
                d.write(o, a, l, fua, marking(o, l, c));
            }
        }

        @Override
        public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
            if (hold(to -> to.writev(o, iov, n, t, fua, c), c)) return;
            if (passthrough) {
                d.writev(o, iov, n, t, fua, counted(c));
            } else if (settings.copyMode() == CopyMode.WRITE_BLOCKING) {
                active(o, t, c, (to, done) -> to.writev(o, iov, n, t, fua, done), (to, done) -> to.writev(o, iov, n, t, false, done));
            } else {
                d.writev(o, iov, n, t, fua, marking(o, t, c));
            }
        }

        /**
         * A write-blocking write: waits until no copy or other such write works on its chunks,
         * makes them busy, clears the chunks it covers whole, writes the source, then the target,
         * then completes. A failed target write leaves the chunks dirty (the copy loop retries;
         * the error goes to the job's policy) and the guest write succeeds, as QEMU's.
         */
        private void active(long o, long l, IoCompletion c, Submit toSource, Submit toTarget) throws BlockException {
            pending++;
            Runnable go = () -> {
                long first = map.chunkOf(o);
                long last = map.chunkOf(Math.min(source.size(), o + l) - 1);
                for (long ch = first; ch <= last; ch++) {
                    map.setBusy(ch, true);
                    if (map.offsetOf(ch) >= o && map.offsetOf(ch) + map.lengthOf(ch) <= o + l) map.clear(ch);
                }
                IoCompletion finish = e -> {
                    for (long ch = first; ch <= last; ch++) map.setBusy(ch, false);
                    pending--;
                    try {
                        c.ioDone(e);
                    } finally {
                        idle();
                        startWaiting();
                        pump();
                    }
                };
                try {
                    toSource.to(d, e -> {
                        if (e != 0 || passthrough) {
                            if (!passthrough) map.markRange(o, l);
                            finish.ioDone(e);
                            return;
                        }
                        try {
                            toTarget.to(targetIo, e2 -> {
                                if (e2 != 0) {
                                    map.markRange(o, l);
                                    ioError(e2, true);
                                }
                                finish.ioDone(0);
                            });
                        } catch (BlockException ex) {
                            map.markRange(o, l);
                            ioError(ex.errno(), true);
                            finish.ioDone(0);
                        }
                    });
                } catch (BlockException ex) {
                    finish.ioDone(ex.errno());
                }
            };
            if (l <= 0 || !waiting.isEmpty() || map.anyBusy(o, l)) {
                if (l <= 0) {
                    pending--;
                    toSource.to(d, counted(c));
                    return;
                }
                waiting.add(() -> {
                    if (map.anyBusy(o, l)) throw new Busy();
                    go.run();
                });
                return;
            }
            go.run();
        }

        /** Starts the waiting write-blocking writes whose chunks are free, in order. */
        void startWaiting() {
            while (!waiting.isEmpty()) {
                try {
                    waiting.peek().run();
                } catch (Busy b) {
                    return;
                }
                waiting.poll();
            }
        }
    }

    /** A waiting write's chunks are still busy (control flow inside {@link Filter#startWaiting}). */
    private static final class Busy extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Busy() { super(null, null, false, false); }
    }
}
