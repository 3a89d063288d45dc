package dev.vmm.core.job;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.iothread.IOThread;
import java.util.ArrayDeque;

/**
 * The driver of a {@code snapshot-access} node (QEMU 7.2's block/snapshot-access.c, option
 * {@code file} = a {@code copy-before-write} node): read-only, reads the copy-before-write node's
 * file as it was when that node was created. Clusters already copied come from the target, the
 * others from the live file while no write may change them. Block status reports data everywhere
 * (QEMU reports the snapshot's allocation; a reader that copies everything gets the same bytes).
 *
 * <p>Thread contract: the node's home IOThread only, as every {@link BlockDriver}.
 */
public final class SnapshotAccessDriver implements BlockDriver {
    private final CopyBeforeWriteDriver cbw;
    private final BackupJob job;
    private int pending;
    private final ArrayDeque<Runnable> idleWaiters = new ArrayDeque<>();

    public SnapshotAccessDriver(BlockDriver cbwDriver) throws BlockException {
        if (!(cbwDriver instanceof CopyBeforeWriteDriver c)) {
            throw new BlockException(Errno.EINVAL, "snapshot-access: the 'file' child must be a copy-before-write node");
        }
        this.cbw = c;
        this.job = c.job();
    }

    @Override public long size() { return job.source().size(); }
    @Override public boolean readOnly() { return true; }

    private static BlockException readOnlyError() {
        return new BlockException(Errno.EROFS, "snapshot-access nodes are read-only");
    }

    private static BlockException syncError() {
        return new BlockException(Errno.ENOTSUP, "snapshot-access nodes have no synchronous data path");
    }

    @Override public void read(long o, long a, int l) throws BlockException { throw syncError(); }
    @Override public void write(long o, long a, int l, boolean fua) throws BlockException { throw readOnlyError(); }
    @Override public void readv(long o, long iov, int n, long t) throws BlockException { throw syncError(); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException { throw readOnlyError(); }
    @Override public void flush() { }
    @Override public void discard(long o, long l) throws BlockException { throw readOnlyError(); }
    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException { throw readOnlyError(); }
    @Override public void prefetch(long o, long l) { }

    @Override
    public void status(long o, long m, BlockStatus out) throws BlockException {
        if (o < 0 || o >= size()) throw new BlockException(Errno.EINVAL, "offset " + o + " beyond the end of the snapshot");
        out.set(Math.max(1, Math.min(m, size() - o)), 0);
    }

    private IoCompletion counted(IoCompletion done) {
        pending++;
        return e -> {
            pending--;
            try {
                done.ioDone(e);
            } finally {
                if (pending == 0) while (!idleWaiters.isEmpty()) idleWaiters.poll().run();
            }
        };
    }

    @Override
    public void read(long o, long a, int l, IoCompletion c) throws BlockException {
        IoCompletion done = counted(c);
        try {
            job.snapshotRead(o, a, l, done);
        } catch (BlockException e) {
            pending--;
            throw e;
        }
    }

    /** Reads into a bounce buffer, then scatters it into the iovecs (16 bytes each: base, len). */
    @Override
    public void readv(long o, long iov, int n, long total, IoCompletion c) throws BlockException {
        if (total > Integer.MAX_VALUE) throw new BlockException(Errno.EINVAL, "read too large");
        long buf = RawMemory.allocate(Math.max(1, total));
        IoCompletion done = counted(e -> {
            try {
                if (e == 0) {
                    long at = 0;
                    for (int i = 0; i < n && at < total; i++) {
                        long base = RawMemory.getLe64(iov + 16L * i);
                        long len = Math.min(RawMemory.getLe64(iov + 16L * i + 8), total - at);
                        RawMemory.copy(buf + at, base, len);
                        at += len;
                    }
                }
            } finally {
                RawMemory.free(buf);
            }
            c.ioDone(e);
        });
        try {
            job.snapshotRead(o, buf, (int) total, done);
        } catch (BlockException e) {
            pending--;
            RawMemory.free(buf);
            throw e;
        }
    }

    @Override public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException { throw readOnlyError(); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException { throw readOnlyError(); }

    @Override
    public void flush(IoCompletion c) {
        IOThread h = job.source().home();
        IoCompletion done = counted(c);
        h.loop().execute(() -> done.ioDone(0));
    }

    @Override public void discard(long o, long l, IoCompletion c) throws BlockException { throw readOnlyError(); }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
        throw readOnlyError();
    }

    @Override public int inFlight() { return pending; }

    @Override
    public void whenIdle(Runnable idle) {
        if (pending == 0) idle.run();
        else idleWaiters.add(idle);
    }

    @Override public void attach(IOThread home) { }
    @Override public int preferredBlockSize() { return 4096; }
    @Override public void close() { }

    /** The copy-before-write node's driver this one reads through. */
    public CopyBeforeWriteDriver copyBeforeWrite() { return cbw; }
}
