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
        this.hint = null;
    }

    public DaemonException(String message, Throwable cause) {
        super(message, cause);
        this.hint = null;
    }

    /** With a hint line (QEMU's {@code error_append_hint}): the CLI prints it under the message; QMP leaves it out, as QEMU. */
    public DaemonException(String message, String hint, Throwable cause) {
        super(message, cause);
        this.hint = hint;
    }

    private final String hint;

    /** The hint line, or null. */
    public String hint() { return hint; }

    /** The message and, when there is one, the hint on the next line: what a command line user sees. */
    public String withHint() { return hint == null ? getMessage() : getMessage() + "\n" + hint; }
}
