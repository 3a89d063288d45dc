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

    public static void register(QmpCommands t, Daemon daemon) {
        t.register("blockdev-mirror", QmpCommand.blocking(c -> {
            QmpServer server = c.server();
            daemon.blockdevMirror(c.options(), server::emit);
            return Map.of();
        }));
        t.register("query-jobs", QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (Job j : daemon.jobs().all()) out.add(j.info());
            return out;
        }));
        t.register("query-block-jobs", QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (Job j : daemon.jobs().all()) if (j instanceof MirrorJob m) out.add(m.blockJobInfo());
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
            return j -> ((MirrorJob) j).setSpeed(speed);
        });
    }

    private static void job(QmpCommands t, Daemon daemon, String name, Verb verb) {
        t.register(name, QmpCommand.sync(c -> {
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
        t.register(name, QmpCommand.sync(c -> {
            Options o = c.options();
            String id = o.required(key);
            Action a = verb.parse(o);
            o.checkAllConsumed();
            Job j = daemon.jobs().find(id);
            if (!(j instanceof MirrorJob)) {
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
