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
 * <p>Thread contract: the data-path counters ({@link Counter}s and {@link #latency}) are written
 * on the node's home IOThread only (one writer at a time; a handoff orders the old thread's
 * writes before the new one's), so an update is a plain add and an opaque store, no atomic
 * instruction; any thread may read them. {@link #connections} is counted where a client is
 * accepted, not necessarily on the home thread, so it stays a {@link LongAdder}.
 * {@link #frontend(String)} is called by the control plane.
 */
public final class ExportStats {
    public final Counter readOps = new Counter();
    public final Counter readBytes = new Counter();
    public final Counter writeOps = new Counter();
    public final Counter writeBytes = new Counter();
    /** Flush, discard, write-zeroes, cache, block status, get-id: requests that move no data. */
    public final Counter otherOps = new Counter();
    public final Counter errors = new Counter();
    public final Counter inFlight = new Counter();
    /** Clients (NBD connections, a vhost-user front-end) that have connected so far; any thread. */
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

    /** Requests in flight now (one writer: never negative unless a request is uncounted twice). */
    public long inFlightNow() { return Math.max(0, inFlight.sum()); }

    public String frontend() { return frontend; }

    public void frontend(String who) { frontend = who; }
}
