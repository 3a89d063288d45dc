package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Harness.ok;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuImg;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuIoCmds;
import static dev.vmm.core.block.qcow2.Qcow2Harness.run;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.testing.NativeBuffers;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Hostile images: crafted headers and tables are refused at open or fail their requests with an
 * errno (and mark the image corrupt where QEMU does); a byte-flipping fuzz over a real image
 * never produces another exception type, a hang, or a file grown without bound.
 */
class Qcow2HostileTest {
    static final int CS = 65536;
    @TempDir
    Path dir;
    Qcow2Harness h;

    @BeforeEach
    void start() { h = new Qcow2Harness("qcow2-hostile"); }

    @AfterEach
    void stop() throws Exception { h.close(); }

    /** A v3 image with data in the first two clusters; returns its path. */
    Path image() throws Exception {
        Path p = dir.resolve("h-" + System.nanoTime() + ".qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=" + CS, p.toString(), "4M");
        qemuIoCmds(p, "qcow2", "write -P 0x5a 0 128k");
        return p;
    }

    static long get64(Path p, long off) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "r")) {
            f.seek(off);
            return f.readLong();
        }
    }

    static int get32(Path p, long off) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "r")) {
            f.seek(off);
            return f.readInt();
        }
    }

    static void put64(Path p, long off, long v) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(off);
            f.writeLong(v);
        }
    }

    static void put32(Path p, long off, int v) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(off);
            f.writeInt(v);
        }
    }

    static void put8(Path p, long off, int v) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(off);
            f.write(v);
        }
    }

    String refused(Path p, boolean readOnly) throws Exception {
        BlockException e = assertThrows(BlockException.class, () -> h.open(p, readOnly));
        assertNotEquals(0, e.errno());
        return e.getMessage();
    }

    long l1Offset(Path p) throws Exception { return get64(p, 40); }

    long l2Offset(Path p) throws Exception { return get64(p, l1Offset(p)) & 0x00fffffffffffe00L; }

    @Test
    void headerFieldsAreChecked() throws Exception {
        Path p = image();
        put64(p, 40, 1L << 40); // L1 offset past EOF
        assertTrue(refused(p, true).contains("L1 table"), "L1 past EOF");
        p = image();
        put32(p, 36, 0x7fffffff);
        assertTrue(refused(p, true).contains("Active L1 table too large"));
        p = image();
        put64(p, 24, 1L << 50); // size the L1 cannot map
        assertTrue(refused(p, true).contains("L1 table is too small"));
        p = image();
        put64(p, 48, get64(p, 40)); // refcount table on the L1 table
        assertTrue(refused(p, true).contains("overlaps"));
        p = image();
        put32(p, 56, 1 << 30);
        assertTrue(refused(p, true).contains("Reference count table too large"));
        p = image();
        put32(p, 60, 1 << 20);
        assertTrue(refused(p, true).contains("Too many snapshots"));
        p = image();
        put64(p, 72, 1L << 10);
        String m = refused(p, true);
        assertTrue(m.contains("Unsupported qcow2 feature(s)") && m.contains("Unknown incompatible feature: 400"), m);
        p = image();
        put32(p, 32, 1);
        assertTrue(refused(p, true).contains("encrypted"));
        p = image();
        put64(p, 72, 1L << 3);
        put8(p, 104, 1);
        assertTrue(refused(p, true).contains("zstd compressed clusters are not supported"));
        p = image();
        put64(p, 72, 1L << 2);
        assertTrue(refused(p, true).contains("external data file"));
        p = image();
        put32(p, 20, 30);
        assertTrue(refused(p, true).contains("Unsupported cluster size"));
        p = image();
        put32(p, 4, 4);
        assertTrue(refused(p, true).contains("Unsupported qcow2 version 4"));
        p = image();
        put32(p, 96, 7);
        assertTrue(refused(p, true).contains("Reference count entry width too large"));
        p = image();
        put64(p, 8, CS - 10); // backing name running past the header cluster
        put32(p, 16, 100);
        assertTrue(refused(p, true).contains("Backing file name too long"));
    }

    @Test
    void corruptBitOpensReadOnlyOnly() throws Exception {
        Path p = image();
        put64(p, 72, 1L << 1);
        assertEquals("qcow2: Image is corrupt; cannot be opened read/write", refused(p, false));
        Qcow2Driver d = h.open(p, true);
        byte[] all = h.readAll(d, CS);
        assertEquals(0x5a, all[0]);
    }

    @Test
    void tableCyclesAreRefused() throws Exception {
        Path p = image();
        long rtOff = get64(p, 48);
        long rb = get64(p, rtOff);
        put64(p, l1Offset(p), rb | (1L << 63)); // the L2 table is the refcount block
        assertTrue(refused(p, true).contains("overlaps"));
        p = image();
        put64(p, l1Offset(p), l1Offset(p) | (1L << 63)); // the L2 table is the L1 table
        assertTrue(refused(p, true).contains("overlaps"));
    }

    int readAt(Qcow2Driver d, long off, int len) throws Exception {
        Memory m = NativeBuffers.aligned(len, 4096);
        return h.await(done -> d.read(off, NativeBuffers.address(m), len, done));
    }

    @Test
    void badL2EntriesFailRequestsAndMarkTheImageCorrupt() throws Exception {
        Path p = image();
        long l2 = l2Offset(p);
        put64(p, l2, get64(p, l2) | 0x2); // reserved bit in the first entry
        Qcow2Driver d = h.open(p, false);
        assertEquals(Errno.EIO, readAt(d, 0, 4096));
        assertTrue(d.corrupt());
        assertEquals(0, readAt(d, CS, 4096), "other clusters still read");
        BlockException e = assertThrows(BlockException.class, () -> h.write(d, CS, new byte[512], false));
        assertEquals(Errno.EIO, e.errno());
        h.closeAll(false);
        assertTrue((get64(p, 72) & 2) != 0, "corrupt bit set in the header");
        assertEquals("qcow2: Image is corrupt; cannot be opened read/write", refused(p, false));

        p = image();
        l2 = l2Offset(p);
        put64(p, l2 + 8, (1L << 63) | (get64(p, l2 + 8) & 0x00fffffffffffe00L) + 512); // unaligned host offset
        Qcow2Driver d2 = h.open(p, true);
        assertEquals(Errno.EIO, readAt(d2, CS, 512));
        BlockStatus s = new BlockStatus();
        assertThrows(BlockException.class, () -> h.on(() -> { d2.status(CS, CS, s); return null; }));
    }

    @Test
    void aDataClusterOnMetadataIsNotWritten() throws Exception {
        Path p = image();
        long l2 = l2Offset(p);
        long l1 = l1Offset(p);
        put64(p, l2, (1L << 63) | l1); // guest cluster 0 -> the L1 table
        byte[] before = Files.readAllBytes(p);
        Qcow2Driver d = h.open(p, false);
        assertEquals(0, readAt(d, 0, 4096), "reads are not checked (as QEMU)");
        assertEquals(Errno.EIO, h.write(d, 0, new byte[4096], false));
        assertTrue(d.corrupt());
        h.closeAll(false);
        byte[] after = Files.readAllBytes(p);
        for (long i = l1; i < l1 + CS; i++) assertEquals(before[(int) i], after[(int) i], "L1 table untouched at " + i);
        String[] out = new String[1];
        run(out, qemuImg(), "info", p.toString());
        assertTrue(out[0].contains("corrupt: true"), out[0]);
    }

    @Test
    void l1EntryPastTheEndFailsReads() throws Exception {
        Path p = image();
        put64(p, l1Offset(p), (1L << 63) | (1L << 40));
        Qcow2Driver d = h.open(p, true);
        assertEquals(Errno.EIO, readAt(d, 0, 4096));
    }

    @Test
    void garbageCompressedClusterFailsTheRead() throws Exception {
        Path p = image();
        long l2 = l2Offset(p);
        long host = get64(p, l2) & 0x00fffffffffffe00L;
        int x = 62 - (16 - 8);
        put64(p, l2, (1L << 62) | (3L << x) | host); // "compressed" bytes that are the 0x5a pattern
        Qcow2Driver d = h.open(p, true);
        assertEquals(Errno.EIO, readAt(d, 0, 4096));
    }

    /** Flips random bytes of the metadata clusters of a real image; a few hundred seeds. */
    @Test
    void byteFlippingFuzz() throws Exception {
        Path src = dir.resolve("fuzz-src.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", src.toString(), "1M");
        qemuIoCmds(src, "qcow2", "write -P 0x11 0 64k", "write -z 128k 64k", "write -P 0x22 300k 10k");
        ok(qemuImg(), "snapshot", "-c", "s", src.toString());
        qemuIoCmds(src, "qcow2", "write -P 0x33 4k 4k");
        Path comp = dir.resolve("fuzz-comp.qcow2");
        ok(qemuImg(), "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", src.toString(), comp.toString());
        Path ext = dir.resolve("fuzz-ext.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=16384,extended_l2=on,refcount_bits=4", ext.toString(), "1M");
        qemuIoCmds(ext, "qcow2", "write -P 0x11 0 20k", "write -z 64k 8k", "write -P 0x22 300k 3k");
        byte[][] originals = {Files.readAllBytes(src), Files.readAllBytes(comp), Files.readAllBytes(ext)};
        int before = Qcow2Driver.UNEXPECTED.get();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        int seeds = 0;
        int opened = 0;
        for (int seed = 0; seed < 300 && System.nanoTime() < deadline; seed++, seeds++) {
            byte[] img = originals[seed % originals.length].clone();
            Random rnd = new Random(seed);
            int flips = 1 + rnd.nextInt(8);
            int meta = Math.min(img.length, seed % originals.length == 2 ? 6 * 16384 : 6 * 4096); // header, L1, refcount structures, L2s
            for (int i = 0; i < flips; i++) {
                int at = rnd.nextInt(4) == 0 ? rnd.nextInt(img.length) : rnd.nextInt(meta);
                img[at] ^= (byte) (1 << rnd.nextInt(8));
            }
            Path p = dir.resolve("fuzz.qcow2");
            Files.write(p, img);
            Qcow2Driver d;
            try {
                d = h.open(p, rnd.nextBoolean());
            } catch (BlockException e) {
                h.closeAll(false);
                continue;
            }
            opened++;
            exercise(d, rnd, seed);
            h.closeAll(false);
            long grown = Files.size(p) - img.length;
            assertTrue(grown <= (8L << 20), "seed " + seed + ": the file grew by " + grown + " bytes");
        }
        assertEquals(before, Qcow2Driver.UNEXPECTED.get(), "runtime exceptions inside the driver (see the log)");
        assertTrue(seeds >= 100, "fuzzed " + seeds + " seeds");
        assertTrue(opened > 10, "some fuzzed images opened (" + opened + ")");
    }

    /** Every request completes (0 or an errno) or is refused with a BlockException; nothing hangs. */
    void exercise(Qcow2Driver d, Random rnd, int seed) throws Exception {
        int len = 64 * 1024;
        Memory m = NativeBuffers.aligned(len, 4096);
        for (int i = 0; i < 24; i++) {
            long off = (long) rnd.nextInt((int) Math.max(1, d.size() / 512)) * 512;
            int l = (int) Math.min(len, d.size() - off);
            if (l <= 0) continue;
            int kind = rnd.nextInt(6);
            CompletableFuture<Integer> f = new CompletableFuture<>();
            h.iot.execute(() -> {
                try {
                    switch (kind) {
                        case 0, 1, 2 -> d.read(off, NativeBuffers.address(m), l, f::complete);
                        case 3 -> d.write(off, NativeBuffers.address(m), l, rnd.nextBoolean(), f::complete);
                        case 4 -> d.writeZeroes(off, l, true, false, false, f::complete);
                        default -> {
                            BlockStatus s = new BlockStatus();
                            d.status(off, l, s);
                            if (s.length < 1 || s.length > l) throw new AssertionError("status length " + s.length);
                            f.complete(0);
                        }
                    }
                } catch (BlockException e) {
                    f.complete(-e.errno());
                } catch (Throwable t) {
                    f.completeExceptionally(t);
                }
            });
            try {
                f.get(10, TimeUnit.SECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                fail("seed " + seed + ": request " + i + " (kind " + kind + " at " + off + ") hung: " + h.on(d::debugState));
            }
        }
        CompletableFuture<Integer> f = new CompletableFuture<>();
        h.iot.execute(() -> {
            try {
                d.flush(f::complete);
            } catch (BlockException e) {
                f.complete(-e.errno());
            }
        });
        try {
            f.get(10, TimeUnit.SECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            fail("seed " + seed + ": flush hung: " + h.on(d::debugState));
        }
    }
}
