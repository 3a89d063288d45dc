package dev.vmm.core.job;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The daemon's jobs by id (one namespace for every job type, as QEMU's). A job leaves it when
 * it reaches the null status (dismissed).
 *
 * <p>Thread contract: synchronized; any thread.
 */
public final class JobRegistry {
    private final Map<String, Job> jobs = new LinkedHashMap<>();

    /** Reserves {@code job}'s id; QEMU's wording when it is taken. */
    public synchronized void add(Job job) throws JobException {
        if (jobs.containsKey(job.id())) throw new JobException("Job ID '" + job.id() + "' already in use");
        jobs.put(job.id(), job);
    }

    synchronized void remove(Job job) {
        jobs.remove(job.id(), job);
    }

    /** The job, or a refusal in QEMU's job.c words. */
    public synchronized Job get(String id) throws JobException {
        Job j = jobs.get(id);
        if (j == null) throw new JobException("Job not found");
        return j;
    }

    public synchronized Job find(String id) { return jobs.get(id); }

    public synchronized List<Job> all() { return new ArrayList<>(jobs.values()); }
}
