package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import dev.vmm.cli.it.VmmProcess;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Our backend is killed (SIGKILL) while a guest writes with O_DIRECT and started again on the
 * same socket; QEMU reconnects ({@code reconnect=1}), the requests that were in flight are
 * resubmitted from the in-flight area (INFLIGHT_SHMFD), and the guest finishes without an I/O
 * error with every byte verified. qemu-storage-daemon has no in-flight tracking, so this test
 * runs against ours only.
 */
@Timeout(240)
class GuestBackendRestartTest {
    static final long IMAGE_SIZE = 64 * Images.MiB;
    static final int DATA_MIB = 24;

    @TempDir
    Path dir;
    VmmProcess first;
    VmmProcess second;

    /** The guest's QEMU runs on another thread: a failed assertion must not leave it running. */
    GuestLauncher guestLauncher;

    @AfterEach
    void stop() {
        if (guestLauncher != null) guestLauncher.destroy();
        if (first != null) first.close();
        if (second != null) second.close();
    }

    @Test
    void guestWritesSurviveABackendKilledMidIo() throws Exception {
        killMidIoAndRestart(false);
    }

    /**
     * The same on a packed ring ({@code packed=on}): the second backend takes the ring positions
     * from the in-flight area (QEMU's SET_VRING_BASE is stale for a packed ring after a crash) and
     * resubmits from the descriptors recorded there.
     */
    @Test
    void guestWritesOnAPackedRingSurviveABackendKilledMidIo() throws Exception {
        killMidIoAndRestart(true);
    }

    private void killMidIoAndRestart(boolean packed) throws Exception {
        GuestKernel kernel = TestGuests.kernel();
        Path image = Images.sparse(dir.resolve("disk.img"), IMAGE_SIZE);
        Path socket = dir.resolve("vhost.sock");
        var export = VhostUserBlkServer.Export.writable(image, socket);
        first = VmmProcess.start(dir, "restart-first", export.args());

        // 4 KiB O_DIRECT writes: thousands of requests, so the kill lands in the middle of them.
        String workload = "dd if=/dev/urandom of=/tmp/data bs=1M count=" + DATA_MIB + " 2>/dev/null\n"
                + "vmmtest w $(sha256sum < /tmp/data | cut -d' ' -f1)\n"
                + "vmmtest started 1\n"
                + "dd if=/tmp/data of=/dev/vda bs=4k oflag=direct conv=notrunc 2>/tmp/err || vmmtest error \"write $(cat /tmp/err)\"\n"
                + "vmmtest written 1\n"
                + "dd if=/dev/vda bs=1M count=" + DATA_MIB + " iflag=direct 2>/tmp/err > /tmp/back || vmmtest error \"read $(cat /tmp/err)\"\n"
                + "vmmtest r $(sha256sum < /tmp/back | cut -d' ' -f1)\n"
                + "dmesg | grep -ci 'I/O error' | sed 's/^/VMMTEST:ioerrors=/'\n";
        Path initrd = Initramfs.build(kernel, workload, dir.resolve("initrd.gz"));
        Path console = dir.resolve("console.log");
        GuestLauncher launcher = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(socket).reconnect(true)
                .consoleLog(console).timeout(Duration.ofSeconds(180));
        if (packed) launcher.deviceOption("packed=on");
        guestLauncher = launcher;
        CompletableFuture<GuestRun> guest = CompletableFuture.supplyAsync(() -> {
            try {
                return launcher.run();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });

        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        while (!consoleHas(console, "VMMTEST:started=1")) {
            assertTrue(System.nanoTime() < deadline && !guest.isDone(), "guest never started writing:\n" + read(console));
            Thread.sleep(50);
        }
        Thread.sleep(700); // well into the writes
        boolean midIo = !consoleHas(console, "VMMTEST:written=1");
        first.kill();
        String firstLog = first.stderr();
        second = VmmProcess.start(dir, "restart-second", export.args());

        GuestRun run = guest.get(200, TimeUnit.SECONDS);
        String why = run.describe() + "\n--- first backend ---\n" + firstLog + "\n--- second backend ---\n" + second.stderr();
        assertTrue(midIo, "the kill came after the writes finished; the test proves nothing\n" + why);
        assertTrue(run.succeeded(), why);
        assertNull(run.result("error"), why);
        assertEquals("0", run.result("ioerrors"), why);
        String host = Images.sha256(image, 0, DATA_MIB * Images.MiB);
        assertEquals(run.result("w"), run.result("r"), why);
        assertEquals(run.result("w"), host, "image file differs from what the guest wrote\n" + why);
        assertTrue(second.stderr().contains("front-end connected"), "QEMU did not reconnect\n" + why);
    }

    private static boolean consoleHas(Path console, String s) {
        return read(console).contains(s);
    }

    private static String read(Path p) {
        try {
            return Files.exists(p) ? Files.readString(p) : "";
        } catch (java.io.IOException e) {
            return "";
        }
    }
}
