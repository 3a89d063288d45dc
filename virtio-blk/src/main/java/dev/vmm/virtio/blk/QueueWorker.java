package dev.vmm.virtio.blk;

import dev.vmm.core.linux.LibcSocket;
import dev.vmm.iothread.IOThread;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.vhostuser.inflight.InflightPackedQueue;
import dev.vmm.vhostuser.inflight.InflightQueue;
import dev.vmm.vhostuser.inflight.InflightTracker;
import dev.vmm.virtio.queue.DescriptorChain;
import dev.vmm.virtio.queue.PackedDescriptorList;
import dev.vmm.virtio.queue.PackedVirtqueue;
import dev.vmm.virtio.queue.SplitVirtqueue;
import dev.vmm.virtio.queue.Virtqueue;
import dev.vmm.virtio.queue.VirtqueueException;
import com.sun.jna.LastErrorException;
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
 * drains the eventfd, pops every available request, runs it, publishes the used entries as one
 * batch and signals the call eventfd if the driver wants an interrupt (EVENT_IDX aware).
 *
 * <p>Thread contract: created by the control plane, then every method runs on {@link #home}.
 * A guest that breaks the ring (VirtqueueException BROKEN) stops this queue only: the error
 * eventfd is signalled, other queues and disks keep working.
 */
final class QueueWorker implements EpollIoHandle {
    private static final Logger LOG = LoggerFactory.getLogger(QueueWorker.class);
    /** Requests served per wake-up before yielding, so one busy queue cannot starve the loop. */
    static final int BUDGET = 256;

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
    private final DescriptorChain chain;
    private final VirtioBlkRequests requests;
    private final int kickFd;
    private final FileDescriptor nettyKickFd;
    private volatile int callFd;
    private volatile int errFd;
    private final dev.vmm.core.stats.LatencyHistogram latency;
    private final dev.vmm.core.stats.LatencyHistogram exportLatency;
    /** Chains popped and not yet pushed to the used ring, for monitors. */
    private final dev.vmm.core.stats.Counter inFlight;
    /** A chain counted in {@link #inFlight} is being executed (a fault mid-request must uncount it). */
    private boolean executing;
    /** 8 bytes for eventfd reads and writes. */
    private final long scratch = RawMemory.allocate(8);
    private IOThread home;
    private IoRegistration registration;
    private boolean enabled;
    private boolean stopped;
    /** The guest sent something the spec forbids: serve nothing more until a reset. */
    private boolean guestBroke;
    /** The node is moving: kicks wait in the eventfd until {@link #resume}. */
    private boolean quiesced;
    private boolean rescheduled;
    private final Runnable processTask = this::processScheduled;

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
        this.chain = new DescriptorChain(VirtioBlkRequests.MAX_SEGMENTS + 2);
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
     * Joins {@code thread}'s epoll set and, unless quiesced, serves what is already queued. On
     * {@code thread}; the future completes once registered.
     */
    java.util.concurrent.CompletableFuture<Void> attach(IOThread thread) {
        java.util.concurrent.CompletableFuture<Void> done = new java.util.concurrent.CompletableFuture<>();
        this.home = thread;
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
                    if (enabled && !quiesced) process(); // nothing that arrived before must wait for the next kick
                }
                done.complete(null);
            } catch (RuntimeException e) { // e.g. a kick fd epoll refuses: never leave a move waiting
                LOG.error("{}: cannot watch the kick eventfd: {}", name, e.toString());
                done.completeExceptionally(e);
            }
        });
        return done;
    }

    /** Handoff step 1, on the old home: take nothing more until {@link #resume}. */
    void quiesce() { quiesced = true; }

    /** Handoff step 6, on the new home: serve the queue once, whatever arrived during the move. */
    void resume() {
        quiesced = false;
        rescheduled = false; // a task posted to the old home is void now
        if (enabled && !stopped && registration != null) process();
    }

    /** Leaves the epoll set (the kick fd keeps its counter, so no kick is lost). */
    void detach() {
        if (registration != null) {
            registration.cancel();
            registration = null;
        }
    }

    void setEnabled(boolean on) {
        enabled = on;
        if (on && registration != null && !quiesced) process();
    }

    void setCallFd(int fd) { callFd = fd; }

    void setErrFd(int fd) { errFd = fd; }

    /** Stops for good and returns the next available index (GET_VRING_BASE). */
    int stop() {
        stopped = true;
        detach();
        return vq.lastAvailIdx();
    }

    boolean broken() { return vq.isBroken() || guestBroke; }

    void release() {
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
        if (enabled && !stopped && !quiesced) process();
    }

    @Override
    public void close() {
        // the kick fd belongs to the device, which closes it after stop()
    }

    private void processScheduled() {
        rescheduled = false;
        if (enabled && !stopped && !quiesced && registration != null) process();
    }

    /** Serves available requests; see {@link Virtqueue} for the lost-kick-free loop. */
    void process() {
        assert home.inThread() : name + " processed off its home thread";
        if (vq.isBroken() || guestBroke) return;
        int served = 0;
        try {
            if (resubmit != null) served += resubmitInflight();
            if (resubmitPacked != null) served += resubmitInflightPacked();
            do {
                vq.disableNotification();
                while (served < BUDGET && vq.pop(chain)) {
                    if (inflight != null) inflight.popped(chain.head());
                    taken();
                    long t0 = System.nanoTime();
                    complete(chain.head(), requests.execute(chain));
                    long ns = System.nanoTime() - t0;
                    latency.record(ns);
                    exportLatency.record(ns);
                    served++;
                    home.countRequest();
                }
                if (served >= BUDGET) break;
            } while (vq.enableNotification());
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
        if (executing) { // the queue stopped in the middle of a request: it will never complete
            executing = false;
            inFlight.decrement();
        }
        if (served >= BUDGET) reschedule();
        if (served > 0) {
            try {
                if (inflight != null) inflight.beforePublish();
                vq.publishUsed();
                if (inflight != null) inflight.published(vq.lastUsedIdx());
                if (vq.needsNotify()) signal(callFd);
            } catch (RuntimeException | InternalError e) {
                // The used ring and the avail flags are guest memory too (a shrunk memfd faults here
                // as well): nothing may escape to the event loop, whose other handles are other disks.
                stopAfterInternalError(e);
            }
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
        detach();
        signal(errFd);
    }

    private void taken() {
        executing = true;
        inFlight.increment();
    }

    private void complete(int head, int written) {
        if (inflight != null) inflight.completing(head);
        vq.pushUsed(head, written);
        executing = false;
        inFlight.decrement();
    }

    /** Serves the requests a previous back-end left in flight, in the order it took them. */
    private int resubmitInflight() throws VirtqueueException {
        int[] heads = resubmit;
        resubmit = null;
        SplitVirtqueue split = (SplitVirtqueue) vq; // checked in the constructor
        for (int head : heads) {
            try {
                split.popHead(head, chain);
                taken();
                complete(head, requests.execute(chain));
            } catch (VirtqueueException e) {
                if (e.kind() != VirtqueueException.Kind.REQUEST) throw e;
                taken(); // taken by the previous back-end, completed now
                complete(head, 0);
            }
        }
        if (heads.length > 0) LOG.info("{}: resubmitted {} request(s) left in flight by the previous back-end", name, heads.length);
        return heads.length;
    }

    /** Serves the buffers a previous back-end left in flight on a packed ring, in the order it took them. */
    private int resubmitInflightPacked() throws VirtqueueException {
        List<PackedDescriptorList> lists = resubmitPacked;
        resubmitPacked = null;
        PackedVirtqueue packed = (PackedVirtqueue) vq; // checked in the constructor
        for (PackedDescriptorList l : lists) {
            try {
                packed.popRecorded(l, chain);
                taken();
                complete(l.id(), requests.execute(chain));
            } catch (VirtqueueException e) {
                if (e.kind() != VirtqueueException.Kind.REQUEST) throw e;
                taken(); // taken by the previous back-end, completed now
                complete(l.id(), 0);
            }
        }
        if (!lists.isEmpty()) LOG.info("{}: resubmitted {} request(s) left in flight by the previous back-end", name, lists.size());
        return lists.size();
    }

    private void reschedule() {
        if (!rescheduled) {
            rescheduled = true;
            IOThread postedTo = home;
            // A move may run before this task: then it must not touch the ring from the old
            // thread; resume() on the new home serves the rest instead.
            postedTo.loop().execute(() -> {
                if (home == postedTo) processTask.run();
            });
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
