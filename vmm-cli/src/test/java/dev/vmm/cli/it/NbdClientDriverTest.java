package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * End to end: {@code vmm serve --blockdev driver=nbd,...} re-exports an nbdkit memory disk over
 * vmm's own NBD server; nbdcopy reads and writes it through vmm, and reads nbdkit directly to
 * check what reached the remote disk.
 */
@Timeout(180)
class NbdClientDriverTest extends PeerTestBase {
    private static final long SIZE = 32 * MiB;

    @Test
    void reExportOfAnNbdkitDisk() throws Exception {
        Assumptions.assumeFalse(Peers.qsd(), "driver=nbd re-export: the vmm side of the test");
        String nbdkit = Peers.require("nbdkit");
        String nbdcopy = Peers.require("nbdcopy");
        Path dir = socketDir();
        Path kitSock = dir.resolve("kit.sock");
        background(new ProcessBuilder(nbdkit, "--foreground", "--exit-with-parent", "-U", kitSock.toString(), "memory", "size=" + SIZE)
                .redirectErrorStream(true).redirectOutput(tmp.resolve("nbdkit.log").toFile()).start());
        for (int i = 0; i < 2000 && !Files.exists(kitSock); i++) Thread.sleep(10);
        assertTrue(Files.exists(kitSock), "nbdkit listens");
        String kitUri = Net.unixUri(kitSock, "");

        Path src = Images.sparse(tmp.resolve("src.img"), SIZE);
        for (int i = 0; i < 8; i++) Images.fill(src, i * 4 * MiB + i * 4096L, (int) (MiB + i * 512), 7 + i);
        Run.cmd(nbdcopy, src.toString(), kitUri).expect(0);

        int port = Net.freePort();
        serve("--blockdev", "driver=nbd,node-name=remote,server.type=unix,server.path=" + kitSock + ",reconnect-delay=5",
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=remote,writable=on");
        String vmmUri = Net.uri(port, "remote");

        Path out = tmp.resolve("out.img");
        Run.cmd(nbdcopy, "--connections=4", vmmUri, out.toString()).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(out), "read through vmm");

        Path src2 = Images.sparse(tmp.resolve("src2.img"), SIZE);
        for (int i = 0; i < 8; i++) Images.fill(src2, i * 3 * MiB + 512L * i, (int) (MiB / 2 + i * 4096), 100 + i);
        Run.cmd(nbdcopy, "--connections=4", "--flush", src2.toString(), vmmUri).expect(0);
        Path direct = tmp.resolve("direct.img");
        Run.cmd(nbdcopy, kitUri, direct.toString()).expect(0);
        assertEquals(Images.sha256(src2), Images.sha256(direct), "written through vmm, read from nbdkit");
    }
}
