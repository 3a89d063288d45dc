package dev.vmm.cli.guest;

/**
 * Why a guest could not be prepared or run, in one line a user can act on (the message names
 * the file, the command or the Debian package involved).
 */
public class GuestException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public GuestException(String message) {
        super(message);
    }

    public GuestException(String message, Throwable cause) {
        super(message, cause);
    }
}
