package dev.vmm.core.job;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.NodeIo;
import dev.vmm.core.block.NodeUser;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.iothread.IOThread;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * What {@link MirrorJob} and {@link BackupJob} share as block jobs that copy a source node to a
 * target node on the source's home IOThread: the QMP views and events (BlockJobInfo,
 * BLOCK_JOB_COMPLETED/CANCELLED/ERROR), the hand-over of work to the home thread across moves,
 * the {@code speed} limit, the copy buffers and the error action.
 *
 * <p>Thread contract: {@link #blockJobInfo}, {@link #setSpeed} and the {@link Job} verbs from any
 * thread (the verbs hand their work to the home thread with {@link #post}); everything else, and
 * the copy state below, on the source node's home IOThread only.
 */
abstract class BlockJob extends Job {
    /** The rate limit's slice: a copy may start up to 100 ms before its bytes are due. */
    static final long SLICE_NS = 100_000_000L;

    final BlockNode source;
    final BlockNode target;
    volatile long speed;

    // ---- home-thread state ----
    volatile IOThread home;
    /** Tasks posted while the job was between two homes (a move's detach and attach). */
    final ArrayDeque<Runnable> deferred = new ArrayDeque<>();
    DirtyMap map;
    /** What the source's io forwarded to before the job's layer (its own driver, usually). */
    BlockDriver below;
    NodeIo targetIo;
    boolean quiesced;
    boolean paused;
    /** QEMU's io-status: ok, failed, nospace. */
    volatile String ioStatus = "ok";
    String failure;
    long cursor;
    int copies;
    final ArrayDeque<Long> freeBuffers = new ArrayDeque<>();
    final List<Long> allocations = new ArrayList<>();
    int unit;
    int alignment;
    final BlockStatus status = new BlockStatus();
    /** Rate limiting: when the bytes started so far are due at {@code speed}. */
    long nextAllowed;
    boolean timerArmed;
    volatile long offset;
    volatile long len;
    volatile boolean busy;
    final CompletableFuture<Void> started = new CompletableFuture<>();

    BlockJob(String id, String type, BlockNode source, BlockNode target, long speed, boolean autoFinalize, boolean autoDismiss,
            JobEvents events, JobRegistry registry) {
        super(id, type, autoFinalize, autoDismiss, events, registry);
        this.source = source;
        this.target = target;
        this.speed = speed;
        this.home = source.home();
    }

    public BlockNode source() { return source; }

    public BlockNode target() { return target; }

    /**
     * Completes once the job's layer is in place and its start passed (a mirror's first pass
     * started, a backup's point in time was taken), or the start failed.
     */
    public CompletableFuture<Void> started() { return started; }

    // ---- QMP views (any thread) ----

    /** {@code query-block-jobs}' BlockJobInfo (QEMU 7.2 fields); a backup is never ready or on standby. */
    public synchronized Map<String, Object> blockJobInfo() {
        Map<String, Object> m = new LinkedHashMap<>();
        JobStatus s = status();
        m.put("type", type());
        m.put("device", id());
        m.put("len", len);
        m.put("offset", offset);
        m.put("busy", busy && (s == JobStatus.RUNNING || s == JobStatus.READY));
        m.put("paused", userPaused() || s == JobStatus.PAUSED || s == JobStatus.STANDBY);
        m.put("speed", speed);
        m.put("io-status", ioStatus);
        m.put("ready", s == JobStatus.READY || s == JobStatus.STANDBY);
        m.put("status", s.wire());
        m.put("auto-finalize", autoFinalize());
        m.put("auto-dismiss", autoDismiss());
        if (error() != null) m.put("error", error());
        return m;
    }

    public long offset() { return offset; }

    public long len() { return len; }

    public void setSpeed(long bytesPerSecond) throws JobException {
        checkVerb(JobStatus.Verb.SET_SPEED);
        speed = bytesPerSecond;
        post(() -> {
            nextAllowed = System.nanoTime();
            pump();
        });
    }

    Map<String, Object> progressEvent() {
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("type", type());
        d.put("device", id());
        d.put("len", len);
        d.put("offset", offset);
        d.put("speed", speed);
        return d;
    }

    @Override
    protected void finalEvent(String error, boolean aborted) {
        if (aborted && error == null) {
            events().emit(MirrorJob.BLOCK_JOB_CANCELLED, progressEvent());
        } else {
            Map<String, Object> d = progressEvent();
            if (error != null) d.put("error", error);
            events().emit(MirrorJob.BLOCK_JOB_COMPLETED, d);
        }
    }

    @Override
    protected boolean ioPaused() { return !ioStatus.equals("ok"); }

    // ---- verbs, handed to the home thread ----

    /** Runs {@code r} on the job's current home (later, if it is between two homes). */
    void post(Runnable r) {
        IOThread h = home;
        if (h == null) {
            synchronized (deferred) {
                if (home == null) {
                    deferred.add(r);
                    return;
                }
            }
            post(r);
            return;
        }
        h.execute(() -> {
            if (home != h) post(r);
            else r.run();
        });
    }

    @Override
    protected void run() {
        post(this::startOnHome);
    }

    /** Home thread: puts the job's layer in place and starts copying. */
    abstract void startOnHome();

    /** Home thread: starts copies while the job may, then checks for its end. */
    abstract void pump();

    // ---- NodeUser: a move of the source's graph ----

    /**
     * The job as a user of its source node: the home is null between a move's detach and attach,
     * and the work posted meanwhile runs on the new home. The subclass says what quiesce and resume do.
     */
    abstract class MoveUser implements NodeUser {
        @Override
        public String describe() { return type() + " job " + id(); }

        @Override
        public CompletableFuture<Void> detach() {
            synchronized (deferred) {
                home = null;
            }
            return CompletableFuture.completedFuture(null);
        }

        @Override
        public CompletableFuture<Void> attach(IOThread newHome) {
            List<Runnable> later;
            synchronized (deferred) {
                home = newHome;
                later = new ArrayList<>(deferred);
                deferred.clear();
            }
            for (Runnable r : later) post(r);
            return CompletableFuture.completedFuture(null);
        }
    }

    // ---- the copies (home thread) ----

    /**
     * {@code speed}: a copy may start when the bytes started so far, at {@code speed} bytes per
     * second, are due by now plus one 100 ms slice; otherwise a timer pumps again when they are.
     */
    boolean rateAllows() {
        long s = speed;
        if (s <= 0) return true;
        long now = System.nanoTime();
        if (nextAllowed - now <= SLICE_NS) return true;
        if (!timerArmed) {
            timerArmed = true;
            IOThread h = home;
            if (h != null) {
                h.loop().schedule(() -> post(() -> {
                    timerArmed = false;
                    pump();
                }), nextAllowed - now - SLICE_NS, TimeUnit.NANOSECONDS);
            } else {
                timerArmed = false;
            }
        }
        return false;
    }

    void charge(long bytes) {
        long s = speed;
        if (s <= 0) return;
        long now = System.nanoTime();
        nextAllowed = Math.max(nextAllowed, now) + (long) (bytes * 1e9 / s);
    }

    /** What one copy writes to the target: the data read from below, zeros, or nothing (sync=top, not in the top layer). */
    enum Kind { DATA, ZERO, SKIP }

    /** One copy: {@code chunks} chunks of {@link #map} from its first, {@code length} bytes. */
    record Extent(long chunks, long length, Kind kind) {}

    /**
     * The copy from chunk {@code c}: up to {@code maxChunks} dirty, idle chunks, cut to the first
     * run of one block status below the layer. With {@code topOnly} (sync=top) what is not in the
     * top layer is skipped.
     */
    Extent extent(long c, int maxChunks, boolean topOnly) {
        long off = map.offsetOf(c);
        long n = 1;
        while (n < maxChunks && c + n < map.chunks() && map.isDirty(c + n) && !map.isBusy(c + n)) n++;
        long length = Math.min(n * map.granularity(), source.size() - off);
        Kind kind = Kind.DATA;
        try {
            below.status(off, length, status);
            if (status.length >= Math.min(map.granularity(), length)) {
                if (status.length < length) {
                    n = Math.max(1, status.length / map.granularity());
                    length = Math.min(n * map.granularity(), source.size() - off);
                }
                if (topOnly && status.depth != 1) kind = Kind.SKIP;
                else if ((status.flags & BlockStatus.ZERO) != 0) kind = Kind.ZERO;
            } else {
                n = 1; // a chunk with mixed status: copy its data
                length = Math.min(map.granularity(), source.size() - off);
            }
        } catch (BlockException e) {
            kind = Kind.DATA; // no status: copy the data
        }
        return new Extent(n, length, kind);
    }

    /** The end of one copy: {@code errno} 0, or the error of the read ({@code onTarget} false) or of the write. */
    interface CopyEnd {
        void done(long buf, int errno, boolean onTarget);
    }

    /**
     * Copies {@code bytes} at {@code off} as {@code kind} says: reads below the layer into a
     * buffer and writes it to the target, or writes zeros ({@code unmap} as the zero write's);
     * {@code end} runs once, on the home thread, with the buffer (0 for none) to give back.
     */
    void copy(long off, long bytes, Kind kind, boolean unmap, CopyEnd end) {
        switch (kind) {
            case SKIP -> home.loop().execute(() -> end.done(0L, 0, false));
            case ZERO -> {
                try {
                    targetIo.writeZeroes(off, bytes, unmap, false, false, e -> end.done(0L, e, true));
                } catch (BlockException e) {
                    home.loop().execute(() -> end.done(0L, e.errno(), true));
                }
            }
            case DATA -> {
                long buf = buffer();
                try {
                    below.read(off, buf, (int) bytes, e -> {
                        if (e != 0) {
                            end.done(buf, e, false);
                            return;
                        }
                        try {
                            targetIo.write(off, buf, (int) bytes, false, e2 -> end.done(buf, e2, true));
                        } catch (BlockException ex) {
                            end.done(buf, ex.errno(), true);
                        }
                    });
                } catch (BlockException e) {
                    home.loop().execute(() -> end.done(buf, e.errno(), false));
                }
            }
        }
    }

    /** A copy buffer of {@code unit} bytes at {@code alignment}: a free one, else a new one. */
    long buffer() {
        Long b = freeBuffers.poll();
        if (b != null) return b;
        long base = RawMemory.allocate(unit + alignment);
        allocations.add(base);
        return (base + alignment - 1) & -(long) alignment;
    }

    /** At the end: the copy buffers go back. */
    void freeBuffers() {
        for (long a : allocations) RawMemory.free(a);
        allocations.clear();
        freeBuffers.clear();
    }

    /**
     * QEMU's block_job_error_action: what {@code policy} (the failed side's on-*-error) does with
     * {@code errno} ("stop", "ignore" or "report"), announced with BLOCK_JOB_ERROR.
     */
    String errorAction(MirrorJob.OnError policy, int errno, boolean onTarget) {
        String action;
        if (policy == MirrorJob.OnError.STOP || (policy == MirrorJob.OnError.ENOSPC && errno == Errno.ENOSPC)) action = "stop";
        else if (policy == MirrorJob.OnError.IGNORE) action = "ignore";
        else action = "report";
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("device", id());
        d.put("operation", onTarget ? "write" : "read");
        d.put("action", action);
        events().emit(MirrorJob.BLOCK_JOB_ERROR, d);
        return action;
    }

    /** The "stop" action: the job pauses itself with io-status failed or nospace until resumed. */
    void stopOnError(int errno) {
        if (ioStatus.equals("ok")) {
            ioStatus = errno == Errno.ENOSPC ? "nospace" : "failed";
            ioPause();
        }
    }

    /**
     * The job's layer in front of the source's driver: holds new requests while the job starts
     * (or a mirror converges) and counts the requests it accepted and the job's copies, so that
     * the node's drain waits for them. Home thread only.
     */
    abstract class Layer extends ForwardingBlockDriver {
        int pending;
        int held;
        boolean holding;
        boolean passthrough;
        private final ArrayDeque<Runnable> heldQueue = new ArrayDeque<>();
        private final ArrayDeque<Runnable> idleWaiters = new ArrayDeque<>();
        private BlockDriver releaseTo;

        Layer(BlockDriver below) { super(below); }

        /** One request to a driver with a completion. */
        interface Submit {
            void to(BlockDriver driver, IoCompletion done) throws BlockException;
        }

        /** A request that arrives while holding: kept, counted, submitted by {@link #release}. */
        interface Later {
            void submit(BlockDriver to) throws BlockException;
        }

        /** Submits the held requests to {@code to} (the layer itself, or what replaced it). */
        void release(BlockDriver to) {
            holding = false;
            List<Runnable> q = new ArrayList<>(heldQueue);
            heldQueue.clear();
            releaseTo = to;
            for (Runnable r : q) {
                held--;
                pending--;
                r.run();
            }
            releaseTo = null;
            idle();
        }

        boolean hold(Later later, IoCompletion done) {
            if (!holding) return false;
            pending++;
            held++;
            heldQueue.add(() -> {
                try {
                    later.submit(releaseTo);
                } catch (BlockException e) {
                    done.ioDone(e.errno());
                }
            });
            return true;
        }

        IoCompletion counted(IoCompletion done) {
            pending++;
            return e -> {
                pending--;
                try {
                    done.ioDone(e);
                } finally {
                    idle();
                }
            };
        }

        /** A request of the layer's ended: runs the idle waiters (a mirror also checks its convergence). */
        void idle() {
            runIdleWaiters();
        }

        /** The waiters of {@link #whenIdle}, once neither guest requests nor the job's copies are in flight. */
        void runIdleWaiters() {
            if (pending == 0 && copies == 0) {
                while (!idleWaiters.isEmpty()) idleWaiters.poll().run();
            }
        }

        /**
         * The guest requests it accepted, the job's copies (a copy's write to the target comes
         * after its read here: a drain of the source that ignored it would let the target get a
         * request after its own drain) and the requests below.
         */
        @Override
        public int inFlight() { return pending + copies + d.inFlight(); }

        @Override
        public void whenIdle(Runnable idle) { awaitIdle(idle); }

        /** Runs {@code idle} once nothing accepted here, no copy and nothing below is in flight. */
        final void awaitIdle(Runnable idle) {
            if (pending > 0 || copies > 0) {
                idleWaiters.add(() -> awaitIdle(idle));
                return;
            }
            d.whenIdle(() -> {
                if (pending > 0 || copies > 0) idleWaiters.add(() -> awaitIdle(idle));
                else idle.run();
            });
        }
    }
}
