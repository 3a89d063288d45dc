package dev.vmm.core.block;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.iothread.IOThread;
import java.util.ArrayDeque;
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
 *
 * <p>Dirty bitmaps: every write, writev, writeZeroes and discard accepted here marks the node's
 * recording bitmaps over its range (QEMU's bdrv_co_write_req_finish marks every write, whatever
 * its result). The mark is made when the request is accepted, not when it completes: the same
 * bits as QEMU's as long as nothing clears, adds or enables a bitmap while writes are in
 * flight, which is why every such change runs inside {@link #hold} (the bitmap commands and
 * {@code transaction} do; so must a job that clears or copies bits). After a mirror's pivot
 * (requests forwarded to another node's io) this node's bitmaps are not marked: the other io
 * marks its own. With no bitmap, a request pays one null check.
 *
 * <p>Drained sections: {@link #hold} keeps new requests (queued in order, counted in
 * {@link #inFlight}), runs its callback on the home thread once nothing else is in flight, and
 * {@link #release} submits the kept ones to whatever layer is current then (a mirror's filter
 * included). The synchronous calls (control plane, tests on the home thread) are never held.
 */
public final class NodeIo extends ForwardingBlockDriver {
    /** The layer requests go to now: the node's driver, a filter over it, or another node's io. */
    private BlockDriver current;
    /** Layers taken out with requests still in flight (rare: a job's end under load). */
    private final List<BlockDriver> retired = new ArrayList<>();

    // ---- dirty bitmaps and drained sections: home thread ----
    /** The node's bitmaps (each checked for recording at the mark), or null: none, or forwarded elsewhere. */
    private DirtyBitmap[] marks;
    /** What {@link #bitmaps} gave last (kept for {@link #set}). */
    private DirtyBitmap[] bitmaps;
    /** {@code discard=ignore}: a discard changes nothing, so it marks nothing (QEMU returns before marking). */
    private boolean discardIgnored;
    /** Open {@link #hold}s. */
    private int holds;
    /** Requests that arrived while held, in arrival order. */
    private final ArrayDeque<Runnable> held = new ArrayDeque<>();
    /** {@link #whenIdle} callers that came while requests were held: asked again after {@link #release}. */
    private final ArrayDeque<Runnable> afterRelease = new ArrayDeque<>();

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
        updateMarks();
    }

    /** Home thread: a layer that is no longer current but may still complete requests. */
    public void retire(BlockDriver layer) {
        if (layer != current && layer.inFlight() > 0 && !retired.contains(layer)) retired.add(layer);
    }

    /**
     * Home thread (or before the node has users): the node's bitmaps changed ({@link BlockNode}
     * calls this on add and remove). A bitmap in the array is marked while it is
     * {@link DirtyBitmap#recording() recording}, so enabling or disabling one needs no call.
     */
    void bitmaps(List<DirtyBitmap> all) {
        bitmaps = all.isEmpty() ? null : all.toArray(new DirtyBitmap[0]);
        updateMarks();
    }

    /** Before the node has users: discards are ignored ({@code discard=ignore}) and do not mark. */
    void discardIgnored(boolean on) { discardIgnored = on; }

    private void updateMarks() {
        // requests forwarded to another node's io change that node, which marks its own bitmaps
        marks = current instanceof NodeIo ? null : bitmaps;
    }

    private void mark(long offset, long length) {
        DirtyBitmap[] m = marks;
        if (m == null) return;
        for (DirtyBitmap b : m) if (b.recording()) b.mark(offset, length);
    }

    // ---- drained sections ----

    /**
     * Home thread: from now on requests are kept, not submitted; {@code drained} runs (on the home
     * thread, perhaps inside this call) once no request accepted before is in flight. Every hold
     * needs one {@link #release}; holds nest (the requests go when the last is released).
     */
    public void hold(Runnable drained) {
        holds++;
        activeIdle(drained);
    }

    /** Home thread: ends one {@link #hold}; the last submits the kept requests in arrival order. */
    public void release() {
        if (holds == 0) throw new IllegalStateException("release without hold");
        if (--holds > 0) return;
        while (holds == 0 && !held.isEmpty()) held.poll().run();
        if (holds == 0) {
            while (!afterRelease.isEmpty()) whenIdle(afterRelease.poll());
        }
    }

    /** True while at least one {@link #hold} is open. */
    public boolean holding() { return holds > 0; }

    /** A request kept by a hold: resubmitted through this io at release, or failed there. */
    private interface Later {
        void submit() throws BlockException;
    }

    /**
     * Callers test {@code holds != 0} first: the lambda they pass is then built only while holding,
     * so the request path allocates nothing even where the JIT does not inline this far (it did
     * not, once: ExportStatsTest saw 3-6 bytes per NBD read).
     */
    private boolean keep(Later later, IoCompletion done) {
        if (holds == 0) return false;
        held.add(() -> {
            try {
                later.submit();
            } catch (BlockException e) {
                done.ioDone(e.errno());
            }
        });
        return true;
    }

    /** Grows the node's driver; its bitmaps grow with it (QEMU's bdrv_dirty_bitmap_truncate). */
    @Override
    public void grow(long n) throws BlockException {
        d.grow(n);
        DirtyBitmap[] all = bitmaps;
        if (all == null) return;
        long size = d.size();
        for (DirtyBitmap b : all) if (b.size() < size) b.resize(size);
    }

    @Override public long size() { return current.size(); }
    @Override public boolean readOnly() { return current.readOnly(); }
    @Override public void read(long o, long a, int l) throws BlockException { current.read(o, a, l); }
    @Override public void readv(long o, long iov, int n, long t) throws BlockException { current.readv(o, iov, n, t); }
    @Override public void flush() throws BlockException { current.flush(); }
    @Override public void prefetch(long o, long l) throws BlockException { current.prefetch(o, l); }
    @Override public void status(long o, long m, BlockStatus out) throws BlockException { current.status(o, m, out); }

    // The synchronous writes (control plane, tests): done, then marked whatever the result, as QEMU.
    @Override
    public void write(long o, long a, int l, boolean fua) throws BlockException {
        try {
            current.write(o, a, l, fua);
        } finally {
            mark(o, l);
        }
    }

    @Override
    public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException {
        try {
            current.writev(o, iov, n, t, fua);
        } finally {
            mark(o, t);
        }
    }

    @Override
    public void discard(long o, long l) throws BlockException {
        try {
            current.discard(o, l);
        } finally {
            if (!discardIgnored) mark(o, l);
        }
    }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException {
        try {
            current.writeZeroes(o, l, u, f, fua);
        } finally {
            mark(o, l);
        }
    }

    // The data path: kept while held; marked once the layer below accepted the request.
    @Override
    public void read(long o, long a, int l, IoCompletion c) throws BlockException {
        if (holds != 0 && keep(() -> read(o, a, l, c), c)) return;
        current.read(o, a, l, c);
    }

    @Override
    public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException {
        if (holds != 0 && keep(() -> readv(o, iov, n, t, c), c)) return;
        current.readv(o, iov, n, t, c);
    }

    @Override
    public void flush(IoCompletion c) throws BlockException {
        if (holds != 0 && keep(() -> flush(c), c)) return;
        current.flush(c);
    }

    @Override
    public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
        if (holds != 0 && keep(() -> write(o, a, l, fua, c), c)) return;
        current.write(o, a, l, fua, c);
        if (marks != null) mark(o, l);
    }

    @Override
    public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
        if (holds != 0 && keep(() -> writev(o, iov, n, t, fua, c), c)) return;
        current.writev(o, iov, n, t, fua, c);
        if (marks != null) mark(o, t);
    }

    @Override
    public void discard(long o, long l, IoCompletion c) throws BlockException {
        if (holds != 0 && keep(() -> discard(o, l, c), c)) return;
        current.discard(o, l, c);
        if (marks != null && !discardIgnored) mark(o, l);
    }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
        if (holds != 0 && keep(() -> writeZeroes(o, l, u, f, fua, c), c)) return;
        current.writeZeroes(o, l, u, f, fua, c);
        if (marks != null) mark(o, l);
    }

    @Override public int sendfileFd() { return current == d ? d.sendfileFd() : -1; }
    @Override public int memoryAlignment() { return current.memoryAlignment(); }
    @Override public int preferredBlockSize() { return current.preferredBlockSize(); }

    /** Requests in flight below, plus the ones a hold keeps. */
    @Override
    public int inFlight() {
        return active() + held.size();
    }

    private int active() {
        int n = current.inFlight();
        if (current != d) n += d.inFlight();
        for (BlockDriver r : retired) n += r.inFlight();
        return n;
    }

    /**
     * Idle when the current layer, the own driver and every retired layer are, all at once, and
     * no request is kept by a hold (those count: a move waits for the release that submits them).
     */
    @Override
    public void whenIdle(Runnable idle) {
        if (!held.isEmpty()) {
            afterRelease.add(idle);
            return;
        }
        activeIdle(() -> {
            if (!held.isEmpty()) afterRelease.add(idle);
            else idle.run();
        });
    }

    /** Runs {@code idle} once nothing below is in flight (kept requests aside). */
    private void activeIdle(Runnable idle) {
        retired.removeIf(r -> r.inFlight() == 0);
        if (!retired.isEmpty()) {
            retired.get(0).whenIdle(() -> activeIdle(idle));
            return;
        }
        current.whenIdle(() -> {
            if (current != d && d.inFlight() > 0) {
                d.whenIdle(() -> activeIdle(idle));
            } else if (active() > 0) {
                activeIdle(idle);
            } else {
                idle.run();
            }
        });
    }

    @Override public void attach(IOThread home) { d.attach(home); }
    @Override public void close() { d.close(); }
}
