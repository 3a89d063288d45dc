package dev.vmm.core.qmp;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;

/**
 * The command and event table, and the QMP schema generated from it. Modules register their
 * commands here at start-up ({@link CoreCommands} for the daemon model, the NBD module for
 * {@code nbd-server-start}), so the monitor depends on none of them. {@code qmp_capabilities}
 * is handled by the connection itself but listed.
 *
 * <p>Each command is registered with its argument type and return type ({@link QmpType}): the
 * monitor checks every request against the argument type before the command runs, and
 * {@code query-qmp-schema} ({@link #schema()}) publishes the same declarations, so the two
 * cannot drift. A command registered without a declaration ({@link #register(String, QmpCommand)})
 * still runs, its arguments checked by the command alone, and is listed with {@code any}
 * types; {@link #undeclared()} names such commands and a test fails on them. Events are declared
 * with {@link #event}; {@link QmpServer#emit} refuses an undeclared one.
 *
 * <p>Thread contract: synchronized; registration normally happens before the first monitor
 * connects, lookups on the main loop.
 */
public final class QmpCommands {
    /** The negotiation command (qmp-spec.rst "Capabilities Negotiation"). */
    public static final String QMP_CAPABILITIES = "qmp_capabilities";

    /** QEMU's {@code QMPCapability}: the one capability QEMU knows; we offer none of them. */
    static final QmpType QMP_CAPABILITY = QmpType.enumOf("QMPCapability", "oob");
    static final QmpType QMP_CAPABILITIES_ARGS = QmpType.object("q_obj_qmp_capabilities-arg")
            .optional("enable", QmpType.arrayOf(QMP_CAPABILITY)).build();

    /** A registered command with its declaration; {@code args == null} when undeclared. */
    public record Entry(String name, QmpType args, QmpType returns, List<String> features, QmpCommand command) {
        public boolean declared() { return args != null; }
    }

    private final Map<String, Entry> commands = new LinkedHashMap<>();
    private final Map<String, QmpType> events = new LinkedHashMap<>();

    public QmpCommands() {
        commands.put(QMP_CAPABILITIES, new Entry(QMP_CAPABILITIES, QMP_CAPABILITIES_ARGS, QmpType.EMPTY, List.of(), null));
    }

    /**
     * Registers a declared command.
     *
     * @param args    an object type (its members are the {@code arguments}); {@link QmpType#EMPTY} for none
     * @param returns the type of {@code return}; {@link QmpType#EMPTY} for {@code {}}
     * @throws IllegalArgumentException when {@code name} is registered already (a wiring bug)
     */
    public synchronized QmpCommands register(String name, QmpType args, QmpType returns, QmpCommand command) {
        Objects.requireNonNull(args, "args");
        Objects.requireNonNull(returns, "returns");
        if (args.meta() != QmpType.Meta.OBJECT) throw new IllegalArgumentException(name + ": arguments must be an object type");
        return put(new Entry(name, args, returns, features(name), command));
    }

    /**
     * Registers a command without a declaration: it runs, but {@code query-qmp-schema} lists it
     * with {@code any} types and {@link #undeclared()} names it (a test fails). Kept so a module
     * that adds a command compiles before its declaration is written.
     */
    public synchronized QmpCommands register(String name, QmpCommand command) {
        return put(new Entry(name, null, null, features(name), command));
    }

    private QmpCommands put(Entry e) {
        Objects.requireNonNull(e.command(), "command");
        if (commands.putIfAbsent(e.name(), e) != null) {
            throw new IllegalArgumentException("QMP command " + e.name() + " is registered already");
        }
        return this;
    }

    /** QEMU marks {@code x-} names {@code unstable} (qapi docs "Features"). */
    private static List<String> features(String name) {
        return name.startsWith("x-") || name.startsWith("X_") || name.startsWith("VMM_") ? List.of("unstable") : List.of();
    }

    /** Declares an event and the type of its {@code data}. */
    public synchronized QmpCommands event(String name, QmpType data) {
        if (data.meta() != QmpType.Meta.OBJECT) throw new IllegalArgumentException(name + ": event data must be an object type");
        if (events.putIfAbsent(name, data) != null) throw new IllegalArgumentException("QMP event " + name + " is declared already");
        return this;
    }

    /** The command's handler, null when unknown ({@code qmp_capabilities} has none: the connection handles it). */
    public synchronized QmpCommand get(String name) {
        Entry e = commands.get(name);
        return e == null ? null : e.command();
    }

    public synchronized Entry entry(String name) { return commands.get(name); }

    /** Every command name, {@code qmp_capabilities} first, then in registration order. */
    public synchronized List<String> names() { return new ArrayList<>(commands.keySet()); }

    /** Every declared event name. */
    public synchronized List<String> eventNames() { return new ArrayList<>(events.keySet()); }

    public synchronized QmpType eventData(String name) { return events.get(name); }

    /** Commands registered without a declaration. */
    public synchronized List<String> undeclared() {
        List<String> out = new ArrayList<>();
        for (Entry e : commands.values()) if (!e.declared()) out.add(e.name());
        return out;
    }

    /**
     * {@code query-qmp-schema}'s return (qapi/introspect.json): every command, then every event,
     * then every type they reach (builtins included), each once. Type names are readable (QEMU
     * masks them as numbers; clients must not rely on either).
     */
    public synchronized List<Object> schema() {
        List<Object> out = new ArrayList<>();
        Set<QmpType> types = new LinkedHashSet<>();
        for (Entry e : commands.values()) {
            QmpType args = e.declared() ? e.args() : QmpType.ANY;
            QmpType ret = e.declared() ? e.returns() : QmpType.ANY;
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("name", e.name());
            m.put("ret-type", ret.name());
            m.put("meta-type", "command");
            m.put("arg-type", args.name());
            if (!e.features().isEmpty()) m.put("features", e.features());
            out.add(m);
            reach(args, types);
            reach(ret, types);
        }
        for (Map.Entry<String, QmpType> ev : events.entrySet()) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("name", ev.getKey());
            m.put("meta-type", "event");
            m.put("arg-type", ev.getValue().name());
            List<String> f = features(ev.getKey());
            if (!f.isEmpty()) m.put("features", f);
            out.add(m);
            reach(ev.getValue(), types);
        }
        Map<String, QmpType> byName = new LinkedHashMap<>();
        for (QmpType t : types) {
            QmpType other = byName.putIfAbsent(t.name(), t);
            if (other != null && other != t && !other.schemaInfo().equals(t.schemaInfo())) {
                throw new IllegalStateException("two different QMP types are named " + t.name());
            }
        }
        for (QmpType t : byName.values()) out.add(t.schemaInfo());
        return out;
    }

    private static void reach(QmpType t, Set<QmpType> seen) {
        if (!seen.add(t)) return;
        for (QmpType r : t.referenced()) reach(r, seen);
    }
}
