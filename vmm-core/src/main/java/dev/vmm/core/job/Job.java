package dev.vmm.core.job;

import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A long-running operation with QEMU's job life cycle (qapi/job.json): created, running,
 * paused/standby, ready, waiting, pending, aborting, concluded, null; each change is a
 * {@code JOB_STATUS_CHANGE} event. Subclasses do the work ({@link MirrorJob}) and call
 * {@link #ready()}, {@link #finished(String, boolean)} from their thread; the QMP verbs call the
 * public methods from the main loop or the control thread.
 *
 * <p>Thread contract: any thread; the state is guarded by the job's monitor, and events are
 * emitted under it so that their order is the order of the changes. Subclass hooks
 * ({@link #onPause}, {@link #onResume}, {@link #onCancel}, {@link #onComplete}) are called under
 * it too and MUST only hand work to the job's own thread.
 */
public abstract class Job {
    /** QEMU's event for every status change. */
    public static final String JOB_STATUS_CHANGE = "JOB_STATUS_CHANGE";

    private final String id;
    private final String type;
    private final boolean autoFinalize;
    private final boolean autoDismiss;
    private final JobEvents events;
    private final JobRegistry registry;

    private JobStatus status = JobStatus.UNDEFINED;
    private boolean userPaused;
    /** Set when the job failed (QEMU's {@code Job.err}): shown by query-jobs, sent with the final event. */
    private String error;
    private boolean cancelled;
    private boolean forceCancelled;

    protected volatile long progressCurrent;
    protected volatile long progressTotal;

    protected Job(String id, String type, boolean autoFinalize, boolean autoDismiss, JobEvents events, JobRegistry registry) {
        this.id = id;
        this.type = type;
        this.autoFinalize = autoFinalize;
        this.autoDismiss = autoDismiss;
        this.events = events;
        this.registry = registry;
    }

    public String id() { return id; }

    public String type() { return type; }

    public boolean autoFinalize() { return autoFinalize; }

    public boolean autoDismiss() { return autoDismiss; }

    public synchronized JobStatus status() { return status; }

    public synchronized boolean userPaused() { return userPaused; }

    public synchronized String error() { return error; }

    /** True after a cancel, soft or forced (QEMU's {@code job_is_cancelled} is the forced one). */
    protected synchronized boolean cancelRequested() { return cancelled; }

    protected synchronized boolean forceCancelled() { return forceCancelled; }

    protected JobEvents events() { return events; }

    /** {@code query-jobs}' JobInfo. */
    public synchronized Map<String, Object> info() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", id);
        m.put("type", type);
        m.put("status", status.wire());
        m.put("current-progress", progressCurrent);
        m.put("total-progress", progressTotal);
        if (error != null) m.put("error", error);
        return m;
    }

    protected synchronized void transition(JobStatus next) {
        if (!status.canBecome(next)) {
            throw new IllegalStateException("job " + id + ": " + status.wire() + " -> " + next.wire() + " is not a job transition");
        }
        status = next;
        Map<String, Object> d = new LinkedHashMap<>();
        d.put("id", id);
        d.put("status", next.wire());
        events.emit(JOB_STATUS_CHANGE, d);
    }

    /** QEMU's refusal of a verb in the current status. */
    protected synchronized void checkVerb(JobStatus.Verb verb) throws JobException {
        if (!verb.allowedIn(status)) {
            throw new JobException("Job '" + id + "' in state '" + status.wire() + "' cannot accept command verb '" + verb.wire() + "'");
        }
    }

    /** Created, then running: the subclass starts its work in {@link #run()}. */
    public synchronized void start() {
        transition(JobStatus.CREATED);
        transition(JobStatus.RUNNING);
        run();
    }

    /** Starts the work (under the monitor: hand it to the job's thread). */
    protected abstract void run();

    // ---- the verbs ----

    public synchronized void pause() throws JobException {
        checkVerb(JobStatus.Verb.PAUSE);
        if (userPaused) throw new JobException("Job is already paused"); // job.c's wording
        userPaused = true;
        if (status == JobStatus.RUNNING) transition(JobStatus.PAUSED);
        else if (status == JobStatus.READY) transition(JobStatus.STANDBY);
        onPause();
    }

    public synchronized void resume() throws JobException {
        checkVerb(JobStatus.Verb.RESUME);
        if (!userPaused && !ioPaused()) throw new JobException("Can't resume a job that was not paused"); // job.c's wording
        userPaused = false;
        leavePause();
        onResume();
    }

    /** Paused or standby back to running or ready. */
    protected synchronized void leavePause() {
        if (status == JobStatus.PAUSED) transition(JobStatus.RUNNING);
        else if (status == JobStatus.STANDBY) transition(JobStatus.READY);
        if (readyPending && status == JobStatus.RUNNING) {
            readyPending = false;
            transition(JobStatus.READY);
            readyEvent();
        }
    }

    /** The work became ready while paused: READY (and its event) once the pause ends, as QEMU's job_transition_to_ready runs in the resumed coroutine. */
    private boolean readyPending;

    /** The job stopped itself on an I/O error (on-*-error=stop): paused until resumed. */
    protected synchronized void ioPause() {
        if (status == JobStatus.RUNNING) transition(JobStatus.PAUSED);
        else if (status == JobStatus.READY) transition(JobStatus.STANDBY);
    }

    /** True while stopped on an I/O error (io-status failed/nospace). */
    protected boolean ioPaused() { return false; }

    /**
     * {@code force} (job-cancel, block-job-cancel force=true) aborts; without it a job in the
     * ready state completes without its final step (a mirror leaves the target in sync and
     * ends with BLOCK_JOB_COMPLETED, as QEMU's block-job-cancel).
     */
    public synchronized void cancel(boolean force) throws JobException {
        checkVerb(JobStatus.Verb.CANCEL);
        if (status == JobStatus.PENDING) {
            cancelled = true;
            forceCancelled = true;
            abort(null);
            return;
        }
        if (cancelled && !force) return;
        cancelled = true;
        forceCancelled |= force || (status != JobStatus.READY && status != JobStatus.STANDBY);
        userPaused = false;
        onCancel(forceCancelled);
    }

    public synchronized void complete() throws JobException {
        checkVerb(JobStatus.Verb.COMPLETE);
        if (cancelled) throw new JobException("Job '" + id + "' has been cancelled");
        onComplete();
    }

    public synchronized void finalizeJob() throws JobException {
        checkVerb(JobStatus.Verb.FINALIZE);
        conclude();
    }

    public synchronized void dismiss() throws JobException {
        checkVerb(JobStatus.Verb.DISMISS);
        transition(JobStatus.NULL);
        registry.remove(this);
    }

    protected void onPause() {}

    protected void onResume() {}

    protected abstract void onCancel(boolean force);

    protected abstract void onComplete() throws JobException;

    // ---- the end, from the job's thread ----

    /** Running to ready. */
    protected synchronized void ready() {
        if (status == JobStatus.PAUSED) { // no BLOCK_JOB_READY for a job that stays paused: leavePause sends it
            readyPending = true;
            return;
        }
        if (status == JobStatus.RUNNING) transition(JobStatus.READY);
        readyEvent();
    }

    /** The subclass' event for the ready state (BLOCK_JOB_READY). */
    protected void readyEvent() {}

    /**
     * The work is over: {@code error} null for success; {@code aborted} for a forced cancel.
     * Success goes waiting, pending and (with auto-finalize) concluded; failure and forced cancel
     * go aborting and concluded. With auto-dismiss, then null.
     */
    protected synchronized void finished(String error, boolean aborted) {
        if (error != null || aborted) {
            abort(error);
            return;
        }
        if (status == JobStatus.PAUSED) transition(JobStatus.RUNNING);
        if (status == JobStatus.STANDBY) transition(JobStatus.READY);
        transition(JobStatus.WAITING);
        transition(JobStatus.PENDING);
        if (autoFinalize) conclude();
    }

    private void abort(String err) {
        this.error = err != null ? err : (cancelled ? "Operation canceled" : null);
        // QEMU's table has no paused/standby -> aborting: a cancelled or failing paused job is resumed first
        if (status == JobStatus.PAUSED) transition(JobStatus.RUNNING);
        else if (status == JobStatus.STANDBY) transition(JobStatus.READY);
        readyPending = false;
        if (status != JobStatus.ABORTING) transition(JobStatus.ABORTING);
        finalEvent(err, true);
        transition(JobStatus.CONCLUDED);
        if (autoDismiss) {
            transition(JobStatus.NULL);
            registry.remove(this);
        }
        concluded();
    }

    private void conclude() {
        finalEvent(null, false);
        transition(JobStatus.CONCLUDED);
        if (autoDismiss) {
            transition(JobStatus.NULL);
            registry.remove(this);
        }
        concluded();
    }

    /** The subclass' final event (BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED). */
    protected abstract void finalEvent(String error, boolean aborted);

    /** Called once the job concluded (under the monitor). */
    protected void concluded() {}
}
