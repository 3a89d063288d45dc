package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import dev.vmm.cli.it.Net;
import dev.vmm.cli.it.Peers;
import dev.vmm.cli.it.Run;
import dev.vmm.cli.it.VmmProcess;
import dev.vmm.core.testing.TestCertificates;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * Storage migration of a live guest's disk to another daemon, as the issue asks and as libvirt
 * does it: the destination exports a new image over NBD with TLS, the source opens it as a
 * {@code driver=nbd} node, mirrors the guest's disk into it ({@code copy-mode=write-blocking}),
 * waits for {@code BLOCK_JOB_READY} and completes the job (pivot). The whole QMP side is the
 * shipped {@code examples/migrate-disk.qmp}, run by {@code vmm qmp --script}.
 *
 * <p>The guest writes random 64 KiB blocks with O_DIRECT all along (before, during and after the
 * pivot), printing the SHA-256 of each; it stops when it reads a marker in the disk's last 4 KiB,
 * which the test writes after the pivot through the source's own NBD export of the disk (so that
 * export, too, must follow the pivot), reads every block back and powers off. Then the
 * destination's image must hold every block's last write, and the source's image must have
 * missed some (the writes after the pivot went to the destination only).
 *
 * <p>Runs with vmm on both ends, and with qemu-storage-daemon on either end.
 */
class GuestMigrationTest {
    static final long IMAGE_SIZE = 64 * Images.MiB;
    static final int BLOCK = 64 * 1024;
    static final int BLOCKS = 256; // the first 16 MiB
    static final long MARKER_BLOCK4K = IMAGE_SIZE / 4096 - 1;

    @TempDir
    Path dir;

    final List<VmmProcess> daemons = new ArrayList<>();
    Path sock;

    @AfterEach
    void stop() throws Exception {
        for (VmmProcess p : daemons) p.close();
        if (sock != null) {
            try (var s = Files.list(sock)) {
                for (Path p : s.toList()) Files.deleteIfExists(p);
            }
            Files.deleteIfExists(sock);
        }
    }

    static String workload() {
        return String.join("\n",
                "i=0",
                "vmmtest writing 1",
                "while [ $i -lt 4000 ]; do",
                "  k=$(( (i * 37) % " + BLOCKS + " ))",
                "  dd if=/dev/urandom of=/tmp/b bs=" + BLOCK + " count=1 2>/dev/null",
                "  dd if=/tmp/b of=/dev/vda bs=" + BLOCK + " seek=$k count=1 oflag=direct conv=notrunc 2>/tmp/err"
                        + " || { vmmtest error \"write $i $(cat /tmp/err)\"; break; }",
                "  vmmtest w$k $(sha256sum < /tmp/b | cut -d' ' -f1)",
                "  i=$((i + 1))",
                "  if [ $((i % 8)) -eq 0 ]; then",
                "    m=$(dd if=/dev/vda bs=4096 skip=" + MARKER_BLOCK4K + " count=1 iflag=direct 2>/dev/null | od -An -tx1 -N2 | tr -d ' \\n')",
                "    [ \"$m\" = \"5353\" ] && break",
                "  fi",
                "done",
                "vmmtest iterations $i",
                "k=0",
                "while [ $k -lt " + BLOCKS + " ]; do",
                "  vmmtest r$k $(dd if=/dev/vda bs=" + BLOCK + " skip=$k count=1 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)",
                "  k=$((k + 1))",
                "done",
                "");
    }

    private static List<String> monitor(Path socket) {
        return List.of("--chardev", "socket,id=m0,path=" + socket + ",server=on,wait=off", "--monitor", "chardev=m0");
    }

    @ParameterizedTest(name = "{0} -> {1}")
    @CsvSource({"vmm,vmm", "vmm,qsd", "qsd,vmm"})
    void liveGuestDiskMigratesOverTlsAndKeepsEveryWrite(String source, String destination) throws Exception {
        Peers.require("qemu-storage-daemon");
        Peers.require("qemu-io");
        GuestKernel kernel = TestGuests.kernel();
        TestCertificates ca = TestCertificates.createCa(dir.resolve("pki/ca"), "vmm migration CA");
        Path serverPki = ca.serverDir("server", TestCertificates.KeyFormat.PKCS1_RSA);
        Path clientPki = ca.clientDir("client");
        sock = Net.shortSocketDir();
        Path imageA = Images.sparse(dir.resolve("a.img"), IMAGE_SIZE);
        Path imageB = Images.sparse(dir.resolve("b.img"), IMAGE_SIZE);
        int port = Net.freePort();
        Path vhost = sock.resolve("vhost.sock");
        Path nbdA = sock.resolve("nbd-a.sock");

        // QSD 7.2 aborts when an NBD client leaves an export whose node is on an IOThread
        // (docs/guest-testing.md), so its nodes stay in the main context.
        boolean qsdSource = source.equals("qsd");
        VmmProcess dst = VmmProcess.start(dir, "dst-" + destination, concat(List.of(
                "--object", "tls-creds-x509,id=tls0,dir=" + serverPki + ",endpoint=server",
                "--blockdev", "driver=file,node-name=target,filename=" + imageB,
                "--nbd-server", Net.inetServer(port) + ",tls-creds=tls0"), monitor(sock.resolve("dst-qmp.sock"))),
                destination.equals("qsd"));
        daemons.add(dst);
        VmmProcess src = VmmProcess.start(dir, "src-" + source, concat(List.of(
                "--object", "tls-creds-x509,id=tls0,dir=" + clientPki + ",endpoint=client",
                "--object", "iothread,id=iot0",
                "--blockdev", "driver=file,node-name=disk0,filename=" + imageA,
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",writable=on"
                        + (qsdSource ? "" : ",iothread=iot0"),
                "--nbd-server", "addr.type=unix,addr.path=" + nbdA,
                "--export", "type=nbd,id=nbd0,node-name=disk0,name=disk0,writable=on"), monitor(sock.resolve("src-qmp.sock"))),
                qsdSource);
        daemons.add(src);

        Path console = dir.resolve("console.log");
        Path initrd = Initramfs.build(kernel, workload(), dir.resolve("initrd.gz"));
        GuestLauncher launcher = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(vhost).consoleLog(console)
                .timeout(Duration.ofSeconds(400));
        CompletableFuture<GuestRun> guest = CompletableFuture.supplyAsync(() -> {
            try {
                return launcher.run();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        String why = "";
        try {
            waitFor(console, Initramfs.RESULT_PREFIX + "writing=1", Duration.ofSeconds(120), guest);
            int before = countWrites(console);
            long t0 = System.nanoTime();
            Run.Result mig = Run.cmd(qmpCommand(sock.resolve("src-qmp.sock"), "--script", repoRoot().resolve("examples/migrate-disk.qmp").toString()))
                    .env("RUN", sock.toString()).env("DST_HOST", Net.HOST).env("DST_PORT", Integer.toString(port)).env("PKI", clientPki.toString())
                    .timeoutSeconds(300).expectAny();
            long migMs = (System.nanoTime() - t0) / 1_000_000;
            int atPivot = countWrites(console);
            why = mig.describe() + "\n--- source log ---\n" + src.stderr() + "\n--- destination log ---\n" + dst.stderr();
            assertEquals(0, mig.exit(), why);
            assertTrue(mig.stdout().contains("\"event\":\"BLOCK_JOB_READY\""), why);
            assertTrue(mig.stdout().contains("\"event\":\"BLOCK_JOB_COMPLETED\""), why);
            assertTrue(!mig.stdout().contains("\"error\":\"") , why); // BLOCK_JOB_COMPLETED carries "error" only on failure
            System.out.printf("[guest] migration %s -> %s: %d ms, guest writes before %d, at pivot %d%n", source, destination, migMs, before, atPivot);
            // Let the guest write to the remote disk for a while, then tell it to stop, through
            // the source's NBD export: after the pivot that reaches the destination's image too.
            waitForWrites(console, atPivot + 24, Duration.ofSeconds(120), guest);
            Run.cmd(Peers.require("qemu-io"), "-f", "raw", "-c", "write -P 0x53 " + MARKER_BLOCK4K * 4096 + " 4096",
                    "nbd+unix:///disk0?socket=" + nbdA).expect(0);
            GuestRun run = guest.get(300, java.util.concurrent.TimeUnit.SECONDS);
            why = run.describe() + "\n" + why;
            assertTrue(run.succeeded(), why);
            assertEquals(null, run.result("error"), why);
            assertTrue(Integer.parseInt(run.result("iterations")) > atPivot, why);
        } finally {
            launcher.destroy();
        }
        String text = Files.readString(console, StandardCharsets.ISO_8859_1);
        Map<String, String> results = GuestRun.parseResults(text);
        // Stop both daemons (orderly: flushes), then compare images with the guest's log.
        src.stop();
        dst.stop();
        List<String> mismatches = new ArrayList<>();
        int differFromSource = 0;
        int written = 0;
        for (int k = 0; k < BLOCKS; k++) {
            String w = results.get("w" + k);
            if (w == null) continue;
            written++;
            String r = results.get("r" + k);
            String b = Images.sha256(imageB, (long) k * BLOCK, BLOCK);
            String a = Images.sha256(imageA, (long) k * BLOCK, BLOCK);
            if (!w.equals(b) || !w.equals(r)) mismatches.add("block " + k + ": guest wrote " + w + ", read back " + r + ", destination image " + b);
            if (!w.equals(a)) differFromSource++;
        }
        assertEquals(List.of(), mismatches, why);
        assertTrue(written >= 32, "the guest wrote only " + written + " blocks: " + why);
        assertNotEquals(0, differFromSource, "no write after the pivot reached the destination only: " + why);
        assertNotNull(results.get("iterations"), why);
    }

    /**
     * The destination dies in the middle of the job (kill -9): the job ends with an error
     * ({@code BLOCK_JOB_COMPLETED} with {@code error}, on-target-error=report), the source keeps
     * serving the guest, which sees no error, and its image holds every write. The mirror is
     * slowed down ({@code speed}) so that the kill lands mid-copy.
     */
    @ParameterizedTest(name = "source {0}")
    @CsvSource({"vmm", "qsd"})
    void destinationKilledMidJobLeavesTheGuestUnharmed(String source) throws Exception {
        Peers.require("qemu-storage-daemon");
        Peers.require("qemu-io");
        GuestKernel kernel = TestGuests.kernel();
        sock = Net.shortSocketDir();
        Path imageA = Images.sparse(dir.resolve("a.img"), IMAGE_SIZE);
        Path imageB = Images.sparse(dir.resolve("b.img"), IMAGE_SIZE);
        Images.fill(imageA, 32 * Images.MiB, (int) (16 * Images.MiB), 7); // something to copy beyond the guest's blocks
        Path vhost = sock.resolve("vhost.sock");
        Path nbdA = sock.resolve("nbd-a.sock");
        Path nbdB = sock.resolve("nbd-b.sock");
        boolean qsdSource = source.equals("qsd");
        VmmProcess dst = VmmProcess.start(dir, "dst-vmm", List.of(
                "--blockdev", "driver=file,node-name=target,filename=" + imageB,
                "--nbd-server", "addr.type=unix,addr.path=" + nbdB,
                "--export", "type=nbd,id=incoming,node-name=target,name=disk0,writable=on"), false);
        daemons.add(dst);
        Path srcQmp = sock.resolve("src-qmp.sock");
        VmmProcess src = VmmProcess.start(dir, "src-" + source, concat(List.of(
                "--object", "iothread,id=iot0",
                "--blockdev", "driver=file,node-name=disk0,filename=" + imageA,
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",writable=on"
                        + (qsdSource ? "" : ",iothread=iot0"),
                "--nbd-server", "addr.type=unix,addr.path=" + nbdA,
                "--export", "type=nbd,id=nbd0,node-name=disk0,name=disk0,writable=on"), monitor(srcQmp)), qsdSource);
        daemons.add(src);

        Path console = dir.resolve("console.log");
        Path initrd = Initramfs.build(kernel, workload(), dir.resolve("initrd.gz"));
        GuestLauncher launcher = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(vhost).consoleLog(console)
                .timeout(Duration.ofSeconds(400));
        CompletableFuture<GuestRun> guest = CompletableFuture.supplyAsync(() -> {
            try {
                return launcher.run();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        List<Map<String, Object>> events = new java.util.concurrent.CopyOnWriteArrayList<>();
        String why = "";
        try (dev.vmm.cli.qmp.QmpClient qmp = dev.vmm.cli.qmp.QmpClient.connect(srcQmp)) {
            qmp.onEvent(events::add);
            waitFor(console, Initramfs.RESULT_PREFIX + "writing=1", Duration.ofSeconds(120), guest);
            ok(qmp, "blockdev-add", Map.of("driver", "nbd", "node-name", "remote",
                    "server", Map.of("type", "unix", "path", nbdB.toString()), "export", "disk0"));
            ok(qmp, "blockdev-mirror", Map.of("job-id", "mig0", "device", "disk0", "target", "remote", "sync", "full",
                    "speed", 4 * Images.MiB));
            // Kill the destination once the copy is under way, well before it can be ready.
            long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
            while (true) {
                Object jobs = ok(qmp, "query-block-jobs", Map.of()).get("return");
                long offset = jobs instanceof List<?> l && !l.isEmpty() && l.get(0) instanceof Map<?, ?> j && j.get("offset") instanceof Number n
                        ? n.longValue() : 0;
                if (offset >= 2 * Images.MiB) break;
                assertTrue(System.nanoTime() < deadline, "the mirror made no progress: " + jobs + "\n" + src.stderr());
                Thread.sleep(100);
            }
            int atKill = countWrites(console);
            dst.kill();
            Map<String, Object> end = qmp.awaitEvent(e -> "BLOCK_JOB_COMPLETED".equals(e.get("event"))
                    || "BLOCK_JOB_CANCELLED".equals(e.get("event")), Duration.ofSeconds(120).toNanos());
            why = "events: " + events + "\n--- source log ---\n" + src.stderr();
            assertNotNull(end, "the job did not end after the destination died: " + why);
            assertEquals("BLOCK_JOB_COMPLETED", end.get("event"), why);
            Object error = ((Map<?, ?>) end.get("data")).get("error");
            assertNotNull(error, "BLOCK_JOB_COMPLETED without an error after the destination died: " + why);
            System.out.printf("[guest] destination killed mid-job (source %s): job error '%s'%n", source, error);
            assertEquals(List.of(), ok(qmp, "query-block-jobs", Map.of()).get("return"), why);
            // The guest goes on writing to its (source) disk; then stop it through the source's NBD export.
            waitForWrites(console, atKill + 24, Duration.ofSeconds(120), guest);
            Run.cmd(Peers.require("qemu-io"), "-f", "raw", "-c", "write -P 0x53 " + MARKER_BLOCK4K * 4096 + " 4096",
                    "nbd+unix:///disk0?socket=" + nbdA).expect(0);
            GuestRun run = guest.get(300, java.util.concurrent.TimeUnit.SECONDS);
            why = run.describe() + "\n" + why;
            assertTrue(run.succeeded(), why);
            assertEquals(null, run.result("error"), why);
            src.assertAlive();
        } finally {
            launcher.destroy();
        }
        Map<String, String> results = GuestRun.parseResults(Files.readString(console, StandardCharsets.ISO_8859_1));
        src.stop();
        List<String> mismatches = new ArrayList<>();
        for (int k = 0; k < BLOCKS; k++) {
            String w = results.get("w" + k);
            if (w == null) continue;
            String a = Images.sha256(imageA, (long) k * BLOCK, BLOCK);
            if (!w.equals(a) || !w.equals(results.get("r" + k))) {
                mismatches.add("block " + k + ": guest wrote " + w + ", read back " + results.get("r" + k) + ", source image " + a);
            }
        }
        assertEquals(List.of(), mismatches, why);
    }

    private static Map<String, Object> ok(dev.vmm.cli.qmp.QmpClient qmp, String command, Map<String, Object> args) throws Exception {
        Map<String, Object> r = qmp.execute(new dev.vmm.cli.qmp.ShellSyntax.Request(command, args));
        assertTrue(r.containsKey("return"), command + " " + args + ": " + r);
        return r;
    }

    private static List<String> concat(List<String> a, List<String> b) {
        List<String> c = new ArrayList<>(a);
        c.addAll(b);
        return c;
    }

    static Path repoRoot() {
        return Path.of(System.getenv().getOrDefault("VMM_ROOT", "..")).toAbsolutePath().normalize();
    }

    static List<String> qmpCommand(Path socket, String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), "dev.vmm.cli.Main", "qmp", "--socket", socket.toString()));
        cmd.addAll(Arrays.asList(args));
        return cmd;
    }

    static int countWrites(Path console) throws Exception {
        String text = Files.exists(console) ? Files.readString(console, StandardCharsets.ISO_8859_1) : "";
        int n = 0;
        for (int i = text.indexOf(Initramfs.RESULT_PREFIX + "w"); i >= 0; i = text.indexOf(Initramfs.RESULT_PREFIX + "w", i + 1)) {
            if (!text.startsWith(Initramfs.RESULT_PREFIX + "writing", i)) n++;
        }
        return n;
    }

    private static void waitFor(Path console, String line, Duration timeout, CompletableFuture<GuestRun> guest) throws Exception {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (System.nanoTime() < deadline) {
            if (Files.exists(console) && Files.readString(console, StandardCharsets.ISO_8859_1).contains(line)) return;
            if (guest.isDone()) throw new AssertionError("the guest ended before '" + line + "': " + guest.get().describe());
            Thread.sleep(100);
        }
        throw new AssertionError("no '" + line + "' on the guest's console within " + timeout);
    }

    private static void waitForWrites(Path console, int count, Duration timeout, CompletableFuture<GuestRun> guest) throws Exception {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (System.nanoTime() < deadline) {
            if (countWrites(console) >= count) return;
            if (guest.isDone()) throw new AssertionError("the guest ended early: " + guest.get().describe());
            Thread.sleep(100);
        }
        throw new AssertionError("the guest did not reach " + count + " writes within " + timeout);
    }
}
