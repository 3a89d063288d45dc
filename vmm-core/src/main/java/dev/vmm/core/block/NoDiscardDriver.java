package dev.vmm.core.block;

/**
 * {@code discard=ignore} on a format node: guest discards succeed and do nothing, as QEMU's
 * without {@code BDRV_O_UNMAP}; write-zeroes may no longer unmap. Same thread contract as
 * {@link BlockDriver}.
 */
public final class NoDiscardDriver extends ForwardingBlockDriver {
    /** Discards answered without I/O: from a later task, counted in flight. */
    private final LaterCompletions later = new LaterCompletions();

    public NoDiscardDriver(BlockDriver d) {
        super(d);
    }

    /** The driver underneath (for what {@code query-named-block-nodes} shows). */
    public BlockDriver inner() { return d; }

    @Override public void discard(long o, long l) { }

    @Override
    public void discard(long o, long l, IoCompletion c) throws BlockException {
        if (readOnly()) throw new BlockException(dev.vmm.core.linux.Errno.EROFS, "the node is read-only");
        later.complete(c, 0, d);
    }

    @Override
    public void attach(dev.vmm.iothread.IOThread home) {
        later.attach(home);
        super.attach(home);
    }

    @Override public int inFlight() { return d.inFlight() + later.pending(); }

    @Override public void whenIdle(Runnable idle) { later.whenIdle(idle, d); }

    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException { d.writeZeroes(o, l, false, f, fua); }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
        d.writeZeroes(o, l, false, f, fua, c);
    }
}
