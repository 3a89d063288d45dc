package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Harness.ok;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuImg;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuIoCmds;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStatus;
import java.nio.file.Path;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Reading images made by qemu-img/qemu-io, compared with qemu-img convert -O raw. */
class Qcow2ReadTest {
    @TempDir
    Path dir;
    Qcow2Harness h;

    @BeforeEach
    void start() { h = new Qcow2Harness("qcow2-read"); }

    @AfterEach
    void stop() throws Exception { h.close(); }

    Path create(String name, String opts, String size) throws Exception {
        Path p = dir.resolve(name);
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts, p.toString(), size);
        return p;
    }

    static final String[] PATTERN = {
        "write -P 0x55 0 64k", "write -P 0xaa 100k 3k", "write -z 1M 128k", "write -P 0x11 1500k 700k",
        "write -P 0x22 4095k 2k", "discard 1540k 64k", "write -P 0x33 3M 1k",
    };

    void checkSame(Path img, int chunk) throws Exception {
        byte[] expect = Qcow2Harness.rawContent(img, dir);
        Qcow2Driver d = h.open(img, true);
        assertEquals(expect.length, d.size());
        assertArrayEquals(expect, h.readAll(d, chunk), img + " read in chunks of " + chunk);
    }

    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=512", "cluster_size=4096", "cluster_size=65536", "cluster_size=2097152",
        "cluster_size=65536,extended_l2=on", "cluster_size=16384,extended_l2=on", "cluster_size=65536,compat=0.10",
        "cluster_size=4096,refcount_bits=1", "cluster_size=4096,refcount_bits=64", "cluster_size=1024,refcount_bits=8"})
    void readsWhatQemuWrote(String opts) throws Exception {
        Path img = create("a.qcow2", opts, "5M");
        qemuIoCmds(img, "qcow2", PATTERN);
        checkSame(img, 256 * 1024);
        checkSame(img, 4096 + 512);
    }

    @Test
    void compressedClusters() throws Exception {
        Path src = create("src.qcow2", "cluster_size=65536", "5M");
        qemuIoCmds(src, "qcow2", PATTERN);
        for (String cs : new String[] {"65536", "4096", "2097152"}) {
            Path c = dir.resolve("c" + cs + ".qcow2");
            ok(qemuImg(), "convert", "-c", "-O", "qcow2", "-o", "cluster_size=" + cs, src.toString(), c.toString());
            checkSame(c, 64 * 1024);
            checkSame(c, 1000 * 4 + 96);
        }
    }

    @Test
    void backingChainsAndStatus() throws Exception {
        Path base = dir.resolve("base.raw");
        ok(qemuImg(), "create", "-q", "-f", "raw", base.toString(), "3M");
        qemuIoCmds(base, "raw", "write -P 0x77 0 3M");
        Path mid = dir.resolve("mid.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid.toString(), "4M");
        qemuIoCmds(mid, "qcow2", "write -P 0x01 64k 64k", "write -z 256k 64k");
        Path top = dir.resolve("top.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "-b", "mid.qcow2", "-F", "qcow2", top.toString(), "5M");
        qemuIoCmds(top, "qcow2", "write -P 0x02 8k 4k", "write -z 512k 8k");
        checkSame(top, 128 * 1024);
        checkSame(mid, 7000);
        Qcow2Driver d = h.open(top, true);
        BlockStatus s = new BlockStatus();
        h.on(() -> { d.status(8192, 4096, s); return null; });
        assertEquals(0, s.flags);
        assertEquals(1, s.depth);
        h.on(() -> { d.status(64 * 1024, 64 * 1024, s); return null; });
        assertEquals(0, s.flags);
        assertEquals(2, s.depth, "allocated in the backing qcow2");
        h.on(() -> { d.status(256 * 1024, 64 * 1024, s); return null; });
        assertEquals(BlockStatus.ZERO, s.flags & BlockStatus.ZERO);
        assertEquals(2, s.depth);
        h.on(() -> { d.status(512 * 1024, 8192, s); return null; });
        assertEquals(BlockStatus.HOLE | BlockStatus.ZERO, s.flags, "zero, no data (as QEMU)");
        assertEquals(1, s.depth, "zero subclusters of the top image");
        h.on(() -> { d.status(1 << 20, 4096, s); return null; });
        assertEquals(3, s.depth, "from the raw base");
        h.on(() -> { d.status(4L << 20, 1 << 20, s); return null; });
        assertEquals(BlockStatus.HOLE | BlockStatus.ZERO, s.flags);
        assertEquals(0, s.depth, "beyond every backing file");
        assertEquals(1 << 20, s.length);
    }

    /** As QEMU: zero clusters are HOLE|ZERO at depth 1; data over file holes of a metadata-preallocated image is ZERO. */
    @Test
    void statusOfZeroClustersAndPreallocatedData() throws Exception {
        Path img = create("p.qcow2", "cluster_size=65536,preallocation=metadata", "4M");
        qemuIoCmds(img, "qcow2", "write -P 0x9 0 64k", "write -z 1M 64k");
        Qcow2Driver d = h.open(img, true);
        BlockStatus s = new BlockStatus();
        h.on(() -> { d.status(0, 65536, s); return null; });
        assertEquals(0, s.flags, "written data");
        h.on(() -> { d.status(2 << 20, 65536, s); return null; });
        assertEquals(BlockStatus.ZERO, s.flags, "preallocated, never written: data that reads as zeros");
        assertEquals(1, s.depth);
        h.on(() -> { d.status(1 << 20, 65536, s); return null; });
        assertEquals(BlockStatus.HOLE | BlockStatus.ZERO, s.flags, "zero cluster");
        assertEquals(1, s.depth);
        Path plain = create("q.qcow2", "cluster_size=65536", "4M");
        qemuIoCmds(plain, "qcow2", "write -P 0x9 0 4k");
        Qcow2Driver d2 = h.open(plain, true);
        h.on(() -> { d2.status(0, 65536, s); return null; });
        assertEquals(0, s.flags, "not preallocated: the whole cluster is data, as QEMU says");
        assertEquals(65536, s.length);
    }

    @Test
    void internalSnapshotsReadTheActiveLayer() throws Exception {
        Path img = create("s.qcow2", "cluster_size=4096", "2M");
        qemuIoCmds(img, "qcow2", "write -P 0x10 0 1M");
        ok(qemuImg(), "snapshot", "-c", "snap1", img.toString());
        qemuIoCmds(img, "qcow2", "write -P 0x20 4k 8k");
        checkSame(img, 64 * 1024);
    }

    @Test
    void synchronousDataMethodsAreRefused() throws Exception {
        Path img = create("x.qcow2", "cluster_size=65536", "1M");
        Qcow2Driver d = h.open(img, false);
        BlockException e = assertThrows(BlockException.class, () -> h.on(() -> { d.read(0, 0, 0); return null; }));
        assertTrue(e.getMessage().contains("asynchronous requests only"));
        assertEquals(-1, d.sendfileFd());
    }
}
