package dev.vmm.core.aio;

/**
 * One asynchronous file operation, described in io_uring's terms so that every engine reads
 * the same fields: {@link #opcode} (an {@code IORING_OP_*} value), {@link #fd}, {@link #offset},
 * {@link #addr}, {@link #len} and {@link #rwFlags}, exactly as in a {@code struct io_uring_sqe}.
 * A driver keeps a pool of its requests and reuses them: submitting allocates nothing.
 *
 * <p>Thread contract: a request is filled and submitted on its engine's IOThread, and
 * {@link #completed} runs on that same thread, never on another and never from inside
 * {@link IoEngine#submit}. Between the two the request belongs to the engine (and, for the
 * thread-pool engine, to one worker thread, with the hand-over through the pool's and the
 * event loop's queues).
 */
public abstract class AioRequest {
    /** {@code IORING_OP_*}: {@link IoEngine#OP_READV}, {@link IoEngine#OP_WRITEV}, ... */
    public int opcode;
    public int fd;
    /** File offset (fallocate: start of the range). */
    public long offset;
    /** readv/writev: address of the iovec array; fallocate: length of the range. */
    public long addr;
    /** readv/writev: number of iovecs; fallocate: the mode. */
    public int len;
    /** readv/writev: {@code RWF_*} flags; fsync: {@code IORING_FSYNC_DATASYNC}. */
    public int rwFlags;
    /**
     * {@code IOSQE_*} flags of the SQE; {@link IoEngine#IOSQE_ASYNC} hands the operation to the
     * kernel's worker threads at once instead of trying it inline (ignored by the thread pool).
     */
    public int sqeFlags;

    /** Set by the io_uring engine: where this request sits in its table (user_data). */
    int slot = -1;
    /** Intrusive link for an engine's waiting list (no allocation when the ring is full). */
    AioRequest nextWaiting;
    /** Thread-pool engine: the result, handed from the worker to the home thread. */
    int threadResult;
    /** Thread-pool engine: the engine that ran this request last, and its task for this request. */
    ThreadPoolEngine threadEngine;
    Runnable threadWork;

    /**
     * The operation finished: {@code res} is the number of bytes moved (readv/writev, possibly
     * short), 0 (fsync, fallocate), or {@code -errno}. Runs on the home thread.
     */
    public abstract void completed(int res);
}
