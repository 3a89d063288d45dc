package dev.vmm.core.block;

import dev.vmm.iothread.IOThread;
import java.util.ArrayList;
import java.util.List;

/**
 * The driver that a node's users and parents call ({@link BlockNode#io()}): it forwards to the
 * node's own driver, or to what a block job put in front of it (a mirror's dirty-tracking
 * filter), or, after a mirror's pivot, to the target node. Callers keep this object, so a job
 * can insert and remove layers without touching them (QEMU changes the graph's edges instead).
 *
 * <p>Thread contract: the node's home IOThread only, as every {@link BlockDriver}; {@link #set}
 * too, between requests. A layer taken out while requests it accepted are still in flight is
 * {@link #retire retired}: {@link #whenIdle} waits for those too, so a move never rehomes the node
 * while a completion is still to be delivered through it.
 */
public final class NodeIo extends ForwardingBlockDriver {
    /** The layer requests go to now: the node's driver, a filter over it, or another node's io. */
    private BlockDriver current;
    /** Layers taken out with requests still in flight (rare: a job's end under load). */
    private final List<BlockDriver> retired = new ArrayList<>();

    NodeIo(BlockDriver own) {
        super(own);
        this.current = own;
    }

    /** The layer requests go to now. */
    public BlockDriver current() { return current; }

    /** The node's own driver (what {@link #attach} and {@link #close} act on). */
    public BlockDriver own() { return d; }

    /** Home thread: later requests go to {@code next}; {@code previous} is kept until idle. */
    public void set(BlockDriver next) {
        if (current != d && current != next && current.inFlight() > 0) retired.add(current);
        current = next;
    }

    /** Home thread: a layer that is no longer current but may still complete requests. */
    public void retire(BlockDriver layer) {
        if (layer != current && layer.inFlight() > 0 && !retired.contains(layer)) retired.add(layer);
    }

    @Override public long size() { return current.size(); }
    @Override public boolean readOnly() { return current.readOnly(); }
    @Override public void read(long o, long a, int l) throws BlockException { current.read(o, a, l); }
    @Override public void write(long o, long a, int l, boolean fua) throws BlockException { current.write(o, a, l, fua); }
    @Override public void readv(long o, long iov, int n, long t) throws BlockException { current.readv(o, iov, n, t); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException { current.writev(o, iov, n, t, fua); }
    @Override public void flush() throws BlockException { current.flush(); }
    @Override public void discard(long o, long l) throws BlockException { current.discard(o, l); }
    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException { current.writeZeroes(o, l, u, f, fua); }
    @Override public void prefetch(long o, long l) throws BlockException { current.prefetch(o, l); }
    @Override public void status(long o, long m, BlockStatus out) throws BlockException { current.status(o, m, out); }
    @Override public void read(long o, long a, int l, IoCompletion c) throws BlockException { current.read(o, a, l, c); }
    @Override public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException { current.write(o, a, l, fua, c); }
    @Override public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException { current.readv(o, iov, n, t, c); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException { current.writev(o, iov, n, t, fua, c); }
    @Override public void flush(IoCompletion c) throws BlockException { current.flush(c); }
    @Override public void discard(long o, long l, IoCompletion c) throws BlockException { current.discard(o, l, c); }
    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException { current.writeZeroes(o, l, u, f, fua, c); }
    @Override public int sendfileFd() { return current == d ? d.sendfileFd() : -1; }
    @Override public int memoryAlignment() { return current.memoryAlignment(); }
    @Override public int preferredBlockSize() { return current.preferredBlockSize(); }

    @Override
    public int inFlight() {
        int n = current.inFlight();
        if (current != d) n += d.inFlight();
        for (BlockDriver r : retired) n += r.inFlight();
        return n;
    }

    /** Idle when the current layer, the own driver and every retired layer are, all at once. */
    @Override
    public void whenIdle(Runnable idle) {
        retired.removeIf(r -> r.inFlight() == 0);
        if (!retired.isEmpty()) {
            retired.get(0).whenIdle(() -> whenIdle(idle));
            return;
        }
        current.whenIdle(() -> {
            if (current != d && d.inFlight() > 0) {
                d.whenIdle(() -> whenIdle(idle));
            } else if (inFlight() > 0) {
                whenIdle(idle);
            } else {
                idle.run();
            }
        });
    }

    @Override public void attach(IOThread home) { d.attach(home); }
    @Override public void close() { d.close(); }
}
