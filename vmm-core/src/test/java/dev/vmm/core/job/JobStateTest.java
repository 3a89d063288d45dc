package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The job life cycle of QEMU's job.c: the statuses, the verbs each accepts, the events in order. */
class JobStateTest {
    /** A job whose work the test drives by hand. */
    static final class ManualJob extends Job {
        final List<String> log;
        boolean completeAsked;

        ManualJob(String id, boolean autoFinalize, boolean autoDismiss, List<String> log, JobRegistry r) {
            super(id, "test", autoFinalize, autoDismiss, (e, d) -> log.add(e.equals(JOB_STATUS_CHANGE) ? (String) d.get("status") : e), r);
            this.log = log;
        }

        @Override protected void run() {}
        @Override protected void onCancel(boolean force) { finished(null, force); }
        @Override protected void onComplete() { completeAsked = true; finished(null, false); }
        @Override protected void finalEvent(String error, boolean aborted) { log.add(aborted && error == null ? "CANCELLED" : "COMPLETED" + (error == null ? "" : ":" + error)); }
        void becomeReady() { ready(); }
        void fail(String e) { finished(e, false); }
    }

    @Test
    void successfulJobWalksQemusStatuses() throws Exception {
        List<String> log = new ArrayList<>();
        JobRegistry r = new JobRegistry();
        ManualJob j = new ManualJob("j0", true, true, log, r);
        r.add(j);
        j.start();
        assertThrows(JobException.class, j::complete, "complete before ready");
        j.pause();
        assertEquals(JobStatus.PAUSED, j.status());
        JobException again = assertThrows(JobException.class, j::pause);
        assertEquals("Job is already paused", again.getMessage());
        j.resume();
        JobException notPaused = assertThrows(JobException.class, j::resume);
        assertEquals("Can't resume a job that was not paused", notPaused.getMessage());
        j.becomeReady();
        j.pause();
        assertEquals(JobStatus.STANDBY, j.status());
        j.resume();
        j.complete();
        assertEquals(List.of("created", "running", "paused", "running", "ready", "standby", "ready", "waiting", "pending", "COMPLETED",
                "concluded", "null"), log);
        assertEquals(JobStatus.NULL, j.status());
        assertEquals("Job not found", assertThrows(JobException.class, () -> r.get("j0")).getMessage());
    }

    @Test
    void manualFinalizeAndDismiss() throws Exception {
        List<String> log = new ArrayList<>();
        JobRegistry r = new JobRegistry();
        ManualJob j = new ManualJob("j1", false, false, log, r);
        r.add(j);
        assertEquals("Job ID 'j1' already in use", assertThrows(JobException.class, () -> r.add(new ManualJob("j1", true, true, log, r))).getMessage());
        j.start();
        j.becomeReady();
        j.complete();
        assertEquals(JobStatus.PENDING, j.status());
        JobException e = assertThrows(JobException.class, j::dismiss);
        assertEquals("Job 'j1' in state 'pending' cannot accept command verb 'dismiss'", e.getMessage());
        j.finalizeJob();
        assertEquals(JobStatus.CONCLUDED, j.status());
        assertTrue(r.find("j1") != null);
        j.dismiss();
        assertEquals(null, r.find("j1"));
        assertEquals(List.of("created", "running", "ready", "waiting", "pending", "COMPLETED", "concluded", "null"), log);
    }

    @Test
    void forcedCancelAbortsAndFailureCarriesItsError() throws Exception {
        List<String> log = new ArrayList<>();
        JobRegistry r = new JobRegistry();
        ManualJob j = new ManualJob("j2", true, false, log, r);
        r.add(j);
        j.start();
        j.cancel(true);
        assertEquals(List.of("created", "running", "aborting", "CANCELLED", "concluded"), log);
        assertEquals("Operation canceled", j.info().get("error"));
        log.clear();
        ManualJob k = new ManualJob("j3", true, true, log, r);
        r.add(k);
        k.start();
        k.fail("Input/output error");
        assertEquals(List.of("created", "running", "aborting", "COMPLETED:Input/output error", "concluded", "null"), log);
    }

    @Test
    void softCancelInReadyCompletes() throws Exception {
        List<String> log = new ArrayList<>();
        JobRegistry r = new JobRegistry();
        ManualJob j = new ManualJob("j4", true, true, log, r);
        r.add(j);
        j.start();
        j.becomeReady();
        j.cancel(false);
        assertEquals(List.of("created", "running", "ready", "waiting", "pending", "COMPLETED", "concluded", "null"), log);
        assertFalse(j.completeAsked);
    }

    @Test
    void transitionTableIsQemus() {
        assertTrue(JobStatus.RUNNING.canBecome(JobStatus.READY));
        assertFalse(JobStatus.READY.canBecome(JobStatus.RUNNING));
        assertFalse(JobStatus.CONCLUDED.canBecome(JobStatus.RUNNING));
        assertTrue(JobStatus.CONCLUDED.canBecome(JobStatus.NULL));
        assertTrue(JobStatus.Verb.COMPLETE.allowedIn(JobStatus.READY));
        assertFalse(JobStatus.Verb.COMPLETE.allowedIn(JobStatus.STANDBY));
    }
}
