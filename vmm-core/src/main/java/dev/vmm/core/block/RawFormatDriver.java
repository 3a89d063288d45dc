package dev.vmm.core.block;

import dev.vmm.core.linux.Errno;
import dev.vmm.iothread.IOThread;

/**
 * The {@code raw} format ({@code --blockdev driver=raw,file=...}): its {@code file} child's bytes
 * as they are, or the window {@code [offset, offset + size)} of them (QEMU's {@code offset} and
 * {@code size} keys). Requests pass through to the child driver with the offset added.
 * {@link #inFlight()} and {@link #whenIdle} count this node's own requests only (those it passed
 * to the child and not yet completed, and discards it answers itself): the child may have other
 * parents or an export of its own, whose I/O must not hold this node's final flush and close
 * ({@code blockdev-del} of one raw window over a file that a busy sibling window shares). A move
 * drains the child after this node, which waits for the rest.
 *
 * <p>The child is a node of the graph: this driver never closes it and never moves it (the
 * daemon moves every node of a graph, children first). With {@code discard=ignore} guest
 * discards succeed without reaching the child, as QEMU does without {@code BDRV_O_UNMAP}.
 *
 * <p>Thread contract: that of {@link BlockDriver}: the node's home IOThread only.
 */
public final class RawFormatDriver extends ForwardingBlockDriver {
    private final long offset;
    private final long size;
    private final boolean readOnly;
    private final boolean unmap;
    /** Set by {@link #attach}: where discards answered without I/O are delivered. */
    private IOThread home;
    /** This node's requests in flight (home thread). */
    private int own;
    private final java.util.ArrayDeque<Tracked> freeTracked = new java.util.ArrayDeque<>();
    private final java.util.ArrayDeque<Runnable> idleWaiters = new java.util.ArrayDeque<>();

    /** The completion this node gives the child for one request: counts it. Pooled. */
    private final class Tracked implements IoCompletion {
        IoCompletion done;

        @Override
        public void ioDone(int errno) {
            IoCompletion x = done;
            done = null;
            freeTracked.push(this);
            own--;
            try {
                x.ioDone(errno);
            } finally {
                if (own == 0) {
                    while (!idleWaiters.isEmpty()) idleWaiters.poll().run();
                }
            }
        }
    }

    private Tracked track(IoCompletion c) {
        Tracked t = freeTracked.poll();
        if (t == null) t = new Tracked();
        t.done = java.util.Objects.requireNonNull(c, "done");
        own++;
        return t;
    }

    /** The child refused the request at once: it was never accepted. */
    private void refused(Tracked t) {
        t.done = null;
        freeTracked.push(t);
        own--;
    }

    /**
     * @param offset where the window starts in the child, bytes
     * @param size   the window's length, or -1 for the rest of the child
     */
    public RawFormatDriver(BlockDriver file, long offset, long size, boolean readOnly, boolean unmap) throws BlockException {
        super(file);
        long childSize = file.size();
        if (offset < 0 || offset > childSize || (size >= 0 && size > childSize - offset)) {
            // QEMU's wording (block/raw-format.c)
            throw new BlockException(Errno.EINVAL, "The sum of offset (" + offset + ") and size (" + Math.max(size, 0)
                    + ") has to be smaller or equal to the actual size of the containing file (" + childSize + ")");
        }
        this.offset = offset;
        this.size = size < 0 ? childSize - offset : size;
        this.readOnly = readOnly || file.readOnly();
        this.unmap = unmap;
    }

    public long offset() { return offset; }

    /** Whether a window was given (QEMU then names the node by a {@code json:} filename). */
    public boolean windowed() { return offset != 0 || size != d.size(); }

    private void check(long o, long length, boolean write) throws BlockException {
        if (write && readOnly) throw new BlockException(Errno.EROFS, "the node is read-only");
        if (o < 0 || length < 0 || o > size || length > size - o) {
            throw new BlockException(Errno.EINVAL, "request [" + o + ", +" + length + ") beyond the end of the disk (" + size + " bytes)");
        }
    }

    @Override public long size() { return size; }
    @Override public boolean readOnly() { return readOnly; }

    @Override public void read(long o, long a, int l) throws BlockException { check(o, l, false); d.read(o + offset, a, l); }
    @Override public void write(long o, long a, int l, boolean fua) throws BlockException { check(o, l, true); d.write(o + offset, a, l, fua); }
    @Override public void readv(long o, long iov, int n, long t) throws BlockException { check(o, t, false); d.readv(o + offset, iov, n, t); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException { check(o, t, true); d.writev(o + offset, iov, n, t, fua); }
    @Override public void flush() throws BlockException { if (!readOnly) d.flush(); }

    @Override
    public void discard(long o, long l) throws BlockException {
        check(o, l, true);
        if (unmap) d.discard(o + offset, l);
    }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException {
        check(o, l, true);
        d.writeZeroes(o + offset, l, u && unmap, f, fua);
    }

    @Override public void prefetch(long o, long l) throws BlockException { check(o, l, false); d.prefetch(o + offset, l); }

    @Override
    public void status(long o, long m, BlockStatus out) throws BlockException {
        check(o, 1, false);
        d.status(o + offset, Math.min(m, size - o), out);
        if (out.length > size - o) out.length = size - o;
    }

    @Override
    public void read(long o, long a, int l, IoCompletion c) throws BlockException {
        check(o, l, false);
        Tracked t = track(c);
        try { d.read(o + offset, a, l, t); } catch (BlockException | RuntimeException e) { refused(t); throw e; }
    }

    @Override
    public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
        check(o, l, true);
        Tracked t = track(c);
        try { d.write(o + offset, a, l, fua, t); } catch (BlockException | RuntimeException e) { refused(t); throw e; }
    }

    @Override
    public void readv(long o, long iov, int n, long tl, IoCompletion c) throws BlockException {
        check(o, tl, false);
        Tracked t = track(c);
        try { d.readv(o + offset, iov, n, tl, t); } catch (BlockException | RuntimeException e) { refused(t); throw e; }
    }

    @Override
    public void writev(long o, long iov, int n, long tl, boolean fua, IoCompletion c) throws BlockException {
        check(o, tl, true);
        Tracked t = track(c);
        try { d.writev(o + offset, iov, n, tl, fua, t); } catch (BlockException | RuntimeException e) { refused(t); throw e; }
    }

    @Override
    public void flush(IoCompletion c) throws BlockException {
        Tracked t = track(c);
        try { d.flush(t); } catch (BlockException | RuntimeException e) { refused(t); throw e; }
    }

    @Override
    public void discard(long o, long l, IoCompletion c) throws BlockException {
        check(o, l, true);
        if (!unmap) {
            // QEMU without BDRV_O_UNMAP: the discard succeeds and does nothing; answered from a
            // later task (never inside this call: IoCompletion's contract), in flight until then
            IOThread h = home;
            if (h == null) throw new BlockException(Errno.EIO, "not attached to an IOThread");
            Tracked t = track(c);
            h.loop().execute(() -> t.ioDone(0));
            return;
        }
        Tracked t = track(c);
        try { d.discard(o + offset, l, t); } catch (BlockException | RuntimeException e) { refused(t); throw e; }
    }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
        check(o, l, true);
        Tracked t = track(c);
        try { d.writeZeroes(o + offset, l, u && unmap, f, fua, t); } catch (BlockException | RuntimeException e) { refused(t); throw e; }
    }

    /** sendfile(2) reads the child's fd at the request's offset: only right without a window start. */
    @Override public int sendfileFd() { return offset == 0 ? d.sendfileFd() : -1; }

    /** The child is a node of its own: the daemon attaches it (children before parents). */
    @Override
    public void attach(IOThread newHome) {
        if (own != 0) throw new IllegalStateException("raw node attached to " + newHome.id() + " with " + own + " request(s) in flight");
        home = newHome;
    }

    /** This node's own requests (see the class comment). */
    @Override public int inFlight() { return own; }

    @Override
    public void whenIdle(Runnable idle) {
        if (own == 0) idle.run();
        else idleWaiters.add(idle);
    }

    /** The child is a node of its own: the daemon closes it after this one. */
    @Override public void close() { }
}
