package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.export.ExportCommon;
import dev.vmm.core.options.KeyValueParser;
import java.nio.file.Path;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * An export whose start fails after it claimed its bitmaps (two monitors adding exports of the same
 * NBD name at once: both pass the name check in create, the second start finds the name taken)
 * gives the bitmaps back: the daemon closes an export whose start failed, and the bitmap must not
 * stay busy for ever.
 */
class ExportBitmapsStartTest {
    @TempDir Path dir;
    Daemon daemon;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        NbdServerComponent.configure(daemon, KeyValueParser.parse("--nbd-server", "addr.type=unix,addr.path=" + dir.resolve("nbd.sock"), null))
                .start();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    @Test
    void aFailedStartReleasesTheBitmaps() throws Exception {
        Path img = dir.resolve("a.raw");
        try (var f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        BlockNode n = daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=f,filename=" + img, null));
        DirtyBitmap a = new DirtyBitmap("a", n.size(), 65536);
        DirtyBitmap b = new DirtyBitmap("b", n.size(), 65536);
        n.home().submit(() -> {
            n.addBitmap(a);
            n.addBitmap(b);
            return null;
        }).join();
        NbdExportDriver driver = new NbdExportDriver();
        BlockExport first = driver.create(daemon, new ExportCommon("e1", n, true, null),
                KeyValueParser.parse("--export", "name=x,bitmaps.0=a", null));
        BlockExport second = driver.create(daemon, new ExportCommon("e2", n, true, null),
                KeyValueParser.parse("--export", "name=x,bitmaps.0=b", null));
        first.start();
        assertThrows(Exception.class, second::start, "two exports named x");
        second.close(); // what Daemon.exportAdd does after a failed start
        assertFalse(b.busy(), "bitmap 'b' stays busy although no export uses it");
        assertTrue(a.busy());
        first.close();
        assertFalse(a.busy());
    }
}
