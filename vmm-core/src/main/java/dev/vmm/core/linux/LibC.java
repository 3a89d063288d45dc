package dev.vmm.core.linux;

import static dev.vmm.core.linux.Errno.*;

import com.sun.jna.LastErrorException;
import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;
import com.sun.jna.Platform;

/**
 * The libc calls of the data path, bound with JNA direct mapping ({@link Native#register}) so a
 * call costs one JNI transition and allocates nothing: pointers are passed as {@code long}
 * native addresses (x86_64 Linux: pointers, {@code size_t}, {@code ssize_t} and {@code off_t}
 * are all 64 bits), never as {@code Pointer} or arrays.
 *
 * <p>Calls declared {@code throws LastErrorException} report failure through it, with
 * {@link LastErrorException#getErrorCode()} holding errno; their return value is only
 * meaningful on success. Thread contract: all methods may be called from any thread (they are
 * the C functions, nothing more); the caller is responsible for the memory behind every address.
 *
 * <p>Constants keep the Linux header names and values (x86_64, glibc).
 */
public final class LibC {
    private LibC() {}

    static {
        Native.register(LibC.class, NativeLibrary.getInstance(Platform.C_LIBRARY_NAME));
    }

    // ---- open(2) flags (asm-generic/fcntl.h) ----
    /** Open for reading only. */
    public static final int O_RDONLY = 0;
    /** Open for reading and writing. */
    public static final int O_RDWR = 2;
    /** Bypass the page cache; buffers, offsets and lengths must be aligned. */
    public static final int O_DIRECT = 0x4000;
    /** Close on exec: never leak image fds to children. */
    public static final int O_CLOEXEC = 0x80000;

    // ---- lseek(2) whence ----
    /** Offset is absolute. */
    public static final int SEEK_SET = 0;
    /** Offset is relative to the end of the file. */
    public static final int SEEK_END = 2;
    /** Next offset at or after the given one that holds data. */
    public static final int SEEK_DATA = 3;
    /** Next offset at or after the given one that starts a hole (EOF counts as a hole). */
    public static final int SEEK_HOLE = 4;

    // ---- fallocate(2) modes (linux/falloc.h) ----
    /** Do not change the file size. */
    public static final int FALLOC_FL_KEEP_SIZE = 0x01;
    /** Deallocate the range (needs KEEP_SIZE); it reads as zeros. */
    public static final int FALLOC_FL_PUNCH_HOLE = 0x02;
    /** Make the range read as zeros, keeping it allocated (unwritten extents). */
    public static final int FALLOC_FL_ZERO_RANGE = 0x10;

    // ---- preadv2/pwritev2 flags (linux/fs.h) ----
    /** Per-write O_DSYNC: data durable on return (FUA). */
    public static final int RWF_DSYNC = 0x02;

    // ---- posix_fadvise(2) advice ----
    /** The range will be accessed soon: start readahead. */
    public static final int POSIX_FADV_WILLNEED = 3;

    // ---- statx(2) (linux/stat.h); struct statx is 0x100 bytes ----
    /** dirfd meaning the current directory. */
    public static final int AT_FDCWD = -100;
    /** With an empty path, stat the dirfd itself. */
    public static final int AT_EMPTY_PATH = 0x1000;
    /** Want stx_mode & S_IFMT. */
    public static final int STATX_TYPE = 0x0001;
    /** Want stx_size. */
    public static final int STATX_SIZE = 0x0200;
    /** Want stx_blocks. */
    public static final int STATX_BLOCKS = 0x0400;
    /** Want stx_dio_mem_align and stx_dio_offset_align (Linux 6.1+). */
    public static final int STATX_DIOALIGN = 0x2000;
    /** Size of struct statx. */
    public static final int STATX_SIZEOF = 0x100;
    /** u32 stx_mask: what the kernel filled in. */
    public static final int STATX_OFF_MASK = 0x00;
    /** u16 stx_mode. */
    public static final int STATX_OFF_MODE = 0x1c;
    /** u64 stx_size. */
    public static final int STATX_OFF_SIZE = 0x28;
    /** u64 stx_blocks: 512-byte units allocated. */
    public static final int STATX_OFF_BLOCKS = 0x30;
    /** u32 stx_dio_mem_align: buffer alignment for O_DIRECT (0: no O_DIRECT). */
    public static final int STATX_OFF_DIO_MEM_ALIGN = 0x98;
    /** u32 stx_dio_offset_align: file offset and length alignment for O_DIRECT. */
    public static final int STATX_OFF_DIO_OFFSET_ALIGN = 0x9c;

    // ---- st_mode file types (sys/stat.h) ----
    /** Mask of the file type bits. */
    public static final int S_IFMT = 0xF000;
    /** Directory. */
    public static final int S_IFDIR = 0x4000;
    /** Block device. */
    public static final int S_IFBLK = 0x6000;
    /** Regular file. */
    public static final int S_IFREG = 0x8000;

    // ---- limits ----
    /** Most iovecs one preadv/pwritev call accepts (UIO_MAXIOV). */
    public static final int IOV_MAX = 1024;
    /** Size of struct iovec: void *iov_base; size_t iov_len. */
    public static final int IOVEC_SIZEOF = 16;

    // ---- files ----

    /** open(2) without O_CREAT (the mode argument is never needed here). Not a hot call. */
    public static native int open(String path, int flags) throws LastErrorException;

    /** close(2). */
    public static native int close(int fd) throws LastErrorException;

    /** lseek(2); also the size of a file or block device with SEEK_END. */
    public static native long lseek(int fd, long offset, int whence) throws LastErrorException;

    /** statx(2) into a {@link #STATX_SIZEOF}-byte buffer at {@code statxbuf}. */
    public static native int statx(int dirfd, String path, int flags, int mask, long statxbuf) throws LastErrorException;

    // ---- data path: every address must be valid for the given length ----

    /** pread(2): returns bytes read, 0 at EOF. */
    public static native long pread(int fd, long buf, long count, long offset) throws LastErrorException;

    /** splice(2): moves up to {@code len} bytes between an fd and a pipe; offsets are pointers to 64-bit values or 0. */
    public static native long splice(int fdIn, long offIn, int fdOut, long offOut, long len, int flags) throws LastErrorException;

    /** pipe2(2): {@code fds} points to two ints (read end, write end). */
    public static native int pipe2(long fds, int flags) throws LastErrorException;

    /** splice: move pages rather than copy, where the kernel can. */
    public static final int SPLICE_F_MOVE = 1;
    /** splice: do not block on the pipe (the socket is non-blocking anyway). */
    public static final int SPLICE_F_NONBLOCK = 2;
    /** fcntl: set a pipe's capacity. */
    public static final int F_SETPIPE_SZ = 1031;
    /** pipe2: non-blocking ends. */
    public static final int O_NONBLOCK = 04000;

    /** sendfile(2): copies from a file to a socket inside the kernel; {@code offset} points to a 64-bit file offset it advances. */
    public static native long sendfile(int outFd, int inFd, long offset, long count) throws LastErrorException;

    /** pwrite(2): returns bytes written, possibly fewer than asked. */
    public static native long pwrite(int fd, long buf, long count, long offset) throws LastErrorException;

    /** preadv(2) over {@code iovcnt} iovecs at {@code iov} (at most {@link #IOV_MAX}). */
    public static native long preadv(int fd, long iov, int iovcnt, long offset) throws LastErrorException;

    /** pwritev(2) over {@code iovcnt} iovecs at {@code iov}. */
    public static native long pwritev(int fd, long iov, int iovcnt, long offset) throws LastErrorException;

    /** pwritev2(2) with RWF_* flags (Linux 4.6+, glibc 2.26+). */
    public static native long pwritev2(int fd, long iov, int iovcnt, long offset, int flags) throws LastErrorException;

    /** fdatasync(2): completed writes become durable. */
    public static native int fdatasync(int fd) throws LastErrorException;

    /** fallocate(2) with FALLOC_FL_* mode bits. */
    public static native int fallocate(int fd, int mode, long offset, long len) throws LastErrorException;

    /**
     * fcntl(2) with a pointer argument ({@code struct flock} for the OFD lock commands). fcntl is
     * variadic; on x86_64 the third argument travels in a register whatever its declared type.
     */
    public static native int fcntl(int fd, int cmd, long arg) throws LastErrorException;

    /** fcntl: open file description locks (Linux 3.15): owned by the open file, not the process. */
    public static final int F_OFD_GETLK = 36;
    public static final int F_OFD_SETLK = 37;
    /** struct flock l_type values. */
    public static final short F_RDLCK = 0, F_WRLCK = 1, F_UNLCK = 2;
    /**
     * struct flock on x86_64: short l_type @0, short l_whence @2, off_t l_start @8, off_t l_len @16,
     * pid_t l_pid @24; 32 bytes.
     */
    public static final int FLOCK_SIZEOF = 32, FLOCK_OFF_TYPE = 0, FLOCK_OFF_WHENCE = 2, FLOCK_OFF_START = 8, FLOCK_OFF_LEN = 16,
            FLOCK_OFF_PID = 24;

    /** posix_fadvise(2): returns 0 or an error number; it does NOT set errno. */
    public static native int posix_fadvise(int fd, long offset, long len, int advice);

    // ---- memory ----

    /** memmove(3): ranges may overlap. */
    public static native long memmove(long dest, long src, long n);

    /** memcpy(3) between non-overlapping native ranges. */
    public static native long memcpy(long dest, long src, long n);

    /** memset(3). */
    public static native long memset(long s, int c, long n);

    /**
     * syscall(2) with six arguments, for system calls glibc 2.36 has no wrapper for (io_uring).
     * Unused arguments are passed as 0; glibc's syscall() only moves registers, so the fixed
     * arity of this binding is safe for a variadic C function on x86_64.
     */
    public static native long syscall(long number, long a1, long a2, long a3, long a4, long a5, long a6) throws LastErrorException;

    /** strerror(3), for messages only (not on hot paths). */
    public static native String strerror(int errnum);

    /** "strerror (errno N)" for messages, e.g. {@code No such file or directory (errno 2)}. */
    public static String describe(int errno) {
        return strerror(errno) + " (errno " + errno + ")";
    }
}
