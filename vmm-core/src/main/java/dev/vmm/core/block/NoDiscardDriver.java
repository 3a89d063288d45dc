package dev.vmm.core.block;

/**
 * {@code discard=ignore} on a format node: guest discards succeed and do nothing, as QEMU's
 * without {@code BDRV_O_UNMAP}; write-zeroes may no longer unmap. Same thread contract as
 * {@link BlockDriver}.
 */
public final class NoDiscardDriver extends ForwardingBlockDriver {
    public NoDiscardDriver(BlockDriver d) {
        super(d);
    }

    /** The driver underneath (for what {@code query-named-block-nodes} shows). */
    public BlockDriver inner() { return d; }

    @Override public void discard(long o, long l) { }

    @Override
    public void discard(long o, long l, IoCompletion c) throws BlockException {
        if (readOnly()) throw new BlockException(dev.vmm.core.linux.Errno.EROFS, "the node is read-only");
        c.ioDone(0);
    }

    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException { d.writeZeroes(o, l, false, f, fua); }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
        d.writeZeroes(o, l, false, f, fua, c);
    }
}
