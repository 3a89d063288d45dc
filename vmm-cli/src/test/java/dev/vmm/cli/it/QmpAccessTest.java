package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.testing.TestCertificates;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Access control through QMP: TLS credentials added, used by nbd-server-start and protected from
 * object-del while the server runs; a writable export of a read-only node refused.
 */
@Timeout(120)
class QmpAccessTest extends PeerTestBase {

    private static List<String> qmp(Path socket, String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        String flags = System.getProperty("vmm.jvm.flags", "").strip();
        if (!flags.isEmpty() && !flags.startsWith("${")) cmd.addAll(Arrays.asList(flags.split("\\s+")));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), "dev.vmm.cli.Main", "qmp", "--socket", socket.toString()));
        cmd.addAll(Arrays.asList(args));
        return cmd;
    }

    private Path monitor() {
        Assumptions.assumeFalse(Peers.qsd(), "--qmp is vmm's shorthand");
        Path mon = socketDir().resolve("qmp.sock");
        serve("--qmp", mon.toString());
        return mon;
    }

    @Test
    void tlsCredentialsThroughQmpAndObjectDelWhileInUse() throws Exception {
        TestCertificates ca = TestCertificates.createCa(tmp.resolve("pki"), "vmm test CA");
        Path serverDir = ca.serverDir("server", TestCertificates.KeyFormat.SEC1_EC);
        Path clientDir = ca.clientDir("client");
        Path mon = monitor();
        Path img = Images.sparse(tmp.resolve("disk.img"), 4 * MiB);
        int port = Net.freePort();
        Run.Result bad = Run.cmd(qmp(mon, "object-add", "qom-type=tls-creds-x509", "id=tls0", "endpoint=server", "dir=" + tmp.resolve("nope"))).expect(1);
        assertTrue(bad.stderr().contains("no such directory") && !bad.stderr().contains("\tat "), bad.describe());
        Run.cmd(qmp(mon, "object-add", "qom-type=tls-creds-x509", "id=tls0", "endpoint=server", "dir=" + serverDir)).expect(0);
        Run.cmd(qmp(mon, "blockdev-add", "driver=file", "node-name=disk0", "filename=" + img)).expect(0);
        Run.cmd(qmp(mon, "nbd-server-start", "addr.type=inet", "addr.data.host=" + Net.HOST, "addr.data.port=" + port, "tls-creds=tls0")).expect(0);
        Run.cmd(qmp(mon, "block-export-add", "type=nbd", "id=e0", "node-name=disk0")).expect(0);
        String uri = "nbds://" + Net.HOST + ":" + port + "/disk0?tls-certificates=" + clientDir;
        assertEquals(String.valueOf(4 * MiB), Run.cmd(Peers.require("nbdinfo"), "--size", uri).expect(0).stdout().strip());
        Run.cmd(Peers.require("nbdinfo"), Net.uri(port, "disk0")).expect(1);
        Run.Result inUse = Run.cmd(qmp(mon, "object-del", "id=tls0")).expect(1);
        assertTrue(inUse.stderr().contains("object 'tls0' is in use by the NBD server, can not be deleted"), inUse.describe());
        Run.cmd(qmp(mon, "nbd-server-stop")).expect(0);
        Run.cmd(qmp(mon, "object-del", "id=tls0")).expect(0);
        Run.Result gone = Run.cmd(qmp(mon, "nbd-server-start", "addr.type=inet", "addr.data.host=" + Net.HOST, "addr.data.port=" + port, "tls-creds=tls0")).expect(1);
        assertTrue(gone.stderr().contains("No TLS credentials with id 'tls0'"), gone.describe());
    }

    @Test
    void writableExportOfReadOnlyNodeIsRefused() {
        Path mon = monitor();
        Path img = Images.sparse(tmp.resolve("disk.img"), 4 * MiB);
        Run.cmd(qmp(mon, "blockdev-add", "driver=file", "node-name=disk0", "filename=" + img, "read-only=true")).expect(0);
        Run.cmd(qmp(mon, "nbd-server-start", "addr.type=unix", "addr.data.path=" + socketDir().resolve("nbd.sock"))).expect(0);
        Run.Result r = Run.cmd(qmp(mon, "block-export-add", "type=nbd", "id=e0", "node-name=disk0", "writable=true")).expect(1);
        assertTrue(r.stderr().contains("'writable=on' but block node 'disk0' is read-only"), r.describe());
        assertFalse(r.stderr().contains("\tat "), r.describe());
        Run.Result list = Run.cmd(qmp(mon, "query-block-exports")).expect(0);
        assertEquals("{\"return\":[]}", list.stdout().strip(), list.describe());
        Run.cmd(qmp(mon, "block-export-add", "type=nbd", "id=e0", "node-name=disk0")).expect(0); // read-only is fine
    }
}
