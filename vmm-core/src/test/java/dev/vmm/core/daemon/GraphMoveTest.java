package dev.vmm.core.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
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
 * Moves of whole graphs: a format node over a file node, with requests held in flight at either
 * level (the move waits for both), homes set children before parents, and a backing node shared
 * by two disks (moving one moves both, with both disks' users).
 */
class GraphMoveTest {
    @TempDir
    Path dir;
    Daemon daemon;
    IOThread iot1;
    final List<String> events = Collections.synchronizedList(new ArrayList<>());
    final List<Memory> buffers = new ArrayList<>();

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        iot1 = daemon.addIOThread("iot1");
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
        buffers.forEach(Memory::close);
    }

    /** Records the homes it is given, in order, into {@link #events}. */
    final class Recording extends ForwardingBlockDriver {
        final String name;

        Recording(String name, BlockDriver d) {
            super(d);
            this.name = name;
        }

        @Override
        public void attach(IOThread home) {
            events.add("attach " + name + " " + home.id());
            super.attach(home);
        }

        @Override
        public void flush(dev.vmm.core.block.IoCompletion c) throws dev.vmm.core.block.BlockException {
            events.add("flush " + name);
            super.flush(c);
        }

        @Override
        public void close() {
            events.add("close " + name);
            super.close();
        }
    }

    @Test
    void blockdevDelClosesTheParentBeforeTheChildrenItOwns() throws Exception {
        IOThread main = daemon.mainLoop();
        BlockNode f = new BlockNode("#block123", new Recording("f", file("a.img")), main);
        daemon.addNode(f);
        Recording pd = new Recording("p", new RawFormatDriver(f.driver(), 0, -1, false, true));
        daemon.addNode(new BlockNode("p", "raw", pd, main, List.of(new BlockNode.Child(BlockNode.FILE, f, true))));
        events.clear();
        daemon.blockdevDel("p");
        // the parent's flush goes through to the child (RawFormatDriver), then each closes, parent first
        assertEquals(List.of("flush p", "flush f", "close p", "flush f", "close f"), events);
        assertTrue(daemon.nodes().isEmpty());
    }

    /** A user that records its steps and the thread each ran on. */
    final class User implements NodeUser {
        final String name;

        User(String name) { this.name = name; }

        @Override public String describe() { return "user " + name; }
        @Override public void quiesce() { events.add("quiesce " + name + " " + Thread.currentThread().getName()); }
        @Override public CompletableFuture<Void> detach() { events.add("detach " + name); return CompletableFuture.completedFuture(null); }
        @Override public CompletableFuture<Void> attach(IOThread h) { events.add("attach-user " + name + " " + h.id()); return CompletableFuture.completedFuture(null); }
        @Override public void resume() { events.add("resume " + name); }
    }

    RawFileDriver file(String name) throws Exception {
        Path p = dir.resolve(name);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        return RawFileDriver.open(p, false, false);
    }

    long buffer() {
        Memory m = new Memory(4096);
        buffers.add(m);
        return Pointer.nativeValue(m);
    }

    @Test
    void aMoveWaitsForRequestsHeldAtBothLevelsAndMovesChildrenFirst() throws Exception {
        HoldingDriver fileHold = new HoldingDriver(new Recording("f", file("a.img")));
        HoldingDriver fmtHold = new HoldingDriver(new Recording("p", new RawFormatDriver(fileHold, 0, -1, false, true)));
        IOThread main = daemon.mainLoop();
        BlockNode f = new BlockNode("f", fileHold, main);
        BlockNode p = new BlockNode("p", "raw", fmtHold, main, List.of(new BlockNode.Child(BlockNode.FILE, f, true)));
        daemon.addNode(f);
        daemon.addNode(p);
        p.addUser(new User("u"));
        long buf = buffer();
        int[] done = new int[2];
        main.call(() -> {
            fileHold.hold(true);
            fmtHold.hold(true);
            // a guest read through the parent, and I/O of the child alone (as a qcow2 metadata write)
            p.driver().read(0, buf, 4096, errno -> done[0]++);
            f.driver().write(8192, buf, 4096, false, errno -> done[1]++);
            return null;
        });
        while (fileHold.heldCount() < 2) Thread.sleep(1);
        events.clear();
        CompletableFuture<Long> move = daemon.moveNode("f", "iot1"); // asked on the child: the parent goes too
        Thread.sleep(200);
        assertFalse(move.isDone(), "moved with requests in flight");
        // the child's completions reach the parent, which holds its own: still in flight above
        main.call(() -> {
            fileHold.hold(false);
            fileHold.releaseAllReversed();
            return null;
        });
        while (fmtHold.heldCount() < 1) Thread.sleep(1);
        Thread.sleep(100);
        assertFalse(move.isDone(), "moved with the parent's request in flight");
        assertEquals(1, done[1]);
        main.call(() -> {
            fmtHold.hold(false);
            fmtHold.releaseAllReversed();
            return null;
        });
        assertTrue(move.get(10, TimeUnit.SECONDS) > 0);
        assertEquals(1, done[0]);
        assertSame(iot1, f.home());
        assertSame(iot1, p.home());
        assertTrue(events.get(0).startsWith("quiesce u "), events.toString());
        assertEquals(List.of("detach u", "attach f iot1", "attach p iot1", "attach-user u iot1", "resume u"),
                events.subList(1, events.size()), "children attach before parents, users after both");
    }

    @Test
    void aChildOnlyRequestHoldsTheMoveToo() throws Exception {
        HoldingDriver fileHold = new HoldingDriver(file("a.img"));
        IOThread main = daemon.mainLoop();
        BlockNode f = new BlockNode("f", fileHold, main);
        BlockNode p = new BlockNode("p", "raw", new HoldingDriver(new RawFormatDriver(fileHold, 0, -1, false, true)), main,
                List.of(new BlockNode.Child(BlockNode.FILE, f, false)));
        daemon.addNode(f);
        daemon.addNode(p);
        long buf = buffer();
        main.call(() -> {
            fileHold.hold(true);
            f.driver().write(0, buf, 4096, false, errno -> { });
            return null;
        });
        while (fileHold.heldCount() < 1) Thread.sleep(1);
        CompletableFuture<Long> move = daemon.moveNode("p", "iot1");
        Thread.sleep(200);
        assertFalse(move.isDone(), "the parent is idle, but its child is not");
        main.call(() -> {
            fileHold.releaseAllReversed();
            return null;
        });
        move.get(10, TimeUnit.SECONDS);
        assertSame(iot1, f.home());
        assertSame(iot1, p.home());
        iot1.call(() -> {
            fileHold.hold(false); // else the final flushes at tear-down are held until their 30 s timeout
            return null;
        });
    }

    @Test
    void aSharedBackingNodeMovesBothDisksAndTheirUsers() throws Exception {
        IOThread main = daemon.mainLoop();
        BlockNode base = new BlockNode("base", file("base.img"), main);
        daemon.addNode(base);
        List<BlockNode> disks = new ArrayList<>();
        for (String d : List.of("d1", "d2")) {
            BlockNode f = new BlockNode(d + "-file", file(d + ".img"), main);
            daemon.addNode(f);
            BlockNode disk = new BlockNode(d, "raw", new RawFormatDriver(f.driver(), 0, -1, false, true), main,
                    List.of(new BlockNode.Child(BlockNode.FILE, f, true), new BlockNode.Child(BlockNode.BACKING, base, false)));
            daemon.addNode(disk);
            disk.addUser(new User(d));
            disks.add(disk);
        }
        assertEquals(5, disks.get(0).connected().size());
        events.clear();
        daemon.moveNode("d1", "iot1").get(10, TimeUnit.SECONDS);
        for (BlockNode n : disks.get(1).connected().values()) assertSame(iot1, n.home(), n.name());
        assertTrue(events.contains("resume d1") && events.contains("resume d2"), events.toString());
        // two concurrent moves of the same graph from either end: gates in name order, no deadlock
        CompletableFuture<Long> a = daemon.moveNode("d2", "main");
        CompletableFuture<Long> b = daemon.moveNode("base", "iot1");
        a.get(10, TimeUnit.SECONDS);
        b.get(10, TimeUnit.SECONDS);
        for (BlockNode n : base.connected().values()) assertSame(iot1, n.home(), n.name());
        // blockdev-del: the shared node stays while a disk uses it, and goes when asked after both
        daemon.blockdevDel("d1");
        assertEquals("Node 'base' is busy: node is used as backing hd of 'd2'",
                org.junit.jupiter.api.Assertions.assertThrows(DaemonException.class, () -> daemon.blockdevDel("base")).getMessage());
        daemon.blockdevDel("d2");
        daemon.blockdevDel("base");
        List<String> left = new ArrayList<>();
        for (BlockNode n : daemon.nodes()) left.add(n.name());
        assertEquals(List.of(), left, "owned file children went with their disks");
    }
}
