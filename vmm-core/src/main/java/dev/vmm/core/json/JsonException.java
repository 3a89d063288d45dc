package dev.vmm.core.json;

/**
 * Malformed JSON text. The message is one line and names the 0-based character position in the
 * input where parsing stopped, so that a QMP client or a command-line user can find the fault.
 *
 * <p>Checked on purpose: JSON comes from peers (QMP clients, the command line), and every caller
 * must turn a parse failure into a reply or an exit message instead of letting it unwind the
 * main loop. It records no stack trace: it describes the input, not the code.
 */
public final class JsonException extends Exception {
    private static final long serialVersionUID = 1L;

    private final int position;

    public JsonException(int position, String detail) {
        super("invalid JSON at position " + position + ": " + detail, null, false, false);
        this.position = position;
    }

    /** 0-based index of the offending character in the parsed string (its length at end of input). */
    public int position() { return position; }
}
