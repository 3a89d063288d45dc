package dev.vmm.core.job;

/** A refused job command, with QEMU's wording; answered as a QMP GenericError. Any thread. */
public final class JobException extends Exception {
    private static final long serialVersionUID = 1L;

    public JobException(String message) {
        super(message, null, false, false);
    }
}
