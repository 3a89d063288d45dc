package dev.vmm.core.tls;

/**
 * TLS credentials that cannot be loaded or used: a missing or unreadable file, a PEM block that
 * does not parse, a key that does not match its certificate. The message is one line for the
 * user and names the file; the CLI prints it and exits 1, QMP returns it as a GenericError.
 */
public final class TlsException extends Exception {
    private static final long serialVersionUID = 1L;

    public TlsException(String message) {
        super(message);
    }

    public TlsException(String message, Throwable cause) {
        super(message, cause);
    }
}
