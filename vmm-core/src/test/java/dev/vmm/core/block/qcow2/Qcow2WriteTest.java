package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Harness.ok;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuImg;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuIoCmds;
import static dev.vmm.core.block.qcow2.Qcow2Harness.run;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.testing.NativeBuffers;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Random writes, zero writes and discards through the driver (concurrent batches of
 * non-overlapping requests) against the same operations through qemu-io on a copy: then
 * {@code qemu-img compare} must say identical and {@code qemu-img check} must be clean.
 */
class Qcow2WriteTest {
    @TempDir
    Path dir;
    Qcow2Harness h;

    @BeforeEach
    void start() { h = new Qcow2Harness("qcow2-write"); }

    @AfterEach
    void stop() throws Exception { h.close(); }

    record Op(int kind, long off, int len, int value, boolean unmap) {
        String qemuIo() {
            return switch (kind) {
                case 0 -> "write -P " + value + " " + off + " " + len;
                case 1 -> "write -z " + (unmap ? "-u " : "") + off + " " + len;
                default -> "discard " + off + " " + len;
            };
        }

        boolean overlaps(Op o) { return off < o.off + o.len && o.off < off + len; }
    }

    static List<List<Op>> randomBatches(long seed, long size, int clusterSize, int batches) {
        Random rnd = new Random(seed);
        List<List<Op>> all = new ArrayList<>();
        for (int b = 0; b < batches; b++) {
            List<Op> batch = new ArrayList<>();
            int tries = 0;
            while (batch.size() < 8 && tries++ < 50) {
                int kind = rnd.nextInt(10) < 7 ? 0 : rnd.nextInt(10) < 6 ? 1 : 2;
                long off;
                int len;
                if (rnd.nextBoolean()) {
                    off = (long) rnd.nextInt((int) (size / clusterSize)) * clusterSize;
                    len = clusterSize * (1 + rnd.nextInt(3));
                } else {
                    off = rnd.nextInt((int) size) & ~511L;
                    len = 512 * (1 + rnd.nextInt(Math.max(1, 3 * clusterSize / 512)));
                    if (rnd.nextInt(4) == 0) {
                        off += rnd.nextInt(511);
                        len = 1 + rnd.nextInt(len);
                    }
                }
                len = (int) Math.min(len, size - off);
                if (len <= 0) continue;
                Op op = new Op(kind, off, len, 1 + rnd.nextInt(254), rnd.nextBoolean());
                if (batch.stream().noneMatch(op::overlaps)) batch.add(op);
            }
            all.add(batch);
        }
        return all;
    }

    void applyOurs(Qcow2Driver d, List<List<Op>> batches) throws Exception {
        for (List<Op> batch : batches) {
            List<Memory> bufs = new ArrayList<>();
            CompletableFuture<Void> all = new CompletableFuture<>();
            AtomicInteger errors = new AtomicInteger();
            StringBuilder why = new StringBuilder();
            for (Op op : batch) {
                Memory m = NativeBuffers.aligned(Math.max(op.len, 1), 4096);
                m.setMemory(0, op.len, (byte) op.value);
                bufs.add(m);
            }
            h.iot.execute(() -> {
                int[] left = {batch.size()};
                try {
                    for (int i = 0; i < batch.size(); i++) {
                        Op op = batch.get(i);
                        long a = NativeBuffers.address(bufs.get(i));
                        dev.vmm.core.block.IoCompletion c = err -> {
                            if (err != 0) {
                                errors.incrementAndGet();
                                synchronized (why) { why.append(op).append(" -> ").append(err).append("; "); }
                            }
                            if (--left[0] == 0) all.complete(null);
                        };
                        switch (op.kind) {
                            case 0 -> d.write(op.off, a, op.len, false, c);
                            case 1 -> d.writeZeroes(op.off, op.len, op.unmap, false, false, c);
                            default -> d.discard(op.off, op.len, c);
                        }
                    }
                } catch (BlockException | RuntimeException e) {
                    all.completeExceptionally(e);
                }
            });
            try {
                all.get(30, TimeUnit.SECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                String raw = h.on(() -> {
                    StringBuilder b = new StringBuilder();
                    for (Object o : h.opened) {
                        if (!(o instanceof dev.vmm.core.block.RawFileDriver)) continue;
                        for (String f : new String[] {"activeFlush", "flushWaiters", "flushReady", "inFlight", "writeGen", "flushedGen", "bounceWaiters", "bouncesRun"}) {
                            java.lang.reflect.Field fl = o.getClass().getDeclaredField(f);
                            fl.setAccessible(true);
                            b.append(f).append("=").append(fl.get(o)).append(" ");
                        }
                        Object eng = ((dev.vmm.core.block.RawFileDriver) o).engine();
                        for (java.lang.reflect.Field fl : eng.getClass().getDeclaredFields()) {
                            if (java.lang.reflect.Modifier.isStatic(fl.getModifiers())) continue;
                            fl.setAccessible(true);
                            Object v = fl.get(eng);
                            if (v instanceof Number || v instanceof Boolean || v == null) b.append(fl.getName()).append("=").append(v).append(" ");
                        }
                    }
                    return b.toString();
                });
                throw new AssertionError("hung: " + h.on(d::debugState) + "\nraw: " + raw + "\nbatch " + batch, e);
            }
            assertEquals(0, errors.get(), why.toString());
        }
    }

    void applyQemu(Path img, List<List<Op>> batches) throws Exception {
        List<String> cmds = new ArrayList<>();
        for (List<Op> b : batches) for (Op op : b) cmds.add(op.qemuIo());
        for (int i = 0; i < cmds.size(); i += 200) {
            qemuIoCmds(img, "qcow2", cmds.subList(i, Math.min(cmds.size(), i + 200)).toArray(new String[0]));
        }
    }

    static void assertCheckClean(Path img) throws Exception {
        String[] out = new String[1];
        int rc = run(out, qemuImg(), "check", img.toString());
        assertEquals(0, rc, "qemu-img check " + img + ": " + out[0]);
    }

    static void assertSameContent(Path a, Path b) throws Exception {
        String[] out = new String[1];
        int rc = run(out, qemuImg(), "compare", a.toString(), b.toString());
        assertEquals(0, rc, "qemu-img compare: " + out[0]);
    }

    void randomAgainstQemu(Path img, long seed, int clusterSize, int batches) throws Exception {
        randomAgainstQemu(img, seed, clusterSize, batches, Qcow2Options.defaults(false));
    }

    void randomAgainstQemu(Path img, long seed, int clusterSize, int batches, Qcow2Options opts) throws Exception {
        Path ref = dir.resolve("ref-" + img.getFileName());
        Files.copy(img, ref);
        long size = Long.parseLong(ok(qemuImg(), "info", "--output=json", img.toString())
                .replaceAll("(?s).*\"virtual-size\": (\\d+).*", "$1"));
        List<List<Op>> ops = randomBatches(seed, size, clusterSize, batches);
        Qcow2Driver d = h.open(img, opts);
        applyOurs(d, ops);
        assertEquals(0, h.flush(d));
        h.closeAll(true);
        applyQemu(ref, ops);
        assertCheckClean(img);
        assertSameContent(img, ref);
    }

    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=65536", "cluster_size=4096", "cluster_size=512", "cluster_size=65536,extended_l2=on",
        "cluster_size=16384,extended_l2=on", "cluster_size=65536,compat=0.10", "cluster_size=4096,refcount_bits=1",
        "cluster_size=2097152", "cluster_size=1024,refcount_bits=64"})
    void randomWritesMatchQemu(String opts) throws Exception {
        Path img = dir.resolve("w.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts, img.toString(), "6M");
        qemuIoCmds(img, "qcow2", "write -P 0x55 0 64k", "write -P 0x11 1500k 700k", "write -z 3M 128k");
        int cs = Integer.parseInt(opts.replaceAll(".*cluster_size=(\\d+).*", "$1"));
        randomAgainstQemu(img, opts.hashCode(), cs, 12);
    }

    /** The file child with O_DIRECT (aligned metadata I/O, bounced where a table is smaller than a block) and with aio=threads. */
    @ParameterizedTest
    @ValueSource(strings = {"direct:cluster_size=65536", "direct:cluster_size=512", "direct:cluster_size=65536,extended_l2=on",
        "threads:cluster_size=4096"})
    void randomWritesThroughODirectAndThreads(String mode) throws Exception {
        String opts = mode.substring(mode.indexOf(':') + 1);
        h.direct = mode.startsWith("direct");
        if (mode.startsWith("threads")) h.aio = dev.vmm.core.aio.AioMode.THREADS;
        Path img = dir.resolve("d.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts, img.toString(), "6M");
        qemuIoCmds(img, "qcow2", "write -P 0x55 0 64k", "write -P 0x11 1500k 700k");
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength((f.length() + 4095) / 4096 * 4096); // O_DIRECT needs an aligned size to open read-write
        }
        int cs = Integer.parseInt(opts.replaceAll(".*cluster_size=(\\d+).*", "$1"));
        randomAgainstQemu(img, 5 + mode.hashCode(), cs, 12);
    }

    /** Four-table caches: misses park requests, evictions write back mid-run. */
    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=4096", "cluster_size=512", "cluster_size=16384,extended_l2=on"})
    void randomWritesWithTinyCaches(String opts) throws Exception {
        Path img = dir.resolve("t.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts, img.toString(), "8M");
        qemuIoCmds(img, "qcow2", "write -P 0x55 0 64k", "write -P 0x11 1500k 700k");
        ok(qemuImg(), "snapshot", "-c", "s", img.toString());
        int cs = Integer.parseInt(opts.replaceAll(".*cluster_size=(\\d+).*", "$1"));
        randomAgainstQemu(img, 99 + opts.hashCode(), cs, 16, new Qcow2Options(false, 1, 1, null, true));
    }

    @ParameterizedTest
    @ValueSource(strings = {"compat=1.1", "compat=0.10", "extended_l2=on"})
    void writesOverABackingFile(String opts) throws Exception {
        Path base = dir.resolve("base.raw");
        ok(qemuImg(), "create", "-q", "-f", "raw", base.toString(), "5M");
        qemuIoCmds(base, "raw", "write -P 0x77 0 5M");
        Path img = dir.resolve("top.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts + ",cluster_size=65536", "-b", "base.raw", "-F", "raw",
                img.toString(), "6M");
        qemuIoCmds(img, "qcow2", "write -P 0x01 64k 64k");
        randomAgainstQemu(img, 42 + opts.hashCode(), 65536, 12);
    }

    /** COW from a qcow2 backing node (compressed, other cluster size) into a top image with subclusters. */
    @Test
    void writesOverAQcow2Backing() throws Exception {
        Path src = dir.resolve("src.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", src.toString(), "6M");
        qemuIoCmds(src, "qcow2", "write -P 0x61 0 3M", "write -P 0x62 4M 1M");
        Path base = dir.resolve("base.qcow2");
        ok(qemuImg(), "convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", src.toString(), base.toString());
        Path img = dir.resolve("top2.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536,extended_l2=on", "-b", "base.qcow2", "-F", "qcow2",
                img.toString(), "6M");
        randomAgainstQemu(img, 1234, 65536, 12);
    }

    @Test
    void writesToCompressedAndSnapshottedClusters() throws Exception {
        Path src = dir.resolve("src.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", src.toString(), "4M");
        qemuIoCmds(src, "qcow2", "write -P 0x31 0 4M");
        Path img = dir.resolve("c.qcow2");
        ok(qemuImg(), "convert", "-c", "-O", "qcow2", src.toString(), img.toString());
        ok(qemuImg(), "snapshot", "-c", "s1", img.toString());
        qemuIoCmds(img, "qcow2", "write -P 0x32 1M 64k");
        ok(qemuImg(), "snapshot", "-c", "s2", img.toString());
        randomAgainstQemu(img, 7, 65536, 10);
        // the snapshots are intact
        for (String s : new String[] {"s1", "s2"}) {
            Path a = dir.resolve("a-" + s + ".raw");
            Path b = dir.resolve("b-" + s + ".raw");
            ok(qemuImg(), "convert", "-l", "snapshot.name=" + s, "-O", "raw", img.toString(), a.toString());
            ok(qemuImg(), "convert", "-l", "snapshot.name=" + s, "-O", "raw", dir.resolve("ref-c.qcow2").toString(), b.toString());
            assertArrayEquals(Files.readAllBytes(b), Files.readAllBytes(a), "snapshot " + s);
        }
    }

    /** A crash under lazy refcounts leaves the dirty bit and missing refcounts: a writable open repairs them. */
    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=4096", "cluster_size=65536,extended_l2=on"})
    void dirtyImagesAreRepairedOnWritableOpen(String opts) throws Exception {
        Path img = dir.resolve("dirty.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts + ",lazy_refcounts=on", img.toString(), "4M");
        qemuIoCmds(img, "qcow2", "write -P 0x21 0 64k");
        ok(qemuImg(), "snapshot", "-c", "s", img.toString());
        String[] out = new String[1];
        run(out, Qcow2Harness.qemuIo(), "-f", "qcow2", "-c", "write -P 0x5 0 1M", "-c", "write -P 0x6 2M 100k", "-c", "sigraise 9",
                img.toString());
        assertEquals(2, run(out, qemuImg(), "check", img.toString()), "the crash left refcount errors");
        assertTrue((Qcow2HostileTest.get64(img, 72) & 1) != 0, "dirty bit set");
        byte[] content = Qcow2Harness.rawContent(img, dir);
        Qcow2Driver ro = h.open(img, true);
        assertArrayEquals(content, h.readAll(ro, 1 << 20), "read-only open of a dirty image");
        h.closeAll(false);
        Qcow2Driver d = h.open(img, false);
        assertEquals(0, h.write(d, 3L << 20, new byte[8192], false));
        h.closeAll(true);
        assertEquals(0, Qcow2HostileTest.get64(img, 72) & 1, "dirty bit cleared");
        assertCheckClean(img);
        java.util.Arrays.fill(content, 3 << 20, (3 << 20) + 8192, (byte) 0);
        assertArrayEquals(content, Qcow2Harness.rawContent(img, dir));
    }

    /**
     * Reads concurrent with allocating writes, zero writes and flushes (on other ranges) see
     * exactly what was written before: a model of the disk checks every read; tiny caches make
     * requests park and writebacks run in between.
     */
    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=4096", "cluster_size=65536,extended_l2=on"})
    void concurrentReadsSeeCompletedWrites(String opts) throws Exception {
        Path img = dir.resolve("m.qcow2");
        long size = 4L << 20;
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts, img.toString(), Long.toString(size));
        qemuIoCmds(img, "qcow2", "write -P 0x5 0 256k");
        ok(qemuImg(), "snapshot", "-c", "s", img.toString());
        byte[] model = Qcow2Harness.rawContent(img, dir);
        Qcow2Driver d = h.open(img, new Qcow2Options(false, 1, 1, null, true));
        Random rnd = new Random(opts.hashCode());
        int slots = 16;
        long slot = size / slots;
        for (int round = 0; round < 30; round++) {
            int n = slots;
            Memory[] bufs = new Memory[n];
            int[] kinds = new int[n];
            long[] offs = new long[n];
            int[] lens = new int[n];
            byte[] before = model.clone();
            for (int i = 0; i < n; i++) {
                kinds[i] = rnd.nextInt(3); // 0 read, 1 write, 2 zero
                lens[i] = 1 + rnd.nextInt((int) Math.min(slot, 200_000));
                offs[i] = i * slot + rnd.nextInt((int) (slot - lens[i] + 1));
                bufs[i] = NativeBuffers.aligned(lens[i], 4096);
                if (kinds[i] == 1) {
                    byte v = (byte) (1 + rnd.nextInt(250));
                    bufs[i].setMemory(0, lens[i], v);
                    java.util.Arrays.fill(model, (int) offs[i], (int) offs[i] + lens[i], v);
                } else if (kinds[i] == 2) {
                    java.util.Arrays.fill(model, (int) offs[i], (int) offs[i] + lens[i], (byte) 0);
                }
            }
            CompletableFuture<Void> all = new CompletableFuture<>();
            int[] errs = new int[1];
            boolean flushToo = rnd.nextBoolean();
            h.iot.execute(() -> {
                int[] left = {n + (flushToo ? 1 : 0)};
                dev.vmm.core.block.IoCompletion c = err -> {
                    if (err != 0) errs[0] = err;
                    if (--left[0] == 0) all.complete(null);
                };
                try {
                    for (int i = 0; i < n; i++) {
                        long a = NativeBuffers.address(bufs[i]);
                        switch (kinds[i]) {
                            case 0 -> d.read(offs[i], a, lens[i], c);
                            case 1 -> d.write(offs[i], a, lens[i], false, c);
                            default -> d.writeZeroes(offs[i], lens[i], rnd.nextBoolean(), false, false, c);
                        }
                        if (flushToo && i == n / 2) d.flush(c);
                    }
                } catch (BlockException e) {
                    all.completeExceptionally(e);
                }
            });
            all.get(30, TimeUnit.SECONDS);
            assertEquals(0, errs[0]);
            for (int i = 0; i < n; i++) {
                if (kinds[i] != 0) continue;
                byte[] got = bufs[i].getByteArray(0, lens[i]);
                assertArrayEquals(java.util.Arrays.copyOfRange(before, (int) offs[i], (int) offs[i] + lens[i]), got,
                        "round " + round + " read at " + offs[i] + " +" + lens[i]);
            }
        }
        assertArrayEquals(model, h.readAll(d, 1 << 20));
        h.closeAll(true);
        assertCheckClean(img);
        assertArrayEquals(model, Qcow2Harness.rawContent(img, dir));
    }

    /**
     * A writable open marks persistent bitmaps in_use (QEMU's qcow2_load_dirty_bitmaps); closed
     * without the node's store hook (as after a crash) they stay in_use and the image is clean.
     * Storing is Qcow2BitmapStoreTest's.
     */
    @Test
    void bitmapsAreMarkedInUseWhileWritable() throws Exception {
        Path img = dir.resolve("bm.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", img.toString(), "4M");
        ok(qemuImg(), "bitmap", "--add", img.toString(), "b0");
        qemuIoCmds(img, "qcow2", "write -P 0x12 0 64k");
        assertEquals(1, Qcow2HostileTest.get64(img, 88) & 1, "bitmaps autoclear bit");
        Qcow2Driver d = h.open(img, false);
        assertEquals(0, h.write(d, 1 << 20, new byte[65536], false));
        h.closeAll(true);
        assertEquals(1, Qcow2HostileTest.get64(img, 88), "the extension stays valid");
        assertTrue(ok(qemuImg(), "info", img.toString()).contains("in-use"));
        assertCheckClean(img);
    }

    @Test
    void growsTheRefcountTable() throws Exception {
        // 512-byte clusters with 64-bit refcounts: one refcount block covers 64 clusters (32 KiB),
        // a one-cluster reftable 4 MiB: writing 12 MiB must grow the table (several times).
        Path img = dir.resolve("g.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=512,refcount_bits=64", img.toString(), "16M");
        Path ref = dir.resolve("ref-g.qcow2");
        Files.copy(img, ref);
        Qcow2Driver d = h.open(img, false);
        byte[] data = new byte[256 * 1024];
        for (int i = 0; i < 48; i++) {
            java.util.Arrays.fill(data, (byte) (i + 1));
            assertEquals(0, h.write(d, (long) i * data.length, data, false));
        }
        assertEquals(0, h.flush(d));
        h.closeAll(true);
        List<String> cmds = new ArrayList<>();
        for (int i = 0; i < 48; i++) cmds.add("write -P " + (i + 1) + " " + (long) i * data.length + " " + data.length);
        qemuIoCmds(ref, "qcow2", cmds.toArray(new String[0]));
        assertCheckClean(img);
        assertSameContent(img, ref);
    }
}
