package dev.vmm.core.stats;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;

/**
 * The last {@link #CAPACITY} handoffs (a node moved between IOThreads) with their pauses, plus
 * totals and a pause histogram since start: what {@code x-query-handoffs}, {@code vmm top} and the
 * metrics endpoint show. Handoffs are control-plane events (at most a few thousand a second), so
 * a lock is fine here.
 *
 * <p>Thread contract: any thread; {@link #record} is called by whichever thread finishes a move.
 */
public final class HandoffLog {
    /** Handoffs kept for display. */
    public static final int CAPACITY = 64;

    /** One finished move: pause from the first quiesce to the last resume; time in epoch ms. */
    public record Handoff(String node, String from, String to, long pauseNs, long epochMillis) {}

    private final ArrayDeque<Handoff> recent = new ArrayDeque<>(CAPACITY);
    private final LatencyHistogram pauses = new LatencyHistogram();

    public synchronized void record(Handoff h) {
        if (recent.size() == CAPACITY) recent.removeFirst();
        recent.addLast(h);
        pauses.record(h.pauseNs());
    }

    /** The most recent handoffs, oldest first. */
    public synchronized List<Handoff> recent() { return new ArrayList<>(recent); }

    public synchronized long total() { return pauses.count(); }

    /** A copy of the histogram of every pause so far. */
    public synchronized LatencyHistogram pauses() { return pauses.copy(); }
}
