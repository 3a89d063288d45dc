package dev.vmm.core.stats;

import java.util.concurrent.atomic.LongAdder;

/**
 * Per-export counters, beside the per-node {@code BlockStats}: what one way of reaching a disk
 * (an NBD export, a vhost-user-blk device) did. Counted on the node's home IOThread next to the
 * node's own counters; read by monitors (QMP, the metrics endpoint) from any thread.
 *
 * <p>{@link #inFlight} is requests accepted and not yet completed: for NBD, requests whose
 * header was parsed and whose reply is not yet written (a streamed WRITE stays in flight while
 * its payload arrives); for virtio, chains popped and not yet pushed to the used ring. Requests
 * run synchronously on the home thread, so it is mostly 0 or 1 per export when sampled; more
 * means payloads are still arriving.
 *
 * <p>Thread contract: the data-path methods are called on the node's home IOThread (one writer
 * at a time; a handoff orders the old thread's writes before the new one's); {@link LongAdder}
 * makes them allocation-free after its first use and the sums safe to read from any thread.
 * {@link #frontend(String)} is called by the control plane.
 */
public final class ExportStats {
    public final LongAdder readOps = new LongAdder();
    public final LongAdder readBytes = new LongAdder();
    public final LongAdder writeOps = new LongAdder();
    public final LongAdder writeBytes = new LongAdder();
    /** Flush, discard, write-zeroes, cache, block status, get-id: requests that move no data. */
    public final LongAdder otherOps = new LongAdder();
    public final LongAdder errors = new LongAdder();
    public final LongAdder inFlight = new LongAdder();
    /** Clients (NBD connections, a vhost-user front-end) that have connected so far. */
    public final LongAdder connections = new LongAdder();
    /**
     * Service time of this export's requests on the home thread (parse to completion). One
     * writer at a time, like the node's: read it with {@code node.home().call(latency::copy)}.
     */
    public final LatencyHistogram latency = new LatencyHistogram();
    /** The connected front-end of a vhost-user device, e.g. "pid 1234", or null. */
    private volatile String frontend;

    public void read(long bytes) {
        readOps.increment();
        readBytes.add(bytes);
    }

    public void write(long bytes) {
        writeOps.increment();
        writeBytes.add(bytes);
    }

    /** Requests in flight now, never negative (the sum is not an atomic snapshot). */
    public long inFlightNow() { return Math.max(0, inFlight.sum()); }

    public String frontend() { return frontend; }

    public void frontend(String who) { frontend = who; }
}
