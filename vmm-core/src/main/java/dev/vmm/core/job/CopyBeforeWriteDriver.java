package dev.vmm.core.job;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.iothread.IOThread;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * The driver of a {@code copy-before-write} node (QEMU 7.2's block/copy-before-write.c, options
 * {@code file}, {@code target}, {@code bitmap}, {@code on-cbw-error}, {@code cbw-timeout}). In vmm the copy step
 * goes where every user of {@code file} meets it, the file node's {@code NodeIo}: creating the
 * node starts a {@link BackupJob#forFilter filter job} whose layer copies a cluster's old data to
 * {@code target} before any user's write changes it for the first time; a QEMU user gets the
 * same by replacing the graph edges with {@code blockdev-reopen}/{@code qom-set}. Requests sent to
 * this node itself go to {@code file}'s io (through that layer). Closing the node
 * ({@code blockdev-del}) removes the layer. A {@code snapshot-access} node over this one reads
 * {@code file} as it was when this node was created ({@link SnapshotAccessDriver}).
 *
 * <p>Thread contract: as every {@link dev.vmm.core.block.BlockDriver}: the node's home IOThread
 * (the file node's); {@link #open} on a control thread.
 */
public final class CopyBeforeWriteDriver extends ForwardingBlockDriver {
    private final BackupJob job;

    private CopyBeforeWriteDriver(BlockNode file, BackupJob job) {
        super(file.io());
        this.job = job;
    }

    /** The point-in-time machinery (for the snapshot-access node over this one). */
    BackupJob job() { return job; }

    /**
     * Control thread, with the graph's gates held and {@code target} on {@code file}'s home:
     * starts the layer (its start is the snapshot's instant) and returns the node's driver.
     *
     * @param clusterSize the copy unit: the target's cluster size, at least 64 KiB (QEMU's block-copy)
     */
    public static CopyBeforeWriteDriver open(BlockNode file, BlockNode target, int clusterSize, boolean breakSnapshot,
            dev.vmm.core.bitmap.DirtyBitmap bitmap, long timeoutSeconds) throws Exception {
        BackupJob job = BackupJob.forFilter(file, target, clusterSize, breakSnapshot, bitmap);
        job.start();
        job.started().get(timeoutSeconds, TimeUnit.SECONDS);
        return new CopyBeforeWriteDriver(file, job);
    }

    @Override
    public boolean readOnly() { return d.readOnly(); }

    /** The file node attaches its own driver: this node has nothing of its own to move. */
    @Override
    public void attach(IOThread home) { }

    /** Removes the layer; the file node stays open (it is not this node's to close). */
    @Override
    public void close() {
        IOThread h = job.source().home();
        if (h.inThread()) {
            job.stopFilter();
        } else {
            CompletableFuture<Void> f = new CompletableFuture<>();
            h.execute(() -> {
                job.stopFilter();
                f.complete(null);
            });
            f.join();
        }
    }
}
