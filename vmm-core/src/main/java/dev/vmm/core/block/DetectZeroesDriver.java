package dev.vmm.core.block;

/**
 * {@code detect-zeroes=on|unmap} on a format node ({@code raw}, {@code qcow2}): writes of zero
 * buffers go down as write-zeroes (see {@link DetectZeroes}). File nodes do the same inside
 * {@link RawFileDriver}, so that they stay recognisable as files. Same thread contract as
 * {@link BlockDriver}.
 */
public final class DetectZeroesDriver extends ForwardingBlockDriver {
    private final DetectZeroes mode;

    public DetectZeroesDriver(BlockDriver d, DetectZeroes mode) {
        super(d);
        this.mode = mode;
    }

    @Override
    public void write(long o, long a, int l, boolean fua) throws BlockException {
        if (l > 0 && DetectZeroes.isZero(a, l)) d.writeZeroes(o, l, mode.mayUnmap(), false, fua);
        else d.write(o, a, l, fua);
    }

    @Override
    public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException {
        if (t > 0 && DetectZeroes.iovIsZero(iov, n, t)) d.writeZeroes(o, t, mode.mayUnmap(), false, fua);
        else d.writev(o, iov, n, t, fua);
    }

    @Override
    public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
        if (l > 0 && DetectZeroes.isZero(a, l)) d.writeZeroes(o, l, mode.mayUnmap(), false, fua, c);
        else d.write(o, a, l, fua, c);
    }

    @Override
    public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
        if (t > 0 && DetectZeroes.iovIsZero(iov, n, t)) d.writeZeroes(o, t, mode.mayUnmap(), false, fua, c);
        else d.writev(o, iov, n, t, fua, c);
    }
}
