package dev.vmm.core.daemon;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.job.Job;
import dev.vmm.core.job.JobException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * The steps {@link MirrorStarter} and {@link BackupStarter} share: finding the nodes, moving the
 * target to the source's IOThread, registering the job and waiting for its start. Thread
 * contract: the control thread (they wait for a move and for a job's start).
 */
final class JobStarts {
    private JobStarts() {}

    static BlockNode lookup(Daemon daemon, String name) throws DaemonException {
        BlockNode n = daemon.findNode(name);
        if (n == null) throw new DaemonException("Cannot find device='" + name + "' nor node-name='" + name + "'");
        return n;
    }

    /** QEMU moves the target into the source's AioContext; so do we, before tying them. */
    static void moveTargetToSource(Daemon daemon, BlockNode source, BlockNode target) throws DaemonException {
        if (target.home() == source.home()) return;
        try {
            daemon.moveNode(target.name(), source.home().id()).get(Daemon.MOVE_TIMEOUT_SECONDS + 5, TimeUnit.SECONDS);
        } catch (ExecutionException e) {
            throw new DaemonException("cannot move target '" + target.name() + "' to the source's IOThread: " + e.getCause().getMessage());
        } catch (TimeoutException e) {
            throw new DaemonException("cannot move target '" + target.name() + "' to the source's IOThread: timed out");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new DaemonException("interrupted");
        }
    }

    static void register(Daemon daemon, Job job) throws DaemonException {
        try {
            daemon.jobs().add(job);
        } catch (JobException e) {
            throw new DaemonException(e.getMessage());
        }
    }

    /**
     * Starts {@code job} and waits for {@code started} (the caller holds the gates: a move must not
     * drain half-way); a job that did not start is cancelled, not left registered, linked and
     * starting later behind the error.
     */
    static void startAndWait(Job job, CompletableFuture<Void> started) throws DaemonException {
        job.start();
        try {
            started.get(Daemon.MOVE_TIMEOUT_SECONDS, TimeUnit.SECONDS);
        } catch (ExecutionException | TimeoutException e) {
            try {
                job.cancel(true);
            } catch (JobException ignored) {
                // already ending
            }
            throw new DaemonException(job.type() + " job '" + job.id() + "' did not start: " + e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new DaemonException("interrupted");
        }
    }
}
