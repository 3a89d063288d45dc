package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Read-only exports: every write-like command gets EPERM and the image stays the same. */
@Timeout(120)
class ReadOnlyExportTest extends PeerTestBase {

    private void assertWritesRefused(String uri) {
        Run.cmd(python("nbd_checks.py", "readonly", "uri=" + uri, "qsd=" + (Peers.qsd() ? 1 : 0))).expect(0);
    }

    private Path image() {
        Path img = Images.sparse(tmp.resolve("disk.img"), 8 * MiB);
        Images.fill(img, 0, (int) (4 * MiB), 11);
        return img;
    }

    @Test
    void exportWithoutWritableOnRefusesWrites() {
        Path img = image();
        String before = Images.sha256(img);
        Disk d = serveDisk(img, false);
        assertWritesRefused(d.uri());
        Run.cmd(Peers.require("nbdinfo"), "--is", "read-only", d.uri()).expect(0);
        assertEquals(0, d.server().stop());
        assertEquals(before, Images.sha256(img));
    }

    @Test
    void readOnlyBlockdevRefusesWrites() {
        Path img = image();
        String before = Images.sha256(img);
        int port = Net.freePort();
        serve("--blockdev", "driver=file,node-name=disk0,filename=" + img + ",read-only=on",
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=disk0");
        assertWritesRefused(Net.uri(port, "disk0"));
        assertEquals(before, Images.sha256(img));
    }

    @Test
    void writableExportOfReadOnlyBlockdevIsRejected() {
        Path img = image();
        int port = Net.freePort();
        Run.Result r = VmmProcess.runToExit(java.util.List.of(
                "--blockdev", "driver=file,node-name=disk0,filename=" + img + ",read-only=on",
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=disk0,writable=on"), 30);
        assertEquals(1, r.exit(), r.describe());
    }
}
