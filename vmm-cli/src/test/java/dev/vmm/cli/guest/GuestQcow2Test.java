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
 * Issue 11's guest scenario: a Linux guest boots from vhost-user-blk on a qcow2 overlay over a raw
 * base, and runs a verified write/read workload while nbdcopy reads the same disk over NBD and a
 * QMP script moves the graph (qcow2 node, its file node, the backing raw node and its file node)
 * across IOThreads every 20 ms.
 *
 * <p>The workload makes the qcow2 driver do its real work: 4 KiB writes into clusters that exist
 * only in the base (copy-on-write of the rest of the cluster from the backing file), each checked
 * against the cluster read before the write; whole-cluster writes read back; reads beyond the
 * backing file's end (zeros). Afterwards {@code qemu-img check} must call the overlay clean, the
 * base must be untouched, and the overlay (converted to raw on the host) must hold what the guest
 * last wrote.
 */
@Timeout(300)
class GuestQcow2Test {
    static final long DISK = 128 * Images.MiB;
    static final long BASE = 32 * Images.MiB;
    static final int SECONDS = 20;

    @TempDir Path dir;
    VmmProcess server;
    final List<Process> peers = new ArrayList<>();
    GuestLauncher guestLauncher;

    @AfterEach
    void stop() {
        if (guestLauncher != null) guestLauncher.destroy();
        for (Process p : peers) p.destroyForcibly();
        if (server != null) server.close();
    }

    @Test
    void guestOnQcow2OverlayOverRawBaseWhileTheGraphMovesAndNbdReads() throws Exception {
        GuestKernel kernel = TestGuests.kernel();
        String qemuImg = Peers.require("qemu-img");
        String nbdcopy = Peers.require("nbdcopy");
        Path base = dir.resolve("base.raw");
        Files.write(base, Images.data(11, (int) BASE));
        String baseSha = Images.sha256(base);
        Path overlay = dir.resolve("overlay.qcow2");
        Run.cmd(qemuImg, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", overlay.toString(), String.valueOf(DISK))
                .dir(dir).timeoutSeconds(30).expect(0);
        Path vhost = dir.resolve("vhost.sock");
        Path nbd = dir.resolve("nbd.sock");
        Path qmp = dir.resolve("qmp.sock");
        server = VmmProcess.start(dir, "qcow2-guest", List.of(
                "--blockdev", "driver=file,node-name=f0,filename=" + overlay + ",cache.direct=on",
                "--blockdev", "driver=qcow2,node-name=disk0,file=f0",
                "--object", "iothread,id=iot0", "--object", "iothread,id=iot1",
                "--nbd-server", "addr.type=unix,addr.path=" + nbd,
                "--export", "type=nbd,id=nbd0,node-name=disk0,writable=off,iothread=iot0",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",writable=on,num-queues=1,iothread=iot0",
                "--qmp", qmp.toString()));

        // The guest: the base's sha through the overlay; then rounds of (a) a 4 KiB write into a
        // cluster that so far lives in the base only, checked against the 64 KiB cluster read before
        // it, and (b) 1 MiB written to a rotating slot past the base's end and read back.
        String workload = "base=$(dd if=/dev/vda bs=1M count=" + (BASE / Images.MiB) + " iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)\n"
                + "vmmtest base $base\n"
                + "tail=$(dd if=/dev/vda bs=1M skip=" + (BASE / Images.MiB) + " count=8 iflag=direct 2>/dev/null | tr -d '\\000' | wc -c)\n"
                + "vmmtest tailnonzero $tail\n"
                + "end=$(( $(date +%s) + " + SECONDS + " ))\nrounds=0\nerrors=0\n"
                + "dd if=/dev/urandom of=/tmp/slot bs=1M count=1 2>/dev/null\n"
                + "while [ $(date +%s) -lt $end ] && [ $rounds -lt 400 ]; do\n"
                + "  c=$(( rounds * 7 % 500 ))\n"  // distinct 64 KiB clusters of the base (32 MiB = 512 clusters)
                + "  dd if=/dev/vda of=/tmp/before bs=64k skip=$c count=1 iflag=direct 2>/dev/null || errors=$((errors+1))\n"
                + "  dd if=/dev/urandom of=/tmp/small bs=4k count=1 2>/dev/null\n"
                + "  k=$(( rounds % 15 + 1 ))\n"
                + "  dd if=/tmp/small of=/dev/vda bs=4k seek=$(( c * 16 + k )) count=1 oflag=direct conv=notrunc 2>/dev/null || errors=$((errors+1))\n"
                + "  dd if=/tmp/small of=/tmp/before bs=4k seek=$k count=1 conv=notrunc 2>/dev/null\n"
                + "  dd if=/dev/vda of=/tmp/after bs=64k skip=$c count=1 iflag=direct 2>/dev/null || errors=$((errors+1))\n"
                + "  cmp -s /tmp/before /tmp/after || { errors=$((errors+1)); echo cow mismatch cluster $c; }\n"
                + "  s=$(( " + (BASE / Images.MiB) + " + rounds % 16 ))\n"
                + "  dd if=/tmp/slot of=/dev/vda bs=1M seek=$s count=1 oflag=direct conv=notrunc 2>/dev/null || errors=$((errors+1))\n"
                + "  dd if=/dev/vda of=/tmp/back bs=1M skip=$s count=1 iflag=direct 2>/dev/null || errors=$((errors+1))\n"
                + "  cmp -s /tmp/slot /tmp/back || errors=$((errors+1))\n"
                + "  rounds=$((rounds+1))\n"
                + "done\n"
                + "sync\n"
                + "vmmtest rounds $rounds\nvmmtest errors $errors\n"
                + "vmmtest slot $(sha256sum < /tmp/slot | cut -d' ' -f1)\n"
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

        AtomicBoolean over = new AtomicBoolean();
        ConcurrentLinkedQueue<String> peerErrors = new ConcurrentLinkedQueue<>();
        AtomicInteger copies = new AtomicInteger();
        String uri = "nbd+unix:///disk0?socket=" + nbd;
        Thread copyLoop = new Thread(() -> {
            while (!over.get()) {
                try {
                    Process p = new ProcessBuilder(nbdcopy, uri, "null:").redirectErrorStream(true).start();
                    peers.add(p);
                    String out = new String(p.getInputStream().readAllBytes());
                    if (!p.waitFor(120, TimeUnit.SECONDS)) peerErrors.add("nbdcopy hung");
                    else if (p.exitValue() != 0) peerErrors.add("nbdcopy exit " + p.exitValue() + ": " + out);
                    else copies.incrementAndGet();
                } catch (Exception e) {
                    peerErrors.add("nbdcopy: " + e);
                }
            }
        }, "nbdcopy-loop");
        copyLoop.start();

        Path script = dir.resolve("rotate.qmp");
        Files.writeString(script, "# move the qcow2 graph (and its backing) between two IOThreads every 20 ms\n"
                + "repeat 400\n"
                + "  x-blockdev-set-iothread node-name=disk0 iothread=iot1\n  sleep 20ms\n"
                + "  x-blockdev-set-iothread node-name=disk0 iothread=iot0\n  sleep 20ms\n"
                + "end\n");
        Run.Result moves = GuestHandoffSoakTest.vmm(List.of("qmp", "--socket", qmp.toString(), "--script", script.toString()), 200);
        GuestRun run = guest.get(200, TimeUnit.SECONDS);
        over.set(true);
        copyLoop.join(60_000);
        server.assertAlive();
        String why = "--- script ---\n" + moves.stdout().lines().reduce("", (a, b) -> b) + moves.stderr() + "\n--- guest ---\n"
                + run.describe() + "\n--- server ---\n" + server.stderr();
        assertEquals(0, server.stop(), why);
        server = null;

        assertEquals(0, moves.exit(), why);
        assertEquals(List.of(), List.copyOf(peerErrors), why);
        assertTrue(run.succeeded(), why);
        assertEquals(baseSha, run.result("base"), "the base reads through the overlay\n" + why);
        assertEquals("0", run.result("tailnonzero"), "past the base's end the overlay reads zeros\n" + why);
        assertEquals("0", run.result("errors"), why);
        assertEquals("0", run.result("ioerrors"), why);
        int rounds = Integer.parseInt(run.result("rounds"));
        assertTrue(rounds > 10, why);
        assertTrue(copies.get() >= 2, "nbdcopy runs " + copies + "\n" + why);

        Run.Result check = Run.cmd(qemuImg, "check", overlay.toString()).timeoutSeconds(60).expectAny();
        assertEquals(0, check.exit(), "qemu-img check on the overlay\n" + check.describe());
        assertEquals(baseSha, Images.sha256(base), "the backing file was not written");
        Path flat = dir.resolve("flat.raw");
        Run.cmd(qemuImg, "convert", "-O", "raw", overlay.toString(), flat.toString()).timeoutSeconds(60).expect(0);
        for (int s = 0; s < Math.min(rounds, 16); s++) {
            assertEquals(run.result("slot"), Images.sha256(flat, BASE + s * Images.MiB, (int) Images.MiB), "slot " + s);
        }
        System.out.println("[qcow2-guest] rounds " + rounds + ", nbdcopy runs " + copies + "; " + moves.stdout().lines().reduce("", (a, b) -> b));
    }
}
