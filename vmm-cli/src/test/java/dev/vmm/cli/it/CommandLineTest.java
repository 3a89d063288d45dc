package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The serve command line (qemu-storage-daemon syntax): rejected command lines exit 1 with one
 * clear line naming the option, before anything listens; --help; SIGTERM; the pidfile.
 */
@Timeout(120)
class CommandLineTest extends PeerTestBase {

    private Path image() {
        return Images.sparse(tmp.resolve("disk.img"), MiB);
    }

    /**
     * Runs a command line that must be rejected and checks: exit 1, a short stderr naming
     * {@code mentions}, no stack trace, no pidfile, nothing listening on {@code port}.
     */
    private void assertRejected(int port, String mentions, String... args) {
        Path pidfile = tmp.resolve("rejected.pid");
        List<String> all = new ArrayList<>(List.of(args));
        all.add("--pidfile");
        all.add(pidfile.toString());
        Run.Result r = VmmProcess.runToExit(all, 30);
        assertEquals(1, r.exit(), r.describe());
        String err = r.stderr().strip();
        assertFalse(err.isEmpty(), "no error message\n" + r.describe());
        assertTrue(err.lines().count() <= 2, "expected one clear line\n" + r.describe());
        assertTrue(err.contains(mentions), "message does not name '" + mentions + "'\n" + r.describe());
        assertFalse(err.contains("Exception") || err.contains("\tat "), "stack trace\n" + r.describe());
        assertFalse(Files.exists(pidfile), "pidfile written for a rejected command line");
        if (port > 0) {
            assertFalse(Net.listening(port), "something listens on " + port);
        }
    }

    @Test
    void unknownKeyIsRejected() {
        int port = Net.freePort();
        assertRejected(port, "bogus",
                "--blockdev", "driver=file,node-name=d,filename=" + image() + ",bogus=1",
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=e,node-name=d");
    }

    @Test
    void missingFileIsRejected() {
        int port = Net.freePort();
        Path missing = tmp.resolve("no-such.img");
        assertRejected(port, missing.toString(),
                "--blockdev", "driver=file,node-name=d,filename=" + missing,
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=e,node-name=d");
    }

    @Test
    void duplicateNodeNameIsRejected() {
        int port = Net.freePort();
        Path img = image();
        assertRejected(port, "dup",
                "--blockdev", "driver=file,node-name=dup,filename=" + img,
                "--blockdev", "driver=file,node-name=dup,filename=" + img,
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=e,node-name=dup");
    }

    @Test
    void duplicateExportIdIsRejected() {
        int port = Net.freePort();
        Path img = image();
        assertRejected(port, "e0",
                "--blockdev", "driver=file,node-name=a,filename=" + img,
                "--blockdev", "driver=file,node-name=b,filename=" + img,
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=e0,node-name=a",
                "--export", "type=nbd,id=e0,node-name=b,name=other");
    }

    @Test
    void exportOfUnknownNodeIsRejected() {
        int port = Net.freePort();
        assertRejected(port, "ghost",
                "--blockdev", "driver=file,node-name=d,filename=" + image(),
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=e,node-name=ghost");
    }

    @Test
    void unparsablePortIsRejected() {
        assertRejected(0, "port",
                "--blockdev", "driver=file,node-name=d,filename=" + image(),
                "--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=notaport99999x",
                "--export", "type=nbd,id=e,node-name=d");
    }

    @Test
    void portInUseIsRejected() throws Exception {
        try (ServerSocket taken = new ServerSocket()) {
            taken.bind(new InetSocketAddress(Net.HOST, 0));
            int port = taken.getLocalPort();
            Path pidfile = tmp.resolve("rejected.pid");
            Run.Result r = VmmProcess.runToExit(List.of(
                    "--blockdev", "driver=file,node-name=d,filename=" + image(),
                    "--nbd-server", Net.inetServer(port),
                    "--export", "type=nbd,id=e,node-name=d",
                    "--pidfile", pidfile.toString()), 30);
            assertEquals(1, r.exit(), r.describe());
            assertTrue(r.stderr().contains("in use"), r.describe());
            assertTrue(r.stderr().strip().lines().count() <= 2, r.describe());
            assertFalse(r.stderr().contains("Exception") || r.stderr().contains("\tat "), r.describe());
            assertFalse(Files.exists(pidfile));
        }
    }

    @Test
    void nbdExportWithoutNbdServerIsRejected() {
        assertRejected(0, "--export",
                "--blockdev", "driver=file,node-name=d,filename=" + image(),
                "--export", "type=nbd,id=e,node-name=d");
    }

    @Test
    void helpDocumentsEveryKey() {
        Peers.beyondQsd("QSD's --help lists options, not their keys");
        Run.Result r = VmmProcess.runToExit(List.of("--help"), 30);
        assertEquals(0, r.exit(), r.describe());
        String help = r.stdout() + r.stderr();
        for (String key : List.of("--blockdev", "--object", "--nbd-server", "--export", "--pidfile",
                "driver", "node-name", "filename", "read-only", "cache.direct", "iothread", "id",
                "addr.type", "addr.host", "addr.port", "addr.path", "max-connections",
                "type", "name", "description", "writable", "inet", "unix")) {
            assertTrue(help.contains(key), "--help does not mention " + key + "\n" + help);
        }
    }

    @Test
    void pidfileHoldsTheServerPid() {
        Disk d = serveDisk(image(), false);
        assertEquals(d.server().pid(), d.server().pidFromFile());
    }

    @Test
    void sigtermWithIdleConnectedClientExitsZeroAndRemovesPidfile() throws Exception {
        Disk d = serveDisk(image(), true);
        try (RawNbd idle = new RawNbd(d.port())) {
            assertEquals(MiB, idle.handshake("disk0"));
            assertEquals(0, d.server().stop(), "exit code after SIGTERM\n" + d.server().stderr());
        }
        assertFalse(Files.exists(d.server().pidfile()), "pidfile left behind");
        assertFalse(Net.listening(d.port()), "still listening after exit");
    }
}
