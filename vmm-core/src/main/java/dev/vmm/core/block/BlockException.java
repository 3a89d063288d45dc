package dev.vmm.core.block;

/**
 * A failed block operation, with the Linux errno that caused it. Protocols map {@link #errno()}
 * to their own error codes in one place each. Thrown on the data path only on failure, so its
 * cost does not matter; it records no stack trace.
 */
public final class BlockException extends Exception {
    private static final long serialVersionUID = 1L;

    public static final int EPERM = 1;
    public static final int EIO = 5;
    public static final int ENOMEM = 12;
    public static final int EFAULT = 14;
    public static final int EINVAL = 22;
    public static final int EFBIG = 27;
    public static final int ENOSPC = 28;
    public static final int EROFS = 30;
    public static final int EOPNOTSUPP = 95;
    /** On Linux ENOTSUP and EOPNOTSUPP are the same value. */
    public static final int ENOTSUP = 95;

    private final int errno;

    public BlockException(int errno, String message) {
        super(message, null, false, false);
        this.errno = errno;
    }

    public int errno() { return errno; }
}
