package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import dev.vmm.cli.it.Net;
import dev.vmm.cli.it.Peers;
import dev.vmm.cli.it.Run;
import dev.vmm.cli.it.VmmProcess;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A guest whose disk lives on a remote NBD server: the daemon opens it as a {@code driver=nbd}
 * node with {@code reconnect-delay=20} and serves it to the guest over vhost-user. While the guest
 * writes (the workload of {@link GuestMigrationTest}: random 64 KiB blocks with O_DIRECT and
 * their SHA-256, until a marker appears in the last 4 KiB), the remote server (qemu-nbd) is killed
 * with SIGKILL and started again a second later on the same socket. Requests in flight and those
 * that arrive meanwhile wait for the reconnect and are sent again: the guest sees no error, and
 * the remote image holds every block's last write.
 *
 * <p>Runs against vmm and against qemu-storage-daemon (the same command line).
 */
class GuestNbdReconnectTest {
    @TempDir
    Path dir;

    Path sock;
    final List<VmmProcess> daemons = new ArrayList<>();
    Process remote;

    @AfterEach
    void stop() throws Exception {
        for (VmmProcess p : daemons) p.close();
        if (remote != null) remote.destroyForcibly().waitFor();
        if (sock != null) {
            try (var s = Files.list(sock)) {
                for (Path p : s.toList()) Files.deleteIfExists(p);
            }
            Files.deleteIfExists(sock);
        }
    }

    private Process startRemote(Path image, Path socket, Path log) throws Exception {
        Files.deleteIfExists(socket); // SIGKILL left it behind
        Process p = new ProcessBuilder(Peers.require("qemu-nbd"), "-k", socket.toString(), "-f", "raw", "-t", "-e", "4",
                "--cache=writeback", image.toString())
                .redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.appendTo(log.toFile()))
                .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null"))).start();
        for (int i = 0; i < 200 && !Files.exists(socket); i++) {
            assertTrue(p.isAlive(), "qemu-nbd exited: " + Files.readString(log));
            Thread.sleep(50);
        }
        return p;
    }

    @ParameterizedTest
    @ValueSource(strings = {"vmm", "qsd"})
    void remoteServerRestartUnderGuestWritesIsInvisibleToTheGuest(String server) throws Exception {
        Peers.require("qemu-io");
        GuestKernel kernel = TestGuests.kernel();
        sock = Net.shortSocketDir();
        Path image = Images.sparse(dir.resolve("remote.img"), GuestMigrationTest.IMAGE_SIZE);
        Path remoteSock = sock.resolve("remote.sock");
        Path remoteLog = dir.resolve("qemu-nbd.log");
        remote = startRemote(image, remoteSock, remoteLog);
        Path vhost = sock.resolve("vhost.sock");
        boolean qsd = server.equals("qsd");
        VmmProcess d = VmmProcess.start(dir, "nbd-node-" + server, List.of(
                "--object", "iothread,id=iot0",
                "--blockdev", "driver=nbd,node-name=disk0,server.type=unix,server.path=" + remoteSock + ",reconnect-delay=20",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",writable=on"
                        + (qsd ? "" : ",iothread=iot0")), qsd);
        daemons.add(d);

        Path console = dir.resolve("console.log");
        Path initrd = Initramfs.build(kernel, GuestMigrationTest.workload(), dir.resolve("initrd.gz"));
        GuestLauncher launcher = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(vhost).consoleLog(console)
                .timeout(Duration.ofSeconds(400));
        CompletableFuture<GuestRun> guest = CompletableFuture.supplyAsync(() -> {
            try {
                return launcher.run();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        String why;
        try {
            waitForWrites(console, 16, guest);
            remote.destroyForcibly().waitFor(); // SIGKILL: the connection drops with requests in flight
            int atKill = GuestMigrationTest.countWrites(console);
            Thread.sleep(1000);
            remote = startRemote(image, remoteSock, remoteLog);
            waitForWrites(console, atKill + 24, guest);
            Run.cmd(Peers.require("qemu-io"), "-f", "raw", "-c", "write -P 0x53 " + GuestMigrationTest.MARKER_BLOCK4K * 4096 + " 4096",
                    "nbd+unix:///?socket=" + remoteSock).expect(0);
            GuestRun run = guest.get(300, TimeUnit.SECONDS);
            why = run.describe() + "\n--- " + server + " log ---\n" + d.stderr() + "\n--- qemu-nbd ---\n" + Files.readString(remoteLog);
            System.out.printf("[guest] %s: remote NBD server restarted after %d guest writes; %s writes in all%n",
                    server, atKill, run.result("iterations"));
            assertTrue(run.succeeded(), why);
            assertEquals(null, run.result("error"), why);
            d.assertAlive();
        } finally {
            launcher.destroy();
        }
        Map<String, String> results = GuestRun.parseResults(Files.readString(console, StandardCharsets.ISO_8859_1));
        d.stop();
        remote.destroy();
        remote.waitFor();
        List<String> mismatches = new ArrayList<>();
        for (int k = 0; k < GuestMigrationTest.BLOCKS; k++) {
            String w = results.get("w" + k);
            if (w == null) continue;
            String r = Images.sha256(image, (long) k * GuestMigrationTest.BLOCK, GuestMigrationTest.BLOCK);
            if (!w.equals(r) || !w.equals(results.get("r" + k))) {
                mismatches.add("block " + k + ": guest wrote " + w + ", read back " + results.get("r" + k) + ", remote image " + r);
            }
        }
        assertEquals(List.of(), mismatches, why);
    }

    private static void waitForWrites(Path console, int count, CompletableFuture<GuestRun> guest) throws Exception {
        long deadline = System.nanoTime() + Duration.ofSeconds(150).toNanos();
        while (System.nanoTime() < deadline) {
            if (GuestMigrationTest.countWrites(console) >= count) return;
            if (guest.isDone()) throw new AssertionError("the guest ended early: " + guest.get().describe());
            Thread.sleep(100);
        }
        throw new AssertionError("the guest did not reach " + count + " writes");
    }
}
