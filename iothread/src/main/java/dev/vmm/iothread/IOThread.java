package dev.vmm.iothread;

import io.netty.channel.IoEventLoop;
import io.netty.channel.MultiThreadIoEventLoopGroup;
import io.netty.channel.epoll.EpollIoHandler;
import io.netty.util.concurrent.FastThreadLocalThread;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A named event-loop thread: one Netty 4.2 {@code SingleThreadIoEventLoop} driven by epoll.
 *
 * <p>An IOThread is the home of the block nodes placed on it: every request on such a node is
 * submitted and completed on this thread, so the data path needs no locks. The daemon's main
 * loop is an IOThread too (id {@value #MAIN_ID}): it runs the control plane and the NBD
 * handshakes.
 *
 * <p>Thread contract: {@link #execute}, {@link #submit}, {@link #inThread} and the accessors
 * may be called from any thread. {@link #shutdown} must not be called on this thread.
 */
public final class IOThread {
    /** Id of the daemon's main loop. */
    public static final String MAIN_ID = "main";
    /**
     * Id of the vhost-user control thread: front-end messages are handled there, and may wait for
     * a disk's move to finish, which never needs this thread (a move may need the main loop).
     */
    public static final String CONTROL_ID = "control";

    private final String id;
    private final MultiThreadIoEventLoopGroup group;
    private final IoEventLoop loop;
    private final Thread thread;
    /** The kernel's thread id (gettid), -1 if unknown; shown by QMP query-iothreads as thread-id. */
    private final long nativeThreadId;
    /** Tasks run; read by monitors from any thread. */
    private final AtomicLong tasks = new AtomicLong();
    /** Data-path requests served; written on this thread only. */
    private long requests;

    private IOThread(String id) {
        this.id = id;
        this.group = new MultiThreadIoEventLoopGroup(1,
                (java.util.concurrent.ThreadFactory) r -> new FastThreadLocalThread(r, threadName(id)), EpollIoHandler.newFactory());
        this.loop = (IoEventLoop) group.next();
        try {
            this.thread = loop.submit(Thread::currentThread).get();
            this.nativeThreadId = loop.submit(IOThread::currentNativeThreadId).get();
        } catch (Exception e) {
            group.shutdownGracefully(0, 0, TimeUnit.MILLISECONDS);
            throw new IllegalStateException("cannot start IOThread " + id, e);
        }
    }

    /** Starts a new IOThread with the given id ({@code iot0}, {@code main}, ...). */
    public static IOThread start(String id) {
        Objects.requireNonNull(id, "id");
        return new IOThread(id);
    }

    private static String threadName(String id) {
        return MAIN_ID.equals(id) ? "vmm-main" : CONTROL_ID.equals(id) ? "vmm-control" : "iothread-" + id;
    }

    public String id() { return id; }

    /** The Netty event loop: register channels and {@code IoHandle}s here. */
    public IoEventLoop loop() { return loop; }

    /** The loop's thread (for the OS thread id shown by monitors). */
    public Thread thread() { return thread; }

    /** The OS thread id of {@link #thread()} (what {@code gettid(2)} returns on it), or -1 if unknown. */
    public long nativeThreadId() { return nativeThreadId; }

    /**
     * gettid(2) of the calling thread, read from procfs: the first field of
     * {@code /proc/thread-self/stat} (proc(5)) is the tid. -1 when /proc is not mounted.
     */
    static long currentNativeThreadId() {
        try {
            String stat = java.nio.file.Files.readString(java.nio.file.Path.of("/proc/thread-self/stat"));
            return Long.parseLong(stat.substring(0, stat.indexOf(' ')));
        } catch (java.io.IOException | RuntimeException e) {
            return -1;
        }
    }

    /** True when the caller runs on this IOThread. */
    public boolean inThread() { return loop.inEventLoop(); }

    /** Runs {@code task} on this thread, later. */
    public void execute(Runnable task) {
        loop.execute(() -> { tasks.incrementAndGet(); task.run(); });
    }

    /** Runs {@code task} on this thread (at once when already on it) and returns its result. */
    public <T> CompletableFuture<T> submit(Callable<T> task) {
        CompletableFuture<T> f = new CompletableFuture<>();
        Runnable r = () -> {
            try { f.complete(task.call()); } catch (Throwable t) { f.completeExceptionally(t); }
        };
        if (inThread()) r.run(); else execute(r);
        return f;
    }

    /** Runs {@code task} on this thread and waits for it: only for the control plane and tests. */
    public <T> T call(Callable<T> task) throws Exception {
        if (inThread()) return task.call();
        try {
            return submit(task).get();
        } catch (java.util.concurrent.ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof Exception ex) throw ex;
            if (c instanceof Error err) throw err;
            throw e;
        }
    }

    public long tasksRun() { return tasks.get(); }

    /** Counts one data-path request served here. MUST be called on this thread (plain field, one writer). */
    public void countRequest() {
        requests++;
    }

    /** Requests served here so far (a recent value when read from another thread). */
    public long requests() { return requests; }

    /** Bytes this thread has allocated on the Java heap so far (HotSpot's per-thread counter), or -1. */
    public long allocatedBytes() {
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        if (mx instanceof com.sun.management.ThreadMXBean hs && hs.isThreadAllocatedMemorySupported()) {
            return hs.getThreadAllocatedBytes(thread.getId());
        }
        return -1;
    }

    /**
     * CPU time this thread has used so far (user + system), in ns, or -1 if the JVM cannot tell.
     * A monitor samples it twice: the delta over the wall-clock delta is the thread's busy
     * fraction (running tasks and I/O syscalls vs. waiting in epoll), at no cost to the loop.
     * Time blocked in a disk read that sleeps is not CPU time, so an IOThread waiting on a slow
     * disk shows as less busy than it is.
     */
    public long cpuTimeNanos() {
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        try {
            return mx.isThreadCpuTimeSupported() ? mx.getThreadCpuTime(thread.getId()) : -1;
        } catch (UnsupportedOperationException e) {
            return -1;
        }
    }

    /** Run on this thread when it stops, newest first (an I/O engine releasing its ring). */
    private final java.util.Deque<Runnable> shutdownHooks = new java.util.concurrent.ConcurrentLinkedDeque<>();

    /** Adds a task that runs on this thread just before it stops. Any thread. */
    public void addShutdownHook(Runnable hook) {
        shutdownHooks.addFirst(Objects.requireNonNull(hook));
    }

    /** Stops the loop after the tasks already queued; waits at most {@code timeoutMs}. */
    public boolean shutdown(long timeoutMs) {
        if (inThread()) throw new IllegalStateException("IOThread " + id + " cannot stop itself");
        if (!shutdownHooks.isEmpty()) {
            try {
                submit(() -> {
                    for (Runnable h; (h = shutdownHooks.pollFirst()) != null; ) h.run();
                    return null;
                }).get(timeoutMs, TimeUnit.MILLISECONDS);
            } catch (Exception e) {
                // a hook that fails or hangs must not keep the thread alive
            }
        }
        group.shutdownGracefully(0, timeoutMs, TimeUnit.MILLISECONDS);
        try {
            return group.awaitTermination(timeoutMs, TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        }
    }

    @Override
    public String toString() { return "IOThread[" + id + "]"; }
}
