package dev.vmm.core.block;

import dev.vmm.core.stats.Counter;
import dev.vmm.core.stats.LatencyHistogram;

/**
 * Per-node counters. Written on the node's home IOThread only, one writer at a time (a handoff
 * orders the old thread's writes before the new one's), so each {@link Counter} update is a
 * plain add and an opaque store, no atomic instruction; monitors read the counters from any
 * thread. Read the latency histogram with {@code node.home().call(() -> stats.latency.copy())}.
 */
public final class BlockStats {
    public final Counter readOps = new Counter();
    public final Counter readBytes = new Counter();
    public final Counter writeOps = new Counter();
    public final Counter writeBytes = new Counter();
    public final Counter flushOps = new Counter();
    public final Counter discardOps = new Counter();
    public final Counter zeroOps = new Counter();
    public final Counter errors = new Counter();
    /** Service time of each request on the home thread, in ns (parse to completion). */
    public final LatencyHistogram latency = new LatencyHistogram();
}
