package dev.vmm.cli.demo;

/** A demo step failed in a way that ends the demo; the message is one line for the user. */
public final class DemoException extends Exception {
    private static final long serialVersionUID = 1L;

    public DemoException(String message) {
        super(message);
    }

    public DemoException(String message, Throwable cause) {
        super(message, cause);
    }
}
