package dev.vmm.core.options;

/**
 * A bad option: malformed syntax, a missing or invalid parameter, or an unknown one. The message
 * is one line, {@code "<option>: <detail>"}, e.g. {@code --blockdev: parameter 'filename' is missing};
 * print it as is (the CLI exits with it, no stack trace). A QMP command answers
 * {@code GenericError} with {@link #detail()}, which omits the option name.
 *
 * <p>Checked, like {@code BlockException}: options come from users and QMP clients, and every
 * caller must decide what a bad one means (exit at start-up, error reply on the monitor) rather
 * than let it unwind the main loop. It records no stack trace: it describes the input.
 */
public final class OptionException extends Exception {
    private static final long serialVersionUID = 1L;

    /** Stable classification, for callers and tests; the text may be reworded. */
    public enum Kind {
        /** The text could not be split into parameters (key=value or JSON syntax, bad name, duplicate). */
        SYNTAX,
        /** A required parameter is absent. */
        MISSING,
        /** A parameter's value is not of the expected form or range. */
        INVALID,
        /** A parameter no consumer knows. */
        UNKNOWN
    }

    private final Kind kind;
    private final String optionName;
    private final String key;
    private final String detail;

    public OptionException(Kind kind, String optionName, String key, String detail) {
        super(optionName + ": " + detail, null, false, false);
        this.kind = kind;
        this.optionName = optionName;
        this.key = key;
        this.detail = detail;
    }

    public Kind kind() { return kind; }

    /** The option as the user wrote it: {@code --blockdev}, or a QMP command name. */
    public String optionName() { return optionName; }

    /** The full dotted key at fault, or null when the fault is not one parameter's. */
    public String key() { return key; }

    /** The message without the option name. */
    public String detail() { return detail; }
}
