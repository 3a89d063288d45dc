package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Review findings on Job's life cycle. */
class JobReviewTest {
    /**
     * job-pause then job-cancel: Job.cancel() leaves the status PAUSED and finished() goes
     * straight to abort(), whose PAUSED -> ABORTING is not in job.c's table: transition() throws.
     * QEMU resumes the job first (paused -> running -> aborting).
     */
    @Test
    void forcedCancelOfAPausedJobAborts() throws Exception {
        List<String> log = new ArrayList<>();
        JobRegistry r = new JobRegistry();
        JobStateTest.ManualJob j = new JobStateTest.ManualJob("p1", true, true, log, r);
        r.add(j);
        j.start();
        j.pause();
        assertDoesNotThrow(() -> j.cancel(true));
        assertEquals(JobStatus.NULL, j.status(), log.toString());
    }

    /** The same from standby (a paused job in ready): STANDBY -> ABORTING is not a transition either. */
    @Test
    void forcedCancelOfAStandbyJobAborts() throws Exception {
        List<String> log = new ArrayList<>();
        JobRegistry r = new JobRegistry();
        JobStateTest.ManualJob j = new JobStateTest.ManualJob("p2", true, true, log, r);
        r.add(j);
        j.start();
        j.becomeReady();
        j.pause();
        assertDoesNotThrow(() -> j.cancel(true));
        assertEquals(JobStatus.NULL, j.status(), log.toString());
    }

    /** Ready reached while paused: QEMU becomes ready after the resume; here the job stays running. */
    @Test
    void readyWhilePausedIsReadyAfterResume() throws Exception {
        List<String> log = new ArrayList<>();
        JobRegistry r = new JobRegistry();
        JobStateTest.ManualJob j = new JobStateTest.ManualJob("p3", true, true, log, r);
        r.add(j);
        j.start();
        j.pause();
        j.becomeReady(); // the job's thread reaches ready (MirrorJob: once, readyReached)
        j.resume();
        assertEquals(JobStatus.READY, j.status(), log.toString());
    }
}
