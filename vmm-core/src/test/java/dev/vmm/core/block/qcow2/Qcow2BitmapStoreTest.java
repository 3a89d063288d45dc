package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Harness.ok;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuImg;
import static dev.vmm.core.block.qcow2.Qcow2Harness.run;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.testing.QsdPeer;
import dev.vmm.core.testing.Tools;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The write side of persistent bitmaps (QEMU's block/qcow2-bitmap.c) checked with real peers:
 * bitmaps vmm stores are listed by {@code qemu-img info} with QEMU's flags and granularity, the
 * image passes {@code qemu-img check} without leaks, and qemu-storage-daemon 7.2 exports the very
 * bits vmm held ({@code qemu:dirty-bitmap:NAME}); bitmaps QEMU made survive a writable open and
 * close unchanged; a writable open marks them in_use (what a crash leaves); removal frees their
 * clusters; an ignored extension (autoclear clear) is dropped and rewritten fresh; a full disk at
 * close loses the bitmaps with an error line and leaves the image consistent.
 */
class Qcow2BitmapStoreTest {
    @TempDir
    Path dir;
    Qcow2Harness h;

    @BeforeEach
    void start() { h = new Qcow2Harness("qcow2-bitmap-store"); }

    @AfterEach
    void stop() throws Exception { h.close(); }

    Path image(String name, int clusterSize, long size) throws Exception {
        Path p = dir.resolve(name);
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=" + clusterSize, p.toString(), Long.toString(size));
        return p;
    }

    /** "name granularity flags,..." per bitmap, in the image's order, as qemu-img info reports them. */
    static String info(Path img) throws Exception {
        String py = "import json,sys\n"
                + "d=json.load(sys.stdin)['format-specific']['data']\n"
                + "print('|'.join('%s %d %s' % (b['name'], b['granularity'], ','.join(b['flags'])) for b in d.get('bitmaps', [])))\n";
        String json = "\n" + ok(qemuImg(), "info", "-U", "--output=json", img.toString());
        json = json.substring(json.indexOf("{\n")); // after warnings (an ignored extension has one)
        Process p = new ProcessBuilder(Tools.require("python3", "python3"), "-c", py).redirectErrorStream(true).start();
        p.getOutputStream().write(json.getBytes());
        p.getOutputStream().close();
        String out = new String(p.getInputStream().readAllBytes()).trim();
        assertEquals(0, p.waitFor(), out + "\nqemu-img info said:\n" + json);
        return out;
    }

    /** qemu-img check must find nothing: no corruption, no leak. */
    static void checkClean(Path img) throws Exception {
        String[] out = new String[1];
        int rc = run(out, qemuImg(), "check", img.toString());
        assertEquals(0, rc, "qemu-img check " + img + ":\n" + out[0]);
    }

    /** Random sets, as guest writes would: sparse single chunks and longer runs. */
    static void scribble(DirtyBitmap b, long seed, int n) {
        Random r = new Random(seed);
        for (int i = 0; i < n; i++) {
            long len = r.nextBoolean() ? 1 + r.nextInt(4096) : 1 + r.nextInt(8 << 20);
            long off = (long) (r.nextDouble() * (b.size() - 1));
            b.set(off, Math.min(len, b.size() - off));
        }
    }

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
                assertEquals(QsdPeer.show(Qcow2BitmapsTest.extents(e.getValue())), QsdPeer.show(theirs), "bitmap " + e.getKey() + " of " + img);
            }
        }
    }

    /** The node's list (newest first, as BlockNode keeps it), bound to {@code d}. */
    List<DirtyBitmap> bind(Qcow2Driver d) {
        List<DirtyBitmap> node = new CopyOnWriteArrayList<>();
        for (DirtyBitmap b : d.bitmaps()) node.add(0, b);
        d.bindNode("disk0", () -> node);
        return node;
    }

    /** What BlockNode.flushAndClose does: flush, the close hook, close. */
    void storeAndClose(Qcow2Driver d) throws Exception {
        assertEquals(0, h.flush(d));
        h.on(() -> {
            d.storeBitmaps();
            return null;
        });
        h.closeAll(false);
    }

    @Test
    void storedBitmapsAreReadByQemuImgAndQsdWithTheSameBits() throws Exception {
        for (int cs : new int[] {512, 4096, 65536}) {
            Path img = image("store-" + cs + ".qcow2", cs, 192L << 20);
            Qcow2Driver d = h.open(img, false);
            List<DirtyBitmap> node = bind(d);
            Map<String, DirtyBitmap> ours = new TreeMap<>();
            long[] grans = {512, 65536, 1L << 20};
            for (int i = 0; i < grans.length; i++) {
                DirtyBitmap b = new DirtyBitmap("b" + i, d.size(), grans[i]);
                b.setPersistent(true);
                if (i == 2) b.setRecording(false);
                scribble(b, cs * 31L + i, 40);
                node.add(0, b);
                ours.put(b.name(), b);
            }
            DirtyBitmap empty = new DirtyBitmap("empty", d.size(), 65536);
            empty.setPersistent(true);
            node.add(0, empty);
            ours.put("empty", empty);
            DirtyBitmap mem = new DirtyBitmap("memory-only", d.size(), 65536);
            mem.set(0, 4096);
            node.add(0, mem);
            storeAndClose(d);
            // QEMU's order: new bitmaps appended in the node's order (newest first)
            assertEquals("empty 65536 auto|b2 1048576 |b1 65536 auto|b0 512 auto", info(img), "cluster size " + cs);
            checkClean(img);
            assertSameAsQsd(img, ours);
            // and vmm reads back what it stored
            Map<String, DirtyBitmap> back = Qcow2BitmapsTest.byName(h.open(img, true));
            assertEquals(ours.keySet(), back.keySet());
            for (String n : ours.keySet()) {
                assertEquals(QsdPeer.show(Qcow2BitmapsTest.extents(ours.get(n))), QsdPeer.show(Qcow2BitmapsTest.extents(back.get(n))), n);
                assertEquals(ours.get(n).recording(), back.get(n).recording(), n);
            }
            h.closeAll(false);
        }
    }

    @Test
    void qemuBitmapsSurviveAWritableOpenAndClose() throws Exception {
        Path img = image("qemu.qcow2", 65536, 64L << 20);
        ok(qemuImg(), "bitmap", "--add", img.toString(), "a");
        ok(qemuImg(), "bitmap", "--add", "-g", "4096", img.toString(), "b");
        Qcow2BitmapsTest.qemuIoWrites(img, 64L << 20, 30, 7);
        ok(qemuImg(), "bitmap", "--disable", img.toString(), "b");
        ok(qemuImg(), "bitmap", "--add", img.toString(), "c"); // empty
        String before = info(img);
        assertEquals("a 65536 auto|b 4096 |c 65536 auto", before);
        Map<String, String> bits = new TreeMap<>();
        for (DirtyBitmap b : h.open(img, true).bitmaps()) bits.put(b.name(), QsdPeer.show(Qcow2BitmapsTest.extents(b)));
        h.closeAll(false);
        assertFalse(bits.get("a").equals("[]"), "qemu-io writes marked a");

        Qcow2Driver d = h.open(img, false);
        for (DirtyBitmap b : d.bitmaps()) assertFalse(b.inconsistent(), b.name() + " usable on a writable open");
        bind(d);
        // while open: every bitmap in_use in the image, the extension still valid
        assertEquals("a 65536 in-use,auto|b 4096 in-use|c 65536 in-use,auto", info(img));
        storeAndClose(d);
        assertEquals(before, info(img));
        checkClean(img);
        Map<String, DirtyBitmap> after = Qcow2BitmapsTest.byName(h.open(img, true));
        for (String n : bits.keySet()) assertEquals(bits.get(n), QsdPeer.show(Qcow2BitmapsTest.extents(after.get(n))), n);
        h.closeAll(false);
        assertSameAsQsd(img, after);
    }

    @Test
    void aCrashLeavesThemInUseAndTheNextOpenInconsistent() throws Exception {
        Path img = image("crash.qcow2", 65536, 16L << 20);
        ok(qemuImg(), "bitmap", "--add", img.toString(), "kept");
        Qcow2Driver d = h.open(img, false);
        bind(d).get(0).set(0, 1 << 20);
        h.closeAll(false); // the process dies: no flush, no store
        assertEquals("kept 65536 in-use,auto", info(img));
        DirtyBitmap b = h.open(img, true).bitmaps().get(0);
        assertTrue(b.inconsistent());
        h.closeAll(false);
        // a writable open keeps the inconsistent bitmap as it is, and stores the others
        d = h.open(img, false);
        List<DirtyBitmap> node = bind(d);
        assertTrue(node.get(0).inconsistent());
        DirtyBitmap fresh = new DirtyBitmap("fresh", d.size(), 65536);
        fresh.setPersistent(true);
        fresh.set(4 << 20, 100);
        node.add(0, fresh);
        storeAndClose(d);
        assertEquals("kept 65536 in-use,auto|fresh 65536 auto", info(img));
        String[] out = new String[1];
        run(out, qemuImg(), "check", img.toString());
        assertFalse(out[0].contains("ERROR"), out[0]);
    }

    @Test
    void removingStoredBitmapsFreesTheirClusters() throws Exception {
        Path img = image("remove.qcow2", 4096, 32L << 20);
        for (String n : new String[] {"one", "two", "three"}) ok(qemuImg(), "bitmap", "--add", "-g", "512", img.toString(), n);
        Qcow2BitmapsTest.qemuIoWrites(img, 32L << 20, 40, 3);
        Qcow2Driver d = h.open(img, false);
        List<DirtyBitmap> node = bind(d);
        assertEquals(0, h.await(done -> d.removeStored("two", done)));
        node.removeIf(b -> b.name().equals("two"));
        assertEquals(0, h.await(done -> d.removeStored("not-stored", done)), "absence is not an error, as QEMU");
        assertEquals("one 512 in-use,auto|three 512 in-use,auto", info(img));
        storeAndClose(d);
        assertEquals("one 512 auto|three 512 auto", info(img));
        checkClean(img);

        Qcow2Driver d2 = h.open(img, false);
        List<DirtyBitmap> node2 = bind(d2);
        for (String n : new String[] {"one", "three"}) assertEquals(0, h.await(done -> d2.removeStored(n, done)));
        node2.clear();
        assertEquals("", info(img));
        storeAndClose(d2);
        assertEquals("", info(img));
        assertEquals(0, Qcow2HostileTest.get64(img, 88) & 1, "no bitmaps: autoclear bit 0 clear, as QEMU");
        checkClean(img);
    }

    @Test
    void anIgnoredExtensionIsDroppedAndRewrittenFresh() throws Exception {
        Path img = image("ignored.qcow2", 65536, 16L << 20);
        ok(qemuImg(), "bitmap", "--add", img.toString(), "old");
        Qcow2BitmapsTest.put(img, 88, Qcow2HostileTest.get64(img, 88) & ~1L, 8); // a program unaware of bitmaps wrote it
        Qcow2Driver d = h.open(img, false);
        assertTrue(d.bitmaps().isEmpty());
        List<DirtyBitmap> node = bind(d);
        assertEquals("", info(img), "the invalid extension is dropped at the writable open");
        DirtyBitmap b = new DirtyBitmap("new", d.size(), 65536);
        b.setPersistent(true);
        b.set(1 << 20, 1 << 20);
        node.add(0, b);
        storeAndClose(d);
        assertEquals("new 65536 auto", info(img));
        String[] out = new String[1];
        int rc = run(out, qemuImg(), "check", img.toString());
        assertEquals(3, rc, "leaked clusters of the lost bitmap only, as QEMU: " + out[0]);
        assertFalse(out[0].contains("ERROR"), out[0]);
        assertSameAsQsd(img, Map.of("new", b));
    }

    /** A file child whose synchronous writes fail with ENOSPC once {@code full}. */
    static final class FullDisk extends ForwardingBlockDriver {
        volatile boolean full;

        FullDisk(BlockDriver d) { super(d); }

        @Override
        public void write(long o, long a, int l, boolean fua) throws BlockException {
            if (full) throw new BlockException(Errno.ENOSPC, "No space left on device");
            super.write(o, a, l, fua);
        }

        @Override
        public void close() { d.close(); }
    }

    @Test
    void aFullDiskAtCloseLosesTheBitmapsAndKeepsTheImageConsistent() throws Exception {
        Path img = image("full.qcow2", 65536, 16L << 20);
        ok(qemuImg(), "bitmap", "--add", img.toString(), "kept");
        FullDisk[] fd = new FullDisk[1];
        Qcow2Driver d = h.on(() -> {
            fd[0] = new FullDisk(RawFileDriver.open(img, false, false));
            fd[0].attach(h.iot);
            Qcow2Driver q = Qcow2Driver.open(fd[0], Qcow2Driver.readHeader(fd[0]), null, Qcow2Options.defaults(false));
            q.attach(h.iot);
            return q;
        });
        List<DirtyBitmap> node = bind(d);
        DirtyBitmap b = new DirtyBitmap("big", d.size(), 512);
        b.setPersistent(true);
        scribble(b, 5, 50);
        node.add(0, b);
        assertEquals(0, h.flush(d));
        fd[0].full = true;
        h.on(() -> {
            d.storeBitmaps(); // logs "Lost persistent bitmaps during inactivation of node 'disk0': ..."
            d.close();
            fd[0].close();
            return null;
        });
        assertEquals("kept 65536 in-use,auto", info(img));
        String[] out = new String[1];
        run(out, qemuImg(), "check", img.toString());
        assertFalse(out[0].contains("ERROR"), out[0]);
        assertTrue(h.open(img, true).bitmaps().get(0).inconsistent());
    }

    @Test
    void theCloseHookOfTheNodeStoresThem() throws Exception {
        Path img = image("node.qcow2", 65536, 16L << 20);
        Qcow2Driver d = h.open(img, false);
        BlockNode n = new BlockNode("disk0", "qcow2", d, h.iot, List.of());
        d.bindNode(n.name(), n::dirtyBitmaps);
        n.setBeforeClose(d::storeBitmaps);
        DirtyBitmap b = new DirtyBitmap("nightly", d.size(), 65536);
        b.setPersistent(true);
        b.set(3 << 20, 5000);
        n.addDirtyBitmap(b);
        n.flushAndClose(10_000);
        h.closeAll(false);
        assertEquals("nightly 65536 auto", info(img));
        checkClean(img);
        assertSameAsQsd(img, Map.of("nightly", b));
    }

    @Test
    void checkCanStoreAsQemu() throws Exception {
        Path v3 = image("v3.qcow2", 65536, 1L << 20);
        Qcow2Driver d = h.open(v3, false);
        List<DirtyBitmap> node = bind(d);
        assertNull(d.checkCanStore("ok", 65536));
        assertNull(d.checkCanStore("max-granularity", 1L << 31));
        // QSD 7.2: block-dirty-bitmap-add ... persistent=true on the same kind of node
        assertEquals("Can't make bitmap '" + "x".repeat(1024) + "' persistent in 'disk0': Name length exceeds maximum (1023 characters)",
                d.checkCanStore("x".repeat(1024), 65536));
        assertEquals("Can't make bitmap 'g' persistent in 'disk0': Granularity is under minimum (512 bytes)", d.checkCanStore("g", 256));
        for (int i = 0; i < 3; i++) {
            DirtyBitmap b = new DirtyBitmap("p" + i, d.size(), 65536);
            b.setPersistent(true);
            node.add(b);
        }
        assertNull(d.checkCanStore("p3", 65536));
        h.closeAll(false);
        Path v2 = dir.resolve("v2.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2.toString(), "1M");
        Qcow2Driver d2 = h.open(v2, false);
        d2.bindNode("v2", List::of);
        assertEquals("Can't make bitmap 'b' persistent in 'v2': Cannot store dirty bitmaps in qcow2 v2 files", d2.checkCanStore("b", 65536));
    }

    /** The header is rebuilt with the extension: the backing file name moves and stays right. */
    @Test
    void storingKeepsTheBackingFileAndOtherExtensions() throws Exception {
        Path base = image("base.qcow2", 65536, 8L << 20);
        Path top = dir.resolve("top.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString());
        Qcow2Driver d = h.open(top, false);
        List<DirtyBitmap> node = bind(d);
        DirtyBitmap b = new DirtyBitmap("inc", d.size(), 65536);
        b.setPersistent(true);
        b.set(0, 1);
        node.add(0, b);
        storeAndClose(d);
        String text = ok(qemuImg(), "info", top.toString());
        assertTrue(text.contains("backing file: " + base) && text.contains("backing file format: qcow2"), text);
        assertEquals("inc 65536 auto", info(top));
        checkClean(top);
        assertSameAsQsd(top, Map.of("inc", b));
    }

    /** After a crash the inconsistent bitmap is removed (the usual recovery): its clusters are freed too. */
    @Test
    void removingAnInconsistentBitmapFreesItsClusters() throws Exception {
        Path img = image("recover.qcow2", 4096, 16L << 20);
        ok(qemuImg(), "bitmap", "--add", "-g", "512", img.toString(), "lost");
        Qcow2BitmapsTest.qemuIoWrites(img, 16L << 20, 30, 11);
        h.open(img, false);
        h.closeAll(false); // crash
        Qcow2Driver d = h.open(img, false);
        List<DirtyBitmap> node = bind(d);
        assertTrue(node.get(0).inconsistent());
        assertEquals(0, h.await(done -> d.removeStored("lost", done)));
        node.clear();
        storeAndClose(d);
        assertEquals("", info(img));
        checkClean(img);
    }

    /** A hostile in_use bitmap whose table names the L1 table: removal frees nothing it names (leaks, no corruption). */
    @Test
    void removingAHostileInUseBitmapFreesNoMetadata() throws Exception {
        Path img = image("hostile.qcow2", 65536, 16L << 20);
        ok(qemuImg(), "bitmap", "--add", img.toString(), "evil");
        ok(Qcow2Harness.qemuIo(), "-f", "qcow2", "-c", "write -q 0 64k", img.toString());
        Qcow2BitmapsTest.Layout l = Qcow2BitmapsTest.layout(img);
        // in_use (not loaded, not checked at open), table entry 0 -> the L1 table's cluster
        Qcow2BitmapsTest.put(img, l.dirOffset() + 12, Qcow2Bitmaps.BME_FLAG_IN_USE | Qcow2Bitmaps.BME_FLAG_AUTO, 4);
        Qcow2BitmapsTest.put(img, Qcow2HostileTest.get64(img, l.dirOffset()), Qcow2HostileTest.get64(img, 40), 8);
        Qcow2Driver d = h.open(img, false);
        List<DirtyBitmap> node = bind(d);
        assertEquals(0, h.await(done -> d.removeStored("evil", done)));
        node.clear();
        storeAndClose(d);
        assertFalse(d.corrupt());
        String[] out = new String[1];
        int rc = run(out, qemuImg(), "check", img.toString());
        assertEquals(3, rc, "the table and its data leak, nothing is freed: " + out[0]);
        assertFalse(out[0].contains("ERROR"), out[0]);
    }

    /**
     * Crash consistency of the in_use marking and of the store (Qcow2CrashTest's method): every
     * child write and flush recorded; at each flush, all writes before it durable and random
     * subsets of the later ones. Each image must pass qemu-img check with at most leaks, open
     * in vmm with every bitmap checked, and list either the old bitmaps or the stored ones.
     */
    @Test
    void aCrashAtAnyFlushOfOpenOrStoreLeavesOldOrNewBitmapsAndOnlyLeaks() throws Exception {
        Path img = image("crashstore.qcow2", 4096, 8L << 20);
        ok(qemuImg(), "bitmap", "--add", "-g", "512", img.toString(), "a");
        ok(qemuImg(), "bitmap", "--add", img.toString(), "b");
        Qcow2BitmapsTest.qemuIoWrites(img, 8L << 20, 20, 5);
        Path initial = dir.resolve("initial.qcow2");
        java.nio.file.Files.copy(img, initial);
        Qcow2CrashTest.Recorder[] rec = new Qcow2CrashTest.Recorder[1];
        Qcow2Driver d = h.on(() -> {
            RawFileDriver f = RawFileDriver.open(img, false, false);
            f.attach(h.iot);
            h.opened.add(f);
            rec[0] = new Qcow2CrashTest.Recorder(f);
            Qcow2Driver q = Qcow2Driver.open(rec[0], Qcow2Driver.readHeader(rec[0]), null, Qcow2Options.defaults(false));
            q.attach(h.iot);
            h.opened.add(q);
            return q;
        });
        List<DirtyBitmap> node = bind(d);
        h.on(() -> {
            for (DirtyBitmap b : node) scribble(b, 9, 10);
            return null;
        });
        DirtyBitmap c = new DirtyBitmap("c", d.size(), 4096);
        c.setPersistent(true);
        scribble(c, 10, 20);
        node.add(0, c);
        assertEquals(0, h.write(d, 1 << 20, new byte[8192], false));
        storeAndClose(d);
        List<Qcow2CrashTest.Rec> log = rec[0].log;
        String stored = info(img);
        assertEquals("a 512 auto|b 4096 auto|c 4096 auto", stored);
        checkClean(img);
        List<Integer> flushes = new ArrayList<>();
        for (int i = 0; i < log.size(); i++) if (log.get(i).flush()) flushes.add(i);
        assertTrue(flushes.size() >= 6, "open and store flush at each step: " + flushes.size());
        Path crashed = dir.resolve("crashed.qcow2");
        java.util.Set<String> states = new java.util.TreeSet<>();
        for (int k = 0; k <= flushes.size(); k++) {
            int upTo = k == 0 ? 0 : flushes.get(k - 1) + 1;
            int until = k < flushes.size() ? flushes.get(k) : log.size();
            for (int seed = 0; seed < 3; seed++) {
                Qcow2CrashTest.rebuild(initial, crashed, log, upTo, until, new Random(seed * 7919L + k));
                String[] out = new String[1];
                int rc = run(out, qemuImg(), "check", crashed.toString());
                assertTrue(rc == 0 || rc == 3, "crash after flush " + k + " seed " + seed + ": " + out[0]);
                String state = info(crashed);
                states.add(state);
                assertTrue(state.equals("a 512 auto|b 4096 auto") || state.equals("a 512 in-use,auto|b 4096 in-use,auto")
                        || state.equals(stored) || state.isEmpty(), "crash after flush " + k + ": " + state);
                h.open(crashed, true).bitmaps().forEach(b -> b.nextDirty(0, b.size())); // loads and checks every table
                h.closeAll(false);
            }
        }
        assertTrue(states.contains(stored) && states.contains("a 512 in-use,auto|b 4096 in-use,auto"), states.toString());
    }

    /**
     * Hostile images on the write side: the fields of the extension, the directory and a table
     * fuzzed, then a writable open, a removal, a new bitmap and the store at close. Only
     * BlockExceptions (no runtime exception inside the driver), and an image that qemu-img check
     * found free of corruption before stays so (vmm may leak, never corrupt).
     */
    @Test
    void fuzzedImagesOpenedWritableAndStoredNeverGetCorrupted() throws Exception {
        Path src = image("fuzz-src.qcow2", 4096, 8L << 20);
        for (String n : new String[] {"a", "bb", "ccc"}) ok(qemuImg(), "bitmap", "--add", "--granularity", "512", src.toString(), n);
        Qcow2BitmapsTest.qemuIoWrites(src, 8L << 20, 20, 7);
        Qcow2BitmapsTest.Layout l = Qcow2BitmapsTest.layout(src);
        long table = Qcow2HostileTest.get64(src, l.dirOffset());
        byte[] orig = java.nio.file.Files.readAllBytes(src);
        int before = Qcow2Driver.UNEXPECTED.get();
        int stored = 0;
        for (int seed = 0; seed < 120; seed++) {
            Random r = new Random(seed);
            byte[] img = orig.clone();
            // half the time one bitmap is in_use (as after a crash): its table is not checked at
            // open, only before its clusters are freed
            if (r.nextBoolean()) img[(int) l.dirOffset() + 32 * r.nextInt(3) + 15] |= Qcow2Bitmaps.BME_FLAG_IN_USE;
            int flips = 1 + r.nextInt(2);
            for (int i = 0; i < flips; i++) {
                long region = switch (r.nextInt(3)) {
                    case 0 -> l.ext() + r.nextInt(24);
                    case 1 -> l.dirOffset() + r.nextInt((int) l.dirSize());
                    default -> table + r.nextInt(64);
                };
                img[(int) region] ^= (byte) (1 << r.nextInt(8));
            }
            Path p = dir.resolve("fuzz.qcow2");
            java.nio.file.Files.write(p, img);
            String[] out = new String[1];
            int rcBefore = run(out, qemuImg(), "check", p.toString());
            Qcow2Driver d;
            try {
                d = h.open(p, false);
            } catch (BlockException e) {
                h.closeAll(false);
                continue;
            }
            List<DirtyBitmap> node = bind(d);
            if (!node.isEmpty()) {
                String victim = node.get(r.nextInt(node.size())).name();
                h.await(done -> d.removeStored(victim, done));
                node.removeIf(b -> b.name().equals(victim));
            }
            DirtyBitmap b = new DirtyBitmap("new", d.size(), 4096);
            b.setPersistent(true);
            scribble(b, seed, 5);
            node.add(0, b);
            storeAndClose(d);
            stored++;
            int rc = run(out, qemuImg(), "check", p.toString());
            if (rcBefore == 0 || rcBefore == 3) assertTrue(rc == 0 || rc == 3, "seed " + seed + ": " + out[0]);
        }
        assertEquals(before, Qcow2Driver.UNEXPECTED.get(), "runtime exceptions inside the driver (see the log)");
        assertTrue(stored > 20, "stored " + stored);
    }
}
