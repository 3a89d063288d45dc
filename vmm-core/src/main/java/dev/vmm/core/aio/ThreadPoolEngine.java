package dev.vmm.core.aio;

import dev.vmm.core.linux.Errno;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import dev.vmm.iothread.IOThread;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * {@code aio=threads}: each request is one blocking syscall ({@code preadv}, {@code pwritev2},
 * {@code fdatasync}, {@code fallocate}) on a worker of a process-wide pool, and its completion is
 * posted back to the home IOThread. This is QEMU's thread-pool model (at most
 * {@value #MAX_WORKERS} workers, idle ones leave after 10 s); it is the fallback where io_uring
 * is not allowed (a container's seccomp profile) and what {@code aio=threads} asks for.
 *
 * <p>Thread contract: {@link #submit} on the home IOThread; the syscall runs on a worker;
 * {@link AioRequest#completed} runs on the home IOThread. The request's fields are written before
 * the pool's queue hands it to a worker and its result before the loop's task queue hands it
 * back: both queues give the happens-before edges.
 */
public final class ThreadPoolEngine implements IoEngine {
    /** QEMU's thread pool keeps at most 64 workers. */
    static final int MAX_WORKERS = 64;

    private static final AtomicInteger WORKER_IDS = new AtomicInteger();
    private static final ThreadPoolExecutor POOL;

    static {
        POOL = new ThreadPoolExecutor(MAX_WORKERS, MAX_WORKERS, 10, TimeUnit.SECONDS, new LinkedBlockingQueue<>(), r -> {
            Thread t = new Thread(r, "vmm-aio-" + WORKER_IDS.incrementAndGet());
            t.setDaemon(true);
            return t;
        });
        POOL.allowCoreThreadTimeOut(true);
    }

    private final IOThread home;
    /** Confined to the home thread. */
    private int inFlight;

    ThreadPoolEngine(IOThread home) {
        this.home = home;
    }

    @Override
    public AioMode mode() { return AioMode.THREADS; }

    @Override
    public int inFlight() { return inFlight; }

    @Override
    public void submit(AioRequest r) {
        assert home.inThread() : "aio submitted off its IOThread";
        if (r.threadEngine != this) {
            r.threadEngine = this;
            r.threadWork = new Work(r); // once per pooled request and engine, not per submission
        }
        inFlight++;
        POOL.execute(r.threadWork);
    }

    /** Worker side: runs the syscall, then hands the result to the home loop. */
    private static final class Work implements Runnable {
        private final AioRequest r;
        private final Runnable finish = this::finish;

        Work(AioRequest r) { this.r = r; }

        @Override
        public void run() {
            int res;
            try {
                res = perform(r);
            } catch (RuntimeException | Error e) { // a request must complete whatever happens
                org.slf4j.LoggerFactory.getLogger(ThreadPoolEngine.class).error("aio=threads: {} failed", r, e);
                res = -Errno.EIO;
            }
            r.threadResult = res;
            r.threadEngine.home.loop().execute(finish);
        }

        private void finish() {
            ThreadPoolEngine e = r.threadEngine;
            e.inFlight--;
            r.completed(r.threadResult);
        }
    }

    /** The blocking syscall for one request; {@code -errno} on failure, EINTR retried. */
    public static int perform(AioRequest r) {
        while (true) {
            try {
                switch (r.opcode) {
                    case OP_READV:
                        return (int) LibC.preadv(r.fd, r.addr, r.len, r.offset);
                    case OP_WRITEV:
                        return (int) (r.rwFlags == 0 ? LibC.pwritev(r.fd, r.addr, r.len, r.offset)
                                : LibC.pwritev2(r.fd, r.addr, r.len, r.offset, r.rwFlags));
                    case OP_FSYNC:
                        LibC.fdatasync(r.fd);
                        return 0;
                    case OP_FALLOCATE:
                        LibC.fallocate(r.fd, r.len, r.offset, r.addr);
                        return 0;
                    case OP_NOP:
                        return 0;
                    default:
                        return -Errno.EINVAL;
                }
            } catch (LastErrorException e) {
                if (e.getErrorCode() != Errno.EINTR) return -e.getErrorCode();
            }
        }
    }
}
