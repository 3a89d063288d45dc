package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import dev.vmm.cli.it.Peers;
import dev.vmm.cli.it.Run;
import dev.vmm.cli.it.VmmProcess;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Issue 4's acceptance scenario: one disk, three kinds of users at once — a Linux guest doing
 * O_DIRECT writes and read-back checks through vhost-user-blk, fio's nbd engine writing and
 * verifying another region over the NBD export, nbdcopy reading the whole disk over and over —
 * while a QMP script ({@code ./vmm qmp --script}) moves the disk across three IOThreads every
 * 20 ms for more than 30 s. Afterwards every byte verifies, no client saw an error, and a
 * watchdog that required the node's request count to keep rising saw no stall.
 *
 * <p>The image is opened with {@code cache.direct=on} (what production disks use) and fio runs at
 * QD32, so every move finds asynchronous requests in flight in both directions and must drain them
 * on the old IOThread before the disk's users leave it.
 */
@Timeout(300)
class GuestHandoffSoakTest {
    static final long IMAGE_SIZE = 256 * Images.MiB;
    static final int SOAK_SECONDS = 32;

    @TempDir Path dir;
    VmmProcess server;
    final List<Process> peers = new ArrayList<>();

    /** The guest's QEMU runs on another thread: a failed assertion must not leave it running. */
    GuestLauncher guestLauncher;

    @AfterEach
    void stop() {
        if (guestLauncher != null) guestLauncher.destroy();
        for (Process p : peers) p.destroyForcibly();
        if (server != null) server.close();
    }

    @Test
    void aDiskAndAllItsUsersHopBetweenIOThreadsEvery20msFor30Seconds() throws Exception {
        GuestKernel kernel = TestGuests.kernel();
        String fio = Peers.require("fio");
        String nbdcopy = Peers.require("nbdcopy");
        Path image = Images.sparse(dir.resolve("disk.img"), IMAGE_SIZE);
        Path vhost = dir.resolve("vhost.sock");
        Path nbd = dir.resolve("nbd.sock");
        Path qmp = dir.resolve("qmp.sock");
        server = VmmProcess.start(dir, "soak", List.of(
                "--blockdev", "driver=file,node-name=disk0,filename=" + image + ",cache.direct=on",
                "--object", "iothread,id=iot0", "--object", "iothread,id=iot1", "--object", "iothread,id=iot2",
                "--nbd-server", "addr.type=unix,addr.path=" + nbd,
                "--export", "type=nbd,id=nbd0,node-name=disk0,writable=on,iothread=iot0",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",writable=on,num-queues=1,iothread=iot0",
                "--qmp", qmp.toString()));

        // Guest: 4 MiB of random data to rotating offsets in [0, 32 MiB) with O_DIRECT, read back, compared.
        String workload = "end=$(( $(date +%s) + " + (SOAK_SECONDS + 2) + " ))\nrounds=0\nerrors=0\n"
                + "dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null\n"
                + "while [ $(date +%s) -lt $end ]; do\n"
                + "  seek=$(( (rounds % 8) * 4 ))\n"
                + "  dd if=/tmp/data of=/dev/vda bs=1M seek=$seek count=4 oflag=direct conv=notrunc 2>/dev/null || errors=$((errors+1))\n"
                + "  dd if=/dev/vda of=/tmp/back bs=1M skip=$seek count=4 iflag=direct 2>/dev/null || errors=$((errors+1))\n"
                + "  cmp -s /tmp/data /tmp/back || errors=$((errors+1))\n"
                + "  rounds=$((rounds+1))\n"
                + "done\n"
                + "vmmtest rounds $rounds\nvmmtest errors $errors\n"
                + "vmmtest data $(sha256sum < /tmp/data | cut -d' ' -f1)\n"
                + "dmesg | grep -ci 'I/O error' | sed 's/^/VMMTEST:ioerrors=/'\n";
        Path initrd = Initramfs.build(kernel, workload, dir.resolve("initrd.gz"));
        GuestLauncher launcher = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(vhost).consoleLog(dir.resolve("console.log"))
                .timeout(Duration.ofSeconds(200));
        guestLauncher = launcher;
        CompletableFuture<GuestRun> guest = CompletableFuture.supplyAsync(() -> {
            try {
                return launcher.run();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });

        // NBD peers, in loops until the soak is over: fio writes+verifies [64, 96) MiB, nbdcopy reads everything.
        String uri = "nbd+unix:///disk0?socket=" + nbd;
        AtomicBoolean over = new AtomicBoolean();
        ConcurrentLinkedQueue<String> peerErrors = new ConcurrentLinkedQueue<>();
        AtomicInteger fioRuns = new AtomicInteger();
        AtomicInteger copies = new AtomicInteger();
        Thread fioLoop = loop("fio", over, peerErrors, fioRuns, List.of(fio, "--name=soak", "--ioengine=nbd", "--uri=" + uri,
                "--rw=randwrite", "--bs=4k", "--iodepth=32", "--offset=64m", "--size=32m", "--io_size=16m",
                "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--randrepeat=0",
                "--output-format=terse"));
        Thread copyLoop = loop("nbdcopy", over, peerErrors, copies, List.of(nbdcopy, "--connections=2", uri, "null:"));

        // Watchdog: the node's request count must keep rising while the moves go on.
        ConcurrentLinkedQueue<String> stalls = new ConcurrentLinkedQueue<>();
        Thread watchdog = new Thread(() -> {
            long last = -1;
            int flat = 0;
            while (!over.get()) {
                long now = requests(qmp);
                if (now >= 0 && now == last && ++flat >= 3) stalls.add("no request completed for 6 s (count " + now + ")");
                if (now != last) flat = 0;
                last = now;
                sleep(2000);
            }
        }, "watchdog");
        watchdog.start();

        // The moves: a script of x-blockdev-set-iothread every 20 ms, about 36 s in all.
        Path script = dir.resolve("rotate.qmp");
        Files.writeString(script, "# rotate disk0 across three IOThreads every 20 ms\n"
                + "repeat 600\n"
                + "  x-blockdev-set-iothread node-name=disk0 iothread=iot1\n  sleep 20ms\n"
                + "  x-blockdev-set-iothread node-name=disk0 iothread=iot2\n  sleep 20ms\n"
                + "  x-blockdev-set-iothread node-name=disk0 iothread=iot0\n  sleep 20ms\n"
                + "end\n");
        Run.Result moves = vmm(List.of("qmp", "--socket", qmp.toString(), "--script", script.toString()), 200);
        over.set(true);
        fioLoop.join(60_000);
        copyLoop.join(60_000);
        watchdog.join(10_000);
        GuestRun run = guest.get(200, TimeUnit.SECONDS);
        server.assertAlive();

        String why = "--- script ---\n" + tail(moves.stdout(), 30) + moves.stderr() + "\n--- guest ---\n" + run.describe()
                + "\n--- server ---\n" + tail(server.stderr(), 40);
        assertEquals(0, moves.exit(), why);
        assertTrue(moves.stdout().contains("moves"), "script printed a summary\n" + why);
        assertEquals(List.of(), List.copyOf(peerErrors), why);
        assertEquals(List.of(), List.copyOf(stalls), why);
        assertTrue(run.succeeded(), why);
        assertEquals("0", run.result("errors"), why);
        assertEquals("0", run.result("ioerrors"), why);
        assertTrue(Integer.parseInt(run.result("rounds")) > 10, why);
        assertTrue(fioRuns.get() >= 2 && copies.get() >= 2, "fio runs " + fioRuns + ", nbdcopy runs " + copies + "\n" + why);
        // every 4 MiB slot the guest wrote holds its data (all rounds wrote the same block)
        int rounds = Integer.parseInt(run.result("rounds"));
        for (int slot = 0; slot < Math.min(rounds, 8); slot++) {
            assertEquals(run.result("data"), Images.sha256(image, slot * 4L * Images.MiB, 4 * Images.MiB), "guest slot " + slot + "\n" + why);
        }
        Run.Result stats = vmm(List.of("qmp", "--socket", qmp.toString(), "query-blockstats"), 20);
        java.util.regex.Matcher lat = java.util.regex.Pattern.compile("\"count\":(\\d+).*?\"p99-ns\":(\\d+)").matcher(stats.stdout());
        assertTrue(lat.find() && Long.parseLong(lat.group(1)) > 1000 && Long.parseLong(lat.group(2)) > 0,
                "query-blockstats reports request latencies: " + stats.stdout());
        System.out.println("[soak] latency " + lat.group(0) + "; " + tail(moves.stdout(), 6).replace('\n', ' ') + " guest rounds " + rounds
                + ", fio runs " + fioRuns + ", nbdcopy runs " + copies);
    }

    private Thread loop(String name, AtomicBoolean over, ConcurrentLinkedQueue<String> errors, AtomicInteger count, List<String> cmd) {
        Thread t = new Thread(() -> {
            while (!over.get()) {
                try {
                    Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
                    peers.add(p);
                    String out = new String(p.getInputStream().readAllBytes());
                    if (!p.waitFor(120, TimeUnit.SECONDS)) errors.add(name + " hung");
                    else if (p.exitValue() != 0) errors.add(name + " exit " + p.exitValue() + ": " + tail(out, 10));
                    else count.incrementAndGet();
                } catch (Exception e) {
                    errors.add(name + ": " + e);
                }
            }
        }, name + "-loop");
        t.start();
        return t;
    }

    /** Sum of the node's read and write operations from query-blockstats, or -1. */
    private static long requests(Path qmp) {
        Run.Result r = vmm(List.of("qmp", "--socket", qmp.toString(), "query-blockstats"), 20);
        if (r.exit() != 0) return -1;
        long sum = 0;
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("\"(rd|wr)_operations\"\\s*:\\s*(\\d+)").matcher(r.stdout());
        while (m.find()) sum += Long.parseLong(m.group(2));
        return sum;
    }

    /** Runs {@code vmm ARGS} (a subcommand other than serve) as a child JVM. */
    static Run.Result vmm(List<String> args, long timeoutSeconds) {
        List<String> cmd = new ArrayList<>(VmmProcess.commandLine(List.of()));
        cmd.remove(cmd.size() - 1); // "serve"
        cmd.addAll(args);
        return Run.cmd(cmd).timeoutSeconds(timeoutSeconds).expectAny();
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static String tail(String s, int lines) {
        String[] l = s.split("\n");
        return String.join("\n", java.util.Arrays.copyOfRange(l, Math.max(0, l.length - lines), l.length));
    }
}
