package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.options.Options;
import dev.vmm.core.testing.NativeBuffers;
import dev.vmm.iothread.IOThread;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The copy-before-write and snapshot-access nodes in one process: a write through the file
 * node's own io is copied first and the snapshot still reads the old data; a target that fails
 * its writes fails the guest's write with break-guest-write (the snapshot keeps the old data)
 * and breaks the snapshot with break-snapshot (the write succeeds); blockdev-del removes the
 * layer; bad definitions are refused with a clear error.
 */
class CopyBeforeWriteNodeTest {
    static final int SIZE = 1 << 20;

    @TempDir
    Path dir;
    Daemon daemon;
    IOThread main;
    byte[] initial;
    BlockNode disk;
    BackupJobTest.FailPast target;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        main = daemon.mainLoop();
        initial = new byte[SIZE];
        new Random(5).nextBytes(initial);
        Files.write(dir.resolve("disk.img"), initial);
        Files.write(dir.resolve("tgt.img"), new byte[SIZE]);
        Files.write(dir.resolve("small.img"), new byte[4096]);
        disk = new BlockNode("disk", RawFileDriver.open(dir.resolve("disk.img"), false, false), main);
        target = new BackupJobTest.FailPast(RawFileDriver.open(dir.resolve("tgt.img"), false, false));
        daemon.addNode(disk);
        daemon.addNode(new BlockNode("tgt", target, main));
        daemon.addNode(new BlockNode("small", RawFileDriver.open(dir.resolve("small.img"), false, false), main));
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    private BlockNode add(Object... kv) throws Exception {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return daemon.blockdevAdd(Options.of("blockdev-add", m));
    }

    /** An asynchronous request through {@code io} on the home thread; its errno. */
    private int write(BlockNode n, long off, byte[] data) throws Exception {
        Memory buf = NativeBuffers.aligned(data.length, 4096);
        buf.write(0, data, 0, data.length);
        CompletableFuture<Integer> f = new CompletableFuture<>();
        main.execute(() -> {
            try {
                n.io().write(off, NativeBuffers.address(buf), data.length, false, f::complete);
            } catch (dev.vmm.core.block.BlockException e) {
                f.complete(e.errno());
            }
        });
        return f.get(10, TimeUnit.SECONDS);
    }

    private byte[] read(BlockNode n, long off, int len, int[] errno) throws Exception {
        Memory buf = NativeBuffers.aligned(len, 4096);
        CompletableFuture<Integer> f = new CompletableFuture<>();
        main.execute(() -> {
            try {
                n.io().read(off, NativeBuffers.address(buf), len, f::complete);
            } catch (dev.vmm.core.block.BlockException e) {
                f.complete(e.errno());
            }
        });
        errno[0] = f.get(10, TimeUnit.SECONDS);
        return buf.getByteArray(0, len);
    }

    @Test
    void writesThroughTheFileNodeAreCopiedFirst() throws Exception {
        add("driver", "copy-before-write", "node-name", "cbw", "file", "disk", "target", "tgt");
        BlockNode acc = add("driver", "snapshot-access", "node-name", "acc", "file", "cbw");
        byte[] b = new byte[8192];
        Arrays.fill(b, (byte) 0x42);
        assertEquals(0, write(disk, 100_000, b)); // the disk's own io: not through the cbw node
        int[] e = new int[1];
        assertArrayEquals(initial, read(acc, 0, SIZE, e));
        assertEquals(0, e[0]);
        byte[] now = Files.readAllBytes(dir.resolve("disk.img"));
        assertArrayEquals(b, Arrays.copyOfRange(now, 100_000, 108_192));
        // the copied cluster is on the target, read from there
        byte[] t = Files.readAllBytes(dir.resolve("tgt.img"));
        assertArrayEquals(Arrays.copyOfRange(initial, 65536, 131072), Arrays.copyOfRange(t, 65536, 131072));
        try {
            daemon.blockdevDel("cbw");
            fail("a cbw node with a snapshot-access parent was deleted");
        } catch (DaemonException x) {
            assertTrue(x.getMessage().contains("in use"), x.getMessage());
        }
        daemon.blockdevDel("acc");
        daemon.blockdevDel("cbw");
        assertSame(disk.driver(), main.call(() -> disk.io().current()), "the layer is gone");
        assertEquals(0, write(disk, 300_000, b)); // no copy any more
        assertArrayEquals(new byte[65536], Arrays.copyOfRange(Files.readAllBytes(dir.resolve("tgt.img")), 262144, 327680));
    }

    /** {@code bitmap}: only its clusters are copied, and the snapshot can only be read there (QEMU's access bitmap). */
    @Test
    void aBitmapLimitsTheCopiesAndTheSnapshot() throws Exception {
        dev.vmm.core.bitmap.DirtyBitmap b = new dev.vmm.core.bitmap.DirtyBitmap("b", SIZE, 65536);
        main.call(() -> {
            b.set(0, 4096);
            return null;
        });
        disk.addDirtyBitmap(b);
        add("driver", "copy-before-write", "node-name", "cbw", "file", "disk", "target", "tgt", "bitmap", Map.of("node", "disk", "name", "b"));
        BlockNode acc = add("driver", "snapshot-access", "node-name", "acc", "file", "cbw");
        byte[] x = new byte[4096];
        Arrays.fill(x, (byte) 7);
        assertEquals(0, write(disk, 0, x));
        assertEquals(0, write(disk, 70_000, x)); // outside the bitmap: no copy
        int[] e = new int[1];
        assertArrayEquals(Arrays.copyOfRange(initial, 0, 65536), read(acc, 0, 65536, e));
        assertEquals(0, e[0]);
        read(acc, 65536, 4096, e);
        assertEquals(Errno.EACCES, e[0]);
        byte[] t = Files.readAllBytes(dir.resolve("tgt.img"));
        assertArrayEquals(new byte[65536], Arrays.copyOfRange(t, 65536, 131072), "a cluster outside the bitmap was copied");
    }

    @Test
    void breakGuestWriteFailsTheWriteAndKeepsTheSnapshot() throws Exception {
        add("driver", "copy-before-write", "node-name", "cbw", "file", "disk", "target", "tgt");
        BlockNode acc = add("driver", "snapshot-access", "node-name", "acc", "file", "cbw");
        target.from = 0;
        byte[] b = new byte[4096];
        Arrays.fill(b, (byte) 1);
        assertEquals(Errno.EIO, write(disk, 0, b));
        int[] e = new int[1];
        assertArrayEquals(initial, read(acc, 0, SIZE, e));
        assertEquals(0, e[0]);
        assertArrayEquals(initial, Files.readAllBytes(dir.resolve("disk.img")), "the failed write changed nothing");
    }

    @Test
    void breakSnapshotLetsTheWriteThroughAndFailsSnapshotReads() throws Exception {
        add("driver", "copy-before-write", "node-name", "cbw", "file", "disk", "target", "tgt", "on-cbw-error", "break-snapshot");
        BlockNode acc = add("driver", "snapshot-access", "node-name", "acc", "file", "cbw");
        target.from = 0;
        byte[] b = new byte[4096];
        Arrays.fill(b, (byte) 1);
        assertEquals(0, write(disk, 0, b));
        int[] e = new int[1];
        read(acc, 0, 4096, e);
        assertEquals(Errno.EACCES, e[0]);
        assertArrayEquals(b, Arrays.copyOfRange(Files.readAllBytes(dir.resolve("disk.img")), 0, 4096));
    }

    /**
     * Many writes in flight at once (never two over the same bytes, so the result is known),
     * zero writes and discards among them, while snapshot reads run: every snapshot read returns
     * the initial bytes, the disk ends as the reference, the snapshot as a whole is the initial image.
     */
    @Test
    void concurrentWritesAndSnapshotReads() throws Exception {
        add("driver", "copy-before-write", "node-name", "cbw", "file", "disk", "target", "tgt");
        BlockNode acc = add("driver", "snapshot-access", "node-name", "acc", "file", "cbw");
        byte[] reference = initial.clone();
        Random rnd = new Random(11);
        List<long[]> inFlight = new java.util.ArrayList<>();
        CompletableFuture<Void> done = new CompletableFuture<>();
        int total = 3000;
        int[] started = {0};
        int[] finished = {0};
        int[] errors = {0};
        int[] badReads = {0};
        int[] reads = {0};
        Memory wbuf = NativeBuffers.aligned(32L * 65536, 4096);
        Memory rbuf = NativeBuffers.aligned(4L * 131072, 4096);
        Runnable[] pump = new Runnable[1];
        pump[0] = () -> {
            while (started[0] < total && inFlight.size() < 32) {
                int len = (1 + rnd.nextInt(16)) * 4096;
                long off = (long) rnd.nextInt((SIZE - len) / 512 + 1) * 512;
                boolean clash = false;
                for (long[] r : inFlight) clash |= r[0] < off + len && off < r[0] + r[1];
                if (clash) continue;
                int slot = -1;
                for (int i = 0; i < 32 && slot < 0; i++) {
                    final int k = i;
                    if (inFlight.stream().noneMatch(r -> r[2] == k)) slot = i;
                }
                long[] r = {off, len, slot};
                inFlight.add(r);
                started[0]++;
                int kind = rnd.nextInt(10);
                byte[] data = new byte[len];
                if (kind < 8) rnd.nextBytes(data);
                wbuf.write((long) slot * 65536, data, 0, len);
                dev.vmm.core.block.IoCompletion c = e -> {
                    inFlight.remove(r);
                    if (e != 0) errors[0]++;
                    else System.arraycopy(data, 0, reference, (int) off, len);
                    if (++finished[0] == total) done.complete(null);
                    else pump[0].run();
                };
                try {
                    if (kind < 8) disk.io().write(off, NativeBuffers.address(wbuf) + (long) slot * 65536, len, false, c);
                    else disk.io().writeZeroes(off, len, kind == 9, false, false, c);
                } catch (dev.vmm.core.block.BlockException e) {
                    c.ioDone(e.errno());
                }
            }
        };
        // snapshot readers: 4 at a time, each checks what it read
        // each reader keeps its own buffer slot: reads complete out of order, so a slot taken
        // round-robin could still be in use by a slower read (two reads into one buffer)
        java.util.function.IntConsumer[] reader = new java.util.function.IntConsumer[1];
        reader[0] = slot -> {
            if (done.isDone()) return;
            int len = (1 + rnd.nextInt(32)) * 4096;
            long off = (long) rnd.nextInt((SIZE - len) / 4096 + 1) * 4096;
            long addr = NativeBuffers.address(rbuf) + (long) slot * 131072;
            try {
                acc.io().read(off, addr, len, e -> {
                    byte[] got = rbuf.getByteArray((long) slot * 131072, len);
                    if (e != 0 || !Arrays.equals(got, Arrays.copyOfRange(initial, (int) off, (int) off + len))) badReads[0]++;
                    reads[0]++;
                    reader[0].accept(slot);
                });
            } catch (dev.vmm.core.block.BlockException e) {
                badReads[0]++;
            }
        };
        main.execute(() -> {
            pump[0].run();
            for (int i = 0; i < 4; i++) reader[0].accept(i);
        });
        done.get(60, TimeUnit.SECONDS);
        main.call(() -> null); // the last reads' completions ran
        Thread.sleep(100);
        assertEquals(0, main.call(() -> errors[0]), "write errors");
        assertEquals(0, main.call(() -> badReads[0]), "snapshot reads that did not return the initial bytes, of " + reads[0]);
        assertTrue(main.call(() -> reads[0]) > 10, "the readers ran");
        int[] e = new int[1];
        assertArrayEquals(initial, read(acc, 0, SIZE, e));
        assertEquals(0, e[0]);
        assertArrayEquals(reference, read(disk, 0, SIZE, e));
    }

    @Test
    void badDefinitionsAreRefused() throws Exception {
        expect("Cannot find device='nope' nor node-name='nope'", "driver", "copy-before-write", "node-name", "c", "file", "disk",
                "target", "nope");
        expect("copy-before-write: 'target' must have the size of 'file'", "driver", "copy-before-write", "node-name", "c", "file",
                "disk", "target", "small");
        expect("copy-before-write: 'file' and 'target' must be different nodes", "driver", "copy-before-write", "node-name", "c",
                "file", "disk", "target", "disk");
        expect("Dirty bitmap 'b' not found", "driver", "copy-before-write", "node-name", "c", "file", "disk",
                "target", "tgt", "bitmap", Map.of("node", "disk", "name", "b"));
        expect("snapshot-access: 'file' must be a copy-before-write node", "driver", "snapshot-access", "node-name", "a", "file",
                "disk");
        assertSame(disk.driver(), main.call(() -> disk.io().current()), "nothing was left in the disk's io");
        assertEquals(3, daemon.nodes().size());
    }

    private void expect(String message, Object... kv) throws Exception {
        try {
            add(kv);
            fail("accepted: " + Arrays.toString(kv));
        } catch (DaemonException | dev.vmm.core.options.OptionException e) {
            assertEquals(message, e.getMessage());
        }
    }
}
