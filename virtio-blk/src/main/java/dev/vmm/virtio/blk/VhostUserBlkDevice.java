package dev.vmm.virtio.blk;

import static dev.vmm.virtio.blk.VirtioBlk.*;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.stats.ExportStats;
import dev.vmm.core.block.NodeUser;
import dev.vmm.core.linux.LibcMemory;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.iothread.IOThread;
import dev.vmm.vhostuser.connection.VhostUserBackendHandler;
import dev.vmm.vhostuser.inflight.InflightPackedQueue;
import dev.vmm.vhostuser.inflight.InflightQueue;
import dev.vmm.vhostuser.inflight.InflightTracker;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.VhostUserException;
import dev.vmm.vhostuser.message.VhostUserProtocolFeature;
import dev.vmm.vhostuser.message.VhostUserRequest;
import dev.vmm.vhostuser.message.VringAddr;
import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.virtio.memory.GuestMemoryException;
import dev.vmm.virtio.queue.PackedDescriptorList;
import dev.vmm.virtio.queue.PackedVirtqueue;
import dev.vmm.virtio.queue.SplitVirtqueue;
import dev.vmm.virtio.queue.Virtqueue;
import dev.vmm.virtio.queue.VirtqueueException;
import java.util.List;
import java.util.concurrent.Callable;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A virtio-blk device whose driver is reached over vhost-user (docs/interop/vhost-user.rst):
 * the back-end half of QEMU's {@code vhost-user-blk-pci}.
 *
 * <p>Thread contract: the {@link VhostUserBackendHandler} calls arrive on the listener's loop
 * (the daemon's control thread, never the main loop: see {@code Daemon.controlLoop()}), one at a
 * time. Everything the data path reads (guest memory, the queue
 * workers) is changed only on the node's home IOThread, through {@link #onHome}; the per-queue
 * settings below are control-thread state.
 *
 * <p>Requests in flight: the block driver completes them asynchronously, and until then the
 * kernel (or an {@code aio=threads} worker) reads and writes guest memory through their iovecs.
 * So guest memory is never unmapped while a request of this device is in flight: a change of the
 * memory table or a ring's base first stops popping and waits for the requests in flight to be
 * answered ({@link #holdAndWait}: they complete, their used entries are published and signalled);
 * a reset or disconnect does not wait (the front-end is gone or starting over) but drops their
 * completions and unmaps the old memory only once they are over ({@link GuestMemory#retire}).
 */
final class VhostUserBlkDevice implements VhostUserBackendHandler, NodeUser {
    private static final Logger LOG = LoggerFactory.getLogger(VhostUserBlkDevice.class);

    /** Largest queue we accept (virtio 1.2 split rings allow 32768). */
    static final int MAX_QUEUE_SIZE = 32768;
    /**
     * How long a vhost-user message that must not run under requests in flight (GET_VRING_BASE,
     * a memory table change) waits for them before it gives their rings up: a stuck disk must
     * not wedge the control thread, which serves every vhost-user device, for ever. Tests lower it.
     */
    static volatile long drainTimeoutMs = 30_000;

    private final String exportId;
    private final BlockNode node;
    private final boolean writable;
    private final int numQueues;
    private final VirtioBlkConfig config;
    private final long offeredFeatures;
    private final long offeredProtocolFeatures;
    private final ExportStats stats = new ExportStats();

    // ---- control-thread state: what the front-end negotiated ----
    private long ackedFeatures;
    private long ackedProtocolFeatures;
    private final QueueSetup[] queues;

    // ---- home-IOThread state ----
    private final GuestMemory memory = new GuestMemory();
    private final QueueWorker[] workers;
    /** The in-flight area (front-end-owned memory we map), or 0. Changed with workers stopped. */
    private long inflightAddr;
    private long inflightSize;
    private int inflightQueueSize;
    /** Queues the area has room for: a ring index at or above it is not tracked (never mapped memory). */
    private int inflightNumQueues;
    private int inflightFd = -1;
    /** "The in-flight area is too small for packed rings" was logged (once per device). */
    private boolean inflightTooSmallLogged;

    /** What SET_VRING_* said about one queue. */
    private static final class QueueSetup {
        int num;
        int base;
        VringAddr addr;
        int kickFd = -1;
        int callFd = -1;
        int errFd = -1;
        boolean enabled;
    }

    VhostUserBlkDevice(String exportId, BlockNode node, boolean writable, int numQueues, int logicalBlockSize) {
        this.exportId = exportId;
        this.node = node;
        this.writable = writable;
        this.numQueues = numQueues;
        // seg_max: room for header and status in a chain of at most MAX_SEGMENTS + 2 descriptors
        this.config = new VirtioBlkConfig(node.size(), logicalBlockSize, numQueues, VirtioBlkRequests.MAX_SEGMENTS - 2, 0);
        long f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX)
                | bit(VIRTIO_F_RING_PACKED)
                | bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_TOPOLOGY)
                | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_CONFIG_WCE) | bit(VIRTIO_BLK_F_MQ)
                | bit(VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES);
        f |= writable ? bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES) : bit(VIRTIO_BLK_F_RO);
        this.offeredFeatures = f;
        this.offeredProtocolFeatures = VhostUserProtocolFeature.mask(VhostUserProtocolFeature.MQ)
                | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.REPLY_ACK)
                | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.CONFIG)
                | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS)
                | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.INFLIGHT_SHMFD);
        this.queues = new QueueSetup[numQueues];
        for (int i = 0; i < numQueues; i++) queues[i] = new QueueSetup();
        this.workers = new QueueWorker[numQueues];
    }

    private static long bit(int n) { return 1L << n; }

    /** Whether the driver chose packed virtqueues (VIRTIO_F_RING_PACKED, virtio 1.2 §2.8). */
    private boolean packed() { return (ackedFeatures & bit(VIRTIO_F_RING_PACKED)) != 0; }

    /** The device side of ring {@code q} in its negotiated layout; home thread. */
    private Virtqueue newQueue(QueueSetup q, long features) throws VirtqueueException {
        // For packed rings SET_VRING_ADDR's avail/used addresses are the driver and device
        // event suppression areas (vhost-user.rst, "Vring address description").
        return (features & bit(VIRTIO_F_RING_PACKED)) != 0
                ? PackedVirtqueue.ofUserAddresses(memory, q.num, q.addr.descUserAddr(), q.addr.availUserAddr(),
                        q.addr.usedUserAddr(), features)
                : SplitVirtqueue.ofUserAddresses(memory, q.num, q.addr.descUserAddr(), q.addr.availUserAddr(),
                        q.addr.usedUserAddr(), features);
    }

    private IOThread home() { return node.home(); }

    /**
     * Runs {@code task} on the node's home IOThread and waits (control plane only). A move in
     * progress is waited out first, so the task runs where the workers are.
     */
    private <T> T onHome(int request, Callable<T> task) throws VhostUserException {
        try {
            node.settled().join();
            return home().call(task);
        } catch (VhostUserException e) {
            throw e;
        } catch (Exception e) {
            throw VhostUserException.replyError(request, e.getMessage() == null ? e.toString() : e.getMessage());
        }
    }

    /**
     * Control thread: stops popping on ring {@code index} (all rings for -1) and waits until the
     * requests they have in flight were answered (status byte, used entry published, call
     * eventfd signalled), at most {@link #drainTimeoutMs}. The caller then stops the rings
     * ({@code QueueWorker.stop}); after a timeout the requests still in flight are dropped when
     * they complete, and the memory they point into stays mapped until then.
     */
    private void holdAndWait(int req, int index) throws VhostUserException {
        java.util.concurrent.CompletableFuture<Void> idle = onHome(req, () -> {
            List<QueueWorker> held = new java.util.ArrayList<>();
            for (int i = 0; i < workers.length; i++) {
                if (workers[i] != null && (index < 0 || i == index)) {
                    workers[i].hold();
                    held.add(workers[i]);
                }
            }
            java.util.concurrent.CompletableFuture<Void> f = new java.util.concurrent.CompletableFuture<>();
            whenIdle(held, () -> f.complete(null));
            return f;
        });
        try {
            idle.get(drainTimeoutMs, java.util.concurrent.TimeUnit.MILLISECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            LOG.error("vhost-user-blk {}: {}: requests still in flight after {} ms; giving {} up (their completions are dropped)",
                    exportId, VhostUserRequest.name(req), drainTimeoutMs, index < 0 ? "the rings" : "ring " + index);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw VhostUserException.replyError(req, "interrupted while waiting for requests in flight");
        } catch (java.util.concurrent.ExecutionException e) {
            throw VhostUserException.replyError(req, e.getCause().toString());
        }
    }

    /** Home thread: runs {@code then} once none of {@code ws} has a request in flight (at once if none has). */
    private static void whenIdle(List<QueueWorker> ws, Runnable then) {
        int[] left = {0};
        for (QueueWorker w : ws) if (w.outstanding() > 0) left[0]++;
        if (left[0] == 0) {
            then.run();
            return;
        }
        for (QueueWorker w : ws) {
            if (w.outstanding() > 0) w.whenIdle(() -> {
                if (--left[0] == 0) then.run();
            });
        }
    }

    /**
     * Workers taken out of {@link #workers} (a ring stopped, restarted or paused) that still have
     * requests in flight, after a drain that timed out or a reset: guest memory they point into
     * must outlive them, whichever later message retires it. Home thread.
     */
    private final List<QueueWorker> retiring = new java.util.ArrayList<>();

    /** Home thread: {@code w} left {@link #workers}; remember it until its requests are over. */
    private void retiring(QueueWorker w) {
        if (w.outstanding() == 0) return;
        retiring.add(w);
        w.whenIdle(() -> retiring.remove(w));
    }

    /**
     * Home thread: unmaps {@code old} once the stopped workers {@code ws} and every worker still
     * retiring from an earlier stop have nothing in flight.
     */
    private void unmapWhenIdle(List<QueueWorker> ws, GuestMemory.Retired old) {
        if (old == null) return;
        List<QueueWorker> all = new java.util.ArrayList<>(ws);
        for (QueueWorker w : retiring) if (!all.contains(w)) all.add(w);
        whenIdle(all, old::unmap);
    }

    private QueueSetup queue(int request, int index) throws VhostUserException {
        if (index < 0 || index >= numQueues) {
            throw VhostUserException.replyError(request, "queue index " + index + " out of range (num-queues=" + numQueues + ")");
        }
        return queues[index];
    }

    // ---- negotiation ----

    @Override
    public long getFeatures() { return offeredFeatures; }

    @Override
    public void setFeatures(long features) throws VhostUserException {
        if ((features & ~offeredFeatures) != 0) {
            throw VhostUserException.replyError(VhostUserRequest.VHOST_USER_SET_FEATURES,
                    "features 0x" + Long.toHexString(features & ~offeredFeatures) + " were not offered");
        }
        ackedFeatures = features;
        // virtio 1.2 §5.2.5.1: without FLUSH the device MUST start in writethrough mode.
        config.writeback = (features & bit(VIRTIO_BLK_F_FLUSH)) != 0;
    }

    @Override
    public long getProtocolFeatures() { return offeredProtocolFeatures; }

    @Override
    public void setProtocolFeatures(long features) throws VhostUserException {
        if ((features & ~offeredProtocolFeatures) != 0) {
            throw VhostUserException.replyError(VhostUserRequest.VHOST_USER_SET_PROTOCOL_FEATURES, "protocol features not offered");
        }
        ackedProtocolFeatures = features;
    }

    @Override
    public void setOwner() { }

    @Override
    public void resetOwner() throws VhostUserException {
        stopAll(VhostUserRequest.VHOST_USER_RESET_OWNER);
    }

    @Override
    public long getQueueNum() { return numQueues; }

    @Override
    public long getMaxMemSlots() { return GuestMemory.MAX_REGIONS; }

    // ---- memory ----

    @Override
    public void setMemTable(List<MemoryRegion> regions, int[] fds) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_MEM_TABLE;
        int[] dups = dupAll(req, fds, regions.size());
        try {
            holdAndWait(req, -1);
        } catch (VhostUserException e) {
            for (int d : dups) LibcSocket.closeQuietly(d);
            throw e;
        }
        onHome(req, () -> {
            boolean[] running = new boolean[workers.length];
            List<QueueWorker> stopped = pauseWorkers(running);
            unmapWhenIdle(stopped, memory.retire());
            try {
                for (int i = 0; i < regions.size(); i++) {
                    MemoryRegion r = regions.get(i);
                    int fd = dups[i];
                    dups[i] = -1;
                    memory.addRegion(fd, r.guestAddr(), r.size(), r.userAddr(), r.mmapOffset());
                }
            } catch (GuestMemoryException e) {
                for (int d : dups) if (d >= 0) LibcSocket.closeQuietly(d);
                memory.clear();
                throw VhostUserException.replyError(req, e.getMessage());
            }
            restartWorkers(running);
            return null;
        });
        for (int i = 0; i < regions.size(); i++) LibcSocket.closeQuietly(fds[i]); // ours on success
        LOG.debug("vhost-user-blk {}: memory table of {} regions ({} bytes)", exportId, regions.size(), memory.regionsSize());
    }

    @Override
    public void addMemReg(MemoryRegion r, int fd) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_ADD_MEM_REG;
        int dup = dupAll(req, new int[] {fd}, 1)[0];
        try {
            holdAndWait(req, -1);
        } catch (VhostUserException e) {
            LibcSocket.closeQuietly(dup);
            throw e;
        }
        onHome(req, () -> {
            boolean[] running = new boolean[workers.length];
            pauseWorkers(running); // nothing is unmapped: the rings are rebuilt only
            try {
                memory.addRegion(dup, r.guestAddr(), r.size(), r.userAddr(), r.mmapOffset());
            } catch (GuestMemoryException e) {
                restartWorkers(running);
                throw VhostUserException.replyError(req, e.getMessage());
            }
            restartWorkers(running);
            return null;
        });
        LibcSocket.closeQuietly(fd);
    }

    @Override
    public void remMemReg(MemoryRegion r) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_REM_MEM_REG;
        holdAndWait(req, -1);
        onHome(req, () -> {
            boolean[] running = new boolean[workers.length];
            List<QueueWorker> stopped = pauseWorkers(running);
            GuestMemory.Retired removed = memory.retireRegion(r.guestAddr(), r.size(), r.userAddr());
            unmapWhenIdle(stopped, removed);
            restartWorkers(running);
            if (removed == null) throw VhostUserException.replyError(req, "no such memory region");
            return null;
        });
    }

    /** GuestMemory takes ownership of the fds it maps; the dispatcher keeps the originals until we return. */
    private static int[] dupAll(int request, int[] fds, int n) throws VhostUserException {
        int[] out = new int[n];
        for (int i = 0; i < n; i++) {
            try {
                out[i] = LibcMemory.dup(fds[i]);
            } catch (com.sun.jna.LastErrorException e) {
                for (int j = 0; j < i; j++) LibcSocket.closeQuietly(out[j]);
                throw VhostUserException.replyError(request, "dup: errno " + e.getErrorCode());
            }
        }
        return out;
    }

    // ---- rings ----

    @Override
    public void setVringNum(int index, int num) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_VRING_NUM;
        // Packed rings need no power of two (§2.8.10.1); SET_FEATURES comes before the rings.
        if (num <= 0 || num > MAX_QUEUE_SIZE || (!packed() && Integer.bitCount(num) != 1)) {
            throw VhostUserException.replyError(req, "queue size " + num + " is not a power of two up to " + MAX_QUEUE_SIZE);
        }
        queue(req, index).num = num;
    }

    @Override
    public void setVringAddr(VringAddr addr) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_VRING_ADDR;
        QueueSetup q = queue(req, addr.index());
        // With a memory table, refuse rings outside it now (as QEMU's back-ends do), not at the kick.
        int num = q.num;
        onHome(req, () -> {
            if (memory.regionCount() == 0) return null; // checked again when the ring starts
            boolean packed = (ackedFeatures & bit(VIRTIO_F_RING_PACKED)) != 0;
            long descLen = num == 0 ? 1 : 16L * num;
            long availLen = num == 0 ? 1 : packed ? 4 : 6 + 2L * num;
            long usedLen = num == 0 ? 1 : packed ? 4 : 6 + 8L * num;
            try {
                memory.uvaToHost(addr.descUserAddr(), descLen);
                memory.uvaToHost(addr.availUserAddr(), availLen);
                memory.uvaToHost(addr.usedUserAddr(), usedLen);
            } catch (GuestMemoryException e) {
                throw VhostUserException.replyError(req, "ring " + addr.index() + " is not inside guest memory: " + e.getMessage());
            }
            return null;
        });
        q.addr = addr;
    }

    @Override
    public void setVringBase(int index, int base) throws VhostUserException {
        // Split: bits 0-15 avail index. Packed: avail and used positions with their wrap
        // counters in all 32 bits (vhost-user.rst, "Vring descriptor indices for packed virtqueues").
        queue(VhostUserRequest.VHOST_USER_SET_VRING_BASE, index).base = packed() ? base : base & 0xFFFF;
    }

    @Override
    public int getVringBase(int index) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_GET_VRING_BASE;
        QueueSetup q = queue(req, index);
        // The ring base is reported after the ring's requests in flight completed and their used
        // entries were published, as qemu-storage-daemon does (its vhost-user server handles no
        // message while requests are in flight): for a split ring the front-end then sees
        // used->idx == the base we report, nothing outstanding, and resumes the ring from there
        // after a migration or a restart without in-flight tracking. Reporting at once would leave
        // requests the guest never gets back unless in-flight tracking resubmits them.
        holdAndWait(req, index);
        Integer base = onHome(req, () -> {
            QueueWorker w = workers[index];
            if (w == null) return q.base;
            workers[index] = null;
            int b = w.stop();
            w.release(); // frees its memory now, or once a request dropped after the timeout is over
            retiring(w);
            return b;
        });
        q.base = base;
        // The ring is stopped: its kick fd is done with; a restart sends a new one.
        if (q.kickFd >= 0) {
            LibcSocket.closeQuietly(q.kickFd);
            q.kickFd = -1;
        }
        q.enabled = false;
        return base;
    }

    @Override
    public void setVringKick(int index, int fd) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_VRING_KICK;
        QueueSetup q = queue(req, index);
        if (fd < 0) throw VhostUserException.replyError(req, "polling mode (no kick eventfd) is not supported");
        // Starting the ring: the spec says a ring starts when it gets its kick fd.
        int oldKick = q.kickFd;
        q.kickFd = fd;
        try {
            startWorker(req, index);
        } catch (VhostUserException e) {
            q.kickFd = oldKick;
            throw e;
        }
        if (oldKick >= 0 && oldKick != fd) LibcSocket.closeQuietly(oldKick);
        // Without VHOST_USER_F_PROTOCOL_FEATURES rings start enabled (vhost-user.rst, "Ring states").
        if ((ackedFeatures & bit(VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES)) == 0) setVringEnable(index, true);
    }

    private void startWorker(int req, int index) throws VhostUserException {
        QueueSetup q = queues[index];
        if (q.num == 0 || q.addr == null) throw VhostUserException.replyError(req, "ring " + index + " has no size or address yet");
        int kick = q.kickFd;
        int call = q.callFd;
        int err = q.errFd;
        boolean enabled = q.enabled;
        long features = ackedFeatures;
        holdAndWait(req, index); // a ring restarted while running: answer what it has in flight first
        onHome(req, () -> {
            QueueWorker old = workers[index];
            if (old != null) {
                old.stop();
                old.release();
                retiring(old);
                workers[index] = null;
            }
            Virtqueue vq;
            try {
                vq = newQueue(q, features);
            } catch (VirtqueueException e) {
                // The usual cause of an empty table: QEMU's guest RAM is not shared (no fd to send).
                String hint = memory.regionCount() > 0 ? "" : " (the front-end shared no guest memory: start QEMU with"
                        + " -object memory-backend-memfd,id=mem,size=<RAM>,share=on -numa node,memdev=mem)";
                throw VhostUserException.replyError(req, "ring " + index + ": " + e.getMessage() + hint);
            }
            workers[index] = newWorker(index, vq, q, kick, call, err, enabled);
            return null;
        });
    }

    /** A worker for a freshly built queue, recovering in-flight requests when there is an area; home thread. */
    private QueueWorker newWorker(int index, Virtqueue queue, QueueSetup q, int kick, int call, int err, boolean enabled) {
        InflightTracker inflight = null;
        int[] resubmit = null;
        List<PackedDescriptorList> resubmitPacked = null;
        queue.setLastAvailIdx(q.base);
        if (inflightAddr != 0 && (ackedProtocolFeatures & VhostUserProtocolFeature.mask(VhostUserProtocolFeature.INFLIGHT_SHMFD)) != 0) {
            long stride = inflightRegionSize(queue instanceof PackedVirtqueue, q.num);
            if (index >= inflightNumQueues) {
                LOG.warn("vhost-user-blk {}: the in-flight area covers {} queue(s), not ring {}; not tracking it",
                        exportId, inflightNumQueues, index);
            } else if (q.num != inflightQueueSize) {
                LOG.warn("vhost-user-blk {}: ring {} has size {} but the in-flight area was made for {}; not tracking it",
                        exportId, index, q.num, inflightQueueSize);
            } else if ((index + 1) * stride > inflightSize) {
                // A front-end that asks for the area before SET_FEATURES (QEMU before 5.2) gets one
                // sized for split rings; packed regions are larger.
                if (!inflightTooSmallLogged) {
                    inflightTooSmallLogged = true;
                    LOG.warn("vhost-user-blk {}: the in-flight area ({} bytes) is too small for {} rings of {}; not tracking them",
                            exportId, inflightSize, queue instanceof PackedVirtqueue ? "packed" : "split", q.num);
                }
            } else if (queue instanceof PackedVirtqueue vq) {
                InflightPackedQueue tracker = new InflightPackedQueue(inflightAddr + index * stride, q.num);
                int used = vq.lastUsedIdx();
                InflightPackedQueue.Recovery r = tracker.start(used & 0x7FFF, (used & 0x8000) != 0, vq::descriptorFlags);
                if (r != null) {
                    // A packed ring keeps no used index in guest memory, so after a crash the
                    // front-end's SET_VRING_BASE is stale: the area has the positions.
                    vq.restore(r.availSlot(), r.availWrap(), r.usedSlot(), r.usedWrap());
                    resubmitPacked = r.resubmit();
                }
                vq.recordPopsInto(tracker.popList());
                inflight = tracker;
            } else {
                SplitVirtqueue vq = (SplitVirtqueue) queue;
                InflightQueue tracker = new InflightQueue(inflightAddr + index * stride, q.num);
                inflight = tracker;
                int usedIdx = vq.usedIdxInRing();
                resubmit = tracker.start(usedIdx);
                if (resubmit != null) {
                    // Everything after used->idx was taken in order: the in-flight ones first, so the
                    // next new request is at used + in-flight (as libvhost-user does).
                    vq.setLastAvailIdx((usedIdx + resubmit.length) & 0xFFFF);
                }
            }
        }
        VirtioBlkRequests requests = new VirtioBlkRequests(exportId, node.io(), node.stats(), stats, !writable, config);
        QueueWorker w = new QueueWorker(index, "vhost-user-blk " + exportId + " queue " + index, queue, inflight, resubmit,
                resubmitPacked, requests, kick, call, err);
        w.setEnabled(enabled);
        w.attach(home());
        return w;
    }

    @Override
    public void setVringCall(int index, int fd) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_VRING_CALL;
        QueueSetup q = queue(req, index);
        onHome(req, () -> {
            if (workers[index] != null) workers[index].setCallFd(fd);
            return null;
        });
        // Only once no worker uses the old fd: a closed number may be reused at once by another file.
        int old = q.callFd;
        q.callFd = fd;
        if (old >= 0 && old != fd) LibcSocket.closeQuietly(old);
    }

    @Override
    public void setVringErr(int index, int fd) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_VRING_ERR;
        QueueSetup q = queue(req, index);
        onHome(req, () -> {
            if (workers[index] != null) workers[index].setErrFd(fd);
            return null;
        });
        int old = q.errFd;
        q.errFd = fd;
        if (old >= 0 && old != fd) LibcSocket.closeQuietly(old);
    }

    @Override
    public void setVringEnable(int index, boolean enable) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_VRING_ENABLE;
        QueueSetup q = queue(req, index);
        q.enabled = enable;
        onHome(req, () -> {
            if (workers[index] != null) workers[index].setEnabled(enable);
            return null;
        });
    }

    // ---- config space ----

    @Override
    public byte[] getConfig(int offset, int size, int flags) throws VhostUserException {
        byte[] b = config.read(offset, size);
        if (b == null) throw VhostUserException.replyError(VhostUserRequest.VHOST_USER_GET_CONFIG, "config range out of bounds");
        return b;
    }

    @Override
    public void setConfig(int offset, byte[] data, int flags) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_CONFIG;
        // Only the writeback byte is writable, and only with CONFIG_WCE (virtio 1.2 §5.2.5).
        if (offset == VirtioBlkConfig.WRITEBACK_OFFSET && data.length == 1 && (ackedFeatures & bit(VIRTIO_BLK_F_CONFIG_WCE)) != 0) {
            config.writeback = data[0] != 0;
            LOG.info("vhost-user-blk {}: guest set the write cache to {}", exportId, config.writeback ? "writeback" : "writethrough");
            return;
        }
        throw VhostUserException.replyError(req, "config bytes " + offset + ".." + (offset + data.length) + " are read-only");
    }

    // ---- in-flight area (INFLIGHT_SHMFD) ----

    @Override
    public InflightFd getInflightFd(int nq, int queueSize) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_GET_INFLIGHT_FD;
        if (nq <= 0 || nq > numQueues || queueSize <= 0 || queueSize > MAX_QUEUE_SIZE) {
            throw VhostUserException.replyError(req, "in-flight area for " + nq + " queues of " + queueSize);
        }
        // The ring layout is known here: QEMU (since 5.2) sends SET_FEATURES before GET_INFLIGHT_FD.
        long size = nq * inflightRegionSize(packed(), queueSize);
        int fd;
        try {
            fd = LibcMemory.memfdCreate("vmm-inflight-" + exportId);
            LibcMemory.truncate(fd, size); // a new memfd reads as zeros: every region starts fresh (version 0)
        } catch (java.io.IOException e) {
            throw VhostUserException.replyError(req, "cannot create the in-flight area: " + e.getMessage());
        }
        try {
            mapInflight(req, fd, size, nq, queueSize);
        } catch (VhostUserException e) {
            LibcSocket.closeQuietly(fd);
            throw e;
        }
        return new InflightFd(new dev.vmm.vhostuser.message.Inflight(size, 0, nq, queueSize), fd);
    }

    @Override
    public void setInflightFd(dev.vmm.vhostuser.message.Inflight inflight, int fd) throws VhostUserException {
        int req = VhostUserRequest.VHOST_USER_SET_INFLIGHT_FD;
        if (inflight.mmapOffset() != 0 || inflight.queueSize() <= 0 || inflight.queueSize() > MAX_QUEUE_SIZE
                || inflight.numQueues() <= 0 || inflight.numQueues() > numQueues
                // the smaller, split size: a ring that needs more is not tracked (logged at its start)
                || inflight.mmapSize() < inflight.numQueues() * inflightRegionSize(false, inflight.queueSize())) {
            throw VhostUserException.replyError(req, "in-flight area description does not fit: " + inflight);
        }
        mapInflight(req, fd, inflight.mmapSize(), inflight.numQueues(), inflight.queueSize());
    }

    /**
     * Bytes of one queue's part of the in-flight area: QueueRegionSplit or QueueRegionPacked
     * (vhost-user.rst, "Inflight I/O tracking"); queue i's part starts at i times this.
     */
    private static long inflightRegionSize(boolean packed, int queueSize) {
        return packed ? InflightPackedQueue.regionSize(queueSize) : InflightQueue.regionSize(queueSize);
    }

    /** Maps (replacing any previous area) with the rings stopped; takes {@code fd} on success. */
    private void mapInflight(int req, int fd, long size, int numQueuesInArea, int queueSize) throws VhostUserException {
        // A file shorter than the mapping would raise SIGBUS on the first access: check it first.
        long fileSize;
        try {
            fileSize = LibcMemory.regularFileSize(fd);
        } catch (LibcMemory.ErrnoException e) {
            throw VhostUserException.replyError(req, "in-flight fd: " + e.getMessage());
        }
        if (fileSize < size) {
            throw VhostUserException.replyError(req, "in-flight area of " + size + " bytes but the file has "
                    + (fileSize < 0 ? "no size (not a regular file)" : fileSize + " bytes"));
        }
        holdAndWait(req, -1);
        onHome(req, () -> {
            boolean[] running = new boolean[workers.length];
            pauseWorkers(running); // stopped rings never touch the area again, even with requests in flight
            long addr;
            try {
                addr = LibcMemory.mapShared(fd, size, 0, true);
            } catch (java.io.IOException e) {
                restartWorkers(running);
                throw VhostUserException.replyError(req, "cannot map the in-flight area: " + e.getMessage());
            }
            unmapInflight();
            inflightAddr = addr;
            inflightSize = size;
            inflightQueueSize = queueSize;
            inflightNumQueues = numQueuesInArea;
            inflightFd = fd;
            restartWorkers(running);
            return null;
        });
    }

    /** Home thread, workers stopped. */
    private void unmapInflight() {
        if (inflightAddr != 0) {
            try {
                LibcMemory.unmap(inflightAddr, inflightSize);
            } catch (java.io.IOException e) {
                LOG.warn("vhost-user-blk {}: munmap of the in-flight area: {}", exportId, e.getMessage());
            }
            inflightAddr = 0;
        }
        if (inflightFd >= 0) {
            LibcSocket.closeQuietly(inflightFd);
            inflightFd = -1;
        }
    }

    // ---- NodeUser: following the node to another IOThread; each step on the thread the handoff names ----

    @Override
    public String describe() { return "vhost-user-blk export '" + exportId + "'"; }

    /** How log lines name the device. */
    @Override
    public String toString() { return "vhost-user-blk " + exportId; }

    @Override
    public void quiesce() {
        for (QueueWorker w : workers) if (w != null) w.quiesce();
    }

    @Override
    public java.util.concurrent.CompletableFuture<Void> detach() {
        for (QueueWorker w : workers) if (w != null) w.detach(); // kicks keep counting in their eventfds
        return java.util.concurrent.CompletableFuture.completedFuture(null);
    }

    @Override
    public java.util.concurrent.CompletableFuture<Void> attach(IOThread newHome) {
        java.util.List<java.util.concurrent.CompletableFuture<Void>> fs = new java.util.ArrayList<>();
        for (QueueWorker w : workers) if (w != null) fs.add(w.attach(newHome));
        return java.util.concurrent.CompletableFuture.allOf(fs.toArray(new java.util.concurrent.CompletableFuture[0]));
    }

    @Override
    public void resume() {
        for (QueueWorker w : workers) if (w != null) w.resume();
    }

    // ---- teardown ----

    @Override
    public void disconnected() {
        try {
            stopAll(VhostUserRequest.VHOST_USER_RESET_OWNER);
        } catch (VhostUserException e) {
            LOG.warn("vhost-user-blk {}: stopping after disconnect: {}", exportId, e.getMessage());
        }
        stats.frontend(null);
        LOG.debug("vhost-user-blk {}: front-end disconnected; waiting for a new one", exportId); // the connection logs it at INFO
    }

    @Override
    public void connected(String peer) {
        stats.frontend(peer);
        stats.connections.increment();
    }

    /** This device's counters (any thread). */
    ExportStats stats() { return stats; }

    /** Stops every ring, unmaps guest memory, closes the eventfds: back to a fresh device. */
    void stopAll(int req) throws VhostUserException {
        onHome(req, () -> {
            // No waiting here: the front-end is gone or resets the device. Completions of the
            // requests in flight are dropped (in-flight tracking, if any, still lists them for the
            // next back-end); the memory they point into is unmapped once they are over.
            List<QueueWorker> stopped = pauseWorkers(new boolean[workers.length]);
            unmapWhenIdle(stopped, memory.retire());
            unmapInflight(); // the front-end keeps its copy and sends it again with SET_INFLIGHT_FD
            return null;
        });
        for (QueueSetup q : queues) {
            for (int fd : new int[] {q.kickFd, q.callFd, q.errFd}) if (fd >= 0) LibcSocket.closeQuietly(fd);
            q.kickFd = q.callFd = q.errFd = -1;
            q.enabled = false;
            q.addr = null;
            q.num = 0;
        }
        ackedFeatures = 0;
        ackedProtocolFeatures = 0;
    }

    /**
     * Stops the running workers (keeping their positions, marking them in {@code running}) so
     * memory can change; home thread. Returns them: any with requests still in flight (a drain
     * that timed out, a reset) frees its memory once they are over, and so must the guest memory
     * they point into ({@link #unmapWhenIdle}).
     */
    private List<QueueWorker> pauseWorkers(boolean[] running) {
        List<QueueWorker> stopped = new java.util.ArrayList<>();
        for (int i = 0; i < workers.length; i++) {
            if (workers[i] != null) {
                running[i] = true;
                queues[i].base = workers[i].stop();
                workers[i].release();
                stopped.add(workers[i]);
                retiring(workers[i]);
                workers[i] = null;
            }
        }
        return stopped;
    }

    /** Rebuilds the workers stopped by {@link #pauseWorkers}, re-translating ring addresses; home thread. */
    private void restartWorkers(boolean[] running) throws VhostUserException {
        for (int i = 0; i < running.length; i++) {
            if (!running[i]) continue;
            QueueSetup q = queues[i];
            Virtqueue vq;
            try {
                vq = newQueue(q, ackedFeatures);
            } catch (VirtqueueException e) {
                LOG.error("vhost-user-blk {}: ring {} no longer fits guest memory: {}", exportId, i, e.getMessage());
                continue;
            }
            workers[i] = newWorker(i, vq, q, q.kickFd, q.callFd, q.errFd, q.enabled);
        }
    }
}
