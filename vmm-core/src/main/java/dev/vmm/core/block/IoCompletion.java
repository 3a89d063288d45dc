package dev.vmm.core.block;

/**
 * The end of one asynchronous block request ({@link BlockDriver#readv} and friends). Runs on the
 * node's home IOThread, exactly once per request the driver accepted, and never from inside the
 * call that submitted it. Callers keep one per request slot (a pooled object), so completing
 * allocates nothing.
 */
@FunctionalInterface
public interface IoCompletion {
    /**
     * @param errno 0 on success, else the Linux errno of the failure (EIO, ENOSPC, ENOTSUP for a
     *     fast zero the driver cannot do, ...); {@code LibC.describe(errno)} words it for a log line
     */
    void ioDone(int errno);
}
