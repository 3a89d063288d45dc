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

    public BlockNode(String name, BlockDriver driver, IOThread home) {
        this.name = Objects.requireNonNull(name, "name");
        this.driver = Objects.requireNonNull(driver, "driver");
        this.home = Objects.requireNonNull(home, "home");
        driver.attach(home);
    }

    public String name() { return name; }

    public BlockDriver driver() { return driver; }

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
     * is in flight, then flushes and closes the driver on the home thread. Closing earlier would
     * free memory the kernel may still write into; so if requests are still in flight after
     * {@code timeoutMs} (a hung device) the image is left open and this fails.
     */
    public void flushAndClose(long timeoutMs) throws BlockException {
        CompletableFuture<Void> f = new CompletableFuture<>();
        home.execute(() -> driver.whenIdle(() -> {
            try {
                driver.flush();
                f.complete(null);
            } catch (BlockException | RuntimeException e) {
                f.completeExceptionally(e);
            } finally {
                driver.close();
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
        driver.whenIdle(() -> f.complete(null));
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
