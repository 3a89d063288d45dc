package dev.vmm.core.daemon;

/**
 * A component or export that accepts connections: {@code /readyz} asks each whether its sockets
 * are still open ({@link Daemon#notReady}). Thread contract: {@link #listening} from any thread.
 */
public interface Listening {
    /** True when every listening socket of this component is bound and open. */
    boolean listening();
}
