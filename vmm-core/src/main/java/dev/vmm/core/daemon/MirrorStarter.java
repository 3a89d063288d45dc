package dev.vmm.core.daemon;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.job.JobEvents;
import dev.vmm.core.job.MirrorJob;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import java.util.List;

/**
 * {@code blockdev-mirror} (QEMU 7.2's arguments and refusals, qapi/block-core.json): parses,
 * checks the nodes, and starts a {@link MirrorJob}. Thread contract: the control thread (it waits
 * for a move of the target and for the job's start); one instance per command.
 */
final class MirrorStarter {
    /** QEMU's DEFAULT_MIRROR_BUF_SIZE (block/mirror.c): 16 MiB. */
    static final long DEFAULT_BUF_SIZE = 16L << 20;
    /** QEMU's default granularity when the target has no cluster size (a raw file): 64 KiB. */
    static final int DEFAULT_GRANULARITY = 64 << 10;

    private final Daemon daemon;

    MirrorStarter(Daemon daemon) { this.daemon = daemon; }

    MirrorJob start(Options o, JobEvents events) throws OptionException, DaemonException {
        String jobId = o.optional("job-id", null);
        String device = o.required("device");
        String targetName = o.required("target");
        MirrorJob.Sync sync = o.choice("sync", null, MirrorJob.Sync.class);
        if (sync == null) throw new OptionException(OptionException.Kind.MISSING, o.optionName(), "sync", "Parameter 'sync' is missing");
        long speed = o.number("speed", 0, 0, Long.MAX_VALUE);
        long granularity = o.number("granularity", 0, 0, Long.MAX_VALUE);
        long bufSize = o.number("buf-size", 0, 0, Long.MAX_VALUE);
        MirrorJob.OnError onSource = o.choice("on-source-error", MirrorJob.OnError.REPORT, MirrorJob.OnError.class);
        MirrorJob.OnError onTarget = o.choice("on-target-error", MirrorJob.OnError.REPORT, MirrorJob.OnError.class);
        MirrorJob.CopyMode mode = o.choice("copy-mode", MirrorJob.CopyMode.BACKGROUND, MirrorJob.CopyMode.class);
        boolean autoFinalize = o.bool("auto-finalize", true);
        boolean autoDismiss = o.bool("auto-dismiss", true);
        o.bool("unmap", true); // zeros are written as zero writes that may unmap, as with unmap=true
        String replaces = o.optional("replaces", null);
        String filterNodeName = o.optional("filter-node-name", null);
        o.checkAllConsumed();

        BlockNode source = JobStarts.lookup(daemon, device);
        BlockNode target = JobStarts.lookup(daemon, targetName);
        if (granularity != 0 && (granularity < 512 || granularity > 64L << 20)) {
            throw new DaemonException("Parameter 'granularity' expects a value in range [512B, 64MB]");
        }
        if (granularity != 0 && Long.bitCount(granularity) != 1) {
            throw new DaemonException("Parameter 'granularity' expects a power of 2");
        }
        if (replaces != null) throw new DaemonException("'replaces' is not supported: the source's users always move to the target");
        if (filterNodeName != null) throw new DaemonException("'filter-node-name' is not supported: the mirror's filter is not a graph node here");
        if (jobId == null) jobId = ""; // QEMU: the device name of a node without a BlockBackend
        if (!wellFormed(jobId)) throw new DaemonException("Invalid job ID '" + jobId + "'");
        if (source == target) throw new DaemonException("Can't mirror node into itself");
        if (!source.parents().isEmpty() || hasJob(source)) throw new DaemonException("Need a root block node");
        String conflict = "Permission conflict on node '" + target.name() + "': permissions 'consistent read, write' are both required by"
                + " an unnamed block device (uses node '" + target.name() + "' as 'root' child) and unshared by ";
        for (BlockExport e : daemon.exports()) {
            if (e.node() == target) {
                throw new DaemonException(conflict + "an unnamed block device (uses node '" + target.name() + "' as 'root' child).");
            }
        }
        for (BlockNode p : target.parents()) {
            throw new DaemonException(conflict + "node '" + p.name() + "' (uses node '" + target.name() + "' as a child).");
        }
        if (!target.jobLinks().isEmpty()) throw new DaemonException("Node '" + target.name() + "' is busy: block device is in use by block job: mirror");
        if (target.readOnly()) throw new DaemonException("Block node is read-only");
        if (granularity == 0) {
            int cluster = target.imageInfo().clusterSize();
            // QEMU's bdrv_get_default_bitmap_granularity: the target's cluster size (at least 4 KiB), else 64 KiB
            granularity = cluster > 0 ? Math.max(4096, cluster) : DEFAULT_GRANULARITY;
        }
        if (bufSize == 0) bufSize = DEFAULT_BUF_SIZE;
        bufSize = Math.max(bufSize, granularity);

        JobStarts.moveTargetToSource(daemon, source, target);
        MirrorJob.Settings settings = new MirrorJob.Settings(sync, (int) granularity, bufSize, mode, onSource, onTarget, speed);
        MirrorJob job = new MirrorJob(jobId, source, target, settings, autoFinalize, autoDismiss, events, daemon.jobs());
        daemon.withGates(List.of(source, target), () -> {
            if (target.home() != source.home()) throw new DaemonException("block node '" + source.name() + "' moved meanwhile; try again");
            if (hasJob(source) || !target.jobLinks().isEmpty()) throw new DaemonException("Need a root block node");
            JobStarts.register(daemon, job);
            BlockNode.jobLink(source, target);
            JobStarts.startAndWait(job, job.started()); // under the gates until the filter is in place
            return null;
        });
        Daemon.LOG.info("mirror job {} started: {} -> {}, sync={}, copy-mode={}, granularity={}", job.id(), source.name(), target.name(),
                Options.spelling(sync), Options.spelling(mode), granularity);
        return job;
    }

    /** A node tied to another by a job that is still running (a pivoted source keeps a tie, but no job). */
    private static boolean hasJob(BlockNode n) {
        for (BlockNode l : n.jobLinks()) {
            if (n.io().current() != l.io() && l.io().current() != n.io()) return true;
        }
        return false;
    }

    /** QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'. */
    static boolean wellFormed(String id) {
        if (id.isEmpty() || !Character.isLetter(id.charAt(0)) || id.charAt(0) > 127) return false;
        for (int i = 1; i < id.length(); i++) {
            char c = id.charAt(i);
            if (c > 127 || !(Character.isLetterOrDigit(c) || c == '-' || c == '.' || c == '_')) return false;
        }
        return true;
    }
}
