package dev.vmm.core.job;

import java.util.Locale;

/**
 * QEMU's {@code JobStatus} (qapi/job.json), in the schema's order, with its transition table
 * ({@code JobSTT} of job.c) and which verbs each status accepts ({@code JobVerbTable}).
 * Immutable; any thread.
 */
public enum JobStatus {
    UNDEFINED, CREATED, RUNNING, PAUSED, READY, STANDBY, WAITING, PENDING, ABORTING, CONCLUDED, NULL;

    /** The wire name ({@code "running"}, {@code "null"}). */
    public String wire() { return name().toLowerCase(Locale.ROOT); }

    // Columns: U, C, R, P, Y, S, W, D, X, E, N (job.c JobSTT)
    private static final boolean[][] STT = {
        /* U */ {false, true, false, false, false, false, false, false, false, false, false},
        /* C */ {false, false, true, false, false, false, false, false, true, false, true},
        /* R */ {false, false, false, true, true, false, true, false, true, false, false},
        /* P */ {false, false, true, false, false, false, false, false, false, false, false},
        /* Y */ {false, false, false, false, false, true, true, false, true, false, false},
        /* S */ {false, false, false, false, true, false, false, false, false, false, false},
        /* W */ {false, false, false, false, false, false, false, true, true, false, false},
        /* D */ {false, false, false, false, false, false, false, false, true, true, false},
        /* X */ {false, false, false, false, false, false, false, false, true, true, false},
        /* E */ {false, false, false, false, false, false, false, false, false, false, true},
        /* N */ {false, false, false, false, false, false, false, false, false, false, false},
    };

    /** True when job.c allows {@code this -> next}. */
    public boolean canBecome(JobStatus next) { return STT[ordinal()][next.ordinal()]; }

    /** QEMU's {@code JobVerb} (the wire names), with the statuses that accept each. */
    public enum Verb {
        CANCEL(CREATED, RUNNING, PAUSED, READY, STANDBY, WAITING, PENDING),
        PAUSE(CREATED, RUNNING, PAUSED, READY, STANDBY, WAITING, PENDING),
        RESUME(CREATED, RUNNING, PAUSED, READY, STANDBY, WAITING, PENDING),
        SET_SPEED(CREATED, RUNNING, PAUSED, READY, STANDBY, WAITING, PENDING),
        COMPLETE(READY),
        FINALIZE(PENDING),
        DISMISS(CONCLUDED);

        private final java.util.EnumSet<JobStatus> allowed;

        Verb(JobStatus first, JobStatus... rest) { allowed = java.util.EnumSet.of(first, rest); }

        public boolean allowedIn(JobStatus s) { return allowed.contains(s); }

        public String wire() { return name().toLowerCase(Locale.ROOT).replace('_', '-'); }
    }
}
