package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A real Linux guest (QEMU, TCG) on the vhost-user-blk export of the server under test:
 * qemu-storage-daemon by default for now, ours with {@code -Dvmm.guest.server=vmm}.
 *
 * <p>The guest checks the disk size, writes random data with O_DIRECT at several offsets
 * (including the last sector), drops its caches, reads every range back with O_DIRECT and prints
 * the SHA-256 of what it wrote and what it read; the host compares both with the image file.
 * One boot plus workload takes about 6 s here.
 */
class GuestBootTest {
    static final long IMAGE_SIZE = 64 * Images.MiB + 512 * 7; // not a power of two: the last sector is 512-aligned only

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

    /** A range the guest writes and reads back: {@code count} blocks of {@code bs} bytes at block {@code block}. */
    record Range(long bs, long block, long count) {
        long offset() {
            return bs * block;
        }

        long length() {
            return bs * count;
        }
    }

    static List<Range> ranges(long size) {
        return List.of(
                new Range(4096, 0, 1),                      // first block
                new Range(512, 11, 1),                      // one sector, not 4k-aligned
                new Range(65536, 17, 1),                    // 64 KiB
                new Range(1 << 20, 40, 1),                  // 1 MiB: several segments per request
                new Range(4096, 300, 8),                    // 8 sequential 4k requests
                new Range(512, size / 512 - 1, 1));         // the last sector
    }

    /** The guest side: report size, write each range, drop caches, read each range back. */
    static String workload(List<Range> ranges) {
        StringBuilder sb = new StringBuilder();
        sb.append("vmmtest size $(blockdev --getsize64 /dev/vda)\n");
        for (int i = 0; i < ranges.size(); i++) {
            Range r = ranges.get(i);
            sb.append(String.format(
                    "dd if=/dev/urandom of=/tmp/w%1$d bs=%2$d count=%4$d iflag=fullblock 2>/dev/null%n"
                    + "dd if=/tmp/w%1$d of=/dev/vda bs=%2$d seek=%3$d count=%4$d oflag=direct conv=notrunc 2>/tmp/err || vmmtest error \"write%1$d $(cat /tmp/err)\"%n"
                    + "vmmtest w%1$d $(sha256sum < /tmp/w%1$d | cut -d' ' -f1)%n",
                    i, r.bs(), r.block(), r.count()));
        }
        sb.append("sync\necho 3 > /proc/sys/vm/drop_caches\n");
        for (int i = 0; i < ranges.size(); i++) {
            Range r = ranges.get(i);
            sb.append(String.format(
                    "dd if=/dev/vda bs=%2$d skip=%3$d count=%4$d iflag=direct 2>/tmp/err > /tmp/r%1$d || vmmtest error \"read%1$d $(cat /tmp/err)\"%n"
                    + "vmmtest r%1$d $(sha256sum < /tmp/r%1$d | cut -d' ' -f1)%n",
                    i, r.bs(), r.block(), r.count()));
        }
        return sb.toString();
    }

    @Test
    void writesAndReadsBackWithODirect() throws Exception {
        bootAndVerify(1, 1);
    }

    @Test
    void multiQueueWithTwoVcpus() throws Exception {
        GuestRun run = bootAndVerify(2, 2);
        assertEquals("2", run.result("mq"), run.describe());
    }

    private GuestRun bootAndVerify(int smp, int queues) throws Exception {
        GuestKernel kernel = TestGuests.kernel();
        Path image = Images.sparse(dir.resolve("disk.img"), IMAGE_SIZE);
        Path socket = dir.resolve("vhost.sock");
        // the export must offer the queues: qemu-storage-daemon's default num-queues is 1, and QEMU
        // refuses a backend with fewer queues than the device asks for
        server.start(new VhostUserBlkServer.Export(image, socket, true, queues));

        List<Range> ranges = ranges(IMAGE_SIZE);
        for (int i = 0; i < ranges.size(); i++) {
            for (int j = i + 1; j < ranges.size(); j++) {
                Range a = ranges.get(i);
                Range b = ranges.get(j);
                assertTrue(a.offset() + a.length() <= b.offset() || b.offset() + b.length() <= a.offset(),
                        "test bug: ranges " + i + " and " + j + " overlap");
            }
        }
        long t0 = System.nanoTime();
        Path initrd = Initramfs.build(kernel, "vmmtest mq $(ls /sys/block/vda/mq | wc -l)\n" + workload(ranges),
                dir.resolve("initrd.gz"));
        long built = System.nanoTime();
        GuestRun run = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(socket).smp(smp).numQueues(queues)
                .consoleLog(dir.resolve("console.log")).timeout(Duration.ofSeconds(120)).run();
        System.out.printf("[guest] %s, smp %d, %d queue(s): initramfs %d ms, boot+workload %d ms%n", server.name(), smp, queues,
                (built - t0) / 1_000_000, run.elapsed().toMillis());

        String why = run.describe() + "\n--- " + server.name() + " log ---\n" + server.log();
        assertTrue(run.succeeded(), why);
        assertEquals(null, run.result("error"), why);
        assertEquals(Long.toString(IMAGE_SIZE), run.result("size"), why);
        List<String> mismatches = new ArrayList<>();
        for (int i = 0; i < ranges.size(); i++) {
            Range r = ranges.get(i);
            String written = run.result("w" + i);
            String read = run.result("r" + i);
            String host = Images.sha256(image, r.offset(), r.length());
            assertNotNull(written, why);
            if (!written.equals(read) || !written.equals(host)) {
                mismatches.add(String.format("range %d (%d bytes at %d): written %s, read back %s, image %s",
                        i, r.length(), r.offset(), written, read, host));
            }
        }
        assertEquals(List.of(), mismatches, why);
        return run;
    }
}
