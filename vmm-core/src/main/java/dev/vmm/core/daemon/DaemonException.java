package dev.vmm.core.daemon;

/**
 * A control-plane request that cannot be carried out (duplicate id, unknown node, file that
 * cannot be opened, port in use). The message is one line meant for the user; the CLI prints it
 * and exits 1, QMP returns it as a {@code GenericError}.
 */
public class DaemonException extends Exception {
    private static final long serialVersionUID = 1L;

    public DaemonException(String message) {
        super(message);
    }

    public DaemonException(String message, Throwable cause) {
        super(message, cause);
    }
}
