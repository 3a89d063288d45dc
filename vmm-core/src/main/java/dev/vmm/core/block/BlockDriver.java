package dev.vmm.core.block;

/**
 * The I/O of one image, as the block layer sees it. Implementations: {@link RawFileDriver}.
 *
 * <p>Thread contract: after {@link BlockNode} is created, every method MUST be called on the
 * node's home IOThread only (the data path is lock-free by confinement).
 *
 * <p>Asynchronous requests (the methods that take an {@link IoCompletion}): the call checks its
 * arguments and either throws {@link BlockException} at once (bad range, read-only, closed; the
 * completion is then never called) or accepts the request and returns; the completion runs later
 * on the home thread with 0 or an errno. Many requests may be in flight; the caller keeps the
 * memory behind {@code address}/{@code iovAddress} (and the iovec array itself) valid until its
 * completion ran. {@link #inFlight()} counts accepted requests not yet completed, and
 * {@link #whenIdle} is how a move drains a node. A request completed with success is in the page
 * cache, or on stable storage for {@code fua} and flush.
 *
 * <p>The synchronous methods (no completion argument) block the calling thread until the I/O is
 * done; they are for the control plane and tests on the home thread, never for the data path.
 *
 * <p>Memory safety: {@code address} arguments are native addresses that the caller has
 * bounds-checked (a pooled direct buffer with enough capacity, or an iovec into mapped guest
 * memory); the driver never reads or writes beyond {@code address + length}.
 *
 * <p>Errors are {@link BlockException}s carrying an errno, so each protocol maps them in one
 * place (NBD error codes, {@code VIRTIO_BLK_S_IOERR}).
 */
public interface BlockDriver extends AutoCloseable {
    /** Image size in bytes. */
    long size();

    /** True when writes are refused ({@code read-only=on}, or the file could not be opened rw). */
    boolean readOnly();

    /**
     * Reads {@code length} bytes at {@code offset} into native memory. Bytes past the end of the
     * underlying file (a file truncated behind our back) read as zeros.
     */
    void read(long offset, long address, int length) throws BlockException;

    /** Writes {@code length} bytes from native memory; with {@code fua}, durable before return. */
    void write(long offset, long address, int length, boolean fua) throws BlockException;

    /**
     * Scatter read into {@code iovcnt} {@code struct iovec}s (16 bytes each: base, len) that start
     * at {@code iovAddress}: one syscall for a whole guest request.
     */
    void readv(long offset, long iovAddress, int iovcnt, long totalLength) throws BlockException;

    /** Gather write from {@code iovcnt} {@code struct iovec}s at {@code iovAddress}. */
    void writev(long offset, long iovAddress, int iovcnt, long totalLength, boolean fua) throws BlockException;

    /** Makes all completed writes durable (fdatasync). */
    void flush() throws BlockException;

    /**
     * Discards a range (hole punch). Advisory: where the file system cannot punch holes this
     * does nothing and succeeds, and the range keeps its old data; where it can, the range
     * afterwards reads as zeros. Callers that need zeros use {@link #writeZeroes}.
     */
    void discard(long offset, long length) throws BlockException;

    /**
     * Makes a range read as zeros.
     *
     * @param mayUnmap the range may become a hole (NBD without NO_HOLE, virtio-blk with UNMAP)
     * @param fastOnly fail with {@code ENOTSUP} instead of writing zero buffers (NBD FAST_ZERO)
     */
    void writeZeroes(long offset, long length, boolean mayUnmap, boolean fastOnly, boolean fua) throws BlockException;

    /**
     * Grows the underlying file to {@code newSize} bytes (never shrinks): a format driver
     * ({@code qcow2}) allocating clusters past the end of its {@code file} child. Synchronous, on
     * the home thread: an ftruncate, no data I/O. Drivers that cannot grow refuse with
     * {@code ENOTSUP} (the default) or {@code ENOSPC} (a block device too small).
     */
    default void grow(long newSize) throws BlockException {
        throw new BlockException(dev.vmm.core.linux.Errno.ENOTSUP, "this driver cannot grow its file");
    }

    /**
     * Bytes the underlying file takes on disk ({@code st_blocks * 512}), or -1 when unknown. A
     * format driver compares it with what its metadata allocates (QEMU's detection of
     * {@code preallocation=metadata} images for block status). Home thread; a metadata read.
     */
    default long allocatedSize() {
        return -1;
    }

    /** Hints that a range will be read soon (NBD_CMD_CACHE); never fails for a valid range. */
    void prefetch(long offset, long length) throws BlockException;

    /**
     * Allocation status of the extent that starts at {@code offset}: fills {@code out} with the
     * length (at least 1, at most {@code maxLength}) of the run that has the same status, and
     * its flags ({@link BlockStatus#HOLE}, {@link BlockStatus#ZERO}).
     */
    void status(long offset, long maxLength, BlockStatus out) throws BlockException;

    /**
     * The file descriptor a socket may {@code sendfile(2)} from (page cache to socket, no copy in
     * user space), or -1 when the driver has none (O_DIRECT images bypass the page cache). Valid
     * until {@link #close()}; used on the home thread only.
     */
    default int sendfileFd() {
        return -1;
    }

    // ---- asynchronous requests (the data path) ----

    /** Reads {@code length} bytes at {@code offset} into native memory at {@code address}. */
    void read(long offset, long address, int length, IoCompletion done) throws BlockException;

    /** Writes {@code length} bytes from native memory; with {@code fua}, durable before completion. */
    void write(long offset, long address, int length, boolean fua, IoCompletion done) throws BlockException;

    /** Scatter read into {@code iovcnt} {@code struct iovec}s at {@code iovAddress}. */
    void readv(long offset, long iovAddress, int iovcnt, long totalLength, IoCompletion done) throws BlockException;

    /** Gather write from {@code iovcnt} {@code struct iovec}s at {@code iovAddress}. */
    void writev(long offset, long iovAddress, int iovcnt, long totalLength, boolean fua, IoCompletion done) throws BlockException;

    /**
     * Makes every write completed before this call durable. A failed flush stays failed: once the
     * kernel reported a writeback error, every later flush fails with it too (the kernel reports
     * such an error once, and the data it lost is not coming back).
     */
    void flush(IoCompletion done) throws BlockException;

    /** {@link #discard(long, long)}, asynchronously. */
    void discard(long offset, long length, IoCompletion done) throws BlockException;

    /** {@link #writeZeroes(long, long, boolean, boolean, boolean)}, asynchronously. */
    void writeZeroes(long offset, long length, boolean mayUnmap, boolean fastOnly, boolean fua, IoCompletion done)
            throws BlockException;

    /** Requests accepted and not yet completed. */
    int inFlight();

    /**
     * Runs {@code idle} on the home thread once {@link #inFlight()} is 0: at once (inside this
     * call) when it already is, else right after the completion that empties the node.
     */
    void whenIdle(Runnable idle);

    /**
     * The node's home is now {@code home}: later requests are submitted through its I/O engine.
     * Called at creation and by a move, only while nothing is in flight.
     */
    void attach(dev.vmm.iothread.IOThread home);

    /**
     * Buffer address alignment the driver needs to hand memory to the kernel without bouncing
     * it (O_DIRECT), 1 when any address does. Callers that choose their buffers place them so.
     */
    default int memoryAlignment() {
        return 1;
    }

    /** Preferred I/O granularity in bytes (the O_DIRECT alignment, or 4096). */
    int preferredBlockSize();

    /** Releases the file. Idempotent. */
    @Override
    void close();
}
