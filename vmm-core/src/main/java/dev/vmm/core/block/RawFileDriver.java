package dev.vmm.core.block;

import dev.vmm.core.linux.Errno;

import static dev.vmm.core.linux.LibC.AT_EMPTY_PATH;
import static dev.vmm.core.linux.Errno.EINTR;
import static dev.vmm.core.linux.Errno.EINVAL;
import static dev.vmm.core.linux.Errno.ENOSYS;
import static dev.vmm.core.linux.Errno.ENXIO;
import static dev.vmm.core.linux.Errno.EOPNOTSUPP;
import static dev.vmm.core.linux.LibC.FALLOC_FL_KEEP_SIZE;
import static dev.vmm.core.linux.LibC.FALLOC_FL_PUNCH_HOLE;
import static dev.vmm.core.linux.LibC.FALLOC_FL_ZERO_RANGE;
import static dev.vmm.core.linux.LibC.IOVEC_SIZEOF;
import static dev.vmm.core.linux.LibC.IOV_MAX;

import com.sun.jna.LastErrorException;
import dev.vmm.core.aio.AioMode;
import dev.vmm.core.aio.AioRequest;
import dev.vmm.core.aio.IoEngine;
import dev.vmm.core.aio.IoEngines;
import dev.vmm.iothread.IOThread;
import java.util.ArrayDeque;
import java.util.ArrayList;
import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.linux.LibC;
import java.nio.file.Path;
import java.util.Objects;

/**
 * A raw image: a regular file or a block device ({@code driver=file} in QEMU's terms). The data
 * path is asynchronous: each request becomes {@code IORING_OP_READV}/{@code WRITEV}/{@code FSYNC}/
 * {@code FALLOCATE} operations on the home IOThread's {@link IoEngine} (io_uring, or the thread
 * pool for {@code aio=threads}), so a guest's queue depth reaches the device; short transfers are
 * continued, EINTR/EAGAIN retried. Two rare paths stay synchronous on the home thread: O_DIRECT
 * requests that are not aligned (bounced with read-modify-write, which also keeps two such writes
 * to one block from racing) and zeroing on a file system without fallocate.
 *
 * <p>Thread contract: NOT thread-safe. After {@link #open} the driver belongs to its node's home
 * IOThread, and every method except {@link #size()}, {@link #readOnly()} and
 * {@link #preferredBlockSize()} MUST be called on that thread only; a handoff moves the whole
 * node (quiesced and drained) to another thread, which then owns the driver. There is no lock
 * because there is no sharing: the mutable state (the scratch iovec array, the bounce and zero
 * buffers, the fd once closed) is touched by one thread at a time, and the handoff's queue
 * hand-over gives the happens-before edge between the old and the new home.
 *
 * <p>Allocation: the hot path allocates nothing. Requests become iovec arrays; short transfers
 * are continued from a per-driver scratch copy of the remaining iovecs; O_DIRECT requests that
 * are not aligned go through one aligned bounce buffer, grown on demand up to 1 MiB and reused.
 *
 * <p>Memory safety: the driver validates every range against {@link #size()} and checks that an
 * iovec array's lengths add up to the stated total before handing addresses to the kernel, so
 * it never touches memory beyond what the caller declared. It does not (cannot) check that the
 * caller's addresses are mapped: that is the caller's bounds check.
 *
 * <p>O_DIRECT: buffers must be aligned to {@link #memoryAlignment()}, offsets and lengths to
 * {@link #offsetAlignment()} (from {@code statx(STATX_DIOALIGN)}, 4096 when the kernel does not
 * say). Aligned requests go straight to the kernel; others are bounced with read-modify-write of
 * the partial head and tail blocks. A writable O_DIRECT image must have an aligned size, since
 * writing its partial last block would grow the file.
 */
public final class RawFileDriver implements BlockDriver {
    /** Size of the shared zero buffer for writeZeroes without fallocate support. */
    static final int ZERO_BUFFER_SIZE = 1 << 20;
    /** Largest bounce buffer: bigger unaligned O_DIRECT requests are bounced in chunks. */
    static final int BOUNCE_MAX = 1 << 20;
    /**
     * Page-cache transfers at least this long go straight to io_uring's worker threads
     * (IOSQE_ASYNC): a hit would otherwise be copied inline on the IOThread, one request after the
     * other, while the other core idles. Smaller ones are cheaper inline.
     */
    static final long ASYNC_COPY_MIN = Long.getLong("vmm.aio.async-copy-min", 256 * 1024);
    /** O_DIRECT alignment when statx does not report one. */
    static final int DEFAULT_ALIGNMENT = 4096;

    // ---- FUA strategy, per process (the kernel and libc decide, not the file) ----
    private static final int DSYNC_UNKNOWN = 0;
    private static final int DSYNC_YES = 1;
    private static final int DSYNC_NO = 2;
    /**
     * Whether pwritev2(RWF_DSYNC) works. Decided by the first FUA write and remembered; a benign
     * race between two IOThreads deciding at once writes the same answer.
     */
    private static volatile int dsyncSupport = DSYNC_UNKNOWN;

    // ---- immutable after open ----
    private final String file;
    private final AioMode aio;
    /** Changes only through {@link #grow} (home thread); volatile for {@link #size()} off it. */
    private volatile long size;
    private final boolean regular;
    private final boolean readOnly;
    private final boolean direct;
    private final int memAlign;
    private final int offAlign;

    // ---- confined to the home IOThread ----
    /** The image fd, or -1 once closed. */
    private int fd;
    private IOThread home;
    private IoEngine engine;
    private int inFlight;
    private final ArrayList<Runnable> idleWaiters = new ArrayList<>();
    private final ArrayDeque<Op> freeOps = new ArrayDeque<>();
    /** Every op this driver made, to free their native memory at close. */
    private final ArrayList<Op> allOps = new ArrayList<>();
    /**
     * The errno of the first failed fdatasync, or 0. Sticky, as QEMU's file-posix: after a
     * writeback error the kernel forgets it, so a later fdatasync would succeed although data was
     * lost; every later flush fails with this errno instead.
     */
    private int flushErrno;
    /** Asynchronous requests that took the synchronous bounce path (unaligned O_DIRECT), for tests and monitors. */
    private long bounced;
    /**
     * Flush coalescing, as QEMU's write_gen/flushed_gen: writeGen counts finished write-type
     * requests (1 at open, so the first flush always syncs), flushedGen is the count the last
     * successful fdatasync covered. A flush with nothing new to cover succeeds at once; flushes
     * arriving while one is in the kernel wait and share the next fdatasync.
     */
    private long writeGen = 1;
    private long flushedGen;
    private Op activeFlush;
    private final ArrayDeque<Op> flushWaiters = new ArrayDeque<>();
    private final ArrayDeque<Op> flushReady = new ArrayDeque<>();
    /** Unaligned O_DIRECT requests waiting until nothing else is in the kernel (see startTransfer). */
    private final ArrayDeque<Op> bounceWaiters = new ArrayDeque<>();
    /** Bounces done whose answer task has not run yet: in flight, but not in the kernel. */
    private int bouncesRun;
    /** IOV_MAX iovecs to continue short transfers, then the single-buffer iovec, then the bounce iovec. */
    private final Memory scratch;
    private final long adjustIov;
    private final long oneIov;
    private final long bounceIov;
    private final NativeView view = new NativeView();
    private Memory bounceMem;
    private long bounceAddr;
    private int bounceSize;
    private Memory zeroMem;
    private long zeroAddr;
    private boolean seekDataSupported = true;
    private boolean punchSupported = true;
    private boolean zeroRangeSupported = true;
    /** Entries dropped by the last {@link #advance} (a second return value, to allocate nothing). */
    private int skipped;
    /** Bounce copy cursor: current iovec, iovecs left, offset inside the current one. */
    private long curIov;
    private int curLeft;
    private long curOff;

    private RawFileDriver(String file, int fd, long size, boolean regular, boolean readOnly, boolean direct, int memAlign, int offAlign,
                          AioMode aio) {
        this.file = file;
        this.regular = regular;
        this.aio = aio;
        this.fd = fd;
        this.size = size;
        this.readOnly = readOnly;
        this.direct = direct;
        this.memAlign = memAlign;
        this.offAlign = offAlign;
        this.scratch = new Memory((long) (IOV_MAX + 2) * IOVEC_SIZEOF);
        this.adjustIov = Pointer.nativeValue(scratch);
        this.oneIov = adjustIov + (long) IOV_MAX * IOVEC_SIZEOF;
        this.bounceIov = oneIov + IOVEC_SIZEOF;
    }

    /**
     * Opens an existing image file or block device.
     *
     * @param readOnly open O_RDONLY and refuse writes with EROFS
     * @param direct   open O_DIRECT (QEMU's {@code cache.direct=on}): bypass the page cache
     * @throws BlockException with the errno of the failure and a message naming the file
     */
    public static RawFileDriver open(Path file, boolean readOnly, boolean direct) throws BlockException {
        return open(file, readOnly, direct, IoEngines.defaultMode());
    }

    /**
     * Opens an image with an explicit {@code aio=} mode ({@code native} is served by io_uring;
     * the caller checks QEMU's rule that it needs {@code cache.direct=on}).
     */
    public static RawFileDriver open(Path file, boolean readOnly, boolean direct, AioMode aio) throws BlockException {
        Objects.requireNonNull(file, "file");
        Objects.requireNonNull(aio, "aio");
        String path = file.toString();
        String shown = file.toAbsolutePath().toString();
        int flags = (readOnly ? LibC.O_RDONLY : LibC.O_RDWR) | LibC.O_CLOEXEC | (direct ? LibC.O_DIRECT : 0);
        int fd;
        try {
            fd = LibC.open(path, flags);
        } catch (LastErrorException e) {
            int err = e.getErrorCode();
            String hint = direct && err == EINVAL ? " (the file system may not support O_DIRECT)" : "";
            throw new BlockException(err, "cannot open image '" + shown + "' " + (readOnly ? "read-only" : "read-write")
                    + (direct ? " with O_DIRECT" : "") + ": " + LibC.describe(err) + hint);
        }
        try (Memory stx = new Memory(LibC.STATX_SIZEOF)) {
            stx.clear();
            LibC.statx(fd, "", AT_EMPTY_PATH, LibC.STATX_TYPE | LibC.STATX_DIOALIGN, Pointer.nativeValue(stx));
            int type = stx.getShort(LibC.STATX_OFF_MODE) & LibC.S_IFMT;
            if (type == LibC.S_IFDIR) {
                throw new BlockException(Errno.EISDIR, "cannot open image '" + shown + "': " + LibC.describe(Errno.EISDIR));
            }
            if (type != LibC.S_IFREG && type != LibC.S_IFBLK) {
                throw new BlockException(EINVAL, "cannot open image '" + shown + "': not a regular file or block device");
            }
            long size = LibC.lseek(fd, 0, LibC.SEEK_END);
            int memAlign = 1;
            int offAlign = 1;
            if (direct) {
                int mem = stx.getInt(LibC.STATX_OFF_DIO_MEM_ALIGN);
                int off = stx.getInt(LibC.STATX_OFF_DIO_OFFSET_ALIGN);
                boolean known = (stx.getInt(LibC.STATX_OFF_MASK) & LibC.STATX_DIOALIGN) != 0
                        && Integer.bitCount(off) == 1 && Integer.bitCount(mem) == 1 && off <= BOUNCE_MAX;
                memAlign = known ? mem : DEFAULT_ALIGNMENT;
                offAlign = known ? off : DEFAULT_ALIGNMENT;
                // A size that is not a multiple of offAlign (qemu-img writes such qcow2 files) is
                // served as QEMU does: requests touching the last partial block are bounced, and a
                // write there pads the file up to the alignment.
            }
            return new RawFileDriver(shown, fd, size, type == LibC.S_IFREG, readOnly, direct, memAlign, offAlign, aio);
        } catch (LastErrorException e) {
            closeQuietly(fd);
            throw new BlockException(e.getErrorCode(), "cannot open image '" + shown + "': " + LibC.describe(e.getErrorCode()));
        } catch (BlockException | RuntimeException e) {
            closeQuietly(fd);
            throw e;
        }
    }

    // ================================================================ contract

    @Override
    public long size() { return size; }

    /** The image file as given at open (QMP shows it as {@code file} and {@code image.filename}). */
    public String filename() { return file; }

    @Override
    public boolean readOnly() { return readOnly; }

    /** Requests that had to be bounced synchronously (unaligned O_DIRECT); a recent value off the home thread. */
    public long bouncedRequests() { return bounced; }

    /** The {@code aio=} mode asked for. */
    public AioMode aio() { return aio; }

    /** The engine requests go through now (io_uring, or threads where io_uring is refused), or null before attach. */
    public IoEngine engine() { return engine; }

    /** True when opened with O_DIRECT. */
    public boolean direct() { return direct; }

    /** O_DIRECT buffer address alignment (1 without O_DIRECT). */
    @Override
    public int memoryAlignment() { return memAlign; }

    /** O_DIRECT file offset and length alignment (1 without O_DIRECT). */
    public int offsetAlignment() { return offAlign; }

    @Override
    public int preferredBlockSize() { return direct ? offAlign : DEFAULT_ALIGNMENT; }

    @Override
    public void read(long offset, long address, int length) throws BlockException {
        checkRange(offset, length);
        if (length == 0) {
            return;
        }
        setIov(oneIov, address, length);
        if (direct && !aligned(offset, address, length)) {
            bounceRead(offset, oneIov, 1, length);
        } else {
            transfer(false, offset, oneIov, 1, length, false);
        }
    }

    @Override
    public void write(long offset, long address, int length, boolean fua) throws BlockException {
        fua &= !noFlush; // cache.no-flush: nothing is ever made durable on request
        if (detectZeroes != DetectZeroes.OFF && length > 0 && DetectZeroes.isZero(address, length)) {
            writeZeroes(offset, length, detectZeroes.mayUnmap(), false, fua);
            return;
        }
        checkRange(offset, length);
        checkWritable();
        if (length == 0) {
            return;
        }
        writeOne(offset, address, length, fua);
    }

    @Override
    public void readv(long offset, long iovAddress, int iovcnt, long totalLength) throws BlockException {
        checkRange(offset, totalLength);
        boolean aligned = checkIovecs(iovAddress, iovcnt, totalLength);
        if (totalLength == 0) {
            return;
        }
        if (direct && !(aligned && isAligned(offset, offAlign))) {
            bounceRead(offset, iovAddress, iovcnt, totalLength);
        } else {
            transfer(false, offset, iovAddress, iovcnt, totalLength, false);
        }
    }

    @Override
    public void writev(long offset, long iovAddress, int iovcnt, long totalLength, boolean fua) throws BlockException {
        fua &= !noFlush;
        if (detectZeroes != DetectZeroes.OFF && totalLength > 0 && iovcnt > 0 && iovcnt <= IOV_MAX
                && DetectZeroes.iovIsZero(iovAddress, iovcnt, totalLength)) {
            writeZeroes(offset, totalLength, detectZeroes.mayUnmap(), false, fua);
            return;
        }
        checkRange(offset, totalLength);
        checkWritable();
        boolean aligned = checkIovecs(iovAddress, iovcnt, totalLength);
        if (totalLength == 0) {
            return;
        }
        if (direct && !(aligned && isAligned(offset, offAlign))) {
            bounceWrite(offset, iovAddress, iovcnt, totalLength, fua);
        } else {
            transfer(true, offset, iovAddress, iovcnt, totalLength, fua);
        }
    }

    @Override
    public void flush() throws BlockException {
        checkOpen();
        if (noFlush) return;
        if (flushErrno != 0) {
            throw new BlockException(flushErrno, "flush of " + file + " failed earlier (" + LibC.describe(flushErrno)
                    + "): data written before it may be lost");
        }
        try {
            datasync();
        } catch (BlockException e) {
            flushErrno = e.errno(); // sticky, as on the asynchronous path
            throw e;
        }
    }

    @Override
    public void discard(long offset, long length) throws BlockException {
        checkRange(offset, length);
        checkWritable();
        if (length == 0 || !punchSupported || !unmap) {
            return;
        }
        // Advisory: where punching is unsupported the range keeps its data (see the contract).
        punchSupported = fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, "discard");
    }

    @Override
    public void writeZeroes(long offset, long length, boolean mayUnmap, boolean fastOnly, boolean fua) throws BlockException {
        fua &= !noFlush;
        checkRange(offset, length);
        checkWritable();
        mayUnmap &= unmap;
        if (length == 0) {
            return;
        }
        boolean done = false;
        if (mayUnmap && punchSupported) {
            done = fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, "write-zeroes");
            punchSupported = done;
        }
        if (!done && zeroRangeSupported) {
            // KEEP_SIZE: block devices accept fallocate only with it; files are not extended anyway.
            done = fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length, "write-zeroes");
            zeroRangeSupported = done;
        }
        if (!done) {
            if (fastOnly) {
                throw new BlockException(Errno.ENOTSUP, "fast zeroing is not supported by " + file);
            }
            writeZeroBuffers(offset, length);
        }
        if (fua) {
            datasync();
        }
    }

    /**
     * Grows a regular file with ftruncate (a format driver allocating past the end). A block
     * device cannot grow: ENOSPC. Sizes below the current one are ignored (never shrinks).
     */
    @Override
    public void grow(long newSize) throws BlockException {
        checkOpen();
        checkWritable();
        if (newSize <= size) {
            return;
        }
        if (!regular) {
            throw new BlockException(Errno.ENOSPC, "cannot grow block device " + file + " to " + newSize + " bytes");
        }
        if (direct && (newSize & (offAlign - 1)) != 0) {
            throw new BlockException(EINVAL, "cannot grow " + file + " to " + newSize
                    + " bytes: not a multiple of the O_DIRECT alignment " + offAlign);
        }
        try {
            dev.vmm.core.linux.LibcMemory.truncate(fd, newSize);
        } catch (dev.vmm.core.linux.LibcMemory.ErrnoException e) {
            throw new BlockException(e.errno(), "cannot grow " + file + " to " + newSize + " bytes: " + LibC.describe(e.errno()));
        }
        size = newSize;
    }

    /** st_blocks * 512 of the open file (statx on the fd), or -1 when closed or unknown. */
    @Override
    public long allocatedSize() {
        if (fd < 0) return -1;
        try (Memory stx = new Memory(LibC.STATX_SIZEOF)) {
            stx.clear();
            LibC.statx(fd, "", AT_EMPTY_PATH, LibC.STATX_BLOCKS, Pointer.nativeValue(stx));
            if ((stx.getInt(LibC.STATX_OFF_MASK) & LibC.STATX_BLOCKS) == 0) return -1;
            return stx.getLong(LibC.STATX_OFF_BLOCKS) * 512;
        } catch (LastErrorException e) {
            return -1;
        }
    }

    @Override
    public void prefetch(long offset, long length) throws BlockException {
        checkRange(offset, length);
        if (!direct && length > 0) {
            // Readahead into the page cache; O_DIRECT reads bypass it, so there it would only evict.
            // Its result is ignored: a hint never fails a valid request.
            LibC.posix_fadvise(fd, offset, length, LibC.POSIX_FADV_WILLNEED);
        }
    }

    @Override
    public void status(long offset, long maxLength, BlockStatus out) throws BlockException {
        checkOpen();
        if (offset < 0 || offset >= size || maxLength <= 0) {
            throw new BlockException(EINVAL, "block status at " + offset + " (+" + maxLength
                    + ") outside image of size " + size + " (" + file + ")");
        }
        long limit = Math.min(maxLength, size - offset);
        if (!seekDataSupported) {
            out.set(limit, 0);
            return;
        }
        long data;
        try {
            data = LibC.lseek(fd, offset, LibC.SEEK_DATA);
        } catch (LastErrorException e) {
            int err = e.getErrorCode();
            if (err == ENXIO) {
                // No data at or after offset: a hole up to EOF, and past EOF (a truncated file) reads zeros too.
                out.set(limit, BlockStatus.HOLE | BlockStatus.ZERO);
                return;
            }
            if (err == EINVAL) {
                // File system without SEEK_DATA (offset is valid): everything is data.
                seekDataSupported = false;
                out.set(limit, 0);
                return;
            }
            throw error("block status", offset, err);
        }
        if (data > offset) {
            out.set(Math.min(data - offset, limit), BlockStatus.HOLE | BlockStatus.ZERO);
            return;
        }
        long hole;
        try {
            hole = LibC.lseek(fd, offset, LibC.SEEK_HOLE);
        } catch (LastErrorException e) {
            throw error("block status", offset, e.getErrorCode());
        }
        out.set(Math.max(1, Math.min(hole - offset, limit)), 0);
    }

    @Override
    public int sendfileFd() {
        return direct ? -1 : fd; // -1 after close, too
    }

    // ================================================================ asynchronous data path

    @Override
    public void attach(IOThread newHome) {
        if (inFlight != 0) throw new IllegalStateException(file + ": attached to " + newHome.id() + " with requests in flight");
        home = newHome;
        engine = IoEngines.forThread(newHome, aio);
    }

    @Override
    public int inFlight() { return inFlight; }

    @Override
    public void whenIdle(Runnable idle) {
        if (inFlight == 0) idle.run(); else idleWaiters.add(idle);
    }

    @Override
    public void read(long offset, long address, int length, IoCompletion done) throws BlockException {
        checkRange(offset, length);
        Op op = take(done);
        setIov(op.oneIov, address, length);
        startTransfer(op, false, offset, op.oneIov, 1, length, false, direct && !aligned(offset, address, length));
    }

    @Override
    public void write(long offset, long address, int length, boolean fua, IoCompletion done) throws BlockException {
        fua &= !noFlush;
        if (detectZeroes != DetectZeroes.OFF && length > 0 && DetectZeroes.isZero(address, length)) {
            writeZeroes(offset, length, detectZeroes.mayUnmap(), false, fua, done);
            return;
        }
        checkRange(offset, length);
        checkWritable();
        Op op = take(done);
        setIov(op.oneIov, address, length);
        startTransfer(op, true, offset, op.oneIov, 1, length, fua, direct && !aligned(offset, address, length));
    }

    @Override
    public void readv(long offset, long iovAddress, int iovcnt, long totalLength, IoCompletion done) throws BlockException {
        checkRange(offset, totalLength);
        boolean aligned = checkIovecs(iovAddress, iovcnt, totalLength);
        startTransfer(take(done), false, offset, iovAddress, iovcnt, totalLength, false,
                direct && !(aligned && isAligned(offset, offAlign)));
    }

    @Override
    public void writev(long offset, long iovAddress, int iovcnt, long totalLength, boolean fua, IoCompletion done)
            throws BlockException {
        fua &= !noFlush;
        if (detectZeroes != DetectZeroes.OFF && totalLength > 0 && iovcnt > 0 && iovcnt <= IOV_MAX
                && DetectZeroes.iovIsZero(iovAddress, iovcnt, totalLength)) {
            writeZeroes(offset, totalLength, detectZeroes.mayUnmap(), false, fua, done);
            return;
        }
        checkRange(offset, totalLength);
        checkWritable();
        boolean aligned = checkIovecs(iovAddress, iovcnt, totalLength);
        startTransfer(take(done), true, offset, iovAddress, iovcnt, totalLength, fua,
                direct && !(aligned && isAligned(offset, offAlign)));
    }

    @Override
    public void flush(IoCompletion done) throws BlockException {
        checkOpen();
        Op op = take(done);
        op.stage = Op.FLUSH;
        op.needGen = writeGen;
        if (noFlush) {
            finishLater(op, 0); // cache.no-flush: QEMU's BDRV_O_NO_FLUSH answers flushes at once
        } else if (flushErrno != 0) {
            finishLater(op, flushErrno); // sticky: see flushErrno
        } else if (activeFlush != null) {
            flushWaiters.add(op); // answered by the flush in flight, or by one started when it is done
        } else if (writeGen == flushedGen) {
            finishLater(op, 0); // nothing was written since the last successful flush
        } else {
            startFlush(op);
        }
    }

    /** One fdatasync for {@code op} and every flush that arrives while it runs. */
    private void startFlush(Op op) {
        activeFlush = op;
        op.needGen = writeGen;
        submitSync(op);
    }

    /**
     * The fdatasync of {@link #activeFlush} is done: it answers every waiting flush whose writes
     * it covered (all that arrived before it started); the others share the next one.
     */
    private void flushDone(Op op, int errno) {
        activeFlush = null;
        if (errno == 0 && op.needGen > flushedGen) flushedGen = op.needGen;
        for (int i = flushWaiters.size(); i > 0; i--) {
            Op w = flushWaiters.poll();
            if (flushErrno != 0 || w.needGen <= flushedGen) flushReady.add(w); else flushWaiters.add(w);
        }
        if (!flushWaiters.isEmpty()) startFlush(flushWaiters.poll());
        finish(op, errno);
        for (Op w; (w = flushReady.poll()) != null; ) finish(w, flushErrno);
    }

    @Override
    public void discard(long offset, long length, IoCompletion done) throws BlockException {
        checkRange(offset, length);
        checkWritable();
        Op op = take(done);
        op.writes = true;
        if (length == 0 || !punchSupported || !unmap) {
            finishLater(op, 0); // advisory: nothing to do
            return;
        }
        op.stage = Op.DISCARD;
        op.reqOffset = offset;
        op.total = length;
        submitFallocate(op, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
    }

    @Override
    public void writeZeroes(long offset, long length, boolean mayUnmap, boolean fastOnly, boolean fua, IoCompletion done)
            throws BlockException {
        fua &= !noFlush;
        checkRange(offset, length);
        checkWritable();
        Op op = take(done);
        op.writes = true;
        op.reqOffset = offset;
        op.total = length;
        op.fua = fua;
        op.fastOnly = fastOnly;
        if (length == 0) {
            finishLater(op, 0);
        } else if (mayUnmap && unmap && punchSupported) {
            op.stage = Op.ZERO_PUNCH;
            submitFallocate(op, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
        } else {
            zeroRangeOrBuffers(op);
        }
    }

    /** Write-zeroes without punching: fallocate ZERO_RANGE, else zero buffers (synchronous, rare). */
    private void zeroRangeOrBuffers(Op op) {
        if (zeroRangeSupported) {
            op.stage = Op.ZERO_RANGE;
            // KEEP_SIZE: block devices accept fallocate only with it; files are not extended anyway.
            submitFallocate(op, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
            return;
        }
        if (op.fastOnly) {
            finishLater(op, Errno.ENOTSUP);
            return;
        }
        try {
            writeZeroBuffers(op.reqOffset, op.total);
        } catch (BlockException e) {
            finishLater(op, e.errno());
            return;
        }
        afterWrite(op);
    }

    /** A write-like request succeeded: FUA needs a data sync unless the write itself was RWF_DSYNC. */
    private void afterWrite(Op op) {
        if (op.fua && !op.dsync) {
            op.stage = Op.FUA_SYNC;
            submitSync(op);
        } else {
            finishLater(op, 0);
        }
    }

    private void startTransfer(Op op, boolean write, long offset, long iov, int iovcnt, long total, boolean fua, boolean bounce) {
        op.writes = write;
        if (total == 0) {
            finishLater(op, 0);
            return;
        }
        if (write && fua && flushErrno != 0) {
            finishLater(op, flushErrno); // durable-on-completion cannot be promised after a lost writeback
            return;
        }
        if (bounce) {
            bounced++;
            // Unaligned O_DIRECT: read-modify-write through the bounce buffer, synchronously (rare:
            // devices advertise the alignment as their block size), and only once no other request
            // is in the kernel: an asynchronous write or fallocate of part of the same block would
            // otherwise be overwritten by the stale bytes the bounce read. Bounces run one by one.
            op.stage = write ? Op.BOUNCE_WRITE : Op.BOUNCE_READ;
            op.reqOffset = offset;
            op.iov = iov;
            op.iovcnt = iovcnt;
            op.total = total;
            op.fua = fua;
            bounceWaiters.add(op);
            runBouncesIfAlone();
            return;
        }
        op.stage = write ? Op.WRITE : Op.READ;
        op.reqOffset = offset;
        op.iov = iov;
        op.iovcnt = iovcnt;
        op.total = total;
        op.moved = 0;
        op.fua = fua;
        op.dsync = fua && dsyncSupport != DSYNC_NO;
        submitTransfer(op);
    }

    private void submitTransfer(Op op) {
        op.opcode = op.stage == Op.READ ? IoEngine.OP_READV : IoEngine.OP_WRITEV;
        op.fd = fd;
        op.offset = op.reqOffset + op.moved;
        op.addr = op.iov;
        op.len = op.iovcnt;
        op.rwFlags = op.dsync ? LibC.RWF_DSYNC : 0;
        op.sqeFlags = !direct && op.total - op.moved >= ASYNC_COPY_MIN ? IoEngine.IOSQE_ASYNC : 0;
        submit(op);
    }

    private void submitSync(Op op) {
        if (flushErrno != 0) {
            finishLater(op, flushErrno); // sticky: see flushErrno
            return;
        }
        op.opcode = IoEngine.OP_FSYNC;
        op.fd = fd;
        op.offset = 0;
        op.addr = 0;
        op.len = 0;
        op.rwFlags = IoEngine.IORING_FSYNC_DATASYNC;
        op.sqeFlags = 0;
        submit(op);
    }

    private void submitFallocate(Op op, int mode) {
        op.opcode = IoEngine.OP_FALLOCATE;
        op.fd = fd;
        op.offset = op.reqOffset;
        op.addr = op.total; // io_uring: the length travels in addr, the mode in len
        op.len = mode;
        op.rwFlags = 0;
        op.sqeFlags = 0;
        submit(op);
    }

    /** Engine completion of one operation of {@code op}; decides the next step. On the home thread. */
    private void stepDone(Op op, int res) {
        if (res == -EINTR || res == -Errno.EAGAIN) { // retry the same operation as it is
            submit(op);
            return;
        }
        switch (op.stage) {
            case Op.READ, Op.WRITE -> transferDone(op, res);
            case Op.FLUSH, Op.FUA_SYNC -> {
                if (res < 0 && flushErrno == 0) {
                    flushErrno = -res;
                    org.slf4j.LoggerFactory.getLogger(RawFileDriver.class).error(
                            "flush of {} failed: {}; every later flush of this image fails too (data may be lost)",
                            file, LibC.describe(-res));
                }
                if (op.stage == Op.FLUSH) flushDone(op, res < 0 ? -res : 0); else finish(op, res < 0 ? -res : 0);
            }
            case Op.DISCARD -> {
                if (res == -EOPNOTSUPP || res == -ENOSYS) {
                    punchSupported = false; // advisory: the range keeps its data
                    res = 0;
                }
                finish(op, res < 0 ? -res : 0);
            }
            case Op.ZERO_PUNCH -> {
                if (res == -EOPNOTSUPP || res == -ENOSYS) {
                    punchSupported = false;
                    zeroRangeOrBuffers(op);
                } else if (res < 0) {
                    finish(op, -res);
                } else {
                    afterWrite(op);
                }
            }
            case Op.ZERO_RANGE -> {
                if (res == -EOPNOTSUPP || res == -ENOSYS) {
                    zeroRangeSupported = false;
                    zeroRangeOrBuffers(op);
                } else if (res < 0) {
                    finish(op, -res);
                } else {
                    afterWrite(op);
                }
            }
            default -> finish(op, Errno.EIO);
        }
    }

    private void transferDone(Op op, int res) {
        boolean write = op.stage == Op.WRITE;
        if (res < 0) {
            int err = -res;
            if (write && op.dsync && dsyncSupport != DSYNC_YES && (err == ENOSYS || err == EOPNOTSUPP || err == EINVAL)) {
                // Old kernel or libc: emulate FUA with a data sync after the write.
                dsyncSupport = DSYNC_NO;
                op.dsync = false;
                submitTransfer(op);
                return;
            }
            finish(op, err);
            return;
        }
        if (write && op.dsync && dsyncSupport == DSYNC_UNKNOWN) dsyncSupport = DSYNC_YES;
        op.moved += res;
        if (op.moved >= op.total) {
            if (write) afterWrite(op); else finish(op, 0);
            return;
        }
        if (write && res == 0) {
            finish(op, Errno.EIO); // no progress: would spin
            return;
        }
        op.iov = op.advance(op.iov, op.iovcnt, res);
        op.iovcnt -= op.skipped;
        if (!write && (res == 0 || direct)) {
            // EOF of a file truncated behind our back: the rest reads as zeros (O_DIRECT: a short
            // read only happens at EOF, and a retry from an unaligned offset would fail).
            zeroIovecs(op.iov, op.iovcnt);
            finish(op, 0);
            return;
        }
        submitTransfer(op);
    }

    /** Hands {@code op} to the engine; one that refuses it (its IOThread stopping) fails the request, it is not lost. */
    private void submit(Op op) {
        try {
            engine.submit(op);
        } catch (RuntimeException e) {
            org.slf4j.LoggerFactory.getLogger(RawFileDriver.class).error("{}: cannot submit a request: {}", file, e.toString());
            op.result = Errno.EIO;
            try {
                home.loop().execute(op.finishTask);
            } catch (RuntimeException stopped) {
                finish(op, Errno.EIO); // the loop is gone too: answer now rather than never
            }
        }
    }

    private Op take(IoCompletion done) throws BlockException {
        Objects.requireNonNull(done, "done");
        assert home == null || home.inThread() : file + ": request off the home thread";
        if (engine == null) throw new BlockException(Errno.EIO, "not attached to an IOThread: " + file);
        Op op = freeOps.poll();
        if (op == null) {
            op = new Op();
            allOps.add(op);
        }
        op.done = done;
        inFlight++;
        return op;
    }

    /** Completes {@code op} from a later task (the contract: never inside the submitting call). */
    private void finishLater(Op op, int errno) {
        op.result = errno;
        home.loop().execute(op.finishTask);
    }

    /** Runs the waiting bounces once every request in flight is one of them (none is in the kernel). */
    private void runBouncesIfAlone() {
        while (!bounceWaiters.isEmpty() && inFlight - bouncesRun == bounceWaiters.size()) {
            Op op = bounceWaiters.poll();
            bouncesRun++; // answered by a later task: still in flight, but no longer in the kernel
            try {
                if (op.stage == Op.BOUNCE_WRITE) bounceWrite(op.reqOffset, op.iov, op.iovcnt, op.total, op.fua);
                else bounceRead(op.reqOffset, op.iov, op.iovcnt, op.total);
                op.result = 0;
            } catch (BlockException e) {
                op.result = e.errno();
            }
            op.bounceDone = true;
            home.loop().execute(op.finishTask);
        }
    }

    private void finish(Op op, int errno) {
        if (op.bounceDone) {
            op.bounceDone = false;
            bouncesRun--;
        }
        if (op.writes) writeGen++; // failed writes too: part of them may have reached the file
        IoCompletion done = op.done;
        op.done = null;
        op.writes = false;
        op.stage = 0;
        freeOps.push(op);
        inFlight--;
        try {
            done.ioDone(errno);
        } finally {
            if (!bounceWaiters.isEmpty()) runBouncesIfAlone();
            if (inFlight == 0 && !idleWaiters.isEmpty()) {
                Runnable[] waiters = idleWaiters.toArray(new Runnable[0]);
                idleWaiters.clear();
                for (Runnable w : waiters) w.run();
            }
        }
    }

    /** One request in flight: the engine's operation plus the state to continue it. Pooled. */
    private final class Op extends AioRequest {
        static final int READ = 1, WRITE = 2, FLUSH = 3, FUA_SYNC = 4, DISCARD = 5, ZERO_PUNCH = 6, ZERO_RANGE = 7,
                BOUNCE_READ = 8, BOUNCE_WRITE = 9;
        /** A bounce ran; its answer is queued (counted in {@link #bouncesRun} until it is given). */
        boolean bounceDone;

        IoCompletion done;
        int stage;
        long reqOffset;
        long iov;
        int iovcnt;
        long total;
        long moved;
        boolean fua;
        boolean dsync;
        boolean fastOnly;
        /** A write-type request: counts for {@link #writeGen} when it finishes. */
        boolean writes;
        /** Flush: the {@link #writeGen} it must cover. */
        long needGen;
        int result;
        final Runnable finishTask = () -> finish(this, result);
        /** One iovec for {@link #read}/{@link #write}. */
        final Memory mem = new Memory(IOVEC_SIZEOF);
        final long oneIov = Pointer.nativeValue(mem);
        /** Copy of the remaining iovecs after a short transfer; made on first need. */
        Memory contMem;
        long contIov;
        int skipped;

        @Override
        public void completed(int res) {
            stepDone(this, res);
        }

        /** Like the driver's {@code advance}, into this op's own continuation array. */
        long advance(long at, int count, long n) {
            if (contMem == null) { // first short transfer of this pooled op
                contMem = new Memory((long) IOV_MAX * IOVEC_SIZEOF);
                contIov = Pointer.nativeValue(contMem);
            }
            at = advanceInto(at, count, n, contIov);
            skipped = RawFileDriver.this.skipped;
            return at;
        }

        void free() {
            mem.close();
            if (contMem != null) contMem.close();
        }
    }

    /** {@code discard=unmap} (true, our default) or {@code ignore}: discards do nothing, zeroing never unmaps. */
    private volatile boolean unmap = true;

    /** Set once at creation ({@code --blockdev ...,discard=}), before any I/O. */
    public void setUnmap(boolean unmap) { this.unmap = unmap; }

    /** {@code detect-zeroes=}: zero writes become write-zeroes (see {@link DetectZeroes}). */
    private volatile DetectZeroes detectZeroes = DetectZeroes.OFF;

    /** Set once at creation ({@code --blockdev ...,detect-zeroes=}), before any I/O. */
    public void setDetectZeroes(DetectZeroes mode) { this.detectZeroes = mode; }

    /** {@code cache.no-flush=on}: flushes complete at once without syncing, FUA writes are plain writes. */
    private volatile boolean noFlush;

    /** Set once at creation ({@code --blockdev ...,cache.no-flush=}), before any I/O. */
    public void setNoFlush(boolean noFlush) { this.noFlush = noFlush; }

    /** True with {@code cache.no-flush=on}. */
    public boolean noFlush() { return noFlush; }

    /** QEMU-compatible image locking of this file; null until {@link #initLock}. */
    private ImageLock imageLock;

    /**
     * Creates the image's lock state ({@code --blockdev ...,locking=}) once, at creation; it holds
     * no lock until the daemon gives the node permissions. Released with the fd by {@link #close}.
     */
    public ImageLock initLock(ImageLock.Mode mode) throws BlockException {
        return initLock(mode, file);
    }

    /** {@link #initLock(ImageLock.Mode)} naming the image as the user did ({@code filename=}), as QEMU's hint does. */
    public ImageLock initLock(ImageLock.Mode mode, String shownName) throws BlockException {
        checkOpen();
        imageLock = new ImageLock(fd, shownName, mode);
        return imageLock;
    }

    /** The lock state, or null when the driver was opened outside the daemon (tests, tools). */
    public ImageLock imageLock() { return imageLock; }

    @Override
    public void close() {
        if (fd < 0) {
            return;
        }
        if (inFlight != 0) {
            // The kernel may still write into the requests' memory: keep it (a leak) rather than free it.
            org.slf4j.LoggerFactory.getLogger(RawFileDriver.class).error("{}: closed with {} request(s) in flight; their memory is kept",
                    file, inFlight);
            allOps.clear();
        }
        int f = fd;
        fd = -1;
        closeQuietly(f);
        scratch.close();
        for (Op op : allOps) op.free();
        allOps.clear();
        freeOps.clear();
        if (bounceMem != null) {
            bounceMem.close();
            bounceMem = null;
        }
        if (zeroMem != null) {
            zeroMem.close();
            zeroMem = null;
        }
    }

    @Override
    public String toString() {
        return "RawFileDriver[" + file + (readOnly ? ", ro" : "") + (direct ? ", direct" : "") + ", size=" + size + "]";
    }

    /** Test hook: forget (or force) the pwritev2(RWF_DSYNC) decision. */
    static void resetFuaStrategy(boolean forceFallback) {
        dsyncSupport = forceFallback ? DSYNC_NO : DSYNC_UNKNOWN;
    }

    /** Test hook: submit through {@code e} (a fault-injecting engine) instead of the home thread's. */
    void useEngine(IoEngine e) {
        engine = e;
    }

    /** Test hook: behave as on a file system without fallocate punch-hole and zero-range. */
    void simulateNoFallocate() {
        punchSupported = false;
        zeroRangeSupported = false;
    }

    /** True once the process uses pwrite+fdatasync for FUA because pwritev2(RWF_DSYNC) failed. */
    static boolean fuaFallbackInUse() {
        return dsyncSupport == DSYNC_NO;
    }

    // ================================================================ checks

    private void checkOpen() throws BlockException {
        if (fd < 0) {
            throw new BlockException(Errno.EIO, "closed: " + file);
        }
    }

    private void checkRange(long offset, long length) throws BlockException {
        checkOpen();
        // offset > size - length cannot overflow: both are non-negative once the first tests pass.
        if (offset < 0 || length < 0 || offset > size - length) {
            throw new BlockException(EINVAL, "request at " + offset + " (+" + length + ") outside image of size "
                    + size + " (" + file + ")");
        }
    }

    private void checkWritable() throws BlockException {
        if (readOnly) {
            throw new BlockException(Errno.EROFS, "image is read-only: " + file);
        }
    }

    /**
     * Validates an iovec array: 0..IOV_MAX entries whose lengths add up to exactly
     * {@code total}, so the kernel never touches more than the range we checked.
     *
     * @return whether every base and length suits O_DIRECT
     */
    private boolean checkIovecs(long iov, int iovcnt, long total) throws BlockException {
        if (iovcnt < 0 || iovcnt > IOV_MAX || (iovcnt > 0 && iov == 0)) {
            throw new BlockException(EINVAL, "bad iovec array: " + iovcnt + " entries at 0x" + Long.toHexString(iov));
        }
        long sum = 0;
        long misaligned = 0;
        for (int i = 0; i < iovcnt; i++) {
            long base = view.longAt(iov + (long) i * IOVEC_SIZEOF);
            long len = view.longAt(iov + (long) i * IOVEC_SIZEOF + 8);
            if (len < 0 || len > total - sum) {
                throw new BlockException(EINVAL, "iovec lengths exceed the request length " + total);
            }
            sum += len;
            misaligned |= (base & (memAlign - 1)) | (len & (offAlign - 1));
        }
        if (sum != total) {
            throw new BlockException(EINVAL, "iovec lengths add up to " + sum + ", not the request length " + total);
        }
        return misaligned == 0;
    }

    private boolean aligned(long offset, long address, long length) {
        return isAligned(offset | length, offAlign) && isAligned(address, memAlign);
    }

    private static boolean isAligned(long value, int alignment) {
        return (value & (alignment - 1)) == 0;
    }

    // ================================================================ transfers

    private void writeOne(long offset, long address, int length, boolean fua) throws BlockException {
        setIov(oneIov, address, length);
        if (direct && !aligned(offset, address, length)) {
            bounceWrite(offset, oneIov, 1, length, fua);
        } else {
            transfer(true, offset, oneIov, 1, length, fua);
        }
    }

    /**
     * One or more preadv/pwritev(2) calls until {@code total} bytes moved. A short transfer is
     * continued from a copy of the remaining iovecs in {@link #adjustIov} (the caller's array is
     * never modified). Reads that hit EOF zero the rest. FUA writes use pwritev2(RWF_DSYNC), or
     * pwritev then fdatasync where that is unsupported.
     */
    private void transfer(boolean write, long offset, long iov, int iovcnt, long total, boolean fua) throws BlockException {
        long done = 0;
        boolean dsync = fua && dsyncSupport != DSYNC_NO;
        boolean syncAfter = fua && !dsync;
        while (true) {
            long n;
            try {
                if (!write) {
                    n = LibC.preadv(fd, iov, iovcnt, offset + done);
                } else if (dsync) {
                    n = LibC.pwritev2(fd, iov, iovcnt, offset + done, LibC.RWF_DSYNC);
                    if (dsyncSupport == DSYNC_UNKNOWN) {
                        dsyncSupport = DSYNC_YES;
                    }
                } else {
                    n = LibC.pwritev(fd, iov, iovcnt, offset + done);
                }
            } catch (LastErrorException e) {
                int err = e.getErrorCode();
                if (err == EINTR) {
                    continue;
                }
                if (dsync && dsyncSupport == DSYNC_UNKNOWN && (err == ENOSYS || err == EOPNOTSUPP || err == EINVAL)) {
                    // Old kernel or libc: emulate FUA with a full data sync after the write.
                    dsyncSupport = DSYNC_NO;
                    dsync = false;
                    syncAfter = true;
                    continue;
                }
                throw error(write ? "write" : "read", offset + done, err);
            }
            done += n;
            if (done >= total) {
                break;
            }
            if (write && n == 0) {
                throw new BlockException(Errno.EIO, "write made no progress at offset " + (offset + done) + " of " + file);
            }
            iov = advance(iov, iovcnt, n);
            iovcnt -= skipped;
            if (!write && (n == 0 || direct)) {
                // EOF of a file truncated behind our back: the rest reads as zeros. Under O_DIRECT
                // a short read only happens at EOF, and a retry from an unaligned offset would
                // fail with EINVAL instead of returning 0.
                zeroIovecs(iov, iovcnt);
                break;
            }
        }
        if (syncAfter) {
            datasync();
        }
    }

    /**
     * Moves past {@code n} transferred bytes: drops whole iovecs, and if one is left partly
     * done, copies the rest of the array into {@link #adjustIov} (unless it is already there)
     * and shortens its first entry. Sets {@link #skipped}.
     */
    private long advance(long iov, int iovcnt, long n) {
        return advanceInto(iov, iovcnt, n, adjustIov);
    }

    /**
     * Moves past {@code n} transferred bytes of an iovec array: drops whole iovecs and, if one is
     * left partly done, copies the rest of the array into {@code scratch} (IOV_MAX entries; unless
     * it is already there) and shortens its first entry. Sets {@link #skipped}. The caller's array
     * is never modified.
     */
    private long advanceInto(long iov, int iovcnt, long n, long scratch) {
        int drop = 0;
        long len;
        while (drop < iovcnt && n >= (len = iovLen(iov))) {
            n -= len;
            iov += IOVEC_SIZEOF;
            drop++;
        }
        skipped = drop;
        if (n > 0) {
            int left = iovcnt - drop;
            if (iov < scratch || iov >= scratch + (long) IOV_MAX * IOVEC_SIZEOF) {
                LibC.memcpy(scratch, iov, (long) left * IOVEC_SIZEOF);
                iov = scratch;
            }
            setIov(iov, iovBase(iov) + n, iovLen(iov) - n);
        }
        return iov;
    }

    private void zeroIovecs(long iov, int iovcnt) {
        for (int i = 0; i < iovcnt; i++, iov += IOVEC_SIZEOF) {
            LibC.memset(iovBase(iov), 0, iovLen(iov));
        }
    }

    /** Reads through the bounce buffer: aligned chunks in, the wanted bytes out to the iovecs. */
    private void bounceRead(long offset, long iov, int iovcnt, long total) throws BlockException {
        long end = offset + total;
        long pos = alignDown(offset);
        long alignedEnd = alignUp(end);
        ensureBounce(alignedEnd - pos);
        cursorStart(iov, iovcnt);
        while (pos < alignedEnd) {
            int chunk = (int) Math.min(alignedEnd - pos, bounceSize);
            readAligned(pos, bounceAddr, chunk);
            long from = Math.max(pos, offset);
            long to = Math.min(pos + chunk, end);
            cursorCopy(bounceAddr + (from - pos), to - from, false);
            pos += chunk;
        }
    }

    /** Writes through the bounce buffer, reading the partial head and tail blocks first. */
    private void bounceWrite(long offset, long iov, int iovcnt, long total, boolean fua) throws BlockException {
        long end = offset + total;
        long pos = alignDown(offset);
        long alignedEnd = alignUp(end);
        ensureBounce(alignedEnd - pos);
        cursorStart(iov, iovcnt);
        while (pos < alignedEnd) {
            int chunk = (int) Math.min(alignedEnd - pos, bounceSize);
            long from = Math.max(pos, offset);
            long to = Math.min(pos + chunk, end);
            if (from > pos) {
                readAligned(pos, bounceAddr, offAlign);
            }
            if (to < pos + chunk) {
                long block = alignDown(to);
                readAligned(block, bounceAddr + (block - pos), offAlign);
            }
            cursorCopy(bounceAddr + (from - pos), to - from, true);
            setIov(bounceIov, bounceAddr, chunk);
            transfer(true, pos, bounceIov, 1, chunk, fua);
            pos += chunk;
        }
    }

    private void readAligned(long pos, long buf, int length) throws BlockException {
        setIov(bounceIov, buf, length);
        transfer(false, pos, bounceIov, 1, length, false);
    }

    private void ensureBounce(long span) {
        if (bounceSize >= span || bounceSize >= BOUNCE_MAX) {
            return;
        }
        int size = (int) Math.min(BOUNCE_MAX, Math.max(span, 2L * bounceSize));
        if (bounceMem != null) {
            bounceMem.close();
        }
        int align = Math.max(memAlign, offAlign);
        bounceMem = new Memory(size + align);
        bounceAddr = alignUp(Pointer.nativeValue(bounceMem), align);
        bounceSize = size;
    }

    private void writeZeroBuffers(long offset, long length) throws BlockException {
        if (zeroMem == null) {
            int align = Math.max(memAlign, offAlign);
            zeroMem = new Memory(ZERO_BUFFER_SIZE + align);
            zeroMem.clear();
            zeroAddr = alignUp(Pointer.nativeValue(zeroMem), align);
        }
        long pos = offset;
        long end = offset + length;
        while (pos < end) {
            // The first chunk ends on an alignment boundary, so under O_DIRECT only the head
            // and the tail are bounced.
            int chunk = (int) Math.min(end - pos, ZERO_BUFFER_SIZE - (pos & (offAlign - 1)));
            writeOne(pos, zeroAddr, chunk, false);
            pos += chunk;
        }
    }

    // ---- bounce copy cursor over the caller's iovecs ----

    private void cursorStart(long iov, int iovcnt) {
        curIov = iov;
        curLeft = iovcnt;
        curOff = 0;
    }

    /** Copies {@code length} bytes between {@code buf} and the iovecs at the cursor, advancing it. */
    private void cursorCopy(long buf, long length, boolean fromIovecs) {
        while (length > 0) {
            assert curLeft > 0 : "iovecs shorter than the checked total";
            long len = iovLen(curIov);
            long n = Math.min(len - curOff, length);
            if (n > 0) {
                long at = iovBase(curIov) + curOff;
                if (fromIovecs) {
                    LibC.memcpy(buf, at, n);
                } else {
                    LibC.memcpy(at, buf, n);
                }
                buf += n;
                length -= n;
                curOff += n;
            }
            if (curOff == len) {
                curIov += IOVEC_SIZEOF;
                curLeft--;
                curOff = 0;
            }
        }
    }

    // ---- small syscalls ----

    /** fallocate with EINTR retry; false when the mode is unsupported here. */
    private boolean fallocate(int mode, long offset, long length, String what) throws BlockException {
        while (true) {
            try {
                LibC.fallocate(fd, mode, offset, length);
                return true;
            } catch (LastErrorException e) {
                int err = e.getErrorCode();
                if (err == EINTR) {
                    continue;
                }
                if (err == EOPNOTSUPP || err == ENOSYS) {
                    return false;
                }
                throw error(what, offset, err);
            }
        }
    }

    private void datasync() throws BlockException {
        while (true) {
            try {
                LibC.fdatasync(fd);
                return;
            } catch (LastErrorException e) {
                if (e.getErrorCode() != EINTR) {
                    throw new BlockException(e.getErrorCode(), "flush of " + file + " failed: " + LibC.describe(e.getErrorCode()));
                }
            }
        }
    }

    private BlockException error(String what, long offset, int errno) {
        return new BlockException(errno, what + " at offset " + offset + " of " + file + " failed: " + LibC.describe(errno));
    }

    private static void closeQuietly(int fd) {
        try {
            LibC.close(fd);
        } catch (LastErrorException e) {
            // close(2) errors leave the fd closed on Linux; nothing to retry.
        }
    }

    // ---- iovec access (struct iovec { void *iov_base; size_t iov_len; }, native order) ----

    private long iovBase(long iov) { return view.longAt(iov); }

    private long iovLen(long iov) { return view.longAt(iov + 8); }

    private void setIov(long iov, long base, long len) {
        view.putLongAt(iov, base);
        view.putLongAt(iov + 8, len);
    }

    private long alignDown(long value) { return value & -(long) offAlign; }

    private long alignUp(long value) { return alignUp(value, offAlign); }

    private static long alignUp(long value, int alignment) { return (value + alignment - 1) & -(long) alignment; }

    /** A JNA pointer that can be moved, to read native memory without allocating one per access. */
    private static final class NativeView extends Pointer {
        NativeView() { super(0); }

        long longAt(long address) {
            peer = address;
            return getLong(0);
        }

        void putLongAt(long address, long value) {
            peer = address;
            setLong(0, value);
        }
    }
}
