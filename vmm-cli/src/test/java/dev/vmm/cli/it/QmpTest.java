package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The QMP monitor end to end: {@code vmm serve --qmp} driven by {@code vmm qmp} (a child JVM),
 * an export added over QMP read by nbdinfo, deleted with its BLOCK_EXPORT_DELETED event. The same
 * client and commands against qemu-storage-daemon check our client's wire compatibility
 * (runs whenever qemu-storage-daemon is installed; CI installs it).
 */
@Timeout(120)
class QmpTest extends PeerTestBase {

    /** {@code java ... dev.vmm.cli.Main qmp --socket S ARGS}. */
    private static List<String> qmp(Path socket, String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        String flags = System.getProperty("vmm.jvm.flags", "").strip();
        if (!flags.isEmpty() && !flags.startsWith("${")) cmd.addAll(Arrays.asList(flags.split("\\s+")));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), "dev.vmm.cli.Main", "qmp", "--socket", socket.toString()));
        cmd.addAll(Arrays.asList(args));
        return cmd;
    }

    @Test
    void nbdExportAddedReadAndDeletedThroughQmp() throws Exception {
        Assumptions.assumeFalse(Peers.qsd(), "--qmp is vmm's shorthand; qemu-storage-daemon is covered by sameCommandsAgainstQsd");
        Path dir = socketDir();
        Path mon = dir.resolve("qmp.sock");
        VmmProcess vmm = serve("--object", "iothread,id=iot0", "--qmp", mon.toString());
        assertEquals("rw-------", java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(mon)));
        exerciseExport(mon, mon, dir, Images.sparse(tmp.resolve("disk.img"), 4 * MiB), true);
        // A bad value names the field, exit 1, no stack trace.
        Run.Result bad = Run.cmd(qmp(mon, "nbd-server-start", "addr.type=inet", "addr.data.host=127.0.0.1", "addr.data.port=x")).expect(1);
        assertTrue(bad.stdout().contains("'addr.data.port' must be a number from 0 to 65535, got 'x'"), bad.describe());
        assertFalse(bad.stderr().contains("\tat "), bad.describe());
        // quit: reply, then the same orderly shutdown as SIGTERM (exit 0, socket removed).
        Run.cmd(qmp(mon, "quit")).expect(0);
        for (int i = 0; i < 200 && vmm.isAlive(); i++) Thread.sleep(50);
        assertEquals(0, vmm.stop(), vmm.stderr());
        assertFalse(Files.exists(mon));
    }

    @Test
    void badMonitorOptionsAreOneLineAndExit1() {
        Assumptions.assumeFalse(Peers.qsd(), "vmm's messages");
        String[][] cases = {
            {"--monitor: chardev 'm' does not exist", "--monitor", "chardev=m"},
            {"--chardev: 'server' must be on", "--chardev", "socket,id=m,path=/tmp/x.sock", "--monitor", "m"},
            {"--chardev: 'wait=on' is not supported", "--chardev", "socket,id=m,path=/tmp/x.sock,server=on,wait=on", "--monitor", "m"},
            {"--chardev: chardev 'm' is not used by any --monitor", "--chardev", "socket,id=m,path=/tmp/x.sock,server=on,wait=off"},
            {"--monitor: 'mode' must be one of control, got 'readline'", "--chardev", "socket,id=m,path=/tmp/x.sock,server=on,wait=off",
                "--monitor", "chardev=m,mode=readline"},
            {"--chardev: 'backend' must be one of socket, got 'stdio'", "--chardev", "stdio,id=m", "--monitor", "m"},
        };
        for (String[] c : cases) {
            Run.Result r = VmmProcess.runToExit(Arrays.asList(c).subList(1, c.length), 30);
            assertEquals(1, r.exit(), r.describe());
            assertTrue(r.stderr().strip().equals("vmm: " + c[0]) || r.stderr().strip().startsWith("vmm: " + c[0]), r.describe());
            assertEquals(1, r.stderr().strip().lines().count(), r.describe());
        }
    }

    @Test
    void sameCommandsAgainstQsd() throws Exception {
        Path dir = socketDir();
        Path mon = dir.resolve("qmp.sock");
        Path mon2 = dir.resolve("qmp2.sock"); // QEMU's monitor serves one client at a time
        Process qsd = background(new ProcessBuilder(Peers.require("qemu-storage-daemon"),
                "--chardev", "socket,id=m,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m",
                "--chardev", "socket,id=m2,path=" + mon2 + ",server=on,wait=off", "--monitor", "chardev=m2")
                .redirectOutput(VmmProcess.logDir().resolve("QmpTest-qsd.out").toFile())
                .redirectError(VmmProcess.logDir().resolve("QmpTest-qsd.err").toFile())
                .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null"))).start());
        for (int i = 0; i < 200 && !Files.exists(mon); i++) {
            if (!qsd.isAlive()) fail("qemu-storage-daemon exited with " + qsd.exitValue());
            Thread.sleep(50);
        }
        exerciseExport(mon, mon2, dir, Images.sparse(tmp.resolve("disk.img"), 4 * MiB), false);
        Run.Result bad = Run.cmd(qmp(mon, "x-blockdev-set-iothread", "node-name=disk0", "iothread=nope")).expect(1);
        assertTrue(bad.stderr().contains("vmm qmp: x-blockdev-set-iothread: "), bad.describe());
        Run.cmd(qmp(mon, "quit")).expect(0);
        qsd.waitFor();
    }

    /** blockdev-add, nbd-server-start, block-export-add by script; nbdinfo; block-export-del with its event. */
    private void exerciseExport(Path mon, Path mon2, Path dir, Path image, boolean vmm) throws Exception {
        Path nbd = dir.resolve("nbd.sock");
        Path script = tmp.resolve("setup.qmp");
        Files.writeString(script, String.join("\n",
                "# set up an NBD export",
                "blockdev-add driver=file node-name=disk0 filename=" + image,
                "nbd-server-start addr.type=unix addr.data.path=" + nbd,
                "block-export-add type=nbd id=e0 node-name=disk0 writable=true",
                "query-block-exports",
                ""));
        Run.Result setup = Run.cmd(qmp(mon, "--script", script.toString())).expect(0);
        assertTrue(setup.stdout().contains("\"node-name\":\"disk0\""), setup.describe());
        assertTrue(setup.stdout().contains("{\"summary\":{\"commands\":4,\"errors\":0,\"moves\":0}}"), setup.describe());
        Run.Result size = Run.cmd(Peers.require("nbdinfo"), "--size", Net.unixUri(nbd, "disk0")).expect(0);
        assertEquals(String.valueOf(4 * MiB), size.stdout().strip(), size.describe());
        if (vmm) {
            Run.Result nodes = Run.cmd(qmp(mon, "query-iothreads")).expect(0);
            assertTrue(nodes.stdout().contains("\"id\":\"iot0\""), nodes.describe());
        }
        // Two monitors in one script, and waits for events: the event of a command on one monitor
        // reaches both; a wait consumes it even when it arrived before the wait started; a wait
        // for an event that never comes is an error with the line, after its timeout.
        Path waits = tmp.resolve("waits.qmp");
        Files.writeString(waits, String.join("\n",
                "monitor b " + mon2,
                "@b block-export-add type=nbd id=e1 node-name=disk0 name=e1",
                "block-export-del id=e1",
                "wait-event @b BLOCK_EXPORT_DELETED id=e1 timeout=10s",
                "wait-event BLOCK_EXPORT_DELETED id=e1",
                "wait-event BLOCK_EXPORT_DELETED id=nope timeout=300ms",
                "query-block-exports",
                ""));
        Run.Result w = Run.cmd(qmp(mon, "--script", waits.toString())).expect(1);
        assertTrue(w.stdout().contains("\"monitor\":\"b\""), w.describe());
        assertTrue(w.stdout().contains("{\"line\":4,\"command\":\"wait-event @b BLOCK_EXPORT_DELETED id=e1 timeout=10s\",\"return\":{\"event\":\"BLOCK_EXPORT_DELETED\"}"), w.describe());
        assertTrue(w.stdout().contains("{\"line\":5,\"command\":\"wait-event BLOCK_EXPORT_DELETED id=e1\",\"return\":{\"event\":\"BLOCK_EXPORT_DELETED\"}"), w.describe());
        assertTrue(w.stderr().contains("waits.qmp:6: wait-event BLOCK_EXPORT_DELETED id=nope timeout=300ms: no BLOCK_EXPORT_DELETED event with {\"id\":\"nope\"} within 300 ms"), w.describe());
        assertFalse(w.stdout().contains("\"line\":7"), w.describe()); // stopped at the failed wait
        Run.Result del = Run.cmd(qmp(mon, "block-export-del", "id=e0")).expect(0);
        String[] lines = del.stdout().strip().split("\n");
        assertTrue(lines.length == 2 && lines[0].contains("\"event\":\"BLOCK_EXPORT_DELETED\"") && lines[0].contains("\"data\":{\"id\":\"e0\"}"),
                del.describe());
        assertEquals("{\"return\":{}}", lines[1].strip(), del.describe());
        Run.Result again = Run.cmd(qmp(mon, "block-export-del", "id=e0")).expect(1);
        assertTrue(again.stderr().contains("Export 'e0' is not found"), again.describe());
        Run.Result list = Run.cmd(qmp(mon, "query-block-exports")).expect(0);
        assertEquals("{\"return\":[]}", list.stdout().strip(), list.describe());
    }
}
