package dev.vmm.core.aio;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import dev.vmm.iothread.IOThread;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The I/O engines of each IOThread: one io_uring and one thread-pool engine at most per thread,
 * made on first use and shared by every node homed there, released when the thread stops.
 *
 * <p>Default mode: {@code io_uring}. Where the kernel refuses it (a container's seccomp profile,
 * {@code kernel.io_uring_disabled}, an old kernel) the engine falls back to {@code threads} and
 * says why in one WARN line. The environment variable {@code VMM_AIO} or the system property
 * {@code vmm.aio} ({@code threads|native|io_uring}) changes the default for nodes that do not
 * name {@code aio=}; the test suite runs once more with {@code VMM_AIO=threads}.
 *
 * <p>Thread contract: any thread.
 */
public final class IoEngines {
    private static final Logger LOG = LoggerFactory.getLogger(IoEngines.class);

    private IoEngines() {}

    private static final Map<IOThread, IoEngine> URING = new ConcurrentHashMap<>();
    private static final Map<IOThread, IoEngine> THREADS = new ConcurrentHashMap<>();
    /** Why io_uring cannot be used here, or null while it works; decided once per process. */
    private static volatile String uringUnavailable;

    /** The mode for nodes that do not say: {@code VMM_AIO}, {@code -Dvmm.aio}, else io_uring. */
    public static AioMode defaultMode() {
        String s = System.getProperty("vmm.aio", System.getenv("VMM_AIO"));
        AioMode m = s == null || s.isEmpty() ? null : AioMode.parse(s);
        return m == null ? AioMode.IO_URING : m;
    }

    /**
     * Makes {@code thread}'s io_uring now, on the thread itself (a new IOThread, before any node
     * lives there). The kernel ties a ring to the tasks that set it up and used it, and interrupts
     * their blocking calls with EINTR when it tears the ring down; made on the IOThread, the ring
     * concerns no other thread. Any thread but {@code thread}; a failure only logs (the fallback).
     */
    public static void prepare(IOThread thread) {
        try {
            thread.call(() -> forThread(thread, AioMode.IO_URING));
        } catch (Exception e) {
            LOG.warn("IOThread {}: cannot prepare its I/O engine: {}", thread.id(), e.toString());
        }
    }

    /** The engine of {@code thread} for {@code mode}; io_uring falls back to threads where refused. */
    public static IoEngine forThread(IOThread thread, AioMode mode) {
        if (mode == AioMode.THREADS || uringUnavailable != null) return threads(thread);
        IoEngine e = URING.get(thread);
        if (e != null) return e;
        if (!thread.inThread() && io.netty.util.internal.ThreadExecutorMap.currentExecutor() == null) {
            // Not on an event loop: make it on its own thread (see prepare); an event loop must not wait for another.
            try {
                return thread.call(() -> forThread(thread, mode));
            } catch (Exception ex) {
                throw new IllegalStateException("IOThread " + thread.id() + ": cannot make its I/O engine", ex);
            }
        }
        synchronized (IoEngines.class) {
            e = URING.get(thread);
            if (e != null) return e;
            if (uringUnavailable != null) return threads(thread);
            try {
                UringEngine u = UringEngine.create(thread, UringEngine.DEFAULT_ENTRIES);
                URING.put(thread, u);
                thread.addShutdownHook(() -> {
                    URING.remove(thread);
                    u.shutdown();
                });
                return u;
            } catch (LastErrorException ex) {
                uringUnavailable = LibC.describe(ex.getErrorCode());
                LOG.warn("io_uring is not available here (io_uring_setup: {}): file I/O uses aio=threads", uringUnavailable);
                return threads(thread);
            }
        }
    }

    /** Null while io_uring works here, else why not (after a first attempt). */
    public static String uringUnavailable() { return uringUnavailable; }

    private static IoEngine threads(IOThread thread) {
        return THREADS.computeIfAbsent(thread, t -> {
            t.addShutdownHook(() -> THREADS.remove(t));
            return new ThreadPoolEngine(t);
        });
    }
}
