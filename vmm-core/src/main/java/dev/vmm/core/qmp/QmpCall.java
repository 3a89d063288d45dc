package dev.vmm.core.qmp;

import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import java.util.Collections;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;

/**
 * One command execution: its name, its raw {@code arguments}, and the server (for events and the
 * control thread). Thread contract: created and used on the main loop; {@link #options()} must
 * be used by one thread at a time, as {@link Options} says.
 */
public final class QmpCall {
    private final QmpServer server;
    private final String name;
    private final Map<String, Object> arguments;
    private Options options;
    private Runnable afterReply;

    QmpCall(QmpServer server, String name, Map<String, Object> arguments) {
        this.server = server;
        this.name = name;
        this.arguments = arguments == null ? Map.of() : Collections.unmodifiableMap(arguments);
    }

    public String name() { return name; }

    /** The {@code arguments} object as parsed (empty when absent). */
    public Map<String, Object> arguments() { return arguments; }

    /**
     * The arguments as {@link Options} named after the command, so errors read
     * {@code 'addr.data.port' must be a number from 0 to 65535, got 'x'}. Built once.
     */
    public Options options() throws OptionException {
        if (options == null) options = Options.of(name, arguments);
        return options;
    }

    public QmpServer server() { return server; }

    /** Runs {@code task} on the monitor's control thread (one for all monitors, in order). */
    public <T> CompletableFuture<Object> blocking(Callable<T> task) {
        ranElsewhere = true;
        return server.blocking(task);
    }

    /** True when part of the command ran off the main loop (its events may still be queued there). */
    private boolean ranElsewhere;

    boolean ranElsewhere() { return ranElsewhere; }

    /** Runs {@code action} once the reply has been written to the client ({@code quit}). */
    public void afterReply(Runnable action) { this.afterReply = action; }

    Runnable afterReply() { return afterReply; }
}
