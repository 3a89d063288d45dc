package dev.vmm.core.qmp;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * The command table. Modules register their commands here at start-up ({@link CoreCommands}
 * for the daemon model, the NBD module for {@code nbd-server-start}), so the monitor depends on
 * none of them. {@code qmp_capabilities} is handled by the connection itself but listed.
 *
 * <p>Thread contract: synchronized; registration normally happens before the first monitor
 * connects, lookups on the main loop.
 */
public final class QmpCommands {
    /** The negotiation command (qmp-spec.rst "Capabilities Negotiation"). */
    public static final String QMP_CAPABILITIES = "qmp_capabilities";

    private final Map<String, QmpCommand> commands = new LinkedHashMap<>();

    /** @throws IllegalArgumentException when {@code name} is registered already (a wiring bug) */
    public synchronized QmpCommands register(String name, QmpCommand command) {
        Objects.requireNonNull(command, "command");
        if (name.equals(QMP_CAPABILITIES) || commands.putIfAbsent(name, command) != null) {
            throw new IllegalArgumentException("QMP command " + name + " is registered already");
        }
        return this;
    }

    public synchronized QmpCommand get(String name) { return commands.get(name); }

    /** Every command name, {@code qmp_capabilities} first, then in registration order. */
    public synchronized List<String> names() {
        List<String> out = new ArrayList<>();
        out.add(QMP_CAPABILITIES);
        out.addAll(commands.keySet());
        return out;
    }
}
