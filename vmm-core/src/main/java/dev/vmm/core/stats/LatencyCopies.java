package dev.vmm.core.stats;

import dev.vmm.iothread.IOThread;
import java.util.Map;
import java.util.Set;
import java.util.WeakHashMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Copies of latency histograms for monitors (QMP, the metrics endpoint), taken on the
 * histogram's one writer, the node's home IOThread, with a bounded wait: an IOThread stuck in a
 * task or a syscall must not hang a scrape or a QMP query for good.
 *
 * <p>The first copy an IOThread does not answer within {@link #WAIT_MS} marks it unresponsive
 * and logs one WARN; until it answers again, copies from it are not waited for (each caller
 * gets {@code null} at once and leaves that latency out), and at most one copy per histogram
 * stays queued on it, so a long stall does not pile up tasks. When the thread has run a queued
 * copy, it is marked responsive again (one INFO) and waited for as before.
 *
 * <p>Thread contract: any thread except an IOThread other than the histogram's home (the home
 * copies directly). Never the main loop: it may wait up to {@link #WAIT_MS}.
 */
public final class LatencyCopies {
    private static final Logger LOG = LoggerFactory.getLogger(LatencyCopies.class);
    /**
     * How long a monitor waits for one copy before it takes the IOThread for stuck: well above a
     * GC pause or a full request batch on a loaded 2-core machine, well below a monitor's patience.
     */
    public static final long WAIT_MS = 2000;

    /** Copies asked for and not yet taken, per live histogram (weak: removed nodes go away). */
    private static final Map<LatencyHistogram, CompletableFuture<LatencyHistogram>> PENDING = new WeakHashMap<>();
    /** IOThreads that did not answer a copy in time and have not answered since. */
    private static final Set<IOThread> UNRESPONSIVE = java.util.Collections.synchronizedSet(
            java.util.Collections.newSetFromMap(new WeakHashMap<>())); // weak: deleted IOThreads go away

    private LatencyCopies() {}

    /**
     * A consistent copy of {@code live}, taken on {@code home}; null when {@code home} does not
     * answer within {@link #WAIT_MS} (or at once when it is known not to answer), or is gone
     * (its node is being removed).
     */
    public static LatencyHistogram copy(IOThread home, LatencyHistogram live) {
        if (home.inThread()) return live.copy();
        CompletableFuture<LatencyHistogram> f;
        synchronized (PENDING) {
            f = PENDING.get(live);
            if (f != null && f.isDone()) { // the copy queued while it did not answer has run
                answered(home);
                f = null;
            }
            if (f == null) {
                try {
                    f = home.submit(live::copy);
                } catch (RuntimeException e) { // shut down: the node is being removed
                    return null;
                }
                PENDING.put(live, f);
            }
        }
        try {
            LatencyHistogram h = f.get(UNRESPONSIVE.contains(home) ? 0 : WAIT_MS, TimeUnit.MILLISECONDS);
            synchronized (PENDING) {
                PENDING.remove(live, f);
            }
            answered(home);
            return h;
        } catch (TimeoutException e) {
            if (UNRESPONSIVE.add(home)) {
                LOG.warn("IOThread {} did not answer within {} ms (a task or a syscall is stuck on it): the latency of its "
                        + "nodes and exports is left out of QMP and /metrics until it answers", home.id(), WAIT_MS);
            }
            return null;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return null;
        } catch (java.util.concurrent.ExecutionException e) {
            return null;
        }
    }

    private static void answered(IOThread home) {
        if (UNRESPONSIVE.remove(home)) LOG.info("IOThread {} answers again", home.id());
    }
}
