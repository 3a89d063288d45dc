package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.iothread.IOThread;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Which node a bitmap name resolves to, as QEMU 7.2's {@code bdrv_filter_or_cow_bs} walk: through
 * a format node's backing child and a filter's filtered child ({@code copy-before-write}: the
 * fleecing graph's filter), not through a {@code raw} node's or a {@code snapshot-access} node's
 * {@code file} child (qemu-storage-daemon 7.2 says "not found" there); and the busy claim.
 */
class ExportBitmapsTest {
    @TempDir Path tmp;
    IOThread iot;
    final List<RawFileDriver> drivers = new ArrayList<>();

    @BeforeEach
    void start() {
        iot = IOThread.start("iot-bm");
    }

    @AfterEach
    void stop() {
        iot.submit(() -> { for (RawFileDriver d : drivers) d.close(); return null; }).join();
        iot.shutdown(5000);
    }

    BlockNode node(String name, String driver, boolean readOnly, BlockNode.Child... children) throws Exception {
        Path p = tmp.resolve(name);
        try (var f = new java.io.RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        RawFileDriver d = RawFileDriver.open(p, readOnly, false);
        drivers.add(d);
        return new BlockNode(name, driver, d, iot, List.of(children));
    }

    static DirtyBitmap bitmap(BlockNode n, String name) {
        DirtyBitmap b = new DirtyBitmap(name, n.size(), 65536);
        n.addDirtyBitmap(b);
        return b;
    }

    @Test
    void lookupWalksBackingAndFiltersOnly() throws Exception {
        BlockNode base = node("base", "qcow2", true);
        DirtyBitmap inBase = bitmap(base, "b");
        BlockNode proto = node("proto", "file", false);
        DirtyBitmap onProto = bitmap(proto, "p");
        BlockNode top = node("top", "qcow2", false, new BlockNode.Child(BlockNode.FILE, proto, true),
                new BlockNode.Child(BlockNode.BACKING, base, true));
        assertSame(inBase, ExportBitmaps.resolve(top, List.of("b"), false).get(0), "backing: a read-only node's enabled bitmap is fine");
        assertEquals("Bitmap 'p' is not found", assertThrows(ExportBitmaps.Refused.class,
                () -> ExportBitmaps.resolve(top, List.of("p"), true)).getMessage(), "a format node's file child is not searched");

        BlockNode cbw = node("cbw", "copy-before-write", false, new BlockNode.Child(BlockNode.FILE, top, false));
        assertSame(inBase, ExportBitmaps.resolve(cbw, List.of("b"), true).get(0), "through the filter, then backing");
        BlockNode access = node("access", "snapshot-access", true, new BlockNode.Child(BlockNode.FILE, cbw, false));
        assertThrows(ExportBitmaps.Refused.class, () -> ExportBitmaps.resolve(access, List.of("b"), false));
        BlockNode raw = node("raw", "raw", false, new BlockNode.Child(BlockNode.FILE, proto, false));
        assertThrows(ExportBitmaps.Refused.class, () -> ExportBitmaps.resolve(raw, List.of("p"), true));
        assertSame(onProto, ExportBitmaps.resolve(proto, List.of("p"), true).get(0));
    }

    @Test
    void refusalsAndTheBusyClaim() throws Exception {
        BlockNode n = node("n", "file", false);
        DirtyBitmap live = bitmap(n, "live");
        DirtyBitmap off = bitmap(n, "off");
        off.setRecording(false);
        DirtyBitmap bad = bitmap(n, "bad");
        bad.setInconsistent(true);
        assertEquals("Enabled bitmap 'live' incompatible with readonly export",
                assertThrows(ExportBitmaps.Refused.class, () -> ExportBitmaps.resolve(n, List.of("live"), false)).getMessage());
        assertEquals("Bitmap 'bad' is inconsistent and cannot be used",
                assertThrows(ExportBitmaps.Refused.class, () -> ExportBitmaps.resolve(n, List.of("off", "bad"), true)).getMessage());
        List<DirtyBitmap> two = ExportBitmaps.resolve(n, List.of("off", "live", "off"), true);
        ExportBitmaps.claim(two);
        assertTrue(live.busy() && off.busy());
        assertEquals("Bitmap 'off' is currently in use by another operation and cannot be used",
                assertThrows(ExportBitmaps.Refused.class, () -> ExportBitmaps.resolve(n, List.of("off"), false)).getMessage());
        assertThrows(ExportBitmaps.Refused.class, () -> ExportBitmaps.claim(List.of(live)));
        ExportBitmaps.release(two);
        assertFalse(live.busy() || off.busy());
    }
}
