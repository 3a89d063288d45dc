package dev.vmm.core.block;

import java.util.concurrent.atomic.LongAdder;

/**
 * Per-node counters. Written on the node's home IOThread, read by monitors from any thread;
 * {@link LongAdder} keeps the writer cheap and the readers safe across a handoff. The latency
 * histogram has one writer at a time (the home thread; a handoff orders the old thread's writes
 * before the new one's): read it with {@code node.home().call(() -> stats.latency.copy())}.
 */
public final class BlockStats {
    public final LongAdder readOps = new LongAdder();
    public final LongAdder readBytes = new LongAdder();
    public final LongAdder writeOps = new LongAdder();
    public final LongAdder writeBytes = new LongAdder();
    public final LongAdder flushOps = new LongAdder();
    public final LongAdder discardOps = new LongAdder();
    public final LongAdder zeroOps = new LongAdder();
    public final LongAdder errors = new LongAdder();
    /** Service time of each request on the home thread, in ns (parse to completion). */
    public final dev.vmm.core.stats.LatencyHistogram latency = new dev.vmm.core.stats.LatencyHistogram();
}
