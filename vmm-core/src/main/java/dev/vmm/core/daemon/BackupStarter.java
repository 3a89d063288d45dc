package dev.vmm.core.daemon;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.job.BackupJob;
import dev.vmm.core.job.JobEvents;
import dev.vmm.core.job.MirrorJob;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import java.util.List;

/**
 * {@code blockdev-backup} (QEMU 7.2's arguments and refusals: blockdev.c do_backup_common,
 * block/backup.c backup_job_create): parses, checks the nodes and the bitmap, and starts a
 * {@link BackupJob}. {@link #prepare} does only what can be dropped (a transaction's prepare);
 * {@link #start} ties the nodes and starts the job under the graph's gates.
 *
 * <p>Thread contract: the control thread (it waits for a move of the target and for the job's
 * start); one instance per command.
 */
public final class BackupStarter {
    /** QEMU's BACKUP_CLUSTER_SIZE_DEFAULT (block/backup.c): 64 KiB. */
    static final int BACKUP_CLUSTER_SIZE_DEFAULT = 64 << 10;

    private final Daemon daemon;

    public BackupStarter(Daemon daemon) { this.daemon = daemon; }

    /** A checked, not yet started backup. */
    public record Prepared(BackupJob job, BlockNode source, BlockNode target) {}

    /** Reads and checks the arguments; nothing changes yet. */
    public Prepared prepare(Options o, JobEvents events) throws OptionException, DaemonException {
        String jobId = o.optional("job-id", null);
        String device = o.required("device");
        String targetName = o.required("target");
        BackupJob.Sync sync = o.choice("sync", null, BackupJob.Sync.class);
        if (sync == null) throw new OptionException(OptionException.Kind.MISSING, o.optionName(), "sync", "Parameter 'sync' is missing");
        long speed = o.number("speed", 0, 0, Long.MAX_VALUE);
        String bitmapName = o.optional("bitmap", null);
        BackupJob.BitmapMode bitmapMode = o.choice("bitmap-mode", null, BackupJob.BitmapMode.class);
        boolean compress = o.bool("compress", false);
        MirrorJob.OnError onSource = o.choice("on-source-error", MirrorJob.OnError.REPORT, MirrorJob.OnError.class);
        MirrorJob.OnError onTarget = o.choice("on-target-error", MirrorJob.OnError.REPORT, MirrorJob.OnError.class);
        boolean autoFinalize = o.bool("auto-finalize", true);
        boolean autoDismiss = o.bool("auto-dismiss", true);
        String filterNodeName = o.optional("filter-node-name", null);
        o.checkAllConsumed();

        BlockNode source = JobStarts.lookup(daemon, device);
        BlockNode target = JobStarts.lookup(daemon, targetName);
        if (jobId == null) jobId = ""; // QEMU: the device name of a node without a BlockBackend
        if (!MirrorStarter.wellFormed(jobId)) throw new DaemonException("Invalid job ID '" + jobId + "'");

        // blockdev.c do_backup_common
        DirtyBitmap bitmap = null;
        if (bitmapName != null) {
            bitmap = source.dirtyBitmap(bitmapName);
            if (bitmap == null) throw new DaemonException("Bitmap '" + bitmapName + "' could not be found");
            if (bitmapMode == null) {
                if (sync == BackupJob.Sync.INCREMENTAL) bitmapMode = BackupJob.BitmapMode.ON_SUCCESS;
                else throw new DaemonException("Bitmap sync mode must be given when providing a bitmap");
            }
            checkBitmap(bitmap, source, false);
            if (sync == BackupJob.Sync.NONE) throw new DaemonException("sync mode 'none' does not produce meaningful bitmap outputs");
            if (bitmapMode == BackupJob.BitmapMode.NEVER && sync != BackupJob.Sync.BITMAP) {
                throw new DaemonException("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '"
                        + Options.spelling(sync) + "'");
            }
        }
        if (bitmapName == null && bitmapMode != null) throw new DaemonException("Cannot specify bitmap sync mode without a bitmap");

        // block/backup.c backup_job_create
        if (source == target) throw new DaemonException("Source and target cannot be the same");
        if (sync == BackupJob.Sync.INCREMENTAL || sync == BackupJob.Sync.BITMAP) {
            if (bitmap == null) {
                throw new DaemonException("must provide a valid bitmap name for '" + Options.spelling(sync) + "' sync mode");
            }
            if (sync == BackupJob.Sync.INCREMENTAL && bitmapMode != BackupJob.BitmapMode.ON_SUCCESS) {
                throw new DaemonException("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
            }
        }
        if (bitmap != null && bitmapMode != BackupJob.BitmapMode.NEVER) checkBitmap(bitmap, source, true);
        if (compress) {
            // QEMU compresses into qcow2 targets; vmm's qcow2 driver writes no compressed clusters.
            // QEMU names the target's BlockBackend, which a node has not: the name is empty.
            throw new DaemonException("Compression is not supported for this drive ");
        }
        if (filterNodeName != null) {
            throw new DaemonException("'filter-node-name' is not supported: the backup's copy-before-write layer is not a graph node here");
        }
        if (target.readOnly()) throw new DaemonException("Could not create node: Block node is read-only");
        if (source.size() != target.size()) throw new DaemonException("Source and target image have different sizes");
        checkNoJob(source);
        checkNoJob(target);

        int cluster = target.imageInfo().clusterSize();
        int clusterSize = Math.max(BACKUP_CLUSTER_SIZE_DEFAULT, cluster);
        BackupJob.Settings settings = new BackupJob.Settings(sync, bitmap, bitmapMode, clusterSize, onSource, onTarget, speed);
        return new Prepared(new BackupJob(jobId, source, target, settings, autoFinalize, autoDismiss, events, daemon.jobs()), source, target);
    }

    /** QEMU's bdrv_dirty_bitmap_check (BDRV_BITMAP_ALLOW_RO, or BDRV_BITMAP_DEFAULT when {@code write}). */
    private static void checkBitmap(DirtyBitmap b, BlockNode source, boolean write) throws DaemonException {
        if (b.busy()) throw new DaemonException("Bitmap '" + b.name() + "' is currently in use by another operation and cannot be used");
        if (write && (b.readOnly() || source.readOnly())) throw new DaemonException("Bitmap '" + b.name() + "' is readonly and cannot be modified");
        if (b.inconsistent()) {
            // QEMU's desc; its hint (not part of the QMP desc) goes with the error for the CLI
            throw new DaemonException("Bitmap '" + b.name() + "' is inconsistent and cannot be used",
                    "Try block-dirty-bitmap-remove to delete this bitmap from disk", null);
        }
    }

    /** Ties the nodes (moving the target to the source's IOThread first) and starts the job: the point in time. */
    public BackupJob start(Prepared p) throws DaemonException {
        BlockNode source = p.source();
        BlockNode target = p.target();
        BackupJob job = p.job();
        JobStarts.moveTargetToSource(daemon, source, target);
        daemon.withGates(List.of(source, target), () -> {
            startGated(p);
            return null;
        });
        Daemon.LOG.info("backup job {} started: {} -> {}, sync={}, cluster size {}", job.id(), source.name(), target.name(),
                Options.spelling(job.settings().sync()), job.settings().clusterSize());
        return job;
    }

    /**
     * The start, for a caller that holds the move gates of both graphs (the {@code transaction}
     * command): checks again, registers and ties, starts the job and waits for its instant.
     */
    BackupJob startGated(Prepared p) throws DaemonException {
        BlockNode source = p.source();
        BlockNode target = p.target();
        BackupJob job = p.job();
        if (target.home() != source.home()) {
            throw new DaemonException("block node '" + target.name() + "' lives on IOThread '" + target.home().id() + "', not '"
                    + source.home().id() + "' with '" + source.name() + "'; move it there first (x-blockdev-set-iothread)");
        }
        checkNoJob(source);
        checkNoJob(target);
        DirtyBitmap bm = job.settings().bitmap();
        if (bm != null && bm.busy()) {
            throw new DaemonException("Bitmap '" + bm.name() + "' is currently in use by another operation and cannot be used");
        }
        JobStarts.register(daemon, job);
        if (bm != null) bm.setBusy(true); // under the gates: a second job cannot take it meanwhile; the job frees it at its end
        BlockNode.jobLink(source, target);
        JobStarts.startAndWait(job, job.started());
        return job;
    }

    /** The type of a running job that uses {@code n} as its source or target, or null. */
    private String jobOn(BlockNode n) {
        for (dev.vmm.core.job.Job j : daemon.jobs().all()) {
            if (j.status() == dev.vmm.core.job.JobStatus.CONCLUDED || j.status() == dev.vmm.core.job.JobStatus.NULL) continue;
            if (j instanceof MirrorJob m && (m.source() == n || m.target() == n)) return j.type();
            if (j instanceof BackupJob b && (b.source() == n || b.target() == n)) return j.type();
        }
        return null;
    }

    private void checkNoJob(BlockNode n) throws DaemonException {
        String type = jobOn(n);
        if (type != null) throw new DaemonException("Node '" + n.name() + "' is busy: block device is in use by block job: " + type);
    }

    /**
     * The {@code transaction} action kind {@code blockdev-backup} (QEMU's blockdev_backup_prepare/
     * commit/abort): prepare checks everything and creates the job; commit starts it (its point in
     * time is then the transaction's drained instant); abort drops the unstarted job.
     */
    public static dev.vmm.core.qmp.TransactionAction transactionAction(Options data, Daemon daemon, dev.vmm.core.qmp.QmpServer server)
            throws Exception {
        BackupStarter s = new BackupStarter(daemon);
        Prepared p = s.prepare(data, server::emit);
        return new dev.vmm.core.qmp.TransactionAction() {
            @Override
            public void commit() throws Exception {
                s.startGated(p); // the transaction holds the gates of both graphs (not reentrant) and the nodes
            }

            @Override
            public void abort() {
                // nothing was started: the job object was never registered
            }
        };
    }
}
