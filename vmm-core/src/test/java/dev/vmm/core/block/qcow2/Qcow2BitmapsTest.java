package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Harness.ok;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuImg;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuIo;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.testing.QsdPeer;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Persistent bitmaps read from qcow2 images written by QEMU (qemu-img bitmap, qemu-io through
 * the block layer, qemu-storage-daemon over QMP and NBD): every bitmap's dirty extents equal what
 * qemu-storage-daemon 7.2 exports as {@code qemu:dirty-bitmap:NAME} for the same image; an
 * image left by a SIGKILLed daemon loads its bitmap as inconsistent; crafted and fuzzed
 * directories and tables are refused with a BlockException naming the problem.
 */
class Qcow2BitmapsTest {
    @TempDir
    Path dir;
    Qcow2Harness h;

    @BeforeEach
    void start() { h = new Qcow2Harness("qcow2-bitmaps"); }

    @AfterEach
    void stop() throws Exception { h.close(); }

    /** The dirty extents of {@code b}, merged when adjacent, clipped to the disk. */
    static List<long[]> extents(DirtyBitmap b) {
        List<long[]> out = new ArrayList<>();
        for (long off = b.nextDirty(0, b.size()); off >= 0; ) {
            long clean = b.nextClean(off, b.size());
            long end = clean < 0 ? b.size() : clean;
            QsdPeer.addExtent(out, off, end - off);
            off = clean < 0 ? -1 : b.nextDirty(end, b.size());
        }
        return out;
    }

    static Map<String, DirtyBitmap> byName(Qcow2Driver d) {
        Map<String, DirtyBitmap> m = new TreeMap<>();
        for (DirtyBitmap b : d.bitmaps()) m.put(b.name(), b);
        return m;
    }

    /** Compares each bitmap's extents with qemu-storage-daemon's NBD export of the same image. */
    void assertSameAsQsd(Path img, Map<String, DirtyBitmap> ours) throws Exception {
        List<String> args = new ArrayList<>(List.of("--blockdev", "file,node-name=f,filename=" + img + ",read-only=on",
                "--blockdev", "qcow2,node-name=q,file=f,read-only=on"));
        StringBuilder export = new StringBuilder("nbd,id=e,node-name=q,name=q");
        int i = 0;
        for (String name : ours.keySet()) export.append(",bitmaps.").append(i++).append('=').append(name);
        args.addAll(List.of("--export", export.toString()));
        try (QsdPeer qsd = new QsdPeer(dir, args.toArray(String[]::new))) {
            for (Map.Entry<String, DirtyBitmap> e : ours.entrySet()) {
                List<long[]> theirs = QsdPeer.nbdMapSet(qsd.nbdUri("q"), "qemu:dirty-bitmap:" + e.getKey());
                List<long[]> mine = extents(e.getValue());
                assertEquals(QsdPeer.show(theirs), QsdPeer.show(mine), "bitmap " + e.getKey() + " of " + img);
            }
        }
    }

    Path image(String name, int clusterSize, long size) throws Exception {
        Path p = dir.resolve(name);
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=" + clusterSize, p.toString(), Long.toString(size));
        return p;
    }

    /** Random writes through qemu-io (QEMU's block layer marks and stores the enabled bitmaps). */
    static void qemuIoWrites(Path img, long size, int n, long seed) throws Exception {
        Random r = new Random(seed);
        List<String> cmd = new ArrayList<>(List.of(qemuIo(), "-f", "qcow2"));
        for (int i = 0; i < n; i++) {
            long len = 512L * (1 + r.nextInt(r.nextBoolean() ? 8 : 2048));
            long off = 512L * r.nextLong(size / 512 - len / 512);
            cmd.addAll(List.of("-c", "write -q " + off + " " + len));
        }
        cmd.add(img.toString());
        ok(cmd.toArray(String[]::new));
    }

    @Test
    void bitmapsMadeByQemuImgAndQemuIoEqualQsdExports() throws Exception {
        for (int cs : new int[] {65536, 4096, 512}) {
            long size = (cs == 512 ? 40L << 20 : 100L << 20) + 3 * 512; // a partial last chunk
            Path img = image("q" + cs + ".qcow2", cs, size);
            ok(qemuImg(), "bitmap", "--add", img.toString(), "default");
            ok(qemuImg(), "bitmap", "--add", "--granularity", "512", img.toString(), "fine");
            ok(qemuImg(), "bitmap", "--add", "--granularity", "4096", img.toString(), "g4k");
            ok(qemuImg(), "bitmap", "--add", "--granularity", "16M", img.toString(), "coarse");
            ok(qemuImg(), "bitmap", "--add", "--disable", img.toString(), "off");
            qemuIoWrites(img, size, 40, cs);
            ok(qemuImg(), "bitmap", "--add", "--granularity", "65536", img.toString(), "merged");
            ok(qemuImg(), "bitmap", "--merge", "fine", img.toString(), "merged");
            ok(qemuImg(), "bitmap", "--disable", img.toString(), "fine");
            qemuIoWrites(img, size, 10, cs + 1);
            Map<String, DirtyBitmap> ours = byName(h.open(img, true));
            assertEquals(List.of("coarse", "default", "fine", "g4k", "merged", "off"), new ArrayList<>(ours.keySet()));
            for (DirtyBitmap b : ours.values()) {
                assertTrue(b.persistent());
                assertFalse(b.inconsistent() || b.busy());
                assertEquals(!b.name().equals("off") && !b.name().equals("fine"), b.recording(), b.name());
                assertEquals(size, b.size());
            }
            assertEquals(512, ours.get("fine").granularity());
            assertEquals(Math.max(4096, cs), ours.get("default").granularity()); // QEMU's default: the cluster size, at least 4 KiB
            assertEquals(16L << 20, ours.get("coarse").granularity());
            assertEquals(0, ours.get("off").count());
            assertTrue(ours.get("fine").count() > 0 && ours.get("merged").count() >= ours.get("fine").count());
            assertSameAsQsd(img, ours);
            h.closeAll(false);
        }
    }

    @Test
    void bitmapAddedOverQmpAndWrittenOverNbdEqualsQsdExport() throws Exception {
        long size = 64L << 20;
        Path img = image("qmp.qcow2", 65536, size);
        try (QsdPeer qsd = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + img,
                "--blockdev", "qcow2,node-name=q,file=f", "--export", "nbd,id=e,node-name=q,name=q,writable=on")) {
            qsd.qmp("block-dirty-bitmap-add", "{\"node\":\"q\",\"name\":\"bk\",\"persistent\":true,\"granularity\":8192}",
                    "block-dirty-bitmap-add", "{\"node\":\"q\",\"name\":\"bk2\",\"persistent\":true,\"disabled\":true}");
            ok(qemuIo(), "-f", "raw", "-c", "write -q 0 1", "-c", "write -q 100000 300000", "-c", "write -q 63M 1M",
                    qsd.nbdUri("q"));
        }
        Map<String, DirtyBitmap> ours = byName(h.open(img, true));
        assertEquals(8192 + (399999 / 8192 - 100000 / 8192 + 1) * 8192L + (1 << 20), ours.get("bk").count());
        assertFalse(ours.get("bk2").recording());
        assertEquals(0, ours.get("bk2").count());
        assertSameAsQsd(img, ours);
    }

    @Test
    void bitmapOfAKilledDaemonIsInconsistent() throws Exception {
        Path img = image("killed.qcow2", 65536, 16L << 20);
        ok(qemuImg(), "bitmap", "--add", img.toString(), "kept");
        QsdPeer qsd = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + img,
                "--blockdev", "qcow2,node-name=q,file=f", "--export", "nbd,id=e,node-name=q,name=q,writable=on");
        try {
            qsd.qmp("block-dirty-bitmap-add", "{\"node\":\"q\",\"name\":\"crash\",\"persistent\":true}");
            ok(qemuIo(), "-f", "raw", "-c", "write -q 1M 64k", qsd.nbdUri("q"));
            qsd.kill(); // SIGKILL: "kept" (loaded at open) stays in_use in the image
        } finally {
            qsd.close();
        }
        Map<String, DirtyBitmap> ours = byName(h.open(img, true));
        // "crash" was only in memory: gone; "kept" was in_use on disk: inconsistent, empty
        assertEquals(List.of("kept"), new ArrayList<>(ours.keySet()));
        DirtyBitmap kept = ours.get("kept");
        assertTrue(kept.inconsistent());
        assertFalse(kept.recording()); // QEMU disables an inconsistent bitmap
        assertEquals(0, kept.count());
    }

    // ================================================================ hostile images

    /** Offsets of the bitmaps extension's data, the directory and the first entry's table. */
    record Layout(long ext, long dirOffset, long dirSize, long table) {}

    static Layout layout(Path p) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "r")) {
            f.seek(100);
            long off = f.readInt();
            while (true) {
                f.seek(off);
                int type = f.readInt();
                int len = f.readInt();
                if (type == 0) throw new AssertionError("no bitmaps extension");
                if (type == Qcow2Format.QCOW2_EXT_MAGIC_BITMAPS) {
                    f.seek(off + 8 + 8);
                    long size = f.readLong();
                    long dirOff = f.readLong();
                    f.seek(dirOff);
                    return new Layout(off + 8, dirOff, size, f.readLong());
                }
                off += 8 + ((len + 7) & ~7);
            }
        }
    }

    static void put(Path p, long off, long v, int bytes) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.seek(off);
            for (int i = bytes - 1; i >= 0; i--) f.write((int) (v >>> (8 * i)));
        }
    }

    /** A 4 MiB image with one bitmap "b" (granularity 64 KiB) with the first cluster dirty. */
    Path oneBitmap() throws Exception {
        Path p = image("h-" + System.nanoTime() + ".qcow2", 65536, 4L << 20);
        ok(qemuImg(), "bitmap", "--add", p.toString(), "b");
        ok(qemuIo(), "-f", "qcow2", "-c", "write -q 0 4k", p.toString());
        return p;
    }

    interface Patch { void apply(Path p, Layout l) throws Exception; }

    void refused(String expect, Patch patch) throws Exception {
        Path p = oneBitmap();
        patch.apply(p, layout(p));
        int before = Qcow2Driver.UNEXPECTED.get();
        BlockException e = assertThrows(BlockException.class, () -> h.open(p, true), expect);
        assertTrue(e.getMessage().contains(expect), "expected '" + expect + "' in: " + e.getMessage());
        assertEquals(before, Qcow2Driver.UNEXPECTED.get());
        h.closeAll(false);
    }

    @Test
    void craftedExtensionsAndDirectoriesAreRefusedWithQemusWords() throws Exception {
        refused("found bitmaps extension with zero bitmaps", (p, l) -> put(p, l.ext(), 0, 4));
        refused("exceeding the QEMU supported maximum of 65535", (p, l) -> put(p, l.ext(), 65536, 4));
        refused("bitmaps_ext: Reserved field is not zero", (p, l) -> put(p, l.ext() + 4, 1, 4));
        refused("exceeds the maximum supported size", (p, l) -> put(p, l.ext() + 8, 64L << 20, 8));
        refused("bitmaps_ext: invalid bitmap directory offset", (p, l) -> put(p, l.ext() + 16, l.dirOffset() + 8, 8));
        refused("bitmap directory is outside the image", (p, l) -> put(p, l.ext() + 16, 1L << 40, 8));
        refused("Requested bitmap directory size is zero", (p, l) -> put(p, l.ext() + 8, 0, 8));
        refused("bitmap directory overlaps active L1 table", (p, l) -> put(p, l.ext() + 16, Qcow2HostileTest.get64(p, 40), 8));
        refused("Less bitmaps found than specified in header extension", (p, l) -> put(p, l.ext(), 2, 4));
        refused("Broken bitmap directory", (p, l) -> put(p, l.ext() + 8, l.dirSize() - 8, 8));
        refused("Broken bitmap directory", (p, l) -> put(p, l.dirOffset() + 18, 1023, 2));
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 12, 1 << 2, 4)); // extra_data_compatible
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 12, 1 << 31, 4));
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 16, 2, 1)); // type
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 17, 8, 1)); // granularity
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 17, 32, 1));
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 8, 0, 4)); // table size
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 8, 0x8000001, 4));
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset(), l.table() + 512, 8)); // unaligned
        refused("doesn't satisfy the constraints", (p, l) -> put(p, l.dirOffset() + 18, 0, 2)); // empty name
        refused("Bitmap extra data is not supported", (p, l) -> {
            put(p, l.dirOffset() + 20, 8, 4);
            put(p, l.ext() + 8, l.dirSize() + 8, 8);
            try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
                f.setLength(Math.max(f.length(), l.dirOffset() + l.dirSize() + 8));
            }
        });
        refused("bitmap directory is outside the image", (p, l) -> put(p, l.ext() + 16, 0, 8));
    }

    @Test
    void craftedTablesAreRefused() throws Exception {
        refused("bitmap 'b' table is outside the image", (p, l) -> put(p, l.dirOffset(), 1L << 40, 8));
        refused("bitmap 'b' table overlaps refcount table", (p, l) -> put(p, l.dirOffset(), Qcow2HostileTest.get64(p, 48), 8));
        refused("bitmap 'b' table overlaps the bitmap directory", (p, l) -> put(p, l.dirOffset(), l.dirOffset(), 8));
        refused("Could not read bitmap 'b' from image", (p, l) -> put(p, l.dirOffset() + 8, 2, 4)); // wrong table size
        refused("Could not read bitmap_table table from image for bitmap 'b'", (p, l) -> put(p, l.table(), 1L << 1, 8));
        refused("Could not read bitmap_table table from image for bitmap 'b'", (p, l) -> put(p, l.table(), 1L << 63, 8));
        refused("Could not read bitmap_table table from image for bitmap 'b'", (p, l) -> put(p, l.table(), 65536 * 3 + 1, 8));
        refused("Could not read bitmap_table table from image for bitmap 'b'", (p, l) -> put(p, l.table(), 65536 * 3 + 512, 8));
        refused("data cluster (table entry 0) is outside the image", (p, l) -> put(p, l.table(), 1L << 40, 8));
        refused("data cluster (table entry 0) overlaps its bitmap table", (p, l) -> put(p, tableOffset(p, l), tableOffset(p, l), 8));
    }

    static long tableOffset(Path p, Layout l) throws Exception {
        return Qcow2HostileTest.get64(p, l.dirOffset());
    }

    @Test
    void flagsAndSpecialEntriesAsQemuReadsThem() throws Exception {
        // in_use set by hand: inconsistent, data not read (even a bad table is not looked at)
        Path p = oneBitmap();
        Layout l = layout(p);
        put(p, l.dirOffset() + 12, 3, 4);
        put(p, tableOffset(p, l), 1L << 1, 8);
        DirtyBitmap b = h.open(p, true).bitmaps().get(0);
        assertTrue(b.inconsistent() && !b.recording());
        assertEquals(0, b.count());
        h.closeAll(false);
        // table entry 0 with bit 0: all ones
        p = oneBitmap();
        l = layout(p);
        put(p, tableOffset(p, l), 1, 8);
        b = h.open(p, true).bitmaps().get(0);
        assertEquals(4L << 20, b.count());
        h.closeAll(false);
        // autoclear bit 0 clear: the extension is ignored, as QEMU
        p = oneBitmap();
        put(p, 88, 0, 8);
        assertTrue(h.open(p, true).bitmaps().isEmpty());
        h.closeAll(false);
    }

    /** A writable open loads them usable and marks them in_use in the image (QEMU's qcow2_load_dirty_bitmaps). */
    @Test
    void writableOpenLoadsThemUsableAndMarksThemInUse() throws Exception {
        Path p = oneBitmap();
        DirtyBitmap b = h.open(p, false).bitmaps().get(0);
        assertFalse(b.inconsistent());
        assertTrue(b.recording());
        assertEquals(65536, b.count());
        assertEquals(1, Qcow2HostileTest.get64(p, 88) & 1, "autoclear bit kept: the extension stays valid");
        assertEquals(Qcow2Bitmaps.BME_FLAG_IN_USE | Qcow2Bitmaps.BME_FLAG_AUTO, (int) (Qcow2HostileTest.get64(p, layout(p).dirOffset() + 8) & 0xffffffffL));
        h.closeAll(true); // no close hook here: they stay in_use, as after a crash
        assertTrue(h.open(p, true).bitmaps().get(0).inconsistent());
    }

    @Test
    void fuzzedDirectoriesAndTablesNeverThrowAnythingElse() throws Exception {
        Path src = image("fuzz-src.qcow2", 4096, 8L << 20);
        for (String n : new String[] {"a", "bb", "ccc"}) ok(qemuImg(), "bitmap", "--add", "--granularity", "512", src.toString(), n);
        qemuIoWrites(src, 8L << 20, 20, 7);
        Layout l = layout(src);
        long table = tableOffset(src, l);
        byte[] orig = Files.readAllBytes(src);
        int before = Qcow2Driver.UNEXPECTED.get();
        int opened = 0;
        int refused = 0;
        for (int seed = 0; seed < 300; seed++) {
            Random r = new Random(seed);
            byte[] img = orig.clone();
            int flips = 1 + r.nextInt(4);
            for (int i = 0; i < flips; i++) {
                long region = switch (r.nextInt(3)) {
                    case 0 -> l.ext() + r.nextInt(24);
                    case 1 -> l.dirOffset() + r.nextInt((int) l.dirSize());
                    default -> table + r.nextInt(64);
                };
                img[(int) region] ^= (byte) (1 << r.nextInt(8));
            }
            Path p = dir.resolve("fuzz.qcow2");
            Files.write(p, img);
            try {
                h.open(p, true).bitmaps().forEach(b -> b.nextDirty(0, b.size()));
                opened++;
            } catch (BlockException e) {
                refused++;
            }
            h.closeAll(false);
        }
        assertEquals(before, Qcow2Driver.UNEXPECTED.get(), "runtime exceptions inside the driver (see the log)");
        assertTrue(opened > 10 && refused > 10, "opened " + opened + ", refused " + refused);
    }
}
