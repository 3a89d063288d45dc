package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link GuestBootTest}'s workload on a packed virtqueue (virtio 1.2 §2.8): QEMU's
 * {@code vhost-user-blk-pci,packed=on} makes the guest's driver use VIRTIO_F_RING_PACKED, which
 * the guest confirms (bit 34 of its negotiated features), and the data must round-trip as on
 * split rings. qemu-storage-daemon does not offer packed rings, so this runs against ours only.
 */
class PackedRingGuestTest {
    @TempDir
    Path dir;

    VhostUserBlkServer server;

    @BeforeEach
    void startServer() {
        server = VhostUserBlkServer.fromProperty(dir);
    }

    @AfterEach
    void stopServer() {
        if (server != null) server.close();
    }

    @ParameterizedTest(name = "{0} queue(s)")
    @ValueSource(ints = {1, 2})
    void writesAndReadsBackOnAPackedRing(int queues) throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue("vmm".equals(server.name()), "the reference has no packed rings");
        GuestKernel kernel = TestGuests.kernel();
        long size = GuestBootTest.IMAGE_SIZE;
        Path image = Images.sparse(dir.resolve("disk.img"), size);
        Path socket = dir.resolve("vhost.sock");
        server.start(new VhostUserBlkServer.Export(image, socket, true, queues));
        List<GuestBootTest.Range> ranges = GuestBootTest.ranges(size);
        Path initrd = Initramfs.build(kernel,
                "vmmtest mq $(ls /sys/block/vda/mq | wc -l)\n"
                + "vmmtest features $(cat /sys/block/vda/device/features)\n"
                + GuestBootTest.workload(ranges), dir.resolve("initrd.gz"));
        GuestRun run = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(socket).smp(queues).numQueues(queues)
                .deviceOption("packed=on")
                .consoleLog(dir.resolve("console.log")).timeout(Duration.ofSeconds(120)).run();
        System.out.printf("[guest] packed ring, %d queue(s): boot+workload %d ms%n", queues, run.elapsed().toMillis());

        String why = run.describe() + "\n--- " + server.name() + " log ---\n" + server.log();
        assertTrue(run.succeeded(), why);
        assertNull(run.result("error"), why);
        assertEquals(Long.toString(size), run.result("size"), why);
        assertEquals(Integer.toString(queues), run.result("mq"), why);
        String features = run.result("features"); // one character per bit, bit 0 first
        assertNotNull(features, why);
        assertEquals('1', features.charAt(34), "VIRTIO_F_RING_PACKED negotiated: " + features);
        for (int i = 0; i < ranges.size(); i++) {
            GuestBootTest.Range r = ranges.get(i);
            String written = run.result("w" + i);
            assertNotNull(written, why);
            assertEquals(written, run.result("r" + i), "range " + i + " read back\n" + why);
            assertEquals(written, Images.sha256(image, r.offset(), r.length()), "range " + i + " in the image\n" + why);
        }
    }
}
