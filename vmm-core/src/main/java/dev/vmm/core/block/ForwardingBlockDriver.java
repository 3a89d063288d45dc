package dev.vmm.core.block;

import dev.vmm.iothread.IOThread;

/**
 * A driver that passes every call to another: the base of filters and of fault-injecting test
 * drivers, which override only what they change. Same thread contract as {@link BlockDriver}.
 */
public abstract class ForwardingBlockDriver implements BlockDriver {
    protected final BlockDriver d;

    protected ForwardingBlockDriver(BlockDriver d) { this.d = d; }

    /** The driver underneath (for what {@code query-named-block-nodes} shows). */
    public BlockDriver forwardsTo() { return d; }

    @Override public long size() { return d.size(); }
    @Override public boolean readOnly() { return d.readOnly(); }
    @Override public void read(long o, long a, int l) throws BlockException { d.read(o, a, l); }
    @Override public void write(long o, long a, int l, boolean fua) throws BlockException { d.write(o, a, l, fua); }
    @Override public void readv(long o, long iov, int n, long t) throws BlockException { d.readv(o, iov, n, t); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException { d.writev(o, iov, n, t, fua); }
    @Override public void flush() throws BlockException { d.flush(); }
    @Override public void discard(long o, long l) throws BlockException { d.discard(o, l); }
    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException { d.writeZeroes(o, l, u, f, fua); }
    @Override public void grow(long n) throws BlockException { d.grow(n); }
    @Override public long allocatedSize() { return d.allocatedSize(); }
    @Override public void prefetch(long o, long l) throws BlockException { d.prefetch(o, l); }
    @Override public void status(long o, long m, BlockStatus out) throws BlockException { d.status(o, m, out); }
    @Override public void read(long o, long a, int l, IoCompletion c) throws BlockException { d.read(o, a, l, c); }
    @Override public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException { d.write(o, a, l, fua, c); }
    @Override public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException { d.readv(o, iov, n, t, c); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException { d.writev(o, iov, n, t, fua, c); }
    @Override public void flush(IoCompletion c) throws BlockException { d.flush(c); }
    @Override public void discard(long o, long l, IoCompletion c) throws BlockException { d.discard(o, l, c); }
    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException { d.writeZeroes(o, l, u, f, fua, c); }
    @Override public int inFlight() { return d.inFlight(); }
    @Override public void whenIdle(Runnable idle) { d.whenIdle(idle); }
    @Override public void attach(IOThread home) { d.attach(home); }
    @Override public int sendfileFd() { return d.sendfileFd(); }
    @Override public int memoryAlignment() { return d.memoryAlignment(); }
    @Override public int preferredBlockSize() { return d.preferredBlockSize(); }
    @Override public void close() { d.close(); }
}
