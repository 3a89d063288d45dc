package dev.vmm.core.linux;

/**
 * Linux errno values (asm-generic/errno-base.h and errno.h, as on x86_64), in one place: the
 * syscall bindings report them, block requests complete with them, and each protocol maps them
 * to its own codes in one function ({@code NbdError.fromErrno}, virtio-blk's status byte).
 * Thread contract: constants only.
 */
public final class Errno {
    private Errno() {}

    /** Operation not permitted. */
    public static final int EPERM = 1;
    /** No such file or directory. */
    public static final int ENOENT = 2;
    /** Interrupted system call: retry. */
    public static final int EINTR = 4;
    /** I/O error. */
    public static final int EIO = 5;
    /** No such device or address: lseek SEEK_DATA past the last data. */
    public static final int ENXIO = 6;
    /** Bad file descriptor. */
    public static final int EBADF = 9;
    /** Try again (non-blocking I/O would block; io_uring: resources short). */
    public static final int EAGAIN = 11;
    /** Out of memory. */
    public static final int ENOMEM = 12;
    /** Permission denied. */
    public static final int EACCES = 13;
    /** Bad address. */
    public static final int EFAULT = 14;
    /** Device or resource busy (io_uring_enter with completions to post first). */
    public static final int EBUSY = 16;
    /** Is a directory. */
    public static final int EISDIR = 21;
    /** Invalid argument: also O_DIRECT on tmpfs, misaligned O_DIRECT I/O, SEEK_DATA unsupported. */
    public static final int EINVAL = 22;
    /** File too large. */
    public static final int EFBIG = 27;
    /** No space left on device. */
    public static final int ENOSPC = 28;
    /** Read-only file system. */
    public static final int EROFS = 30;
    /** Broken pipe. */
    public static final int EPIPE = 32;
    /** Function not implemented (kernel or libc too old). */
    public static final int ENOSYS = 38;
    /** Value too large: NBD's answer to a DF read it cannot send in one chunk. */
    public static final int EOVERFLOW = 75;
    /** Socket operation on a descriptor that is not a socket. */
    public static final int ENOTSOCK = 88;
    /** Operation not supported. */
    public static final int EOPNOTSUPP = 95;
    /** The same value as EOPNOTSUPP on Linux. */
    public static final int ENOTSUP = EOPNOTSUPP;
    /** Address already in use. */
    public static final int EADDRINUSE = 98;
    /** Connection reset by peer. */
    public static final int ECONNRESET = 104;
    /** Cannot send after transport endpoint shutdown. */
    public static final int ESHUTDOWN = 108;
    /** Connection refused. */
    public static final int ECONNREFUSED = 111;
    /** Disk quota exceeded. */
    public static final int EDQUOT = 122;
}
