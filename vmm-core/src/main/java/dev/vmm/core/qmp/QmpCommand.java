package dev.vmm.core.qmp;

import java.util.concurrent.CompletableFuture;

/**
 * One QMP command. Implementations read their arguments through {@link QmpCall#options()}
 * (typed accessors, then {@code checkAllConsumed()}), so a bad field is answered with a
 * {@code desc} that names it.
 *
 * <p>Thread contract: {@link #execute} is called on the daemon's main loop and MUST NOT block
 * it; a command that waits (binding a socket, flushing a file, stopping a thread) runs that part
 * through {@link QmpCall#blocking}, and a command that completes later (a node move) returns an
 * incomplete future. The monitor sends nothing else to this client until the future completes.
 *
 * <p>Exceptions thrown or completed with: {@link QmpException} gives its class and message;
 * {@code OptionException} and {@code DaemonException} give {@code GenericError} with their
 * one-line message; anything else is logged with its stack trace and answered with a short
 * {@code GenericError}, never a trace.
 */
@FunctionalInterface
public interface QmpCommand {
    /** Runs the command; the future's value is the {@code return} member (a Map, List, ...). */
    CompletableFuture<Object> execute(QmpCall call) throws Exception;

    /** A command that completes at once. */
    interface Sync {
        Object run(QmpCall call) throws Exception;
    }

    static QmpCommand sync(Sync body) {
        return call -> CompletableFuture.completedFuture(body.run(call));
    }

    /** A command whose whole body may block: it runs on the monitor's control thread. */
    static QmpCommand blocking(Sync body) {
        return call -> call.blocking(() -> body.run(call));
    }
}
