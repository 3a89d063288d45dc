package dev.vmm.core.daemon;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.export.ExportCommon;
import dev.vmm.core.export.ExportDriver;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.core.tls.TlsCredentials;
import dev.vmm.core.tls.TlsException;
import java.nio.file.Path;
import java.util.ServiceLoader;
import java.util.concurrent.CompletableFuture;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.NodeUser;
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
    static final Logger LOG = LoggerFactory.getLogger(Daemon.class);
    /** The qcow2 format; tests of the graph substitute a fake with the same API. */
    static volatile ImageFormat qcow2Format = ImageFormat.QCOW2;

    private final IOThread main;
    /** Started on first use by {@link #controlLoop()}. */
    private IOThread control;
    private final Map<String, IOThread> iothreads = new LinkedHashMap<>();
    /** {@code tls-creds-x509} objects; they share the object id namespace with the IOThreads. */
    private final Map<String, TlsCredentials> tlsCreds = new LinkedHashMap<>();
    private final Map<String, BlockNode> nodes = new LinkedHashMap<>();
    /** QEMU's {@code id_generate} counter for implicit node names ({@code #block<n><2 random digits>}). */
    private long implicitIds;
    private final Map<String, BlockExport> exports = new LinkedHashMap<>();
    private final Map<Class<?>, AutoCloseable> components = new LinkedHashMap<>();
    private boolean shutDown;
    /** Set once the start-up sequence (every listener of the command line) has finished. */
    private volatile boolean started;
    private final dev.vmm.core.stats.HandoffLog handoffs = new dev.vmm.core.stats.HandoffLog();
    private final dev.vmm.core.job.JobRegistry jobs = new dev.vmm.core.job.JobRegistry();

    private Daemon(IOThread main) {
        this.main = main;
    }

    /** Starts the main loop. */
    public static Daemon start() {
        IOThread main = IOThread.start(IOThread.MAIN_ID);
        dev.vmm.core.aio.IoEngines.prepare(main);
        return new Daemon(main);
    }

    public IOThread mainLoop() { return main; }

    /** The block jobs (any thread). */
    public dev.vmm.core.job.JobRegistry jobs() { return jobs; }

    /**
     * {@code blockdev-mirror}: checks the arguments with QEMU's words, ties the target to the
     * source (moving the target to the source's IOThread first if needed) and starts the job
     * under the graph's move gates. Control thread only (it waits for a move and for the job's start).
     */
    public dev.vmm.core.job.MirrorJob blockdevMirror(Options o, dev.vmm.core.job.JobEvents events) throws OptionException, DaemonException {
        return new MirrorStarter(this).start(o, events);
    }

    /**
     * {@code blockdev-backup}: checks the arguments with QEMU's words and starts a backup job (its
     * copy-before-write layer is in place when this returns). Control thread only.
     */
    public dev.vmm.core.job.BackupJob blockdevBackup(Options o, dev.vmm.core.job.JobEvents events) throws OptionException, DaemonException {
        BackupStarter s = new BackupStarter(this);
        return s.start(s.prepare(o, events));
    }

    /** Recent handoffs and their pauses (any thread). */
    public dev.vmm.core.stats.HandoffLog handoffs() { return handoffs; }

    /**
     * The thread for control protocols whose handlers may have to wait for a node's move to
     * finish (vhost-user front-end messages). A move never needs it, so such a wait cannot
     * deadlock; the main loop, which a move from or to "main" needs, must never wait like that.
     */
    public synchronized IOThread controlLoop() {
        if (control == null) control = IOThread.start(IOThread.CONTROL_ID);
        return control;
    }

    /** The control loop if something started it, else null (health checks must not start it). */
    public synchronized IOThread controlLoopIfStarted() { return control; }

    // ---- readiness ----

    /** Marks the start-up sequence as finished: every listener given at start accepts connections. */
    public void markStarted() { started = true; }

    /**
     * Why the daemon is not ready to serve, for {@code /readyz}: empty when start-up has finished,
     * no shutdown has begun, and every {@link Listening} component and export still listens.
     */
    public List<String> notReady() {
        List<String> out = new ArrayList<>();
        List<Object> parts = new ArrayList<>();
        synchronized (this) {
            if (shutDown) out.add("shutting down");
            parts.addAll(components.values());
            parts.addAll(exports.values());
        }
        if (!started) out.add("start-up has not finished");
        for (Object p : parts) {
            if (p instanceof Listening l && !l.listening()) {
                out.add((p instanceof BlockExport e ? "export '" + e.id() + "'" : p.toString()) + " is not listening");
            }
        }
        return out;
    }

    // ---- IOThreads ----

    public synchronized IOThread addIOThread(String id) throws DaemonException {
        if (objectExists(id)) {
            throw new DaemonException("an object with id '" + id + "' exists already");
        }
        IOThread t = IOThread.start(id);
        dev.vmm.core.aio.IoEngines.prepare(t);
        iothreads.put(id, t);
        LOG.debug("IOThread {} started", id);
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

    private synchronized boolean objectExists(String id) {
        return id.equals(IOThread.MAIN_ID) || iothreads.containsKey(id) || tlsCreds.containsKey(id);
    }

    // ---- TLS credentials ----

    /**
     * The {@code tls-creds-x509} object with this id, marked as used by {@code user} until the
     * user calls {@link TlsCredentials#removeUser}; {@link #objectDel} refuses it meanwhile. Looked
     * up and marked under the daemon's lock, so a concurrent object-del cannot slip in between.
     */
    public synchronized TlsCredentials useTlsCredentials(String id, String user) throws DaemonException {
        TlsCredentials c = tlsCreds.get(id);
        if (c == null) throw new DaemonException("No TLS credentials with id '" + id + "'"); // QEMU's wording
        c.addUser(user);
        return c;
    }

    // ---- nodes ----

    /**
     * Enters a node built by the caller (tests, custom drivers); its children must be in the table
     * already and live on its home. Links it as their parent.
     */
    public void addNode(BlockNode node) throws DaemonException {
        enter(node);
    }

    synchronized void enter(BlockNode node) throws DaemonException {
        if (nodes.containsKey(node.name())) throw new DaemonException("Duplicate nodes with node-name='" + node.name() + "'"); // QEMU's wording
        for (BlockNode.Child c : node.children()) {
            if (nodes.get(c.node().name()) != c.node()) throw new DaemonException("child node '" + c.node().name() + "' of '" + node.name() + "' is gone");
        }
        nodes.put(node.name(), node);
        node.link();
        LOG.debug("block node {} added: {} {} bytes{}", node.name(), node.driverName(), node.size(), node.readOnly() ? ", read-only" : "");
    }

    /** The node with this name, or null. */
    synchronized BlockNode findNode(String name) { return nodes.get(name); }

    /** Takes nodes out of the table and unlinks them from their children (they are closed by the caller). */
    synchronized void forget(List<BlockNode> gone) {
        for (BlockNode n : gone) {
            if (nodes.get(n.name()) == n) nodes.remove(n.name());
            n.unlink();
        }
    }

    /** A fresh implicit node name, as QEMU's: {@code #block} + a counter + two random digits. */
    synchronized String implicitName() {
        String n;
        do {
            n = String.format("#block%d%02d", implicitIds++, BlockdevOpener.randomSuffix());
        } while (nodes.containsKey(n));
        return n;
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

    // ---- image locks ----

    /** Exports being added: their permissions count before they are in the table (see exportAdd). */
    private final List<ImagePermissions.Root> pendingRoots = new ArrayList<>();

    /**
     * Gives every file node the image locks its users need now (see {@link ImagePermissions});
     * all or nothing. Called after every change of the graph or of the exports.
     *
     * @throws DaemonException another process holds a conflicting lock (QEMU's wording and hint)
     */
    synchronized void refreshLocks() throws DaemonException {
        List<ImagePermissions.Root> roots = new ArrayList<>(pendingRoots);
        for (BlockExport e : exports.values()) roots.add(new ImagePermissions.Root(e.node(), e.type(), e.writable()));
        ImagePermissions.apply(nodes.values(), roots);
    }

    /** {@link #refreshLocks} after a removal, which only drops locks and so cannot conflict. */
    void releaseLocks() {
        try {
            refreshLocks();
        } catch (DaemonException e) {
            LOG.warn("image locks after a removal: {}", e.getMessage());
        }
    }

    // ---- components (protocol servers) ----

    public synchronized <T extends AutoCloseable> void putComponent(Class<T> type, T component) throws DaemonException {
        if (components.containsKey(type)) throw new DaemonException(type.getSimpleName() + " is configured already");
        components.put(type, component);
    }

    public synchronized <T extends AutoCloseable> T component(Class<T> type) {
        return type.cast(components.get(type));
    }

    // ---- the commands that --object, --blockdev and --export (and their QMP twins) run ----

    /**
     * {@code --object iothread,id=ID} or {@code --object tls-creds-x509,id=ID,dir=DIR,endpoint=server|client,...}
     * ({@code object-add qom-type=...}).
     *
     * @return the new IOThread, or null when the object is not an IOThread
     */
    public IOThread objectAdd(Options o) throws OptionException, DaemonException {
        String type = o.choice("qom-type", null, "iothread", "tls-creds-x509");
        if (type == null) throw new OptionException(OptionException.Kind.MISSING, o.optionName(), "qom-type", "the object type is missing (e.g. 'iothread,id=iot0')");
        if (type.equals("tls-creds-x509")) {
            addTlsCredentials(o);
            return null;
        }
        String id = o.required("id");
        // QEMU's polling knobs: accepted for compatibility; epoll loops do not busy-poll.
        o.number("poll-max-ns", 0, 0, Long.MAX_VALUE);
        o.number("poll-grow", 0, 0, Long.MAX_VALUE);
        o.number("poll-shrink", 0, 0, Long.MAX_VALUE);
        o.number("aio-max-batch", 0, 0, Long.MAX_VALUE);
        o.checkAllConsumed();
        return addIOThread(id);
    }

    /**
     * {@code tls-creds-x509}: the files are read and checked now, so a bad directory fails here,
     * before anything listens. {@code endpoint=server} is for the NBD server, {@code endpoint=client}
     * (QEMU's default) for {@code driver=nbd} nodes; each refuses the other kind with a hint, so a
     * server whose object forgot {@code endpoint=server} is told so.
     */
    private TlsCredentials addTlsCredentials(Options o) throws OptionException, DaemonException {
        String id = o.required("id");
        String dir = o.path("dir"); // no NUL byte: Path.of would throw
        String endpoint = o.choice("endpoint", "client", "client", "server");
        boolean verifyPeer = o.bool("verify-peer", true);
        boolean sanityCheck = o.bool("sanity-check", true);
        if (o.has("priority")) {
            o.required("priority");
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "priority",
                    "'priority': GnuTLS priority strings are not supported (we offer TLS 1.3 and 1.2 with the JDK's default ciphers)");
        }
        if (o.has("passwordid")) {
            o.required("passwordid");
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "passwordid",
                    "'passwordid': encrypted private keys are not supported; give an unencrypted " + TlsCredentials.SERVER_KEY);
        }
        o.bool("loaded", true); // QEMU's deprecated property: the object is always loaded at creation
        o.checkAllConsumed();
        if (objectExists(id)) throw new DaemonException(o.optionName() + ": an object with id '" + id + "' exists already");
        TlsCredentials c;
        try {
            // endpoint=client: for driver=nbd nodes (tls-creds=ID) connecting to a TLS server
            c = endpoint.equals("server") ? TlsCredentials.loadServer(id, Path.of(dir), verifyPeer, sanityCheck)
                    : TlsCredentials.loadClient(id, Path.of(dir), verifyPeer, sanityCheck);
        } catch (TlsException e) {
            throw new DaemonException(o.optionName() + ": " + id + ": " + e.getMessage(), e);
        }
        synchronized (this) {
            if (objectExists(id)) throw new DaemonException(o.optionName() + ": an object with id '" + id + "' exists already");
            tlsCreds.put(id, c);
        }
        LOG.debug("TLS credentials {} loaded: {}", id, c);
        return c;
    }

    /**
     * {@code --blockdev} ({@code blockdev-add}): {@code driver=file}, {@code raw} or {@code qcow2},
     * with inline children and a qcow2 image's backing chain (see {@link BlockdevOpener}). A node
     * over no existing node starts on the main loop; over an existing node, on that node's home.
     * Call it from the CLI or QMP control thread, never from the main loop or an IOThread.
     */
    public BlockNode blockdevAdd(Options o) throws OptionException, DaemonException {
        return new BlockdevOpener(this).open(o);
    }

    /** The export drivers on the class path, by type. */
    public static Map<String, ExportDriver> exportDrivers() {
        Map<String, ExportDriver> m = new java.util.TreeMap<>();
        for (ExportDriver d : ServiceLoader.load(ExportDriver.class)) m.put(d.type(), d);
        return m;
    }

    /**
     * {@code --export type=...} ({@code block-export-add}): creates and starts an export. With
     * {@code iothread=}, the node moves there first; a node has one home, so all its exports must
     * agree on it.
     */
    public BlockExport exportAdd(Options o) throws OptionException, DaemonException {
        Map<String, ExportDriver> drivers = exportDrivers();
        String type = o.choice("type", null, drivers.keySet().toArray(new String[0]));
        if (type == null) throw new OptionException(OptionException.Kind.MISSING, o.optionName(), "type", "parameter 'type' is missing (one of " + drivers.keySet() + ")");
        String id = o.required("id");
        String nodeName = o.required("node-name");
        boolean writable = o.bool("writable", false);
        String iothreadId = o.optional("iothread", null);
        o.bool("fixed-iothread", false); // we never move a node behind the user's back
        synchronized (this) {
            if (exports.containsKey(id)) throw new DaemonException(o.optionName() + ": an export with id '" + id + "' exists already");
        }
        BlockNode node;
        IOThread iothread = null;
        try {
            node = node(nodeName);
            if (iothreadId != null) iothread = iothread(iothreadId);
        } catch (DaemonException e) {
            throw new DaemonException(o.optionName() + ": " + e.getMessage());
        }
        if (writable && node.readOnly()) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "writable", "'writable=on' but block node '" + nodeName + "' is read-only");
        }
        if (writable) {
            for (BlockNode p : node.parents()) {
                String role = p.children().stream().filter(c -> c.node() == node).findFirst().map(BlockNode.Child::role).orElse("file");
                // a backing parent shares write when its own users do (bdrv_default_perms_for_cow), as
                // every export does: a fleecing overlay over a live disk (docs/backup.md)
                if (!p.readOnly() && !role.equals(BlockNode.BACKING) && !p.driverName().equals("copy-before-write")) {
                    throw new DaemonException(o.optionName() + ": Permission conflict on node '" + nodeName + "': permissions 'write' are both"
                            + " required by export '" + id + "' (uses node '" + nodeName + "' as 'root' child) and unshared by node '" + p.name()
                            + "' (uses node '" + nodeName + "' as '" + role + "' child).");
                }
            }
        }
        BlockExport export = drivers.get(type).create(this, new ExportCommon(id, node, writable, iothread), o);
        o.checkAllConsumed();
        if (iothread != null && iothread != node.home()) {
            // The whole graph goes (connected nodes share a home); with no users, nothing to quiesce.
            // Under the graph's move gates: a concurrent move (another monitor) or a blockdev-add
            // over one of its nodes must not see the homes change half-way.
            IOThread to = iothread;
            withGates(List.of(node), () -> {
                java.util.Collection<BlockNode> graph = node.connected().values();
                for (BlockNode g : graph) {
                    String which = g == node ? "block node '" + nodeName + "'" : "block node '" + g.name() + "' (in the graph of '" + nodeName + "')";
                    if (!g.users().isEmpty()) {
                        throw new DaemonException(o.optionName() + ": " + which + " is in use on IOThread '"
                                + g.home().id() + "'; move it with x-blockdev-set-iothread first");
                    }
                    for (BlockExport other : exports()) {
                        if (other.node() == g) {
                            throw new DaemonException(o.optionName() + ": " + which + " is served on IOThread '"
                                    + g.home().id() + "' by export '" + other.id() + "'; give it the same iothread");
                        }
                    }
                }
                List<BlockNode> childrenFirst = BlockNode.parentsFirst(graph);
                Collections.reverse(childrenFirst);
                for (BlockNode g : childrenFirst) g.setHome(to);
                LOG.debug("block node {} ({} node(s) in its graph) moved to IOThread {}", nodeName, graph.size(), to.id());
                return null;
            });
        }
        ImagePermissions.Root root = new ImagePermissions.Root(node, type, writable);
        synchronized (this) {
            pendingRoots.add(root);
            try {
                refreshLocks();
            } catch (DaemonException e) {
                pendingRoots.remove(root);
                export.close();
                throw new DaemonException(o.optionName() + ": " + e.getMessage(), e.hint(), e);
            }
        }
        try {
            export.start();
        } catch (Exception e) {
            export.close();
            synchronized (this) {
                pendingRoots.remove(root);
            }
            releaseLocks();
            throw new DaemonException(o.optionName() + ": cannot start export '" + id + "': " + e.getMessage(), e);
        }
        synchronized (this) {
            pendingRoots.remove(root);
            try {
                addExport(export);
            } finally {
                releaseLocks();
            }
        }
        LOG.info("export {} added: {}, {}, node {} ({} bytes) on IOThread {}", id, type, writable ? "writable" : "read-only",
                nodeName, node.size(), node.home().id());
        return export;
    }

    /**
     * {@code x-blockdev-set-iothread}: moves a node, with every node connected to it by child links
     * (its whole graph: a backing node shared by two disks moves both disks), their exports and
     * the exports' connected clients, to another IOThread (quiesce, drain, detach, attach, resume;
     * see {@link NodeUser}). Completes with the pause in nanoseconds — from the first quiesce on
     * the old thread to the last resume on the new one — or 0 when the graph already lives there,
     * or exceptionally with a {@link DaemonException} for an unknown node or IOThread. Moves of
     * one node run one after the other; the main loop is never blocked by a move.
     *
     * <p>May be called from any thread.
     */
    public CompletableFuture<Long> moveNode(String nodeName, String iothreadId) {
        CompletableFuture<Long> result = new CompletableFuture<>();
        BlockNode node;
        IOThread target;
        try {
            node = node(nodeName);
            target = iothread(iothreadId);
        } catch (DaemonException e) {
            result.completeExceptionally(e);
            return result;
        }
        main.execute(() -> takeGates(node, target, result, 0));
        return result;
    }

    /** How long blockdev-del and shutdown wait for a node's requests in flight before giving up on it. */
    static final long CLOSE_TIMEOUT_MS = 30_000;

    /** A move that has not finished by then is reported failed to its caller; it goes on, holding the node's gate, until it ends. */
    static final long MOVE_TIMEOUT_SECONDS = 30;

    /**
     * Main loop: takes the gate of every node of {@code node}'s graph, one after the other in name
     * order (so two moves of overlapping graphs cannot each hold a gate the other waits for), then
     * runs the move. A graph that changed while the gates were being taken (a node added over one
     * of them) is taken again, with the new members.
     */
    private void takeGates(BlockNode node, IOThread target, CompletableFuture<Long> result, int attempt) {
        List<BlockNode> graph = new ArrayList<>(node.connected().values());
        takeGate(graph, 0, () -> {
            List<BlockNode> now = new ArrayList<>(node.connected().values());
            if (!now.equals(graph) && attempt < 100) {
                for (BlockNode g : graph) {
                    g.settle();
                    g.moveDone();
                }
                takeGates(node, target, result, attempt + 1);
                return;
            }
            runMove(node, graph, target, result);
        });
    }

    /** Control-plane work done while holding the move gates of a graph. */
    public interface Gated<T> {
        T run() throws DaemonException;
    }

    /**
     * Runs {@code work} on the calling (control) thread holding the move gates of every node
     * connected to {@code seeds} (taken as a move takes them: by name), so that no move changes
     * their homes, and no other gated command changes the graph, while it reads them, links
     * to them, or flushes and closes nodes through them. Gated nodes keep serving their users
     * meanwhile; new users wait. On the main loop (which takes gates, so cannot wait for them)
     * it refuses when one of them is held instead.
     */
    public <T> T withGates(java.util.Collection<BlockNode> seeds, Gated<T> work) throws DaemonException {
        if (main.inThread()) {
            // Gates change only on the main loop, which this command holds: free gates stay free.
            for (BlockNode c : seeds) {
                for (BlockNode g : c.connected().values()) {
                    if (!g.settled().isDone()) throw new DaemonException("block node '" + g.name() + "' is moving; try again");
                }
            }
            return work.run();
        }
        for (int attempt = 0; ; attempt++) {
            java.util.TreeMap<String, BlockNode> all = new java.util.TreeMap<>();
            for (BlockNode c : seeds) all.putAll(c.connected());
            List<BlockNode> gated = new ArrayList<>(all.values());
            CompletableFuture<Void> held = holdGates(gated);
            try {
                held.get(MOVE_TIMEOUT_SECONDS + 5, java.util.concurrent.TimeUnit.SECONDS);
            } catch (java.util.concurrent.TimeoutException | java.util.concurrent.ExecutionException e) {
                held.thenRun(() -> releaseGates(gated)); // taken later: give them back then
                throw new DaemonException("the nodes of the graph are busy moving; try again");
            } catch (InterruptedException e) {
                held.thenRun(() -> releaseGates(gated));
                Thread.currentThread().interrupt();
                throw new DaemonException("interrupted");
            }
            try {
                java.util.TreeMap<String, BlockNode> now = new java.util.TreeMap<>();
                for (BlockNode c : seeds) now.putAll(c.connected());
                if (!new ArrayList<>(now.values()).equals(gated) && attempt < 10) continue; // a node joined meanwhile: take its gate too
                return work.run();
            } finally {
                releaseGates(gated);
            }
        }
    }

    /**
     * Takes the move gates of {@code sorted} (sorted by name), as a move does: completes (on the
     * main loop) once all are held; {@link #releaseGates} gives them back. For work that must
     * see the nodes' homes stay put (creating a node over them).
     */
    CompletableFuture<Void> holdGates(List<BlockNode> sorted) {
        CompletableFuture<Void> f = new CompletableFuture<>();
        main.execute(() -> takeGate(sorted, 0, () -> f.complete(null)));
        return f;
    }

    void releaseGates(List<BlockNode> held) {
        for (BlockNode g : held) g.settle();
        main.execute(() -> {
            for (BlockNode g : held) g.moveDone();
        });
    }

    private static void takeGate(List<BlockNode> graph, int i, Runnable then) {
        if (i == graph.size()) {
            then.run();
        } else {
            graph.get(i).requestMove(() -> takeGate(graph, i + 1, then));
        }
    }

    /**
     * The six steps for a whole graph; started on the main loop with every gate of the graph
     * held, which it must release at the end. Drains parents before children (a parent's
     * requests complete their child I/O first; a child's in-flight count includes its parents'
     * I/O), moves homes children before parents.
     */
    private void runMove(BlockNode node, List<BlockNode> graph, IOThread target, CompletableFuture<Long> result) {
        IOThread source = node.home();
        Runnable release = () -> {
            for (BlockNode g : graph) g.settle();
            main.execute(() -> {
                for (BlockNode g : graph) g.moveDone();
            });
        };
        for (BlockNode g : graph) {
            if (g.home() != source) { // the invariant is broken: moving part of the graph would break it more
                release.run();
                result.completeExceptionally(new DaemonException("block node '" + g.name() + "' in the graph of '" + node.name()
                        + "' lives on IOThread '" + g.home().id() + "', not '" + source.id() + "'"));
                return;
            }
        }
        if (source == target) {
            release.run();
            result.complete(0L);
            return;
        }
        List<BlockNode> parentsFirst = BlockNode.parentsFirst(graph);
        List<BlockNode> childrenFirst = new ArrayList<>(parentsFirst);
        Collections.reverse(childrenFirst);
        List<NodeUser> users = new ArrayList<>();
        for (BlockNode g : parentsFirst) users.addAll(g.users());
        long[] t0 = new long[1];
        reportSlowMove(node, target, result);
        source.submit(() -> {
            t0[0] = System.nanoTime();
            for (NodeUser u : users) step(u, u::quiesce);
            // Drain: requests already taken complete here, on the old home; the users answer them
            // (replies, used-ring entries) before they leave the loop.
            return drainInOrder(parentsFirst, 0);
        }).thenCompose(f -> f).thenCompose(v -> source.submit(() -> {
            List<CompletableFuture<Void>> detached = new ArrayList<>();
            for (NodeUser u : users) detached.add(safe(u.describe(), u::detach));
            return CompletableFuture.allOf(detached.toArray(new CompletableFuture[0]));
        })).thenCompose(f -> f).thenCompose(v -> {
            for (BlockNode g : childrenFirst) g.setHome(target);
            return target.submit(() -> {
                List<CompletableFuture<Void>> attached = new ArrayList<>();
                for (NodeUser u : users) attached.add(safe(u.describe(), () -> u.attach(target)));
                return CompletableFuture.allOf(attached.toArray(new CompletableFuture[0]));
            }).thenCompose(f -> f);
        }).thenCompose(v -> target.submit(() -> {
            for (NodeUser u : users) step(u, u::resume);
            return System.nanoTime() - t0[0];
        })).whenComplete((pause, err) -> {
            // The gates open only when the move has really ended, even after the caller was told it
            // takes too long: a half-moved graph must not take joins, control calls or another move.
            release.run();
            if (result.isDone() && err == null) {
                LOG.warn("block node {} reached IOThread {} after the move was reported as taking too long (paused {} us)",
                        node.name(), target.id(), pause / 1000);
            }
            if (err != null) {
                LOG.error("moving block node {} to IOThread {} failed: {}", node.name(), target.id(), err.toString());
                result.completeExceptionally(new DaemonException("moving block node '" + node.name() + "' failed: " + err.getMessage(), err));
            } else {
                handoffs.record(new dev.vmm.core.stats.HandoffLog.Handoff(node.name(), source.id(), target.id(), pause,
                        System.currentTimeMillis()));
                LOG.info("block node {} moved from IOThread {} to {} with {} node(s) in its graph and {} user(s): paused {} us",
                        node.name(), source.id(), target.id(), graph.size(), users.size(), pause / 1000);
                result.complete(pause);
            }
        });
    }

    /** On the old home: drains the nodes one after the other, in the order given. */
    private static CompletableFuture<Void> drainInOrder(List<BlockNode> order, int i) {
        if (i == order.size()) return CompletableFuture.completedFuture(null);
        return order.get(i).drain().thenCompose(v -> drainInOrder(order, i + 1));
    }

    /** The caller of a move that has not finished after {@link #MOVE_TIMEOUT_SECONDS} gets an error; the move itself goes on. */
    private static void reportSlowMove(BlockNode node, IOThread target, CompletableFuture<Long> result) {
        CompletableFuture.delayedExecutor(MOVE_TIMEOUT_SECONDS, java.util.concurrent.TimeUnit.SECONDS).execute(() -> {
            if (result.completeExceptionally(new DaemonException("moving block node '" + node.name() + "' to IOThread '" + target.id()
                    + "' has not finished after " + MOVE_TIMEOUT_SECONDS + " s (requests in flight on a slow device?); it completes"
                    + " when they do, and the node takes no other move until then"))) {
                LOG.error("moving block node {} to IOThread {}: not finished after {} s; still waiting", node.name(), target.id(),
                        MOVE_TIMEOUT_SECONDS);
            }
        });
    }

    private static void step(NodeUser u, Runnable r) {
        try {
            r.run();
        } catch (RuntimeException | AssertionError e) { // one user's fault must not strand the others quiesced
            LOG.warn("handoff: {}: {}", u.describe(), e.toString());
        }
    }

    /** A user's step that fails (a client gone mid-move) must not fail the move of the others. */
    private static CompletableFuture<Void> safe(String who, java.util.function.Supplier<CompletableFuture<Void>> step) {
        CompletableFuture<Void> f;
        try {
            f = step.get();
        } catch (RuntimeException e) {
            f = CompletableFuture.failedFuture(e);
        }
        return f.exceptionally(e -> {
            LOG.warn("handoff: {}: {}", who, e.toString());
            return null;
        });
    }

    // ---- removal (QMP object-del, blockdev-del, block-export-del) ----

    /**
     * {@code object-del}: stops an IOThread, or forgets TLS credentials. Refused while a block node
     * lives on the IOThread: its users would be left on a dead loop (qemu-storage-daemon 7.2 aborts
     * in that case); refused while a server uses the credentials (as QEMU: "in use").
     */
    public void objectDel(String id) throws DaemonException {
        IOThread t;
        synchronized (this) {
            TlsCredentials creds = tlsCreds.get(id);
            if (creds != null) {
                List<String> users = creds.users();
                if (!users.isEmpty()) {
                    throw new DaemonException("object '" + id + "' is in use by " + String.join(", ", users) + ", can not be deleted");
                }
                tlsCreds.remove(id);
                LOG.debug("TLS credentials {} removed", id);
                return;
            }
            t = iothreads.get(id);
            if (t == null) throw new DaemonException("object '" + id + "' not found");
            List<String> homed = new ArrayList<>();
            for (BlockNode n : nodes.values()) if (n.home() == t) homed.add(n.name());
            if (!homed.isEmpty()) {
                throw new DaemonException("IOThread '" + id + "' still homes block node" + (homed.size() > 1 ? "s " : " ")
                        + String.join(", ", homed) + "; move " + (homed.size() > 1 ? "them" : "it")
                        + " elsewhere first (x-blockdev-set-iothread)");
            }
            iothreads.remove(id);
        }
        t.shutdown(5000);
        LOG.debug("IOThread {} stopped", id);
    }

    /**
     * {@code blockdev-del}: flushes and closes a node on its home IOThread, with the children it
     * owns (inline definitions, the backing chain opened from its header) that no other node
     * uses. Refused, with QEMU's words, while an export serves it or another node uses it as a
     * child; refused while an export serves one of the owned children that would go with it.
     * Parents are flushed and closed before their children: a parent's flush writes through them.
     */
    public void blockdevDel(String name) throws DaemonException {
        BlockNode first = findNode(name);
        if (first == null) throw new DaemonException("Failed to find node with node-name='" + name + "'");
        // Under the gates of the node's graph, from the checks to the last close: a move of the
        // graph (asked on a child shared with other nodes) must not drain, detach and rehome
        // between the checks and the final flushes, which go through the children on their home.
        DaemonException failed = withGates(List.of(first), () -> {
            List<BlockNode> gone;
            synchronized (this) {
                BlockNode n = nodes.get(name);
                if (n == null) throw new DaemonException("Failed to find node with node-name='" + name + "'");
                if (n != first) throw new DaemonException("block node '" + name + "' was replaced meanwhile; try again");
                for (BlockExport e : exports.values()) {
                    if (e.node() == n) throw new DaemonException("Node " + name + " is in use"); // QEMU 7.2's wording
                }
                for (BlockNode l : n.jobLinks()) {
                    if (l.io().current() == n.io()) {
                        // a mirror pivoted from l to n: l's users write here now
                        throw new DaemonException("Node " + name + " is in use: the users of '" + l.name() + "' use it since a mirror's pivot");
                    }
                    if (n.io().current() != l.io()) {
                        String type = "mirror";
                        for (dev.vmm.core.job.Job j : jobs.all()) {
                            if (j instanceof dev.vmm.core.job.BackupJob b && (b.source() == n || b.target() == n)) type = "backup";
                        }
                        throw new DaemonException("Node '" + name + "' is busy: block device is in use by block job: " + type);
                    }
                }
                List<BlockNode> parents = n.parents();
                if (!parents.isEmpty()) {
                    BlockNode p = parents.get(0);
                    boolean backing = p.children().stream().anyMatch(c -> c.node() == n && c.role().equals(BlockNode.BACKING));
                    // QEMU 7.2's two wordings: the backing op blocker, and the file child's BlockBackend check
                    throw new DaemonException(backing ? "Node '" + name + "' is busy: node is used as backing hd of '" + p.name() + "'"
                            : "Block device " + name + " is in use");
                }
                gone = new ArrayList<>();
                collectOwned(n, gone);
                for (BlockNode g : gone) {
                    for (BlockExport e : exports.values()) {
                        if (e.node() == g) {
                            throw new DaemonException("Node " + name + " is in use: its child '" + g.name() + "' is served by export '" + e.id() + "'");
                        }
                    }
                }
                forget(gone);
                for (BlockNode l : n.jobLinks()) BlockNode.jobUnlink(n, l); // a pivoted source: unused now
            }
            DaemonException f = null;
            for (BlockNode g : BlockNode.parentsFirst(gone)) {
                try {
                    g.flushAndClose(CLOSE_TIMEOUT_MS);
                } catch (BlockException e) {
                    if (f == null) {
                        f = new DaemonException("block node '" + name + "' removed, but the final flush of '" + g.name() + "' failed: "
                                + e.getMessage(), e);
                    }
                }
                LOG.debug("block node {} removed", g.name());
            }
            releaseLocks(); // the children that stay lose what the removed parents asked of them
            return f;
        });
        if (failed != null) throw failed;
    }

    /** {@code n} and, recursively, the children it owns whose only parent is their owner. */
    private static void collectOwned(BlockNode n, List<BlockNode> out) {
        if (out.contains(n)) return;
        out.add(n);
        for (BlockNode.Child c : n.children()) {
            if (c.owned() && c.node().parents().size() == 1) collectOwned(c.node(), out);
        }
    }

    /**
     * {@code block-export-del}: stops an export; its users are disconnected after their
     * in-flight requests complete. With {@code hard} false (QEMU's {@code mode=safe}) it is
     * refused while users are connected.
     */
    public BlockExport exportDel(String id, boolean hard) throws DaemonException {
        BlockExport e;
        synchronized (this) {
            e = exports.get(id);
            if (e == null) throw new DaemonException("Export '" + id + "' is not found");
            int users = e.users();
            if (!hard && users > 0) {
                throw new DaemonException("export '" + id + "' still in use by " + users + " client" + (users > 1 ? "s" : "")
                        + "; use mode=hard to disconnect them");
            }
            exports.remove(id);
        }
        e.close();
        releaseLocks();
        LOG.info("export {} removed{}", id, hard ? " (mode=hard)" : "");
        return e;
    }

    /** Removes a component (e.g. {@code nbd-server-stop}) without closing it; null when absent. */
    public synchronized <T extends AutoCloseable> T removeComponent(Class<T> type) {
        return type.cast(components.remove(type));
    }

    /** One line per export, for the start-up summary. */
    public synchronized List<String> describe() {
        List<String> out = new ArrayList<>();
        for (BlockExport e : exports.values()) {
            BlockNode n = e.node();
            out.add("export " + e.id() + " (" + e.type() + ", " + (e.writable() ? "writable" : "read-only") + ") of node "
                    + n.name() + " (" + n.size() + " bytes) on IOThread " + n.home().id());
        }
        return out;
    }

    // ---- shutdown ----

    /**
     * Orderly stop: servers stop listening, exports let in-flight requests finish and disconnect
     * their users, every node is flushed on its home IOThread and closed, then the threads stop.
     * Logs, per IOThread, the requests served and the heap bytes its thread allocated.
     */
    public boolean shutdown() {
        return shutdown(true);
    }

    /**
     * @param report log what each IOThread served (false when start-up failed: only the error matters)
     * @return false when a node's final flush failed: acknowledged writes may not be on disk
     */
    public boolean shutdown(boolean report) {
        boolean flushed = true;
        List<AutoCloseable> comps;
        List<BlockExport> exps;
        List<BlockNode> ns;
        List<IOThread> ts;
        synchronized (this) {
            if (shutDown) return true;
            shutDown = true;
            comps = new ArrayList<>(components.values());
            exps = new ArrayList<>(exports.values());
            ns = new ArrayList<>(nodes.values());
            ts = new ArrayList<>(iothreads.values());
        }
        // Jobs first: a mirror still copying would submit to nodes being closed.
        for (dev.vmm.core.job.Job j : jobs.all()) {
            try {
                j.cancel(true);
            } catch (dev.vmm.core.job.JobException e) {
                LOG.debug("job {} at shutdown: {}", j.id(), e.getMessage());
            }
        }
        for (int i = 0; i < 100 && jobs.all().stream().anyMatch(j -> j.status() != dev.vmm.core.job.JobStatus.CONCLUDED); i++) {
            try {
                Thread.sleep(50);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
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
        for (BlockNode n : BlockNode.parentsFirst(ns)) { // a parent's final flush writes through its children
            try {
                n.flushAndClose(CLOSE_TIMEOUT_MS);
            } catch (BlockException e) {
                LOG.error("block node {}: final flush failed: {}", n.name(), e.getMessage());
                flushed = false;
            }
        }
        List<IOThread> all = new ArrayList<>(ts);
        all.add(main);
        for (IOThread t : report ? all : List.<IOThread>of()) {
            LOG.info("iothread {}: requests={} allocated-bytes={}", t.id(), t.requests(), t.allocatedBytes());
        }
        for (IOThread t : ts) t.shutdown(5000);
        IOThread c;
        synchronized (this) {
            c = control;
        }
        if (c != null) c.shutdown(5000);
        main.shutdown(5000);
        return flushed;
    }
}
