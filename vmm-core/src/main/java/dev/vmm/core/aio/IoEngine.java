package dev.vmm.core.aio;

/**
 * Submits {@link AioRequest}s for one IOThread and delivers their completions on it: the
 * backend of {@code --blockdev driver=file,aio=...}. Implementations: {@link UringEngine}
 * (io_uring; the default), {@link ThreadPoolEngine} ({@code aio=threads}: blocking syscalls on
 * worker threads). Both are shared by every node homed on the IOThread, and obtained through
 * {@link IoEngines}.
 *
 * <p>Thread contract: {@link #submit} MUST be called on the engine's IOThread; completions run
 * there later, in a later task or event of the loop (never inside {@code submit}), so a caller
 * may submit while it walks its own data structures. Any number of requests may be in flight;
 * an engine that is full queues the rest and submits them as completions make room.
 */
public interface IoEngine {
    // io_uring opcodes (include/uapi/linux/io_uring.h), the common language of every engine.
    int OP_NOP = 0;
    int OP_READV = 1;
    int OP_WRITEV = 2;
    int OP_FSYNC = 3;
    int OP_FALLOCATE = 17;
    /** SQE flag: do not try inline, go to an io-wq worker (spreads large page-cache copies over cores). */
    int IOSQE_ASYNC = 1 << 4;
    /** {@code fsync_flags} bit of OP_FSYNC: fdatasync(2) instead of fsync(2). */
    int IORING_FSYNC_DATASYNC = 1;

    void submit(AioRequest r);

    /** Which {@code aio=} mode this engine implements. */
    AioMode mode();

    /** Requests submitted and not yet completed (for monitors and tests). */
    int inFlight();
}
