package dev.vmm.core.daemon;

import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.export.BlockExport;
import dev.vmm.iothread.IOThread;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The daemon's object model: IOThreads, block nodes, exports and protocol servers
 * ("components", such as the NBD server), each under a unique id, plus the ordered shutdown.
 *
 * <p>Thread contract: a control-plane object. Its methods may be called from the CLI thread and
 * the main loop; they synchronize on the daemon, which is cheap because the data path never
 * calls them.
 */
public final class Daemon {
    private static final Logger LOG = LoggerFactory.getLogger(Daemon.class);

    private final IOThread main;
    private final Map<String, IOThread> iothreads = new LinkedHashMap<>();
    private final Map<String, BlockNode> nodes = new LinkedHashMap<>();
    private final Map<String, BlockExport> exports = new LinkedHashMap<>();
    private final Map<Class<?>, AutoCloseable> components = new LinkedHashMap<>();
    private boolean shutDown;

    private Daemon(IOThread main) {
        this.main = main;
    }

    /** Starts the main loop. */
    public static Daemon start() {
        return new Daemon(IOThread.start(IOThread.MAIN_ID));
    }

    public IOThread mainLoop() { return main; }

    // ---- IOThreads ----

    public synchronized IOThread addIOThread(String id) throws DaemonException {
        if (id.equals(IOThread.MAIN_ID) || iothreads.containsKey(id)) {
            throw new DaemonException("an object with id '" + id + "' exists already");
        }
        IOThread t = IOThread.start(id);
        iothreads.put(id, t);
        LOG.info("IOThread {} started", id);
        return t;
    }

    /** The IOThread with this id; {@code main} names the main loop. */
    public synchronized IOThread iothread(String id) throws DaemonException {
        if (id.equals(IOThread.MAIN_ID)) return main;
        IOThread t = iothreads.get(id);
        if (t == null) throw new DaemonException("IOThread '" + id + "' does not exist");
        return t;
    }

    public synchronized List<IOThread> iothreads() { return new ArrayList<>(iothreads.values()); }

    // ---- nodes ----

    public synchronized void addNode(BlockNode node) throws DaemonException {
        if (nodes.containsKey(node.name())) throw new DaemonException("node-name '" + node.name() + "' is in use already");
        nodes.put(node.name(), node);
        LOG.info("block node {} added: {} bytes{}", node.name(), node.size(), node.readOnly() ? ", read-only" : "");
    }

    public synchronized BlockNode node(String name) throws DaemonException {
        BlockNode n = nodes.get(name);
        if (n == null) throw new DaemonException("block node '" + name + "' does not exist");
        return n;
    }

    public synchronized List<BlockNode> nodes() { return new ArrayList<>(nodes.values()); }

    // ---- exports ----

    public synchronized void addExport(BlockExport export) throws DaemonException {
        if (exports.containsKey(export.id())) throw new DaemonException("an export with id '" + export.id() + "' exists already");
        exports.put(export.id(), export);
    }

    public synchronized BlockExport export(String id) { return exports.get(id); }

    public synchronized List<BlockExport> exports() { return new ArrayList<>(exports.values()); }

    // ---- components (protocol servers) ----

    public synchronized <T extends AutoCloseable> void putComponent(Class<T> type, T component) throws DaemonException {
        if (components.containsKey(type)) throw new DaemonException(type.getSimpleName() + " is configured already");
        components.put(type, component);
    }

    public synchronized <T extends AutoCloseable> T component(Class<T> type) {
        return type.cast(components.get(type));
    }

    // ---- shutdown ----

    /**
     * Orderly stop: servers stop listening, exports let in-flight requests finish and disconnect
     * their users, every node is flushed on its home IOThread and closed, then the threads stop.
     * Logs, per IOThread, the requests served and the heap bytes its thread allocated.
     */
    public void shutdown() {
        List<AutoCloseable> comps;
        List<BlockExport> exps;
        List<BlockNode> ns;
        List<IOThread> ts;
        synchronized (this) {
            if (shutDown) return;
            shutDown = true;
            comps = new ArrayList<>(components.values());
            exps = new ArrayList<>(exports.values());
            ns = new ArrayList<>(nodes.values());
            ts = new ArrayList<>(iothreads.values());
        }
        Collections.reverse(comps);
        for (AutoCloseable c : comps) {
            try {
                c.close();
            } catch (Exception e) {
                LOG.warn("stopping {}: {}", c, e.toString());
            }
        }
        for (BlockExport e : exps) e.close();
        for (BlockNode n : ns) {
            try {
                n.home().call(() -> {
                    n.driver().flush();
                    n.driver().close();
                    return null;
                });
            } catch (BlockException e) {
                LOG.error("block node {}: final flush failed: {}", n.name(), e.getMessage());
            } catch (Exception e) {
                LOG.error("block node {}: close failed: {}", n.name(), e.toString());
            }
        }
        List<IOThread> all = new ArrayList<>(ts);
        all.add(main);
        for (IOThread t : all) {
            LOG.info("iothread {}: requests={} allocated-bytes={}", t.id(), t.requests(), t.allocatedBytes());
        }
        for (IOThread t : ts) t.shutdown(5000);
        main.shutdown(5000);
    }
}
