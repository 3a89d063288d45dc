package dev.vmm.cli.demo;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.guest.TestGuests;
import dev.vmm.cli.it.Net;
import dev.vmm.cli.it.Peers;
import dev.vmm.cli.it.Run;
import dev.vmm.nbd.client.NbdClient;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.UnixDomainSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * {@code vmm demo} as a user runs it: a child JVM, its stdout read line by line, stopped with
 * {@code --once} or with SIGINT (what Ctrl-C sends). The guest run needs QEMU and busybox-static
 * ({@link Peers}: skipped when missing, failed under CI=true).
 */
class DemoCommandTest {
    private static final Pattern STEP = Pattern.compile("^\\[(\\d+)/(\\d+)\\] .* \\.\\.\\. (ok|FAILED) \\(\\d+ ms\\).*$", Pattern.MULTILINE);
    private static final Pattern TCP = Pattern.compile("tcp 127\\.0\\.0\\.1:(\\d+)");

    Path dir;
    Process process;
    Path stdout;
    Path stderr;

    @BeforeEach
    void makeDir() {
        dir = Net.shortSocketDir(); // unix socket paths must stay under 107 bytes
    }

    @AfterEach
    void cleanUp() throws Exception {
        if (process != null && process.isAlive()) {
            process.destroyForcibly();
            process.waitFor(20, TimeUnit.SECONDS);
        }
        try (var s = Files.walk(dir)) {
            for (Path p : s.sorted(java.util.Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
        }
    }

    @Test
    void guestWritesNbdReadsBackAndTheDiskMovesWithTheGuestAttached() throws Exception {
        TestGuests.requireHostTools();
        Run.Result r = Run.cmd(command("--dir", dir.toString(), "--once", "--port", Integer.toString(Net.freePort())))
                .timeoutSeconds(400).expect(0);
        String out = r.stdout();
        List<String> steps = stepLines(out);
        assertEquals(11, steps.size(), out);
        for (String s : steps) assertTrue(s.contains("... ok ("), s + "\n" + out);
        assertTrue(out.contains("identical to what the guest wrote"), out);
        assertTrue(Pattern.compile("paused \\d+\\.\\d{3} ms").matcher(out).find(), out);
        assertTrue(out.contains("both patterns intact"), out);
        // Independently of the demo's own check: the image holds both patterns (read by qemu-img:
        // the demo's image is qcow2, and qemu-img check must call it clean).
        String qemuImg = Peers.require("qemu-img");
        Run.cmd(qemuImg, "check", dir.resolve(Demo.IMAGE).toString()).timeoutSeconds(60).expect(0);
        Path flat = dir.resolve("flat.raw");
        Run.cmd(qemuImg, "convert", "-O", "raw", dir.resolve(Demo.IMAGE).toString(), flat.toString()).timeoutSeconds(60).expect(0);
        try (RandomAccessFile f = new RandomAccessFile(flat.toFile(), "r")) {
            assertArrayEquals(DemoGuest.pattern(DemoGuest.LINE_A), read(f, DemoGuest.A_OFFSET));
            assertArrayEquals(DemoGuest.pattern(DemoGuest.LINE_B), read(f, DemoGuest.B_OFFSET));
        }
        assertSocketsGone();
    }

    @Test
    void withoutGuestItServesNbdOnBothSocketsAndPrintsWhatToTry() throws Exception {
        int port = Net.freePort();
        start("--dir", dir.toString(), "--no-guest", "--port", Integer.toString(port), "--size", "64M");
        String out = awaitOutput("until Ctrl-C");
        List<String> steps = stepLines(out);
        assertEquals(6, steps.size(), out);
        for (String s : steps) assertTrue(s.contains("... ok ("), s);
        assertTrue(out.contains("nbd+unix:///disk0?socket=" + dir.resolve("nbd.sock")), out);
        assertTrue(out.contains("nbd://127.0.0.1:" + port + "/disk0"), out);
        assertTrue(out.contains("./vmm guest --socket " + dir.resolve("vhost-user-blk.sock")), out);
        assertTrue(out.contains("./vmm qmp --socket " + dir.resolve("qmp.sock") + " x-blockdev-set-iothread node-name=disk0 iothread=iot1"), out);
        try (NbdClient unix = NbdClient.open(UnixDomainSocketAddress.of(dir.resolve("nbd.sock")), "disk0");
             NbdClient tcp = NbdClient.open(new InetSocketAddress("127.0.0.1", port), "disk0")) {
            assertEquals(64L << 20, unix.size());
            byte[] data = "written over TCP, read over unix".getBytes(StandardCharsets.US_ASCII);
            tcp.write(8192, Arrays.copyOf(data, 512));
            assertArrayEquals(Arrays.copyOf(data, 512), unix.read(8192, 512));
        }
        assertEquals(0, interrupt(), stderr());
    }

    /**
     * Regression (issue 14): the TCP listener was a second server with an export of its own that
     * no counter saw, so {@code vmm top} showed 0 clients and 0 IOPS on nbd0 while fio ran over
     * nbd://127.0.0.1:10809/disk0. The export's counters must include the TCP clients.
     */
    @Test
    void tcpClientsCountInTheExportsCounters() throws Exception {
        int port = Net.freePort();
        start("--dir", dir.toString(), "--no-guest", "--port", Integer.toString(port), "--size", "8M");
        awaitOutput("until Ctrl-C");
        try (NbdClient tcp = NbdClient.open(new InetSocketAddress("127.0.0.1", port), "disk0");
             dev.vmm.cli.qmp.QmpClient qmp = dev.vmm.cli.qmp.QmpClient.connect(dir.resolve("qmp.sock"))) {
            for (int i = 0; i < 10; i++) tcp.read(i * 4096L, 4096);
            tcp.write(0, new byte[4096]);
            @SuppressWarnings("unchecked")
            List<java.util.Map<String, Object>> exports = (List<java.util.Map<String, Object>>) qmp.execute(
                    dev.vmm.cli.qmp.ShellSyntax.parseLine("x-query-export-stats")).get("return");
            java.util.Map<String, Object> nbd0 = exports.stream().filter(e -> "nbd0".equals(e.get("id"))).findFirst()
                    .orElseThrow(() -> new AssertionError("no nbd0 in " + exports));
            assertEquals(1L, ((Number) nbd0.get("clients")).longValue(), nbd0.toString());
            assertTrue(((Number) nbd0.get("rd_operations")).longValue() >= 10, nbd0.toString());
            assertTrue(((Number) nbd0.get("wr_operations")).longValue() >= 1, nbd0.toString());
        }
        assertEquals(0, interrupt(), stderr());
    }

    @Test
    void aTakenPortIsReplacedByAFreeOneAndSaid() throws Exception {
        try (ServerSocket taken = new ServerSocket()) {
            taken.bind(new InetSocketAddress("127.0.0.1", 0));
            int busy = taken.getLocalPort();
            start("--dir", dir.toString(), "--no-guest", "--port", Integer.toString(busy), "--size", "8M");
            String out = awaitOutput("until Ctrl-C");
            assertTrue(out.contains("port " + busy + " is in use by another program: using port "), out);
            Matcher m = TCP.matcher(out);
            assertTrue(m.find(), out);
            int used = Integer.parseInt(m.group(1));
            assertNotEquals(busy, used);
            assertTrue(out.contains("nbd://127.0.0.1:" + used + "/disk0"), out);
            try (NbdClient c = NbdClient.open(new InetSocketAddress("127.0.0.1", used), "disk0")) {
                assertEquals(8L << 20, c.size());
            }
            // A real peer too (a missing nbdinfo fails under CI=true, like every peer).
            Run.Result info = Run.cmd(Peers.require("nbdinfo"), "--size", "nbd://127.0.0.1:" + used + "/disk0").expect(0);
            assertEquals(Long.toString(8L << 20), info.stdout().strip());
            assertEquals(0, interrupt(), stderr());
        }
    }

    @Test
    void ctrlCStopsCleanlyExitZeroSocketsGone() throws Exception {
        start("--dir", dir.toString(), "--no-guest", "--port", Integer.toString(Net.freePort()), "--size", "8M");
        awaitOutput("until Ctrl-C");
        for (String s : List.of("nbd.sock", "vhost-user-blk.sock", "qmp.sock")) assertTrue(Files.exists(dir.resolve(s)), s);
        assertEquals(0, interrupt(), stderr());
        assertTrue(Files.readString(stdout).contains("sockets removed"), Files.readString(stdout));
        assertSocketsGone();
    }

    @Test
    void withoutQemuItSaysWhatToInstallAndStillServesNbd() throws Exception {
        Path emptyPath = Files.createDirectory(dir.resolve("empty-path"));
        Run.Result r = Run.cmd(command("--dir", dir.toString(), "--once", "--port", Integer.toString(Net.freePort()), "--size", "8M"))
                .env("PATH", emptyPath.toString()).timeoutSeconds(60).expect(0);
        String out = r.stdout();
        assertEquals(6, stepLines(out).size(), out);
        assertTrue(out.contains("No guest: QEMU (qemu-system-x86_64) is not installed"), out);
        assertTrue(Pattern.compile("(?m)^  (sudo )?apt-get install qemu-system-x86( busybox-static)?$").matcher(out).find(), out);
        assertSocketsGone();
    }

    @Test
    void ctrlCWhileTheGuestBootsKillsQemuAndExitsZero() throws Exception {
        TestGuests.requireHostTools();
        start("--dir", dir.toString(), "--port", Integer.toString(Net.freePort()), "--size", "8M");
        awaitOutput("[8/11] boot the guest");
        awaitQemu(true);
        assertEquals(0, interrupt(), stderr());
        String out = Files.readString(stdout);
        assertTrue(out.contains("... interrupted ("), out);
        assertFalse(out.contains("FAILED"), out);
        awaitQemu(false);
        assertSocketsGone();
    }

    /**
     * Regression: a second SIGINT halted the JVM at once, and a QEMU that got the signals from
     * {@code kill} rather than the terminal's process group ran on, orphaned, with the socket
     * files left behind.
     */
    @Test
    void aSecondCtrlCFromKillHaltsAndTakesQemuAndTheSocketsAlong() throws Exception {
        TestGuests.requireHostTools();
        start("--dir", dir.toString(), "--port", Integer.toString(Net.freePort()), "--size", "8M");
        awaitOutput("[8/11] boot the guest");
        awaitQemu(true);
        List<ProcessHandle> qemu = process.descendants().toList();
        assertFalse(qemu.isEmpty(), "the demo's QEMU is its child");
        Run.cmd("kill", "-INT", Long.toString(process.pid())).expect(0);
        Run.cmd("kill", "-INT", Long.toString(process.pid())).expect(0);
        if (!process.waitFor(30, TimeUnit.SECONDS)) fail("demo ignored two SIGINTs for 30 s\n" + stderr());
        try {
            awaitQemu(false);
            for (ProcessHandle h : qemu) assertFalse(h.isAlive(), "child " + h.pid() + " outlived the demo: " + h.info());
            assertSocketsGone();
        } finally {
            qemu.forEach(ProcessHandle::destroyForcibly); // never leave an orphan behind, whatever failed
        }
    }

    /** Waits (up to 30 s) until a QEMU using this test's socket runs, or until none does. */
    private void awaitQemu(boolean running) throws InterruptedException {
        String socket = dir.resolve("vhost-user-blk.sock").toString();
        long deadline = System.currentTimeMillis() + 30_000;
        while (ProcessHandle.allProcesses().anyMatch(p -> p.info().commandLine().orElse("").contains(socket)) != running) {
            if (System.currentTimeMillis() > deadline) fail(running ? "QEMU never started" : "QEMU outlived the demo");
            Thread.sleep(50);
        }
    }

    @Test
    void badSizeIsOneLineAndExitOne() {
        Run.Result r = Run.cmd(command("--dir", dir.toString(), "--size", "lots", "--once")).timeoutSeconds(60).expect(1);
        assertEquals("vmm demo: --size: expected a multiple of 4 KiB of at least 4M (e.g. 64M, 1G), got 'lots'", r.stderr().strip());
    }

    // ---------------------------------------------------------------------------------------

    private void assertSocketsGone() {
        for (String s : List.of("nbd.sock", "vhost-user-blk.sock", "qmp.sock")) {
            assertFalse(Files.exists(dir.resolve(s)), s + " left behind");
        }
    }

    private static byte[] read(RandomAccessFile f, long offset) throws IOException {
        byte[] b = new byte[DemoGuest.MIB];
        f.seek(offset);
        f.readFully(b);
        return b;
    }

    private static List<String> stepLines(String out) {
        List<String> lines = new ArrayList<>();
        Matcher m = STEP.matcher(out);
        while (m.find()) lines.add(m.group());
        return lines;
    }

    /** java + the launcher's JVM flags + the test class path + {@code Main demo ARGS}. */
    private static List<String> command(String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        String flags = System.getProperty("vmm.jvm.flags", "").strip();
        if (!flags.isEmpty() && !flags.startsWith("${")) cmd.addAll(Arrays.asList(flags.split("\\s+")));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), "dev.vmm.cli.Main", "demo"));
        cmd.addAll(List.of(args));
        return cmd;
    }

    private void start(String... args) throws IOException {
        stdout = dir.resolve("demo.out");
        stderr = dir.resolve("demo.err");
        process = new ProcessBuilder(command(args)).redirectOutput(stdout.toFile()).redirectError(stderr.toFile())
                .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null"))).start();
    }

    private String awaitOutput(String text) throws Exception {
        long deadline = System.currentTimeMillis() + 60_000;
        while (true) {
            String out = Files.readString(stdout);
            if (out.contains(text)) return out;
            if (!process.isAlive()) fail("demo exited with " + process.exitValue() + "\n" + out + "\n--- stderr ---\n" + stderr());
            if (System.currentTimeMillis() > deadline) fail("no '" + text + "' after 60 s\n" + out + "\n--- stderr ---\n" + stderr());
            Thread.sleep(50);
        }
    }

    /** SIGINT, as Ctrl-C in a terminal; returns the exit code. */
    private int interrupt() throws Exception {
        Run.cmd("kill", "-INT", Long.toString(process.pid())).expect(0);
        if (!process.waitFor(30, TimeUnit.SECONDS)) fail("demo ignored SIGINT for 30 s\n" + stderr());
        return process.exitValue();
    }

    private String stderr() {
        try {
            return Files.readString(stderr);
        } catch (IOException e) {
            return "(no stderr: " + e + ")";
        }
    }
}
