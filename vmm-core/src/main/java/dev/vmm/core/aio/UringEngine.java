package dev.vmm.core.aio;

import dev.vmm.core.linux.Errno;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcMemory;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.iothread.IOThread;
import io.netty.channel.IoEvent;
import io.netty.channel.IoRegistration;
import io.netty.channel.epoll.EpollIoHandle;
import io.netty.channel.epoll.EpollIoOps;
import io.netty.channel.unix.FileDescriptor;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * An io_uring instance owned by one IOThread, driven from its epoll loop: requests become SQEs,
 * submitted with one {@code io_uring_enter} per loop iteration (a task queued by the first
 * submission of the iteration runs after every ready handle, so all of a wake-up's requests, from
 * every disk of the thread, share one syscall); completions are reaped right after submitting
 * (page-cache hits complete inline) and when the ring fd, registered in the loop's epoll
 * set, says the kernel finished more.
 *
 * <p>Why a ring beside epoll rather than Netty's io_uring transport: the IOThread's sockets
 * (NBD channels with sendfile/splice, the vhost-user socket with SCM_RIGHTS, kick eventfds) stay
 * on the epoll transport they are tested on, and a disk and its users can keep moving between
 * IOThreads as today; see docs/aio.md.
 *
 * <p>No allocation per request: requests carry their own fields, the slot table maps
 * {@code user_data} back to them, and requests that find the ring full wait on an intrusive list.
 * At most {@code cqEntries} requests are in the kernel at once, so the completion queue never
 * overflows.
 *
 * <p>Thread contract: everything after {@link #create} runs on the home IOThread ({@link #submit},
 * the eventfd handler, the flush task, {@link #close}).
 */
public final class UringEngine implements IoEngine, EpollIoHandle {
    private static final Logger LOG = LoggerFactory.getLogger(UringEngine.class);

    // ---- include/uapi/linux/io_uring.h, x86_64 syscall numbers ----
    static final int SYS_IO_URING_SETUP = 425;
    static final int SYS_IO_URING_ENTER = 426;
    static final int SYS_IO_URING_REGISTER = 427;
    static final long IORING_OFF_SQ_RING = 0L;
    static final long IORING_OFF_CQ_RING = 0x8000000L;
    static final long IORING_OFF_SQES = 0x10000000L;
    static final int IORING_FEAT_SINGLE_MMAP = 1;
    static final int IORING_ENTER_GETEVENTS = 1;
    static final int IORING_REGISTER_EVENTFD = 4;
    static final int IORING_SQ_CQ_OVERFLOW = 1 << 1;
    static final int SQE_SIZE = 64;
    static final int CQE_SIZE = 16;
    // struct io_uring_params: 10 u32 fields, then io_sqring_offsets (40 bytes), io_cqring_offsets (40 bytes)
    static final int PARAMS_SIZE = 120;
    static final int P_SQ_ENTRIES = 0, P_CQ_ENTRIES = 4, P_FEATURES = 20, P_SQ_OFF = 40, P_CQ_OFF = 80;
    static final int SQ_HEAD = 0, SQ_TAIL = 4, SQ_RING_MASK = 8, SQ_FLAGS = 16, SQ_ARRAY = 24;
    static final int CQ_HEAD = 0, CQ_TAIL = 4, CQ_RING_MASK = 8, CQ_CQES = 20;

    /** Holds the slot of an SQE turned into a NOP by {@link #failUnsubmitted} until its CQE is reaped. */
    private static final AioRequest FAILED = new AioRequest() {
        @Override
        public void completed(int res) {
            // nothing: the request it replaced was answered already
        }
    };

    /**
     * How completions wake the loop. By default the ring fd itself is in the epoll set (it polls
     * readable while the CQ holds entries, as QEMU's io_uring AIO uses it): no eventfd write in the
     * kernel and no eventfd read per wake-up. {@code -Dvmm.aio.uring-wakeup=eventfd} registers an
     * eventfd instead.
     */
    static final boolean WAKE_BY_EVENTFD = "eventfd".equals(System.getProperty("vmm.aio.uring-wakeup"));

    /** Default submission queue size; the completion queue is twice as large (the kernel's default). */
    public static final int DEFAULT_ENTRIES = 256;

    private final IOThread home;
    private final int ringFd;
    private final int eventFd;
    private final FileDescriptor nettyEventFd;
    private final long sqRing, sqRingSize, cqRing, cqRingSize, sqes, sqesSize;
    private final long sqHeadAddr, sqTailAddr, sqFlagsAddr, cqHeadAddr, cqTailAddr, cqesAddr;
    private final int sqMask, sqEntries, cqMask, cqEntries;
    private final long scratch = RawMemory.allocate(8);

    // ---- confined to the home thread ----
    private int sqTail;
    private int cqHead;
    /** SQEs written and not yet taken by io_uring_enter. */
    private int unsubmitted;
    private final AioRequest[] slots;
    private final int[] freeSlots;
    private int freeCount;
    private AioRequest waitHead, waitTail;
    private boolean flushScheduled;
    private boolean closed;
    private IoRegistration registration;
    private final Runnable flushTask = this::flushAndReap;

    private UringEngine(IOThread home, int ringFd, int eventFd, long params) throws LastErrorException {
        this.home = home;
        this.ringFd = ringFd;
        this.eventFd = eventFd;
        this.nettyEventFd = new FileDescriptor(eventFd >= 0 ? eventFd : ringFd);
        sqEntries = RawMemory.getLe32(params + P_SQ_ENTRIES);
        cqEntries = RawMemory.getLe32(params + P_CQ_ENTRIES);
        int features = RawMemory.getLe32(params + P_FEATURES);
        long sqOff = params + P_SQ_OFF;
        long cqOff = params + P_CQ_OFF;
        sqRingSize = RawMemory.getLe32(sqOff + SQ_ARRAY) + 4L * sqEntries;
        cqRingSize = RawMemory.getLe32(cqOff + CQ_CQES) + (long) CQE_SIZE * cqEntries;
        int prot = LibcMemory.PROT_READ | LibcMemory.PROT_WRITE;
        int flags = LibcMemory.MAP_SHARED | LibcMemory.MAP_POPULATE;
        if ((features & IORING_FEAT_SINGLE_MMAP) != 0) {
            long size = Math.max(sqRingSize, cqRingSize);
            sqRing = LibcMemory.mmap(0, size, prot, flags, ringFd, IORING_OFF_SQ_RING);
            cqRing = sqRing;
        } else {
            sqRing = LibcMemory.mmap(0, sqRingSize, prot, flags, ringFd, IORING_OFF_SQ_RING);
            cqRing = LibcMemory.mmap(0, cqRingSize, prot, flags, ringFd, IORING_OFF_CQ_RING);
        }
        sqesSize = (long) SQE_SIZE * sqEntries;
        sqes = LibcMemory.mmap(0, sqesSize, prot, flags, ringFd, IORING_OFF_SQES);
        sqHeadAddr = sqRing + RawMemory.getLe32(sqOff + SQ_HEAD);
        sqTailAddr = sqRing + RawMemory.getLe32(sqOff + SQ_TAIL);
        sqFlagsAddr = sqRing + RawMemory.getLe32(sqOff + SQ_FLAGS);
        sqMask = RawMemory.getLe32(sqRing + RawMemory.getLe32(sqOff + SQ_RING_MASK));
        cqHeadAddr = cqRing + RawMemory.getLe32(cqOff + CQ_HEAD);
        cqTailAddr = cqRing + RawMemory.getLe32(cqOff + CQ_TAIL);
        cqMask = RawMemory.getLe32(cqRing + RawMemory.getLe32(cqOff + CQ_RING_MASK));
        cqesAddr = cqRing + RawMemory.getLe32(cqOff + CQ_CQES);
        long array = sqRing + RawMemory.getLe32(sqOff + SQ_ARRAY);
        for (int i = 0; i < sqEntries; i++) RawMemory.putLe32(array + 4L * i, i); // SQEs are used in ring order
        sqTail = RawMemory.getLe32(sqTailAddr);
        cqHead = RawMemory.getLe32(cqHeadAddr);
        slots = new AioRequest[cqEntries];
        freeSlots = new int[cqEntries];
        for (int i = cqEntries - 1; i >= 0; i--) freeSlots[freeCount++] = i;
    }

    /**
     * Creates a ring of {@code entries} SQEs for {@code home} and joins its epoll set.
     *
     * @throws LastErrorException when the kernel refuses io_uring (ENOSYS on old kernels, EPERM
     *     under a seccomp profile or {@code kernel.io_uring_disabled}, ENOMEM under a low memlock limit)
     */
    public static UringEngine create(IOThread home, int entries) throws LastErrorException {
        long params = RawMemory.allocate(PARAMS_SIZE);
        int ringFd = -1;
        int eventFd = -1;
        UringEngine engine;
        try {
            RawMemory.fill(params, PARAMS_SIZE, 0);
            ringFd = (int) LibC.syscall(SYS_IO_URING_SETUP, entries, params, 0, 0, 0, 0);
            if (WAKE_BY_EVENTFD) eventFd = LibcSocket.eventfd();
            engine = new UringEngine(home, ringFd, eventFd, params);
            if (WAKE_BY_EVENTFD) {
                RawMemory.putLe32(params, eventFd); // io_uring_register takes a pointer to the fd
                // Not EVENTFD_ASYNC: that one only signals completions posted by io-wq workers, and an
                // O_DIRECT request that completes from the block layer's interrupt would never wake the loop.
                LibC.syscall(SYS_IO_URING_REGISTER, ringFd, IORING_REGISTER_EVENTFD, params, 1, 0, 0);
            }
        } catch (RuntimeException e) { // LastErrorException, or a mapping that failed
            closeQuietly(eventFd);
            closeQuietly(ringFd);
            throw e;
        } finally {
            RawMemory.free(params);
        }
        home.loop().register(engine).addListener(f -> {
            if (f.isSuccess()) {
                engine.registration = (IoRegistration) f.getNow();
                engine.registration.submit(EpollIoOps.EPOLLIN);
            } else {
                LOG.error("IOThread {}: cannot watch the io_uring eventfd: {}", home.id(), f.cause().toString());
            }
        });
        return engine;
    }

    private static void closeQuietly(int fd) {
        if (fd < 0) return;
        try {
            LibC.close(fd);
        } catch (LastErrorException ignored) {
            // nothing to do
        }
    }

    @Override
    public AioMode mode() { return AioMode.IO_URING; }

    @Override
    public int inFlight() { return cqEntries - freeCount; }

    @Override
    public void submit(AioRequest r) {
        assert home.inThread() : "aio submitted off its IOThread";
        if (closed) {
            throw new IllegalStateException("io_uring of IOThread " + home.id() + " is closed");
        }
        if (waitHead != null || !roomForOne()) {
            r.nextWaiting = null;
            if (waitTail == null) waitHead = r; else waitTail.nextWaiting = r;
            waitTail = r;
            return;
        }
        queue(r);
    }

    /**
     * Whether one more request can be queued now: a slot is free (at most cqEntries in the
     * kernel, so the completion queue cannot overflow) and the SQ has room, handing the SQ to the
     * kernel first if it is full.
     */
    private boolean roomForOne() {
        if (freeCount == 0) return false;
        if (unsubmitted == sqEntries) enter(0);
        return unsubmitted < sqEntries;
    }

    /** Queues waiting requests while there is room (after completions freed slots, or the SQ was submitted). */
    private void queueWaiting() {
        while (waitHead != null && roomForOne()) {
            AioRequest w = waitHead;
            waitHead = w.nextWaiting;
            if (waitHead == null) waitTail = null;
            w.nextWaiting = null;
            queue(w);
        }
    }

    /** Writes the SQE for {@code r} (a slot is free) and makes sure a flush follows. */
    private void queue(AioRequest r) {
        int slot = freeSlots[--freeCount];
        slots[slot] = r;
        r.slot = slot;
        long sqe = sqes + (long) SQE_SIZE * (sqTail & sqMask);
        RawMemory.fill(sqe, SQE_SIZE, 0);
        RawMemory.putByte(sqe, r.opcode);
        RawMemory.putByte(sqe + 1, r.sqeFlags);
        RawMemory.putLe32(sqe + 4, r.fd);
        RawMemory.putLe64(sqe + 8, r.offset);
        RawMemory.putLe64(sqe + 16, r.addr);
        RawMemory.putLe32(sqe + 24, r.len);
        RawMemory.putLe32(sqe + 28, r.rwFlags);
        RawMemory.putLe64(sqe + 32, slot);
        sqTail++;
        RawMemory.putLe32Release(sqTailAddr, sqTail); // the SQE is written before the kernel sees the tail
        unsubmitted++;
        if (!flushScheduled) {
            flushScheduled = true;
            home.loop().execute(flushTask); // runs after this iteration's other events: one enter per batch
        }
    }

    private void flushAndReap() {
        flushScheduled = false;
        if (closed) return;
        if (unsubmitted > 0) enter(0);
        reap();
        queueWaiting();
        if (unsubmitted > 0 && !flushScheduled) {
            // The kernel took only part of the SQ (short of memory, or a batch cut by a bad SQE):
            // the rest must not wait for an unrelated submission.
            flushScheduled = true;
            home.loop().execute(flushTask);
        }
    }

    /** io_uring_enter: submits what is queued; with GETEVENTS also flushes an overflowed CQ. */
    private void enter(int flags) {
        while (true) {
            try {
                long n = LibC.syscall(SYS_IO_URING_ENTER, ringFd, unsubmitted, 0, flags, 0, 0);
                unsubmitted -= (int) n;
                return;
            } catch (LastErrorException e) {
                int err = e.getErrorCode();
                if (err == Errno.EINTR) continue;
                if (err == Errno.EAGAIN || err == Errno.EBUSY) {
                    // The kernel is short of memory or has completions to post first: retry after reaping.
                    if (!flushScheduled) {
                        flushScheduled = true;
                        home.loop().execute(flushTask);
                    }
                    return;
                }
                // Nothing else is expected from a valid ring; fail the unsubmitted requests rather than hang them.
                LOG.error("io_uring_enter on IOThread {} failed: {}", home.id(), LibC.describe(err));
                failUnsubmitted(err);
                return;
            }
        }
    }

    /** The kernel refused to take SQEs: complete their requests with the error, as if it had. */
    private void failUnsubmitted(int err) {
        int kernelHead = RawMemory.getLe32Acquire(sqHeadAddr);
        for (int i = kernelHead; i != sqTail; i++) {
            long sqe = sqes + (long) SQE_SIZE * (i & sqMask);
            int slot = (int) RawMemory.getLe64(sqe + 32);
            AioRequest r = slot >= 0 && slot < slots.length ? slots[slot] : null;
            // Still consumed by a later enter, as a NOP: its slot stays taken by the sentinel until
            // that CQE is reaped, so it can neither reach a request that reuses the slot nor overflow the CQ.
            RawMemory.fill(sqe, SQE_SIZE, 0);
            RawMemory.putByte(sqe, OP_NOP);
            RawMemory.putLe64(sqe + 32, slot);
            if (r != null && r != FAILED) {
                slots[slot] = FAILED;
                r.slot = -1;
                home.loop().execute(() -> r.completed(-err));
            }
        }
    }

    /** Takes every completion the kernel posted and runs it. */
    private void reap() {
        while (true) {
            int tail = RawMemory.getLe32Acquire(cqTailAddr);
            if (cqHead == tail) {
                if ((RawMemory.getLe32Acquire(sqFlagsAddr) & IORING_SQ_CQ_OVERFLOW) != 0) {
                    enter(IORING_ENTER_GETEVENTS);
                    if (RawMemory.getLe32Acquire(cqTailAddr) != cqHead) continue;
                }
                return;
            }
            long cqe = cqesAddr + (long) CQE_SIZE * (cqHead & cqMask);
            int slot = (int) RawMemory.getLe64(cqe);
            int res = RawMemory.getLe32(cqe + 8);
            cqHead++;
            RawMemory.putLe32Release(cqHeadAddr, cqHead); // the entry is read before the kernel may reuse it
            AioRequest r = slot >= 0 && slot < slots.length ? slots[slot] : null;
            if (r == null) continue; // not ours: never expected
            slots[slot] = null;
            freeSlots[freeCount++] = slot;
            if (r == FAILED) { // the NOP of a request failUnsubmitted already answered
                queueWaiting();
                continue;
            }
            r.slot = -1;
            queueWaiting();
            try {
                r.completed(res);
            } catch (RuntimeException | Error e) {
                LOG.error("IOThread {}: an I/O completion failed", home.id(), e);
            }
        }
    }

    // ---- EpollIoHandle: the ring fd (or its eventfd) ----

    @Override
    public FileDescriptor fd() { return nettyEventFd; }

    @Override
    public void handle(IoRegistration reg, IoEvent event) {
        if (eventFd >= 0) {
            try {
                LibcSocket.eventfdRead(eventFd, scratch);
            } catch (LastErrorException e) {
                // EAGAIN: already drained
            }
        }
        if (!closed) {
            reap();
            queueWaiting();
        }
    }

    @Override
    public void close() {
        // Netty calls this when the registration is cancelled; the ring itself is closed by shutdown().
    }

    /** Releases the ring; on the home thread, once nothing is in flight (the IOThread is stopping). */
    void shutdown() {
        if (closed) return;
        closed = true;
        if (registration != null) registration.cancel();
        try {
            LibcMemory.munmap(sqes, sqesSize);
            LibcMemory.munmap(sqRing, Math.max(sqRingSize, cqRing == sqRing ? cqRingSize : 0));
            if (cqRing != sqRing) LibcMemory.munmap(cqRing, cqRingSize);
        } catch (LastErrorException e) {
            LOG.debug("io_uring munmap: {}", e.toString());
        }
        closeQuietly(ringFd);
        closeQuietly(eventFd);
        RawMemory.free(scratch);
    }

    @Override
    public String toString() {
        return "io_uring[" + home.id() + ", " + sqEntries + "/" + cqEntries + " entries]";
    }
}
