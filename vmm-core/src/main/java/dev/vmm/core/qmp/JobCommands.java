package dev.vmm.core.qmp;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.job.Job;
import dev.vmm.core.job.JobException;
import dev.vmm.core.job.MirrorJob;
import dev.vmm.core.options.Options;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The job commands (QEMU 7.2's qapi/job.json and the block-job-* names of block-core.json) and
 * {@code blockdev-mirror}. The job-* verbs find a job by {@code id} and answer an unknown one
 * with "Job not found"; the block-job-* verbs by {@code device} (the job id) with DeviceNotActive
 * "Block job 'x' not found", as QEMU.
 *
 * <p>Events (QEMU's): JOB_STATUS_CHANGE, BLOCK_JOB_READY, BLOCK_JOB_COMPLETED,
 * BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR, sent to every monitor of the server the job was started on.
 *
 * <p>Thread contract: the commands run on the main loop (the verbs only hand work to the job's
 * home thread); {@code blockdev-mirror} runs on the control thread.
 */
public final class JobCommands {
    private JobCommands() {}

    /** A verb whose own arguments were read already. */
    private interface Action {
        void apply(Job job) throws Exception;
    }

    /** Reads a verb's arguments (before the job is looked up, so a bad argument changes nothing). */
    private interface Verb {
        Action parse(Options o) throws Exception;
    }


    // ---- declarations for query-qmp-schema (QEMU 7.2's qapi/job.json and block-core.json names) ----
    static final QmpType JOB_STATUS = QmpType.enumOf("JobStatus", "undefined", "created", "running", "paused", "ready", "standby",
            "waiting", "pending", "aborting", "concluded", "null");
    static final QmpType JOB_TYPE = QmpType.enumOf("JobType", "mirror", "backup");
    static final QmpType ON_ERROR = QmpType.enumOf("BlockdevOnError", "report", "ignore", "enospc", "stop");
    /** QEMU's MirrorSyncMode, shared by blockdev-mirror (which refuses incremental and bitmap) and blockdev-backup. */
    static final QmpType SYNC_MODE = QmpType.enumOf("MirrorSyncMode", "top", "full", "none", "incremental", "bitmap");
    static final QmpType BLOCKDEV_MIRROR_ARGS = QmpType.object("q_obj_blockdev-mirror-arg").optional("job-id", QmpType.STR)
            .required("device", QmpType.STR).required("target", QmpType.STR).optional("replaces", QmpType.STR)
            .required("sync", SYNC_MODE)
            .optional("speed", QmpType.INT).optional("granularity", QmpType.INT).optional("buf-size", QmpType.INT)
            .optional("on-source-error", ON_ERROR).optional("on-target-error", ON_ERROR).optional("filter-node-name", QmpType.STR)
            .optional("copy-mode", QmpType.enumOf("MirrorCopyMode", "background", "write-blocking"))
            .optional("auto-finalize", QmpType.BOOL).optional("auto-dismiss", QmpType.BOOL).build();
    static final QmpType BLOCKDEV_BACKUP_ARGS = QmpType.object("BlockdevBackup").optional("job-id", QmpType.STR)
            .required("device", QmpType.STR).required("target", QmpType.STR)
            .required("sync", SYNC_MODE)
            .optional("speed", QmpType.INT).optional("bitmap", QmpType.STR)
            .optional("bitmap-mode", QmpType.enumOf("BitmapSyncMode", "on-success", "never", "always"))
            .optional("compress", QmpType.BOOL).optional("on-source-error", ON_ERROR).optional("on-target-error", ON_ERROR)
            .optional("auto-finalize", QmpType.BOOL).optional("auto-dismiss", QmpType.BOOL).optional("filter-node-name", QmpType.STR)
            .build();
    static final QmpType JOB_INFO = QmpType.object("JobInfo").required("id", QmpType.STR).required("type", JOB_TYPE)
            .required("status", JOB_STATUS).required("current-progress", QmpType.INT).required("total-progress", QmpType.INT)
            .optional("error", QmpType.STR).build();
    static final QmpType BLOCK_JOB_INFO = QmpType.object("BlockJobInfo").required("type", QmpType.STR).required("device", QmpType.STR)
            .required("len", QmpType.INT).required("offset", QmpType.INT).required("busy", QmpType.BOOL).required("paused", QmpType.BOOL)
            .required("speed", QmpType.INT).required("io-status", QmpType.enumOf("BlockDeviceIoStatus", "ok", "failed", "nospace"))
            .required("ready", QmpType.BOOL).required("status", JOB_STATUS).required("auto-finalize", QmpType.BOOL)
            .required("auto-dismiss", QmpType.BOOL).optional("error", QmpType.STR).build();
    static final QmpType JOB_STATUS_CHANGE = QmpType.object("q_obj_JOB_STATUS_CHANGE-arg").required("id", QmpType.STR)
            .required("status", JOB_STATUS).build();
    static final QmpType BLOCK_JOB_PROGRESS = QmpType.object("q_obj_BLOCK_JOB_READY-arg").required("type", JOB_TYPE)
            .required("device", QmpType.STR).required("len", QmpType.INT).required("offset", QmpType.INT).required("speed", QmpType.INT).build();
    static final QmpType BLOCK_JOB_COMPLETED = QmpType.object("q_obj_BLOCK_JOB_COMPLETED-arg").required("type", JOB_TYPE)
            .required("device", QmpType.STR).required("len", QmpType.INT).required("offset", QmpType.INT).required("speed", QmpType.INT)
            .optional("error", QmpType.STR).build();
    static final QmpType BLOCK_JOB_CANCELLED = QmpType.object("q_obj_BLOCK_JOB_CANCELLED-arg").required("type", JOB_TYPE)
            .required("device", QmpType.STR).required("len", QmpType.INT).required("offset", QmpType.INT).required("speed", QmpType.INT).build();
    static final QmpType BLOCK_JOB_ERROR = QmpType.object("q_obj_BLOCK_JOB_ERROR-arg").required("device", QmpType.STR)
            .required("operation", QmpType.enumOf("IoOperationType", "read", "write"))
            .required("action", QmpType.enumOf("BlockErrorAction", "ignore", "report", "stop")).build();

    private static QmpType idArg(String command, String key) {
        return QmpType.object("q_obj_" + command + "-arg").required(key, QmpType.STR).build();
    }

    public static void register(QmpCommands t, Daemon daemon) {
        t.event(Job.JOB_STATUS_CHANGE, JOB_STATUS_CHANGE);
        t.event(MirrorJob.BLOCK_JOB_READY, BLOCK_JOB_PROGRESS);
        t.event(MirrorJob.BLOCK_JOB_COMPLETED, BLOCK_JOB_COMPLETED);
        t.event(MirrorJob.BLOCK_JOB_CANCELLED, BLOCK_JOB_CANCELLED);
        t.event(MirrorJob.BLOCK_JOB_ERROR, BLOCK_JOB_ERROR);
        t.register("blockdev-mirror", BLOCKDEV_MIRROR_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            QmpServer server = c.server();
            daemon.blockdevMirror(c.options(), server::emit);
            return Map.of();
        }));
        t.register("blockdev-backup", BLOCKDEV_BACKUP_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            QmpServer server = c.server();
            daemon.blockdevBackup(c.options(), server::emit);
            return Map.of();
        }));
        TransactionAction.register("blockdev-backup", BLOCKDEV_BACKUP_ARGS, dev.vmm.core.daemon.BackupStarter::transactionAction);
        t.register("query-jobs", QmpType.EMPTY, QmpType.arrayOf(JOB_INFO), QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (Job j : daemon.jobs().all()) out.add(j.info());
            return out;
        }));
        t.register("query-block-jobs", QmpType.EMPTY, QmpType.arrayOf(BLOCK_JOB_INFO), QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (Job j : daemon.jobs().all()) {
                if (j instanceof MirrorJob m) out.add(m.blockJobInfo());
                else if (j instanceof dev.vmm.core.job.BackupJob b) out.add(b.blockJobInfo());
            }
            return out;
        }));
        job(t, daemon, "job-pause", o -> j -> j.pause());
        job(t, daemon, "job-resume", o -> j -> j.resume());
        job(t, daemon, "job-cancel", o -> j -> j.cancel(true));
        job(t, daemon, "job-complete", o -> j -> j.complete());
        job(t, daemon, "job-finalize", o -> j -> j.finalizeJob());
        job(t, daemon, "job-dismiss", o -> j -> j.dismiss());
        blockJob(t, daemon, "block-job-pause", "device", o -> j -> j.pause());
        blockJob(t, daemon, "block-job-resume", "device", o -> j -> j.resume());
        blockJob(t, daemon, "block-job-cancel", "device", o -> {
            boolean force = o.bool("force", false);
            return j -> j.cancel(force);
        });
        blockJob(t, daemon, "block-job-complete", "device", o -> j -> j.complete());
        blockJob(t, daemon, "block-job-finalize", "id", o -> j -> j.finalizeJob());
        blockJob(t, daemon, "block-job-dismiss", "id", o -> j -> j.dismiss());
        blockJob(t, daemon, "block-job-set-speed", "device", o -> {
            long speed = o.number("speed", -1, 0, Long.MAX_VALUE);
            if (speed < 0) throw QmpException.generic("Parameter 'speed' is missing");
            return j -> {
                if (j instanceof dev.vmm.core.job.BackupJob b) b.setSpeed(speed);
                else ((MirrorJob) j).setSpeed(speed);
            };
        });
    }

    private static void job(QmpCommands t, Daemon daemon, String name, Verb verb) {
        t.register(name, idArg(name, "id"), QmpType.EMPTY, QmpCommand.sync(c -> {
            Options o = c.options();
            String id = o.required("id");
            Action a = verb.parse(o);
            o.checkAllConsumed();
            try {
                a.apply(daemon.jobs().get(id));
            } catch (JobException e) {
                throw QmpException.generic(e.getMessage());
            }
            return Map.of();
        }));
    }

    private static void blockJob(QmpCommands t, Daemon daemon, String name, String key, Verb verb) {
        QmpType args = switch (name) {
            case "block-job-cancel" -> QmpType.object("q_obj_block-job-cancel-arg").required("device", QmpType.STR)
                    .optional("force", QmpType.BOOL).build();
            case "block-job-set-speed" -> QmpType.object("q_obj_block-job-set-speed-arg").required("device", QmpType.STR)
                    .required("speed", QmpType.INT).build();
            default -> idArg(name, key);
        };
        t.register(name, args, QmpType.EMPTY, QmpCommand.sync(c -> {
            Options o = c.options();
            String id = o.required(key);
            Action a = verb.parse(o);
            o.checkAllConsumed();
            Job j = daemon.jobs().find(id);
            if (!(j instanceof MirrorJob) && !(j instanceof dev.vmm.core.job.BackupJob)) {
                throw new QmpException(QmpErrorClass.DeviceNotActive, "Block job '" + id + "' not found");
            }
            try {
                a.apply(j);
            } catch (JobException e) {
                throw QmpException.generic(e.getMessage());
            }
            return Map.of();
        }));
    }
}
