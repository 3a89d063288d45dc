package dev.vmm.core.qmp;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.Options;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * QMP {@code transaction} (QEMU 7.2's qapi/transaction.json): {@code actions} of the kinds in
 * {@link TransactionAction#KINDS}, all prepared, then all committed; when one prepare fails every
 * prepared action is aborted in reverse order and the reply carries that first error (QEMU's
 * qmp_transaction). {@code properties.completion-mode=grouped} is refused by the kinds that
 * QEMU refuses it for (every bitmap action), with QEMU's words.
 *
 * <p>The nodes the actions name ({@code node}, {@code device}, {@code target}) are held for the
 * whole transaction ({@link dev.vmm.core.block.NodeIo#hold}: new requests wait, the ones in flight
 * finish first), under the move gates of their graphs, so every action sees one instant of every
 * disk and no write is half-way between two actions. Only named nodes are held, not their
 * children: a format driver's own metadata I/O (removing a stored bitmap) still runs.
 *
 * <p>Thread contract: runs on the monitor's control thread (a blocking command).
 */
public final class TransactionCommand {
    private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(TransactionCommand.class);

    private TransactionCommand() {}

    /** How long a node may take to finish its requests in flight before the transaction gives up. */
    static final long DRAIN_TIMEOUT_SECONDS = 30;

    /** Kinds QEMU refuses under completion-mode=grouped (action_check_completion_mode). */
    static final Set<String> INDIVIDUAL_ONLY = Set.of("block-dirty-bitmap-add", "block-dirty-bitmap-remove",
            "block-dirty-bitmap-clear", "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge");

    static final QmpType COMPLETION_MODE = QmpType.enumOf("ActionCompletionMode", "individual", "grouped");
    static final QmpType PROPERTIES = QmpType.object("TransactionProperties").optional("completion-mode", COMPLETION_MODE).build();

    /** QEMU's {@code TransactionAction}: a union over the registered kinds, each {@code {type, data}}. */
    static QmpType actionType() {
        List<String> kinds = new ArrayList<>(TransactionAction.KINDS.keySet());
        java.util.Collections.sort(kinds);
        QmpType.ObjectBuilder b = QmpType.object("TransactionAction")
                .required("type", QmpType.enumOf("TransactionActionKind", kinds.toArray(new String[0]))).union("type");
        for (String k : kinds) {
            QmpType data = TransactionAction.KINDS.get(k).data();
            b.variant(k, QmpType.object(data.name() + "Wrapper").required("data", data).build());
        }
        return b.build();
    }

    /** Registers {@code transaction}: after every module registered its kinds (the schema lists them). */
    public static void register(QmpCommands t, Daemon daemon) {
        QmpType args = QmpType.object("q_obj_transaction-arg").required("actions", QmpType.arrayOf(actionType()))
                .optional("properties", PROPERTIES).build();
        t.register("transaction", args, QmpType.EMPTY, QmpCommand.blocking(c -> {
            Options o = c.options();
            String mode = o.choice("properties.completion-mode", "individual", "individual", "grouped");
            List<Step> steps = new ArrayList<>();
            for (int i = 0; o.hasGroup("actions." + i); i++) {
                Options a = o.sub("actions." + i);
                String type = a.required("type");
                TransactionAction.Registered r = TransactionAction.KINDS.get(type);
                if (r == null) throw QmpException.generic("Parameter 'type' does not accept value '" + type + "'");
                steps.add(new Step(type, r.kind(), a.sub("data")));
            }
            run(daemon, c.server(), steps, mode.equals("grouped"));
            o.checkAllConsumed();
            return Map.of();
        }));
    }

    /** Set on the control thread while a transaction with completion-mode=grouped prepares and commits. */
    private static final ThreadLocal<Boolean> GROUPED = ThreadLocal.withInitial(() -> false);

    /**
     * For a kind's {@link TransactionAction.Kind#prepare} (control thread): whether the running
     * transaction has {@code completion-mode=grouped} (QEMU's jobs of such a transaction
     * succeed or fail together).
     */
    public static boolean grouped() { return GROUPED.get(); }

    /** One action of a transaction, before it is prepared. */
    record Step(String type, TransactionAction.Kind kind, Options data) {}

    /**
     * Prepares every step (in order) with their named nodes held, then commits them all, or
     * aborts the prepared ones in reverse order and throws the first error. Control thread.
     */
    static void run(Daemon daemon, QmpServer server, List<Step> steps, boolean grouped) throws Exception {
        Set<BlockNode> named = new LinkedHashSet<>();
        for (Step s : steps) named.addAll(namedNodes(daemon, s));
        Exception[] failure = new Exception[1];
        daemon.withGates(named, () -> {
            try {
                drained(named, () -> {
                    runDrained(daemon, server, steps, grouped);
                    return null;
                });
            } catch (Exception e) {
                failure[0] = e;
            }
            return null;
        });
        if (failure[0] != null) throw failure[0];
    }

    private static void runDrained(Daemon daemon, QmpServer server, List<Step> steps, boolean grouped) throws Exception {
        GROUPED.set(grouped);
        try {
            prepareAndCommit(daemon, server, steps, grouped);
        } finally {
            GROUPED.remove();
        }
    }

    private static void prepareAndCommit(Daemon daemon, QmpServer server, List<Step> steps, boolean grouped) throws Exception {
        List<TransactionAction> prepared = new ArrayList<>();
        try {
            for (Step s : steps) {
                if (grouped && INDIVIDUAL_ONLY.contains(s.type())) {
                    throw QmpException.generic("Action '" + s.type() + "' does not support Transaction property completion-mode = grouped");
                }
                prepared.add(s.kind().prepare(s.data(), daemon, server));
                s.data().checkAllConsumed();
            }
        } catch (Exception e) {
            for (int i = prepared.size() - 1; i >= 0; i--) {
                try {
                    prepared.get(i).abort();
                } catch (RuntimeException ignored) {
                    // an abort must not hide the error that caused it; the others still run
                    LOG.warn("transaction: abort of an action failed", ignored);
                }
            }
            clean(prepared);
            throw e;
        }
        try {
            for (TransactionAction a : prepared) a.commit();
        } finally {
            clean(prepared);
        }
    }

    private static void clean(List<TransactionAction> prepared) {
        for (TransactionAction a : prepared) {
            try {
                a.clean();
            } catch (RuntimeException e) {
                LOG.warn("transaction: clean of an action failed", e);
            }
        }
    }

    /** The existing nodes a step names: its {@code node}, {@code device} and (not for a bitmap merge) {@code target}. */
    private static List<BlockNode> namedNodes(Daemon daemon, Step s) {
        Map<String, String> m = s.data().asMap();
        List<String> names = new ArrayList<>();
        if (m.containsKey("node")) names.add(m.get("node"));
        if (m.containsKey("device")) names.add(m.get("device"));
        if (m.containsKey("target") && !s.type().startsWith("block-dirty-bitmap-")) names.add(m.get("target"));
        List<BlockNode> out = new ArrayList<>();
        for (String n : names) {
            try {
                out.add(daemon.node(n));
            } catch (DaemonException e) {
                // unknown: the action's prepare says so in QEMU's words
            }
        }
        return out;
    }

    /** Work done while nodes are held. */
    interface Drained<T> {
        T run() throws Exception;
    }

    /**
     * Runs {@code body} on the calling (control) thread while every node of {@code nodes} is held
     * ({@link dev.vmm.core.block.NodeIo#hold}) and drained; releases them whatever happens. The
     * caller holds the nodes' move gates (their homes must not change meanwhile).
     */
    static <T> T drained(Collection<BlockNode> nodes, Drained<T> body) throws Exception {
        List<BlockNode> issued = new ArrayList<>();
        try {
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(DRAIN_TIMEOUT_SECONDS);
            // Parents first, each drained before the next is held: a parent's request in flight
            // may still send requests to its child (qcow2: an L2 read, then the data write), which
            // a hold of the child taken earlier would keep, so the parent would never drain.
            for (BlockNode n : BlockNode.parentsFirst(nodes)) {
                CompletableFuture<Void> f = new CompletableFuture<>();
                n.home().execute(() -> n.io().hold(() -> f.complete(null)));
                issued.add(n);
                try {
                    f.get(Math.max(1, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
                } catch (TimeoutException e) {
                    throw QmpException.generic("block node '" + n.name() + "' still has requests in flight after "
                            + DRAIN_TIMEOUT_SECONDS + " s; nothing was changed");
                }
            }
            return body.run();
        } finally {
            List<CompletableFuture<Void>> released = new ArrayList<>();
            for (BlockNode n : issued) {
                CompletableFuture<Void> f = new CompletableFuture<>();
                n.home().execute(() -> {
                    n.io().release();
                    f.complete(null);
                });
                released.add(f);
            }
            for (CompletableFuture<Void> f : released) {
                try {
                    f.get(DRAIN_TIMEOUT_SECONDS, TimeUnit.SECONDS);
                } catch (ExecutionException | TimeoutException e) {
                    LOG.warn("transaction: a node's release did not run", e);
                }
            }
        }
    }
}
