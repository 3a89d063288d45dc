package dev.vmm.core.block;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.iothread.IOThread;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link NodeIo}'s dirty bitmap marking (every write, zero write and discard through the io marks
 * the node's recording bitmaps; disabled, inconsistent and pivoted-away bitmaps are not marked;
 * ignored discards mark nothing) and its drained sections ({@link NodeIo#hold}: kept requests
 * wait, count in flight, go in order at release, through a job's filter layer too).
 */
@Timeout(60)
class NodeIoBitmapTest {
    static final long SIZE = 1 << 20;
    @TempDir
    Path dir;
    IOThread home;
    long buf;
    final List<RawFileDriver> files = new ArrayList<>();

    @BeforeEach
    void start() {
        home = IOThread.start("t-home");
        buf = RawMemory.allocate(1 << 16);
    }

    @AfterEach
    void stop() throws Exception {
        home.call(() -> {
            for (RawFileDriver f : files) f.close();
            return null;
        });
        home.shutdown(5000);
        RawMemory.free(buf);
    }

    BlockNode node(String name) throws Exception {
        Path p = dir.resolve(name + ".img");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        RawFileDriver d = RawFileDriver.open(p, false, false);
        files.add(d);
        return new BlockNode(name, d, home);
    }

    /** Submits on the home thread and waits for the completion. */
    interface Submit {
        void to(NodeIo io, IoCompletion done) throws BlockException;
    }

    int io(BlockNode n, Submit s) throws Exception {
        CompletableFuture<Integer> done = new CompletableFuture<>();
        home.call(() -> {
            s.to(n.io(), done::complete);
            return null;
        });
        return done.get(10, TimeUnit.SECONDS);
    }

    static DirtyBitmap bitmap(String name, long granularity) {
        return new DirtyBitmap(name, SIZE, granularity);
    }

    /** The reference: a bitmap with exactly these byte ranges set. */
    static String expected(long granularity, long... ranges) {
        DirtyBitmap b = bitmap("ref", granularity);
        for (int i = 0; i < ranges.length; i += 2) b.set(ranges[i], ranges[i + 1]);
        return b.sha256();
    }

    @Test
    void writesZeroesAndDiscardsMarkRecordingBitmapsOnly() throws Exception {
        BlockNode n = node("a");
        assertEquals(0, io(n, (io, c) -> io.write(0, buf, 4096, false, c))); // no bitmap yet: nothing to mark
        DirtyBitmap on = bitmap("on", 65536);
        DirtyBitmap fine = bitmap("fine", 512);
        DirtyBitmap off = bitmap("off", 65536);
        off.setRecording(false);
        DirtyBitmap broken = bitmap("broken", 65536);
        broken.setInconsistent(true);
        home.call(() -> {
            for (DirtyBitmap b : List.of(on, fine, off, broken)) n.addBitmap(b);
            return null;
        });
        assertEquals(List.of(broken, off, fine, on), n.dirtyBitmaps(), "newest first");
        assertThrows(IllegalArgumentException.class, () -> n.addBitmap(bitmap("on", 512)));
        assertEquals(0, io(n, (io, c) -> io.write(70000, buf, 1000, false, c)));
        assertEquals(0, io(n, (io, c) -> io.writeZeroes(300000, 100, false, false, false, c)));
        assertEquals(0, io(n, (io, c) -> io.discard(600 * 1024, 8192, c)));
        long iov = RawMemory.allocate(16);
        try {
            RawMemory.putLe64(iov, buf);
            RawMemory.putLe64(iov + 8, 512);
            assertEquals(0, io(n, (io, c) -> io.writev(SIZE - 512, iov, 1, 512, false, c)));
        } finally {
            RawMemory.free(iov);
        }
        home.call(() -> {
            n.io().write(2048, buf, 512, false); // the synchronous path marks too
            return null;
        });
        long[] ranges = {70000, 1000, 300000, 100, 600 * 1024, 8192, SIZE - 512, 512, 2048, 512};
        assertEquals(expected(65536, ranges), home.call(on::sha256));
        assertEquals(expected(512, ranges), home.call(fine::sha256));
        assertEquals(expected(65536), home.call(off::sha256));
        assertEquals(expected(65536), home.call(broken::sha256));
        assertEquals(0, off.count());
        // removed: no longer marked
        home.call(() -> n.removeBitmap(on));
        assertEquals(0, io(n, (io, c) -> io.write(900000, buf, 512, false, c)));
        assertEquals(expected(65536, ranges), home.call(on::sha256));
        assertNull(n.dirtyBitmap("on"));
    }

    @Test
    void ignoredDiscardsMarkNothing() throws Exception {
        BlockNode n = node("d");
        n.setDiscardIgnored(true);
        DirtyBitmap b = bitmap("b", 65536);
        home.call(() -> {
            n.addBitmap(b);
            return null;
        });
        assertEquals(0, io(n, (io, c) -> io.discard(0, 65536, c)));
        assertEquals(0, b.count());
        assertEquals(0, io(n, (io, c) -> io.writeZeroes(0, 512, true, false, false, c)));
        assertEquals(65536, b.count());
    }

    @Test
    void afterAPivotOnlyTheTargetIsMarked() throws Exception {
        BlockNode src = node("src");
        BlockNode tgt = node("tgt");
        DirtyBitmap s = bitmap("s", 65536);
        DirtyBitmap t = bitmap("t", 65536);
        home.call(() -> {
            src.addBitmap(s);
            tgt.addBitmap(t);
            src.io().set(tgt.io()); // what a mirror's pivot does
            return null;
        });
        assertEquals(0, io(src, (io, c) -> io.write(0, buf, 512, false, c)));
        assertEquals(0, s.count());
        assertEquals(65536, t.count());
        home.call(() -> {
            src.io().set(src.io().own()); // and back: marks again
            return null;
        });
        assertEquals(0, io(src, (io, c) -> io.write(0, buf, 512, false, c)));
        assertEquals(65536, s.count());
    }

    @Test
    void holdKeepsRequestsUntilReleaseInOrderThroughAFilter() throws Exception {
        BlockNode n = node("h");
        // a job's layer, as a mirror's filter: counts what passes
        int[] passed = new int[1];
        ForwardingBlockDriver filter = new ForwardingBlockDriver(n.io().own()) {
            @Override
            public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
                passed[0]++;
                d.write(o, a, l, fua, c);
            }
        };
        DirtyBitmap b = bitmap("b", 65536);
        CompletableFuture<Boolean> drained = new CompletableFuture<>();
        List<Integer> order = new ArrayList<>();
        long buf2 = RawMemory.allocate(512);
        try {
            RawMemory.fill(buf, 512, 0x11);
            RawMemory.fill(buf2, 512, 0x22);
            CompletableFuture<Integer> first = new CompletableFuture<>();
            CompletableFuture<Integer> second = new CompletableFuture<>();
            int[] inFlight = new int[1];
            boolean[] idleEarly = new boolean[1];
            home.call(() -> {
                n.io().set(filter);
                n.io().write(0, buf, 512, false, first::complete); // in flight when the hold starts
                n.io().hold(() -> drained.complete(first.isDone()));
                n.addBitmap(b); // inside the drained section, as the bitmap commands do
                n.io().write(0, buf, 512, false, e -> order.add(1));
                n.io().write(0, buf2, 512, false, e -> {
                    order.add(2);
                    second.complete(e);
                });
                inFlight[0] = n.io().inFlight();
                n.io().whenIdle(() -> idleEarly[0] = true);
                return null;
            });
            assertTrue(drained.get(10, TimeUnit.SECONDS), "drained ran only once the earlier write completed");
            Thread.sleep(200);
            assertFalse(second.isDone(), "a kept request ran during the hold");
            assertEquals(1, passed[0], "only the write from before the hold reached the filter");
            assertTrue(inFlight[0] >= 2, "kept requests count in flight: " + inFlight[0]);
            assertFalse(home.call(() -> idleEarly[0]), "idle while requests were kept");
            assertEquals(0, b.count(), "kept requests are marked when they go");
            home.call(() -> {
                n.io().release();
                return null;
            });
            assertEquals(0, second.get(10, TimeUnit.SECONDS));
            assertEquals(List.of(1, 2), order);
            assertEquals(3, passed[0], "released through the current layer");
            assertEquals(65536, b.count());
            assertTrue(home.call(() -> idleEarly[0]), "whenIdle ran after the release");
            byte[] content = Files.readAllBytes(dir.resolve("h.img"));
            assertEquals(0x22, content[0], "the later write landed last");
        } finally {
            RawMemory.free(buf2);
        }
        assertThrows(IllegalStateException.class, () -> home.call(() -> {
            n.io().release();
            return null;
        }));
    }
}
