package dev.vmm.core.block;

/**
 * A failed block operation, with the Linux errno that caused it. Protocols map {@link #errno()}
 * to their own error codes in one place each. Thrown on the data path only on failure, so its
 * cost does not matter; it records no stack trace.
 */
public final class BlockException extends Exception {
    private static final long serialVersionUID = 1L;

    private final int errno;

    public BlockException(int errno, String message) {
        super(message, null, false, false);
        this.errno = errno;
    }

    public int errno() { return errno; }
}
