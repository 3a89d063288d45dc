package dev.vmm.virtio.blk;

import dev.vmm.core.linux.LibcSocket;
import dev.vmm.iothread.IOThread;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.vhostuser.inflight.InflightPackedQueue;
import dev.vmm.vhostuser.inflight.InflightQueue;
import dev.vmm.vhostuser.inflight.InflightTracker;
import dev.vmm.virtio.queue.PackedDescriptorList;
import dev.vmm.virtio.queue.PackedVirtqueue;
import dev.vmm.virtio.queue.SplitVirtqueue;
import dev.vmm.virtio.queue.Virtqueue;
import dev.vmm.virtio.queue.VirtqueueException;
import com.sun.jna.LastErrorException;
import java.util.ArrayList;
import java.util.List;
import io.netty.channel.IoEvent;
import io.netty.channel.IoRegistration;
import io.netty.channel.epoll.EpollIoHandle;
import io.netty.channel.epoll.EpollIoOps;
import io.netty.channel.unix.FileDescriptor;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The data path of one virtqueue: its kick eventfd joins the home IOThread's epoll set; a kick
 * drains the eventfd and pops available requests into pooled {@link VirtioBlkRequest}s, which are
 * parsed and submitted to the asynchronous block driver. Completions arrive later, in any order,
 * on the home thread ({@link #ioDone}): each writes its status byte and pushes its used entry at
 * once, and the used ring is published and the call eventfd signalled (EVENT_IDX aware) once per
 * batch, by one task queued behind the completions of the loop iteration.
 *
 * <p>Back-pressure: at most {@link #poolLimit} requests of this queue are in flight (the queue
 * size, capped at {@link #MAX_IN_FLIGHT}); with the pool empty the worker stops popping, and a
 * completion that frees a request makes the publish task pop again.
 *
 * <p>States: {@code held} (the control plane waits for the requests in flight before it changes
 * memory or reports the ring base: nothing is popped, completions are still answered, and
 * published at once), {@code quiesced} (a move: the same, until {@link #resume}), {@code stopped}
 * (an internal error: nothing more is popped, completions already submitted are still answered
 * if the ring can be written), {@code retired} (the control plane gave the ring up, or the guest
 * broke it: completions are dropped without touching guest memory; they still return their
 * request to the pool and uncount it). Native memory is freed by {@link #release} once nothing is
 * in flight.
 *
 * <p>Thread contract: created by the control plane, then every method runs on {@link #home}
 * (the publish task checks that it was not posted to a previous home). A guest that breaks the
 * ring (VirtqueueException BROKEN) stops this queue only: the error eventfd is signalled, other
 * queues and disks keep working.
 */
final class QueueWorker implements EpollIoHandle {
    private static final Logger LOG = LoggerFactory.getLogger(QueueWorker.class);
    /** Requests popped per wake-up before yielding, so one busy queue cannot starve the loop. */
    static final int BUDGET = 256;
    /**
     * Most requests of one queue in flight. Each pooled request holds 32 KiB (a chain of
     * {@link VirtioBlkRequests#MAX_SEGMENTS} segments and as many iovecs), so this caps what a
     * guest with a 32768-entry ring can make us allocate; QEMU's rings have at most 1024 entries.
     */
    static final int MAX_IN_FLIGHT = 1024;
    /** {@link #MAX_IN_FLIGHT}, read when a worker is made; tests lower it to exercise back-pressure. */
    static volatile int maxInFlight = MAX_IN_FLIGHT;

    final int index;
    private final String name;
    private final Virtqueue vq;
    /**
     * In-flight tracking in memory the front-end keeps across our restarts, or null: an
     * {@link InflightQueue} with a {@link SplitVirtqueue} (resubmission re-reads heads with
     * popHead), or an {@link InflightPackedQueue} with a {@link PackedVirtqueue} (resubmission takes
     * the recorded descriptors with popRecorded: the ring slots may hold used descriptors by now).
     */
    private final InflightTracker inflight;
    /** Split: heads a previous back-end took but did not complete: served first, then null. */
    private int[] resubmit;
    /** Packed: the buffers a previous back-end took but did not complete, oldest first; then null. */
    private List<PackedDescriptorList> resubmitPacked;
    /** Next entry of {@link #resubmit}/{@link #resubmitPacked} (the pool may run dry half-way). */
    private int resubmitPos;
    private final VirtioBlkRequests requests;
    private final int kickFd;
    private final FileDescriptor nettyKickFd;
    private volatile int callFd;
    private volatile int errFd;
    private final dev.vmm.core.stats.LatencyHistogram latency;
    private final dev.vmm.core.stats.LatencyHistogram exportLatency;
    /** Requests popped and not yet completed, for monitors. */
    private final dev.vmm.core.stats.Counter inFlight;
    /** 8 bytes for eventfd reads and writes. */
    private final long scratch = RawMemory.allocate(8);
    /** Written on attach (the new home), read by the publish task of an old home: volatile. */
    private volatile IOThread home;
    private IoRegistration registration;
    private boolean enabled;
    private boolean stopped;
    /** The guest sent something the spec forbids: serve nothing more until a reset. */
    private boolean guestBroke;
    /** The node is moving: kicks wait in the eventfd until {@link #resume}. */
    private boolean quiesced;
    /** The control plane waits for the requests in flight: pop nothing. */
    private boolean held;
    /** The ring was given up (stop, reset, memory change): completions are dropped. */
    private boolean retired;
    /** {@link #release} was called: free native memory once nothing is in flight. */
    private boolean released;
    private boolean freed;
    private boolean rescheduled;
    /** Posted when a wake-up's budget ran out; void (does nothing) once the queue has moved to another thread. */
    private final Runnable processTask = () -> {
        if (home.inThread()) processScheduled(); // after a move, resume() on the new home serves the rest
    };

    // ---- the request pool ----
    private final int poolLimit;
    private VirtioBlkRequest freeList;
    private final ArrayList<VirtioBlkRequest> allRequests = new ArrayList<>();
    /** Requests taken from the pool and not given back: popped, not completed. */
    private int outstanding;
    /** process() stopped because the pool was empty: a completion must pop again. */
    private boolean starved;
    /** The request being parsed or submitted (a fault there must give it back). */
    private VirtioBlkRequest current;
    private final ArrayList<Runnable> idleWaiters = new ArrayList<>();

    // ---- publishing ----
    /** Used entries pushed and not yet published. */
    private boolean dirty;
    /** The publish task of the current home (one per attach; a move voids the old one). */
    private PublishTask publishTask;

    QueueWorker(int index, String name, Virtqueue vq, InflightTracker inflight, int[] resubmit,
            List<PackedDescriptorList> resubmitPacked, VirtioBlkRequests requests, int kickFd, int callFd, int errFd) {
        boolean split = inflight == null ? resubmit == null && resubmitPacked == null
                : inflight instanceof InflightQueue && vq instanceof SplitVirtqueue && resubmitPacked == null;
        boolean packed = inflight instanceof InflightPackedQueue && vq instanceof PackedVirtqueue && resubmit == null;
        if (!split && !packed) throw new IllegalArgumentException("in-flight tracker does not match the ring layout");
        this.index = index;
        this.name = name;
        this.vq = vq;
        this.inflight = inflight;
        this.resubmit = resubmit;
        this.resubmitPacked = resubmitPacked;
        this.poolLimit = Math.min(vq.size(), maxInFlight);
        this.requests = requests;
        this.latency = requests.stats().latency;
        this.exportLatency = requests.exportStats().latency;
        this.inFlight = requests.exportStats().inFlight;
        this.kickFd = kickFd;
        this.nettyKickFd = new FileDescriptor(kickFd);
        this.callFd = callFd;
        this.errFd = errFd;
    }

    /**
     * Publishes the batch of completions of one loop iteration: queued on the home loop by the
     * first completion after a publish. Posted to one home; a move voids it (on that same home,
     * in {@link #detach}), so a copy still queued there runs as a no-op.
     */
    private final class PublishTask implements Runnable {
        /** Touched only on the loop this task is posted to. */
        boolean queued;
        boolean voided;

        @Override
        public void run() {
            queued = false;
            if (!voided) publishScheduled();
        }
    }

    /**
     * Joins {@code thread}'s epoll set and, unless quiesced, serves what is already queued. On
     * {@code thread}; the future completes once registered.
     */
    java.util.concurrent.CompletableFuture<Void> attach(IOThread thread) {
        java.util.concurrent.CompletableFuture<Void> done = new java.util.concurrent.CompletableFuture<>();
        this.home = thread;
        this.publishTask = new PublishTask(); // one per home: allocation per move, not per request
        thread.loop().register(this).addListener(f -> {
            if (!f.isSuccess()) {
                LOG.error("{}: cannot watch the kick eventfd: {}", name, f.cause().toString());
                done.completeExceptionally(f.cause());
                return;
            }
            try {
                registration = (IoRegistration) f.getNow();
                if (stopped) {
                    registration.cancel();
                } else {
                    registration.submit(EpollIoOps.EPOLLIN);
                    if (mayPop()) process(); // nothing that arrived before must wait for the next kick
                }
                done.complete(null);
            } catch (RuntimeException e) { // e.g. a kick fd epoll refuses: never leave a move waiting
                LOG.error("{}: cannot watch the kick eventfd: {}", name, e.toString());
                done.completeExceptionally(e);
            }
        });
        return done;
    }

    /**
     * Handoff step 1, on the old home: take nothing more until {@link #resume}. Completions of
     * the requests in flight (the node's drain waits for them) publish at once from now on: the
     * move may detach right inside the completion that empties the node, before any queued task.
     */
    void quiesce() { quiesced = true; }

    /** Handoff step 6, on the new home: serve the queue once, whatever arrived during the move. */
    void resume() {
        quiesced = false;
        rescheduled = false; // a task posted to the old home is void now
        if (registration != null && mayPop()) process();
    }

    /**
     * Leaves the epoll set (the kick fd keeps its counter, so no kick is lost). On the old home
     * after the drain: what completed is published here, and the publish task queued on this
     * loop, if any, is voided.
     */
    void detach() {
        if (dirty && !dropping()) publish();
        if (publishTask != null) publishTask.voided = true;
        cancelRegistration();
    }

    private void cancelRegistration() {
        if (registration != null) {
            registration.cancel();
            registration = null;
        }
    }

    void setEnabled(boolean on) {
        enabled = on;
        if (on && registration != null && mayPop()) process();
    }

    void setCallFd(int fd) { callFd = fd; }

    void setErrFd(int fd) { errFd = fd; }

    /**
     * Pops nothing more, but keeps answering the requests in flight (and publishes each at once),
     * so that the control plane can wait for them with {@link #whenIdle}.
     */
    void hold() { held = true; }

    /**
     * Stops for good and returns the next available index (GET_VRING_BASE). What completed is
     * published first; requests still in flight are dropped when they complete (the ring is given
     * up: the caller waited for them with {@link #hold}/{@link #whenIdle} when it could).
     */
    int stop() {
        if (dirty && !dropping()) publish();
        stopped = true;
        retired = true;
        if (publishTask != null) publishTask.voided = true;
        cancelRegistration();
        return vq.lastAvailIdx();
    }

    boolean broken() { return vq.isBroken() || guestBroke; }

    /** Requests popped and not completed (completed also means dropped). */
    int outstanding() { return outstanding; }

    /** Runs {@code idle} on the home thread once nothing is in flight: now, or after the completion that empties the queue. */
    void whenIdle(Runnable idle) {
        if (outstanding == 0) idle.run(); else idleWaiters.add(idle);
    }

    /** Frees native memory: now, or once the requests in flight completed (they point into it). */
    void release() {
        released = true;
        if (outstanding == 0) free();
    }

    private void free() {
        if (freed) return;
        freed = true;
        for (VirtioBlkRequest r : allRequests) r.free();
        allRequests.clear();
        freeList = null;
        requests.close();
        RawMemory.free(scratch);
    }

    @Override
    public FileDescriptor fd() { return nettyKickFd; }

    @Override
    public void handle(IoRegistration reg, IoEvent event) {
        try {
            LibcSocket.eventfdRead(kickFd, scratch); // level-triggered epoll: drain the counter
        } catch (LastErrorException e) {
            // EAGAIN: a spurious wake-up; anything else is logged once below through process()
        }
        if (mayPop()) process();
    }

    @Override
    public void close() {
        // the kick fd belongs to the device, which closes it after stop()
    }

    private boolean mayPop() {
        return enabled && !stopped && !quiesced && !held && !retired;
    }

    /** Completions are not answered: the ring was given up or broken. */
    private boolean dropping() {
        return retired || guestBroke || vq.isBroken();
    }

    private void processScheduled() {
        rescheduled = false;
        if (registration != null && mayPop()) process();
    }

    /** Serves available requests; see {@link Virtqueue} for the lost-kick-free loop. */
    void process() {
        assert home.inThread() : name + " processed off its home thread";
        if (vq.isBroken() || guestBroke || !mayPop()) return;
        starved = false;
        int served = 0;
        try {
            if (resubmit != null) served += resubmitInflight();
            if (resubmitPacked != null && !starved) served += resubmitInflightPacked();
            if (!starved) {
                do {
                    vq.disableNotification();
                    while (served < BUDGET && mayPop()) { // an answer that faulted stops the queue
                        VirtioBlkRequest r = take();
                        if (r == null) {
                            // Notifications stay disabled: the completion that frees a request pops again.
                            starved = true;
                            break;
                        }
                        boolean got;
                        try {
                            got = vq.pop(r.chain);
                        } catch (VirtqueueException e) {
                            give(r);
                            throw e;
                        }
                        if (!got) {
                            give(r);
                            break;
                        }
                        if (inflight != null) inflight.popped(r.chain.head());
                        start(r, r.chain.head());
                        served++;
                        home.countRequest();
                    }
                    if (starved || served >= BUDGET || !mayPop()) break;
                } while (vq.enableNotification());
            }
        } catch (VirtqueueException e) {
            // A chain the spec forbids (loop, address outside guest RAM, zero length, ...) or a
            // broken ring. Completing it would leave its status byte unwritten, and a driver may
            // read a stale "OK" and accept garbage; so, as QEMU does (virtio_error), the queue stops
            // and the front-end is told through the error eventfd. Other queues and disks go on;
            // a device reset (reconnect) starts the queue afresh.
            LOG.error("{}: the guest sent {}: {}; the queue is stopped until the device is reset",
                    name, e.kind() == VirtqueueException.Kind.REQUEST ? "a malformed descriptor chain (head " + e.head() + ")"
                            : "a broken ring", e.getMessage());
            guestBroke = true;
            signal(errFd);
        } catch (RuntimeException | InternalError e) {
            stopAfterInternalError(e);
        }
        if (current != null) { // the queue stopped in the middle of a request: the driver never took it
            VirtioBlkRequest r = current;
            current = null;
            recycle(r);
        }
        if (served >= BUDGET && !starved) reschedule();
        if (dirty) publish();
    }

    /** Parses and submits a popped request; answers at once what needs no I/O. */
    private void start(VirtioBlkRequest r, int head) {
        r.head = head;
        r.startNs = System.nanoTime();
        inFlight.increment();
        current = r;
        boolean pending = requests.parse(r) && requests.execute(r);
        current = null;
        if (pending) {
            r.submitted = true; // ioDone runs later, never inside execute (BlockDriver contract)
        } else {
            answer(r, 0);
        }
    }

    /**
     * The block driver completed {@code r}: answer it (status byte, used entry) unless the ring
     * was given up, give the request back, and publish: at once while the control plane or a
     * move waits, else once for the batch, from a task queued behind this loop iteration's other
     * completions.
     */
    void ioDone(VirtioBlkRequest r, int errno) {
        assert home.inThread() : name + " completion off its home thread";
        if (!r.submitted) {
            LOG.error("{}: a second completion of head {} ignored (block driver bug)", name, r.head);
            return;
        }
        r.submitted = false;
        answer(r, errno);
        if (dirty) {
            if (held || quiesced || stopped) publish();
            else schedulePublish();
        }
    }

    /** Finish: status byte and used entry (or nothing, if dropping), then back to the pool. */
    private void answer(VirtioBlkRequest r, int errno) {
        if (dropping()) {
            requests.finish(r, errno, false);
        } else {
            try {
                int used = requests.finish(r, errno, true);
                if (inflight != null) inflight.completing(r.head);
                vq.pushUsed(r.head, used);
                dirty = true;
            } catch (RuntimeException | InternalError e) {
                // Guest memory faulted (a shrunk memfd): later completions cannot be answered either.
                retired = true;
                stopAfterInternalError(e);
            }
        }
        recycle(r);
    }

    private void schedulePublish() {
        PublishTask t = publishTask;
        if (!t.queued) {
            t.queued = true;
            home.loop().execute(t); // preallocated: nothing allocated per batch
        }
    }

    private void publishScheduled() {
        if (!home.inThread()) return; // posted before a move that has not voided it yet: not ours now
        if (starved && registration != null && mayPop()) {
            process(); // pops what waited for a free request, then publishes everything
        } else if (dirty) {
            publish();
        }
    }

    /** Makes the pushed used entries visible and signals the call eventfd if the driver wants it. */
    private void publish() {
        dirty = false;
        if (dropping()) return;
        try {
            if (inflight != null) inflight.beforePublish();
            vq.publishUsed();
            if (inflight != null) inflight.published(vq.lastUsedIdx());
            if (vq.needsNotify()) signal(callFd);
        } catch (RuntimeException | InternalError e) {
            // The used ring and the avail flags are guest memory too (a shrunk memfd faults here
            // as well): nothing may escape to the event loop, whose other handles are other disks.
            retired = true;
            stopAfterInternalError(e);
        }
    }

    /**
     * A bug, or a fault on guest memory: HotSpot turns SIGBUS in an Unsafe access (a page beyond
     * the end of a memfd the front-end shrank after SET_MEM_TABLE) into an InternalError. Stops
     * this queue only and tells the front-end through the error eventfd.
     */
    private void stopAfterInternalError(Throwable e) {
        LOG.error("{}: stopping the queue after an internal error: {}", name, e.toString());
        stopped = true;
        cancelRegistration();
        signal(errFd);
    }

    // ---- the pool ----

    /** A free request, or null when {@link #poolLimit} are in flight. */
    private VirtioBlkRequest take() {
        VirtioBlkRequest r = freeList;
        if (r != null) {
            freeList = r.nextFree;
            r.nextFree = null;
        } else if (allRequests.size() < poolLimit) {
            r = new VirtioBlkRequest(this); // grows to the queue's depth once, then reused
            allRequests.add(r);
        } else {
            return null;
        }
        outstanding++;
        return r;
    }

    /** Returns a request that was taken but never popped into. */
    private void give(VirtioBlkRequest r) {
        r.nextFree = freeList;
        freeList = r;
        outstanding--;
        idleCheck();
    }

    /** A popped request is over (answered, dropped or abandoned): latency, counters, pool. */
    private void recycle(VirtioBlkRequest r) {
        long ns = System.nanoTime() - r.startNs;
        latency.record(ns);
        exportLatency.record(ns);
        inFlight.decrement();
        give(r);
    }

    private void idleCheck() {
        if (outstanding != 0) return;
        if (!idleWaiters.isEmpty()) {
            Runnable[] waiters = idleWaiters.toArray(new Runnable[0]);
            idleWaiters.clear();
            for (Runnable w : waiters) w.run();
        }
        if (released) free();
    }

    // ---- in-flight tracking: resubmission after a back-end restart ----

    /** Serves the requests a previous back-end left in flight, in the order it took them. */
    private int resubmitInflight() throws VirtqueueException {
        int[] heads = resubmit;
        SplitVirtqueue split = (SplitVirtqueue) vq; // checked in the constructor
        int n = 0;
        while (resubmitPos < heads.length) {
            VirtioBlkRequest r = take();
            if (r == null) {
                starved = true;
                return n;
            }
            int head = heads[resubmitPos++];
            try {
                split.popHead(head, r.chain);
            } catch (VirtqueueException e) {
                give(r);
                if (e.kind() != VirtqueueException.Kind.REQUEST) throw e;
                answerUnreadable(head);
                n++;
                continue;
            }
            start(r, head);
            n++;
        }
        resubmit = null;
        resubmitPos = 0;
        if (heads.length > 0) LOG.info("{}: resubmitted {} request(s) left in flight by the previous back-end", name, heads.length);
        return n;
    }

    /** Serves the buffers a previous back-end left in flight on a packed ring, in the order it took them. */
    private int resubmitInflightPacked() throws VirtqueueException {
        List<PackedDescriptorList> lists = resubmitPacked;
        PackedVirtqueue packed = (PackedVirtqueue) vq; // checked in the constructor
        int n = 0;
        while (resubmitPos < lists.size()) {
            VirtioBlkRequest r = take();
            if (r == null) {
                starved = true;
                return n;
            }
            PackedDescriptorList l = lists.get(resubmitPos++);
            try {
                packed.popRecorded(l, r.chain);
            } catch (VirtqueueException e) {
                give(r);
                if (e.kind() != VirtqueueException.Kind.REQUEST) throw e;
                answerUnreadable(l.id());
                n++;
                continue;
            }
            start(r, l.id());
            n++;
        }
        resubmitPacked = null;
        resubmitPos = 0;
        if (!lists.isEmpty()) LOG.info("{}: resubmitted {} request(s) left in flight by the previous back-end", name, lists.size());
        return n;
    }

    /** A resubmitted buffer that no longer reads as a request: used with nothing written. */
    private void answerUnreadable(int head) {
        if (inflight != null) inflight.completing(head);
        vq.pushUsed(head, 0);
        dirty = true;
    }

    private void reschedule() {
        if (!rescheduled) {
            rescheduled = true;
            home.loop().execute(processTask); // preallocated: a busy queue allocates nothing per wake-up
        }
    }

    private void signal(int fd) {
        if (fd < 0) return;
        try {
            LibcSocket.eventfdWrite(fd, 1, scratch);
        } catch (LastErrorException e) {
            LOG.debug("{}: eventfd write: errno {}", name, e.getErrorCode());
        }
    }
}
