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
        Path mon = dir.resolve("qmp.sock");
        serve("--qmp", mon.toString(), "--blockdev", "driver=nbd,node-name=remote,server.type=unix,server.path=" + kitSock + ",reconnect-delay=5",
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

        // blockdev-add over QMP (server.* become the nested "server" object), and QEMU's names in query-named-block-nodes
        Run.cmd(qmp(mon, "blockdev-add", "driver=nbd", "node-name=q", "read-only=true", "server.type=unix", "server.path=" + kitSock)).expect(0);
        Run.Result nodes = Run.cmd(qmp(mon, "query-named-block-nodes")).expect(0);
        String shown = nodes.stdout();
        assertTrue(shown.contains("\"node-name\":\"remote\"") && shown.contains("\"node-name\":\"q\""), nodes.describe());
        assertTrue(shown.contains("\"drv\":\"nbd\""), nodes.describe());
        assertTrue(shown.contains("\"file\":\"nbd+unix://?socket=" + kitSock + "\""), nodes.describe());
        Run.Result bad = Run.cmd(qmp(mon, "blockdev-add", "driver=nbd", "node-name=nope", "server.type=unix", "server.path=" + dir.resolve("none.sock"))).expect(1);
        assertTrue(bad.stdout().contains("Failed to connect to") || bad.stderr().contains("Failed to connect to"), bad.describe());
    }

    /** {@code java ... dev.vmm.cli.Main qmp --socket S ARGS}, as QmpTest runs it. */
    private static java.util.List<String> qmp(Path socket, String... args) {
        java.util.List<String> cmd = new java.util.ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        String flags = System.getProperty("vmm.jvm.flags", "").strip();
        if (!flags.isEmpty() && !flags.startsWith("${")) cmd.addAll(java.util.Arrays.asList(flags.split("\\s+")));
        cmd.addAll(java.util.List.of("-cp", System.getProperty("java.class.path"), "dev.vmm.cli.Main", "qmp", "--socket", socket.toString()));
        cmd.addAll(java.util.Arrays.asList(args));
        return cmd;
    }
}
