package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.RawFileDriver;
import java.nio.file.Path;
import java.time.Duration;
import java.util.function.UnaryOperator;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.io.TempDir;

/**
 * Common ground of the guest tests: one server (ours, or qemu-storage-daemon with
 * {@code -Dvmm.guest.server=qsd}) per test, one guest boot per test, failure messages that carry
 * the console tail and the server's log.
 */
abstract class GuestTestBase {
    /** SHA-256 of 1 MiB of zeros, as {@code sha256sum} prints it. */
    static final String ZERO_MIB_SHA256 = "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58";

    @TempDir
    Path dir;

    VhostUserBlkServer server;

    @BeforeEach
    void startServerObject() {
        server = VhostUserBlkServer.fromProperty(dir);
    }

    @AfterEach
    void stopServer() {
        if (server != null) server.close();
    }

    boolean isQsd() {
        return server.name().equals("qsd");
    }

    Path socket() {
        return dir.resolve("vhost.sock");
    }

    /** Starts the server on {@code export}, boots a guest running {@code workload}, checks it finished with exit 0 and no {@code error} result. */
    GuestRun boot(VhostUserBlkServer.Export export, String workload, int smp, UnaryOperator<GuestLauncher> tweak) throws Exception {
        GuestKernel kernel = TestGuests.kernel();
        server.start(export);
        Path initrd = Initramfs.build(kernel, workload, dir.resolve("initrd.gz"));
        GuestLauncher l = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(export.socket()).smp(smp)
                .numQueues(export.numQueues() == null ? 1 : export.numQueues())
                .consoleLog(dir.resolve("console.log")).timeout(Duration.ofSeconds(120));
        GuestRun run = tweak.apply(l).run();
        System.out.printf("[guest] %s %s: boot+workload %d ms%n", getClass().getSimpleName(), server.name(), run.elapsed().toMillis());
        assertTrue(run.succeeded(), why(run));
        assertEquals(null, run.result("error"), why(run));
        return run;
    }

    GuestRun boot(VhostUserBlkServer.Export export, String workload) throws Exception {
        return boot(export, workload, 1, l -> l);
    }

    /** The failure context: the run, then the server's log. */
    String why(GuestRun run) {
        return run.describe() + "\n--- results ---\n" + run.results() + "\n--- " + server.name() + " log ---\n" + server.log();
    }

    /** True if {@code [offset, offset+length)} of {@code image} is entirely a hole (SEEK_DATA finds no data in it). */
    static boolean isHole(Path image, long offset, long length) throws Exception {
        try (RawFileDriver d = RawFileDriver.open(image, true, false)) {
            BlockStatus s = new BlockStatus();
            d.status(offset, length, s);
            return (s.flags & BlockStatus.HOLE) != 0 && s.length >= length;
        }
    }

    /** busybox sh: {@code vmmtest KEY <sha256 of LEN bytes of /dev/vda at OFF, read with O_DIRECT in blocks of BS>}. */
    static String readSha(String key, long bs, long offset, long length) {
        if (offset % bs != 0 || length % bs != 0) throw new IllegalArgumentException("test bug: unaligned range");
        return String.format("vmmtest %s $(dd if=/dev/vda bs=%d skip=%d count=%d iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)%n",
                key, bs, offset / bs, length / bs);
    }
}
