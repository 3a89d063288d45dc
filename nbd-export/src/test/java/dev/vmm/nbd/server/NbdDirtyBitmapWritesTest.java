package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.testing.QsdPeer;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A writable export with a recording bitmap: NBD writes, write-zeroes and trims through the
 * export mark it (NodeIo), and the client reads the marks back over the same connection as
 * qemu-storage-daemon 7.2 shows them for the same requests. Both with {@code discard=unmap} (vmm's
 * default, not QEMU's): with {@code discard=ignore} neither marks a trim. Needs bm-qmp's NodeIo marking.
 */
class NbdDirtyBitmapWritesTest {
    @TempDir Path dir;
    Daemon daemon;
    Path vmmSock;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        vmmSock = dir.resolve("vmm.sock");
        NbdServerComponent.configure(daemon, KeyValueParser.parse("--nbd-server", "addr.type=unix,addr.path=" + vmmSock, null)).start();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    static final String WRITER = String.join("\n",
            "import nbd, sys",
            "h = nbd.NBD()",
            "h.add_meta_context('qemu:dirty-bitmap:w')",
            "h.connect_uri(sys.argv[1])",
            "h.pwrite(b'x' * 3, 4095)",
            "h.pwrite(b'y' * 65536, 1 << 20)",
            "h.zero(8192, 5 << 20)",
            "h.trim(1 << 20, 9 << 20)",
            "h.pwrite(b'z', h.get_size() - 1)",
            "out = []",
            "def cb(ctx, off, entries, err):",
            "    out.append('%s %d %s' % (ctx, off, list(entries)))",
            "    return 0",
            "h.block_status(h.get_size(), 0, cb)",
            "h.block_status(100, (5 << 20) + 4000, cb, nbd.CMD_FLAG_REQ_ONE)",
            "print('\\n'.join(out))",
            "");

    static String write(Path sock) throws Exception {
        return NbdDirtyBitmapPeersTest.run("/usr/bin/python3", "-c", WRITER, NbdDirtyBitmapPeersTest.uri(sock, "x"));
    }

    @Test
    void writesThroughTheExportMarkItAsQsds() throws Exception {
        Path ours = dir.resolve("ours.raw");
        Path theirs = dir.resolve("theirs.raw");
        for (Path p : List.of(ours, theirs)) {
            try (var f = new java.io.RandomAccessFile(p.toFile(), "rw")) {
                f.setLength(16 << 20);
            }
        }
        BlockNode n = daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=f,discard=unmap,filename=" + ours, null));
        n.home().submit(() -> { n.addBitmap(new DirtyBitmap("w", n.size(), 4096)); return null; }).join();
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=f,name=x,writable=on,bitmaps.0=w", "type"));
        String vmm = write(vmmSock);
        String qsd;
        try (QsdPeer peer = new QsdPeer(dir, "--blockdev", "driver=file,node-name=f,discard=unmap,filename=" + theirs)) {
            peer.qmp("block-dirty-bitmap-add", "{\"node\":\"f\",\"name\":\"w\",\"granularity\":4096}",
                    "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"f\",\"name\":\"x\",\"writable\":true,\"bitmaps\":[\"w\"]}");
            qsd = write(peer.nbdSocket());
        }
        assertEquals(qsd, vmm);
        assertTrue(vmm.contains(", 1,"), vmm);
    }
}
