package dev.vmm.virtio.memory;

/**
 * A guest (or frontend) address that does not lie entirely inside one mapped region, or a
 * region the frontend described badly (overlap, zero or huge size, too many regions, an fd that
 * cannot be mapped). It comes from a possibly malicious peer: callers turn it into a request
 * error, a device reset or an error reply, never into a crash. Records no stack trace, so a
 * guest cannot make the data path expensive by failing on purpose.
 */
public final class GuestMemoryException extends Exception {
    private static final long serialVersionUID = 1L;

    public GuestMemoryException(String message) {
        super(message, null, false, false);
    }
}
