package dev.vmm.core.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.NodeUser;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.block.RawFormatDriver;
import dev.vmm.core.testing.HoldingDriver;
import dev.vmm.iothread.IOThread;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Control-plane commands that race with a move of the graph they touch (review of the block graph
 * change): blockdev-del of a parent while its child's graph is being moved.
 */
class GraphRaceTest {
    @TempDir
    Path dir;
    Daemon daemon;
    IOThread iot1;
    final List<String> events = Collections.synchronizedList(new ArrayList<>());
    Memory buf;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        iot1 = daemon.addIOThread("iot1");
        buf = new Memory(4096);
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
        buf.close();
    }

    final class User implements NodeUser {
        @Override public String describe() { return "user"; }
        @Override public void quiesce() { events.add("quiesce"); }
        @Override public CompletableFuture<Void> detach() { events.add("detach"); return CompletableFuture.completedFuture(null); }
        @Override public CompletableFuture<Void> attach(IOThread h) { events.add("attach " + h.id()); return CompletableFuture.completedFuture(null); }
        @Override public void resume() { events.add("resume"); }
    }

    RawFileDriver file(String name) throws Exception {
        Path p = dir.resolve(name);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        return RawFileDriver.open(p, false, false);
    }

    /**
     * Node c (a file, with a user: an export's client) and p, a raw node over c that nobody uses.
     * A move of c's graph (c and p) waits for a request of c's user; a blockdev-del of p (allowed:
     * p has no parent and no export) comes in meanwhile, e.g. from a second QMP monitor or after
     * the first one was told the move takes too long. The move must still end with every node on
     * the target and the user attached and resumed there; before the fix p's final flush went to
     * c between the move's drain and its setHome, the move failed with "moved with 1 request(s) in
     * flight", and the user stayed detached and quiesced for good.
     */
    @Test
    void blockdevDelOfAParentDuringAMoveOfItsGraphLeavesNoUserStranded() throws Exception {
        IOThread main = daemon.mainLoop();
        HoldingDriver cd = new HoldingDriver(file("c.img"));
        BlockNode c = new BlockNode("c", cd, main);
        daemon.addNode(c);
        BlockNode p = new BlockNode("p", "raw", new RawFormatDriver(cd, 0, -1, false, true), main,
                List.of(new BlockNode.Child(BlockNode.FILE, c, false)));
        daemon.addNode(p);
        c.addUser(new User());
        main.call(() -> {
            cd.hold(true);
            c.driver().write(0, Pointer.nativeValue(buf), 4096, false, errno -> { });
            return null;
        });
        while (cd.heldCount() < 1) Thread.sleep(1);
        CompletableFuture<Long> move = daemon.moveNode("c", "iot1");
        Thread.sleep(100);
        assertFalse(move.isDone());
        CompletableFuture<Void> del = CompletableFuture.runAsync(() -> {
            try {
                daemon.blockdevDel("p");
            } catch (DaemonException e) {
                throw new RuntimeException(e);
            }
        });
        Thread.sleep(200);
        // the user's request completes: the move's drain ends; whatever else is held later is let go
        c.home().call(() -> {
            cd.hold(false);
            cd.releaseAllReversed();
            return null;
        });
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!(move.isDone() && del.isDone()) && System.nanoTime() < deadline) {
            c.home().call(() -> {
                cd.releaseAllReversed();
                return null;
            });
            Thread.sleep(10);
        }
        assertTrue(move.isDone() && del.isDone(), "move " + move + ", blockdev-del " + del);
        del.get();
        assertTrue(move.get() > 0);
        assertSame(iot1, c.home());
        assertEquals(List.of("c"), daemon.nodes().stream().map(BlockNode::name).toList());
        assertTrue(events.contains("attach iot1") && events.get(events.size() - 1).equals("resume"), events.toString());
        // c still serves, on its new home
        int[] errno = {-1};
        CompletableFuture<Void> w = new CompletableFuture<>();
        iot1.call(() -> {
            c.driver().write(4096, Pointer.nativeValue(buf), 4096, false, e -> {
                errno[0] = e;
                w.complete(null);
            });
            return null;
        });
        w.get(5, TimeUnit.SECONDS);
        assertEquals(0, errno[0]);
    }

    /**
     * Two raw windows over one file node (two disks in one image); one is busy (a request held in
     * flight on the shared file), the other is removed. Its final flush and close must wait for its
     * own requests only: before the fix RawFormatDriver reported the child's in-flight count as its
     * own, so blockdev-del waited for the sibling's I/O, failed after 30 s ("still has requests in
     * flight ... left open") and, holding the graph's gates meanwhile, held up the sibling's moves
     * and new clients.
     */
    @Test
    void blockdevDelOfOneRawWindowDoesNotWaitForItsBusySibling() throws Exception {
        IOThread main = daemon.mainLoop();
        HoldingDriver cd = new HoldingDriver(file("c.img"));
        BlockNode c = new BlockNode("c", cd, main);
        daemon.addNode(c);
        for (String w : List.of("w0", "w1")) {
            long off = w.equals("w0") ? 0 : 1 << 19;
            daemon.addNode(new BlockNode(w, "raw", new RawFormatDriver(cd, off, 1 << 19, false, true), main,
                    List.of(new BlockNode.Child(BlockNode.FILE, c, false))));
        }
        BlockNode w1 = daemon.node("w1");
        main.call(() -> {
            cd.hold(true);
            w1.driver().write(0, Pointer.nativeValue(buf), 4096, false, errno -> { });
            return null;
        });
        while (cd.heldCount() < 1) Thread.sleep(1);
        main.call(() -> {
            cd.hold(false); // only that one is held: the busy sibling's request
            return null;
        });
        CompletableFuture<Void> del = CompletableFuture.runAsync(() -> {
            try {
                daemon.blockdevDel("w0");
            } catch (DaemonException e) {
                throw new RuntimeException(e);
            }
        });
        try {
            del.get(5, TimeUnit.SECONDS);
        } finally {
            main.call(() -> {
                cd.releaseAllReversed();
                return null;
            });
        }
        assertEquals(List.of("c", "w1"), daemon.nodes().stream().map(BlockNode::name).toList());
    }
}
