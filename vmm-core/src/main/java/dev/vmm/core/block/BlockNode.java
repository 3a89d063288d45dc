package dev.vmm.core.block;

import dev.vmm.core.linux.Errno;

import dev.vmm.iothread.IOThread;
import java.util.ArrayDeque;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * A named block node ({@code --blockdev node-name=...}): a driver plus its home IOThread and
 * statistics. Every request on the node runs on {@link #home()}.
 *
 * <p>The graph: a node may have children (a format node's {@code file} and {@code backing}
 * nodes), given at creation and fixed for the node's life, and parents (the format nodes that
 * use it as a child). Invariants, kept by the daemon:
 * <ul>
 *   <li>every child and every parent is a node of the daemon's table (implicit ones included,
 *       named like QEMU's {@code #block123});</li>
 *   <li>{@code c} is in {@code p.children()} exactly when {@code p} is in {@code c.parents()};</li>
 *   <li>a child that is {@link Child#owned() owned} (created inline, or implicitly for a backing
 *       file named in an image header) has exactly one parent, its owner, and is closed with it;</li>
 *   <li>all nodes of a connected graph (linked by child edges, in either direction) have the same
 *       home: a parent's request submits its child I/O on the same thread, with no locks;</li>
 *   <li>the child graph has no cycle (a node is created after its children).</li>
 * </ul>
 *
 * <p>Thread contract: {@link #home()}, {@link #name()}, {@link #driver()}, {@link #users()} and
 * {@link #stats()} may be read from any thread; {@link #setHome} is called by the handoff only,
 * while the node's users are detached. Driver calls MUST happen on the home thread. The gate
 * methods ({@link #requestJoin}, {@link #joinDone}, {@link #requestMove}, {@link #moveDone})
 * MUST be called on the main loop: they serialize moves, and keep users from joining a node that
 * is half-way through a move.
 */
public final class BlockNode {
    private final String name;
    private final BlockDriver driver;
    /** What users and parents call: the driver, or a job's layer over it (see {@link NodeIo}). */
    private final NodeIo io;
    private final String driverName;
    private final List<Child> children;
    /** The nodes using this one as a child; changed by the daemon under its lock. */
    private final List<BlockNode> parents = new CopyOnWriteArrayList<>();
    private final BlockStats stats = new BlockStats();
    private volatile IOThread home;
    private final List<NodeUser> users = new CopyOnWriteArrayList<>();
    /** Completed while no move is in progress; replaced when one starts. */
    private volatile CompletableFuture<Void> settled = CompletableFuture.completedFuture(null);

    // ---- the gate: main-loop confined ----
    private int joining;
    private boolean moving;
    private final ArrayDeque<Runnable> moveWaiters = new ArrayDeque<>();
    private final ArrayDeque<Runnable> joinWaiters = new ArrayDeque<>();

    /**
     * One child edge: {@code role} is QEMU's child name ({@value #FILE} or {@value #BACKING});
     * {@code owned} when the parent created the child (inline definition or a backing file from
     * the image header) and closes it when it goes.
     */
    public record Child(String role, BlockNode node, boolean owned) {
        public Child {
            Objects.requireNonNull(role, "role");
            Objects.requireNonNull(node, "node");
        }
    }

    /** The role of a format node's protocol child. */
    public static final String FILE = "file";
    /** The role of a format node's backing child. */
    public static final String BACKING = "backing";

    /** A leaf node of driver {@code file}, with no children. */
    public BlockNode(String name, BlockDriver driver, IOThread home) {
        this(name, "file", driver, home, List.of());
    }

    /**
     * A node over {@code children}, which must already live on {@code home} (the caller moves
     * them first). The children learn their new parent when the daemon links the node
     * ({@link #link}).
     */
    public BlockNode(String name, String driverName, BlockDriver driver, IOThread home, List<Child> children) {
        this.name = Objects.requireNonNull(name, "name");
        this.driverName = Objects.requireNonNull(driverName, "driverName");
        this.driver = Objects.requireNonNull(driver, "driver");
        this.io = new NodeIo(driver);
        this.home = Objects.requireNonNull(home, "home");
        this.children = List.copyOf(children);
        for (Child c : this.children) {
            if (c.node().home() != home) {
                throw new IllegalArgumentException("child " + c.node().name() + " of " + name + " lives on IOThread "
                        + c.node().home().id() + ", not " + home.id());
            }
        }
        driver.attach(home);
    }

    /**
     * What {@code query-named-block-nodes} shows of a format node's image, beyond its driver: set
     * once by the daemon at creation.
     *
     * @param clusterSize         qcow2 cluster size, or 0
     * @param backingFilename     the backing file name as the image header stores it, or null
     * @param fullBackingFilename that name resolved against the image's directory, or null
     * @param backingFormat       the header's backing format, or null
     */
    public record ImageInfo(int clusterSize, String backingFilename, String fullBackingFilename, String backingFormat) {
        public static final ImageInfo NONE = new ImageInfo(0, null, null, null);
    }

    private volatile ImageInfo imageInfo = ImageInfo.NONE;

    public ImageInfo imageInfo() { return imageInfo; }

    /** Daemon, at creation. */
    public void setImageInfo(ImageInfo info) { this.imageInfo = Objects.requireNonNull(info); }

    /** Newest first, as QEMU lists a node's bitmaps (it inserts at the head). */
    private final java.util.concurrent.CopyOnWriteArrayList<dev.vmm.core.bitmap.DirtyBitmap> dirtyBitmaps =
            new java.util.concurrent.CopyOnWriteArrayList<>();

    /**
     * The node's dirty bitmaps, newest first (QEMU's order in {@code query-named-block-nodes}).
     * Any thread may list them; their bits belong to the home thread ({@link dev.vmm.core.bitmap.DirtyBitmap}).
     */
    public List<dev.vmm.core.bitmap.DirtyBitmap> dirtyBitmaps() { return dirtyBitmaps; }

    /**
     * Adds a bitmap loaded with the image (the daemon, at creation, before the node has users:
     * the persistent bitmaps of a qcow2 image). On a read-only node they are
     * {@link dev.vmm.core.bitmap.DirtyBitmap#setReadOnly read-only}, as QEMU's. Writes through
     * {@link #io()} mark it from now on.
     */
    public void addDirtyBitmap(dev.vmm.core.bitmap.DirtyBitmap b) {
        if (readOnly() && b.persistent()) b.setReadOnly(true);
        addBitmap(b);
    }

    /**
     * Home thread (or before the node has users), inside a {@link NodeIo#hold} when writes may be
     * in flight: adds {@code b} as the newest bitmap; writes through {@link #io()} mark it.
     *
     * @throws IllegalArgumentException when the node has a bitmap of that name already
     */
    public void addBitmap(dev.vmm.core.bitmap.DirtyBitmap b) {
        if (dirtyBitmap(b.name()) != null) throw new IllegalArgumentException("Bitmap already exists: " + b.name());
        dirtyBitmaps.add(0, Objects.requireNonNull(b));
        io.bitmaps(dirtyBitmaps);
    }

    /** Home thread: takes {@code b} away (no longer marked, no longer listed); false when it was not here. */
    public boolean removeBitmap(dev.vmm.core.bitmap.DirtyBitmap b) {
        boolean had = dirtyBitmaps.remove(b);
        io.bitmaps(dirtyBitmaps);
        return had;
    }

    /**
     * Daemon, at creation: {@code discard=ignore}, so discards change nothing and mark no dirty
     * bitmap (QEMU's bdrv_co_pdiscard returns before marking without BDRV_O_UNMAP).
     */
    public void setDiscardIgnored(boolean ignored) { io.discardIgnored(ignored); }

    /**
     * The bitmap named {@code name}, or null (any thread). A backup's anonymous successor (name
     * "") is never found, as QEMU's bdrv_find_dirty_bitmap skips unnamed bitmaps.
     */
    public dev.vmm.core.bitmap.DirtyBitmap dirtyBitmap(String name) {
        if (name.isEmpty()) return null;
        for (dev.vmm.core.bitmap.DirtyBitmap b : dirtyBitmaps) if (b.name().equals(name)) return b;
        return null;
    }

    /**
     * The driver of this node that stores persistent bitmaps in its image (found through the
     * forwarding layers over the format driver), or null: the format cannot (any thread).
     */
    public dev.vmm.core.bitmap.BitmapStore bitmapStore() {
        BlockDriver d = driver;
        while (true) {
            if (d instanceof dev.vmm.core.bitmap.BitmapStore s) return s;
            if (!(d instanceof ForwardingBlockDriver f)) return null;
            d = f.forwardsTo();
        }
    }

    /** Runs on the home thread after the final flush, before the driver closes (see {@link #setBeforeClose}). */
    private volatile Runnable beforeClose;

    /**
     * The daemon, at creation: {@code hook} runs in {@link #flushAndClose} on the home thread,
     * after the final flush, with nothing in flight, right before the driver closes (qcow2
     * stores its persistent bitmaps there). It must not throw.
     */
    public void setBeforeClose(Runnable hook) { this.beforeClose = hook; }

    private volatile boolean forceShare;

    /**
     * {@code force-share=on} (read-only nodes only): whatever the parents of this node ask of it,
     * they share every permission with other users of the image (QEMU's {@code bdrv_child_perm}).
     */
    public boolean forceShare() { return forceShare; }

    /** Daemon, at creation. */
    public void setForceShare(boolean forceShare) { this.forceShare = forceShare; }

    /** QEMU's driver name: {@code file}, {@code raw}, {@code qcow2}. */
    public String driverName() { return driverName; }

    /** The child edges, fixed at creation (any thread). */
    public List<Child> children() { return children; }

    /** The child with this role, or null. */
    public BlockNode child(String role) {
        for (Child c : children) if (c.role().equals(role)) return c.node();
        return null;
    }

    /** The nodes using this one as a child (a snapshot; any thread). */
    public List<BlockNode> parents() { return List.copyOf(parents); }

    /** Daemon, under its lock: makes this node a parent of each of its children. */
    public void link() {
        for (Child c : children) c.node().parents.add(this);
    }

    /** Daemon, under its lock: this node goes; its children forget it. */
    public void unlink() {
        for (Child c : children) c.node().parents.remove(this);
    }

    /**
     * Every node connected to this one by child edges in either direction, this one included,
     * sorted by name (the order in which a move takes their gates). Any thread; a snapshot.
     */
    public java.util.SortedMap<String, BlockNode> connected() {
        java.util.TreeMap<String, BlockNode> seen = new java.util.TreeMap<>();
        ArrayDeque<BlockNode> todo = new ArrayDeque<>();
        todo.add(this);
        while (!todo.isEmpty()) {
            BlockNode n = todo.poll();
            if (seen.putIfAbsent(n.name, n) != null) continue;
            for (Child c : n.children) todo.add(c.node());
            todo.addAll(n.parents);
            todo.addAll(n.jobLinks);
        }
        return seen;
    }

    /**
     * {@code nodes} (a closed set under child edges, e.g. {@link #connected()}) ordered parents
     * before children: the order of drains. Reversed, children before parents: the order of
     * {@link #setHome}.
     */
    public static List<BlockNode> parentsFirst(java.util.Collection<BlockNode> nodes) {
        List<BlockNode> post = new java.util.ArrayList<>();
        java.util.Set<BlockNode> done = new java.util.HashSet<>();
        for (BlockNode n : nodes) postOrder(n, done, post);
        post.removeIf(n -> !nodes.contains(n));
        java.util.Collections.reverse(post);
        return post;
    }

    private static void postOrder(BlockNode n, java.util.Set<BlockNode> done, List<BlockNode> out) {
        if (!done.add(n)) return;
        for (Child c : n.children) postOrder(c.node(), done, out);
        out.add(n);
    }

    public String name() { return name; }

    /** The node's own driver (for what it is: its file name, its kind). Requests go through {@link #io()}. */
    public BlockDriver driver() { return driver; }

    /**
     * The driver users and parent nodes submit requests to: the node's driver unless a block job
     * put a layer in front of it (a mirror's dirty tracking) or redirected it (a mirror's pivot).
     */
    public NodeIo io() { return io; }

    /**
     * Nodes tied to this one by a block job (a mirror's source and target) rather than by child
     * edges: they share a home and move together. Symmetric; changed by the daemon under the
     * nodes' move gates.
     */
    private final List<BlockNode> jobLinks = new CopyOnWriteArrayList<>();

    /** Ties {@code a} and {@code b} (see {@link #jobLinks()}). */
    public static void jobLink(BlockNode a, BlockNode b) {
        a.jobLinks.add(b);
        b.jobLinks.add(a);
    }

    /** Unties one tie made by {@link #jobLink}. */
    public static void jobUnlink(BlockNode a, BlockNode b) {
        a.jobLinks.remove(b);
        b.jobLinks.remove(a);
    }

    /** The nodes tied to this one by block jobs (a snapshot; any thread). */
    public List<BlockNode> jobLinks() { return List.copyOf(jobLinks); }

    public IOThread home() { return home; }

    public BlockStats stats() { return stats; }

    public long size() { return driver.size(); }

    public boolean readOnly() { return driver.readOnly(); }

    /** Moves the node's home: by the handoff, with every user detached, or before the node has users. */
    public void setHome(IOThread newHome) {
        if (driver.inFlight() != 0) {
            throw new IllegalStateException("block node " + name + " moved with " + driver.inFlight() + " request(s) in flight");
        }
        driver.attach(Objects.requireNonNull(newHome));
        this.home = newHome;
    }

    /**
     * Control plane, off the home thread ({@code blockdev-del}, shutdown): waits until no request
     * is in flight, then flushes (asynchronously: a format driver such as qcow2 has no synchronous
     * data path, and the home thread must keep serving the other nodes meanwhile) and closes the
     * driver on the home thread. Closing earlier would free memory the kernel may still write
     * into; so if requests are still in flight after {@code timeoutMs} (a hung device) the image
     * is left open and this fails. Closes this node's driver only: the caller closes parents
     * before children.
     */
    public void flushAndClose(long timeoutMs) throws BlockException {
        CompletableFuture<Void> f = new CompletableFuture<>();
        home.execute(() -> driver.whenIdle(() -> {
            try {
                driver.flush(errno -> {
                    // The flush itself was in flight: wait for anything else it started, then close.
                    driver.whenIdle(() -> {
                        Runnable hook = beforeClose;
                        if (hook != null) hook.run();
                        driver.close();
                        if (errno == 0) {
                            f.complete(null);
                        } else {
                            f.completeExceptionally(new BlockException(errno, "final flush of block node " + name + " failed: "
                                    + dev.vmm.core.linux.LibC.describe(errno)));
                        }
                    });
                });
            } catch (BlockException | RuntimeException e) {
                driver.close();
                f.completeExceptionally(e);
            }
        }));
        try {
            f.get(timeoutMs, java.util.concurrent.TimeUnit.MILLISECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            if (e.getCause() instanceof BlockException be) throw be;
            throw new BlockException(Errno.EIO, "closing " + name + " failed: " + e.getCause());
        } catch (java.util.concurrent.TimeoutException e) {
            throw new BlockException(Errno.EIO, "block node " + name + " still has requests in flight after "
                    + timeoutMs + " ms: its image is left open");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new BlockException(Errno.EIO, "interrupted while closing block node " + name);
        }
    }

    /**
     * On the home thread: completes (on the home thread) once no request of this node is in
     * flight. A move waits for it between quiesce and detach.
     */
    public CompletableFuture<Void> drain() {
        assert home.inThread() : "drain of " + name + " off its home thread";
        CompletableFuture<Void> f = new CompletableFuture<>();
        io.whenIdle(() -> f.complete(null));
        return f;
    }

    public List<NodeUser> users() { return users; }

    /** A user starts serving this node (on its home thread, or on the main loop through a join). */
    public void addUser(NodeUser u) { users.add(u); }

    public void removeUser(NodeUser u) { users.remove(u); }

    /**
     * Completed when no move is in progress. Control-plane code that must run on the node's home
     * (a vhost-user message changing rings) waits for it first. MUST NOT be waited for on the main
     * loop or an IOThread: a move from or to them needs them. The daemon's control thread is the
     * place ({@code Daemon.controlLoop()}).
     */
    public CompletableFuture<Void> settled() { return settled; }

    /** Main loop: {@code start} runs now, or after the move in progress (or waiting) is done. */
    public void requestJoin(Runnable start) {
        if (moving || !moveWaiters.isEmpty()) {
            joinWaiters.add(start);
        } else {
            joining++;
            start.run();
        }
    }

    /** Main loop: a join started by {@link #requestJoin} has finished (the user serves, or gave up). */
    public void joinDone() {
        joining--;
        pump();
    }

    /** Main loop: {@code start} runs when no move is in progress and no user is half-joined. */
    public void requestMove(Runnable start) {
        moveWaiters.add(start);
        pump();
    }

    /** Main loop: the move started through {@link #requestMove} has finished. */
    public void moveDone() {
        moving = false;
        pump();
    }

    /** Called by the handoff on whatever thread finishes the move, before {@link #moveDone}. */
    public void settle() {
        settled.complete(null);
    }

    private void pump() {
        if (moving) return;
        if (!moveWaiters.isEmpty()) {
            if (joining == 0) {
                moving = true;
                settled = new CompletableFuture<>();
                moveWaiters.poll().run();
            }
            return; // joins wait behind a waiting move, so moves are not starved
        }
        while (!joinWaiters.isEmpty()) {
            joining++;
            joinWaiters.poll().run();
        }
    }

    @Override
    public String toString() { return "BlockNode[" + name + " on " + home.id() + "]"; }
}
