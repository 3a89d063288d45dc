package dev.vmm.virtio.queue;

/**
 * A virtqueue that the driver (a possibly malicious guest) filled with something the spec
 * forbids. The {@link Kind} tells the device what it can still do.
 *
 * <p>Thrown on the data path only when the guest misbehaves; records no stack trace.
 */
public final class VirtqueueException extends Exception {
    private static final long serialVersionUID = 1L;

    /** What the device does about it. */
    public enum Kind {
        /**
         * One request is bad (bad descriptor, loop, out-of-range address, nested indirect,
         * zero length, wrong direction). Its head was consumed and is known ({@link #head()}):
         * complete it (e.g. {@code pushUsed(head, 0)}, or IOERR if a status byte is reachable)
         * and keep serving the queue.
         */
        REQUEST,
        /**
         * The queue as a whole cannot be trusted (avail idx moved more than the queue size, a
         * head index outside the ring, rings outside guest memory): stop the queue and set the
         * device status to NEEDS_RESET. {@link #head()} is -1. Further pops throw again.
         */
        BROKEN
    }

    private final Kind kind;
    private final int head;

    public VirtqueueException(Kind kind, int head, String message) {
        super(message, null, false, false);
        this.kind = kind;
        this.head = head;
    }

    static VirtqueueException request(int head, String message) {
        return new VirtqueueException(Kind.REQUEST, head, "request " + head + ": " + message);
    }

    static VirtqueueException broken(String message) {
        return new VirtqueueException(Kind.BROKEN, -1, message);
    }

    public Kind kind() { return kind; }

    /** The consumed head to complete, for {@link Kind#REQUEST}; -1 for {@link Kind#BROKEN}. */
    public int head() { return head; }
}
