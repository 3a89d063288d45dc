package dev.vmm.core.qmp;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.Options;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * One prepared action of a QMP {@code transaction} (QEMU's {@code TransactionActionDrv}).
 * {@link Kind#prepare} checks its data and does only what can be undone; when every action of
 * the transaction prepared, each is {@link #commit committed} in order, else every prepared one
 * is {@link #abort aborted} in reverse order and the transaction fails with the first error.
 * {@link #clean} runs last on every prepared action, either way.
 *
 * <p>The transaction runs its actions while the nodes they name are drained (no request in
 * flight, new ones held), as QEMU runs them inside a drained section, so every action sees the
 * same instant of every disk.
 *
 * <p>Thread contract: the monitor's control thread ({@code transaction} is a blocking command);
 * an action that touches a node's bits hands that part to the node's home thread and waits.
 */
public interface TransactionAction {
    void commit() throws Exception;

    void abort();

    default void clean() {}

    /** One {@code type} of action: reads its {@code data} and prepares. */
    @FunctionalInterface
    interface Kind {
        /**
         * @param data   the action's {@code data} member (the caller checks that all was consumed)
         * @param server the monitor the transaction came from (events of jobs it starts go there)
         */
        TransactionAction prepare(Options data, Daemon daemon, QmpServer server) throws Exception;
    }

    /** A registered kind with its data declaration (for query-qmp-schema). */
    record Registered(String type, QmpType data, Kind kind) {}

    /** The kinds, by QEMU's action type name ("block-dirty-bitmap-add", "blockdev-backup", ...). */
    Map<String, Registered> KINDS = new ConcurrentHashMap<>();

    /** Idempotent: every daemon's command table registers the same kinds (the kinds get the daemon). */
    static void register(String type, QmpType data, Kind kind) {
        KINDS.put(type, new Registered(type, data, kind));
    }
}
