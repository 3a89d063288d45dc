package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** nbdcopy in both directions with four connections, compared by checksum. */
@Timeout(120)
class NbdcopyTest extends PeerTestBase {
    private static final long SIZE = 64 * MiB;

    private Path source() {
        Path src = Images.sparse(tmp.resolve("src.img"), SIZE);
        for (int i = 0; i < 16; i++) {
            Images.fill(src, i * 4 * MiB + i * 4096L, (int) (MiB + i * 512), 100 + i);
        }
        return src;
    }

    @Test
    void copyOutOfExportWithFourConnectionsMatchesChecksum() {
        Path src = source();
        Disk d = serveDisk(src, false);
        Path out = tmp.resolve("out.img");
        Run.cmd(Peers.require("nbdcopy"), "--connections=4", d.uri(), out.toString()).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(out));
    }

    @Test
    void copyIntoExportWithFourConnectionsAndFlushMatchesChecksum() {
        Path src = source();
        Path target = Images.sparse(tmp.resolve("target.img"), SIZE);
        Images.fill(target, 30 * MiB, (int) (4 * MiB), 5); // stale data where the source has a hole
        Disk d = serveDisk(target, true);
        Run.cmd(Peers.require("nbdcopy"), "--connections=4", "--flush", src.toString(), d.uri()).expect(0);
        // a second copy back out through the server sees the same bytes as the file
        Path back = tmp.resolve("back.img");
        Run.cmd(Peers.require("nbdcopy"), "--connections=4", d.uri(), back.toString()).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(back), "read back through the export");
        assertEquals(Images.sha256(src), Images.sha256(target), "image file after --flush");
    }
}
