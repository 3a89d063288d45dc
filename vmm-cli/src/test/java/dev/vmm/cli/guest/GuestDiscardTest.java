package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * Discard and write-zeroes from a real guest. The guest fills MiB 8..15 of the disk with random
 * data (O_DIRECT), then:
 *
 * <ul>
 *   <li>MiB 9-10: {@code blkdiscard} (BLKDISCARD: virtio-blk DISCARD);</li>
 *   <li>MiB 12: {@code ioctl(BLKZEROOUT)} (WRITE_ZEROES without UNMAP), through {@link BlockSyscall}
 *       since busybox's blkdiscard has no {@code -z};</li>
 *   <li>MiB 14: {@code fallocate(PUNCH_HOLE)} on /dev/vda (WRITE_ZEROES with UNMAP);</li>
 * </ul>
 *
 * and reads every MiB back with O_DIRECT. The host checks that the guest read what the image
 * holds, that the three ranges read as zeros and the others kept their data, and that the
 * discarded and unmapped ranges are holes in the image.
 *
 * <p>qemu-storage-daemon ignores discards unless the blockdev says {@code discard=unmap}; ours
 * does not take that option (it always punches holes), so only the reference gets it.
 */
class GuestDiscardTest extends GuestTestBase {
    static final long MiB = Images.MiB;
    static final int FIRST = 8;
    static final int COUNT = 8;

    @Test
    void discardAndWriteZeroes() throws Exception {
        Path image = Images.sparse(dir.resolve("disk.img"), 64 * MiB);
        VhostUserBlkServer.Export export = new VhostUserBlkServer.Export(image, socket(), true, 1);
        export = export.withBlockdevOptions("discard=unmap"); // the same command line for both servers

        StringBuilder w = new StringBuilder();
        for (String attr : List.of("discard_max_bytes", "discard_granularity", "write_zeroes_max_bytes", "discard_zeroes_data")) {
            w.append("vmmtest ").append(attr).append(" $(cat /sys/block/vda/queue/").append(attr).append(")\n");
        }
        w.append(BlockSyscall.shellInstall(BlockSyscall.zeroOut("/dev/vda", 12 * MiB, MiB), "/bin/zeroout"));
        w.append(BlockSyscall.shellInstall(BlockSyscall.punchHole("/dev/vda", 14 * MiB, MiB), "/bin/punch"));
        w.append(String.format("dd if=/dev/urandom of=/dev/vda bs=1M seek=%d count=%d iflag=fullblock oflag=direct 2>/tmp/err"
                + " || vmmtest error \"write $(cat /tmp/err)\"%n", FIRST, COUNT));
        for (int m = FIRST; m < FIRST + COUNT; m++) w.append(readSha("before" + m, MiB, m * MiB, MiB));
        w.append(String.format("blkdiscard -o %d -l %d /dev/vda 2>/tmp/err || vmmtest error \"blkdiscard $(cat /tmp/err)\"%n", 9 * MiB, 2 * MiB));
        w.append("/bin/zeroout; vmmtest zeroout_rc $?\n");
        w.append("/bin/punch; vmmtest punch_rc $?\n");
        w.append("echo 3 > /proc/sys/vm/drop_caches\n");
        for (int m = FIRST; m < FIRST + COUNT; m++) w.append(readSha("after" + m, MiB, m * MiB, MiB));

        GuestRun run = boot(export, w.toString());
        String why = why(run);
        System.out.printf("[guest] %s: discard_max_bytes %s, discard_granularity %s, write_zeroes_max_bytes %s%n", server.name(),
                run.result("discard_max_bytes"), run.result("discard_granularity"), run.result("write_zeroes_max_bytes"));
        assertNotEquals("0", run.result("discard_max_bytes"), "the guest sees no discard support\n" + why);
        assertNotEquals("0", run.result("write_zeroes_max_bytes"), "the guest sees no write-zeroes support\n" + why);
        assertEquals("0", run.result("zeroout_rc"), "BLKZEROOUT failed with this errno\n" + why);
        assertEquals("0", run.result("punch_rc"), "fallocate(PUNCH_HOLE) on /dev/vda failed with this errno\n" + why);

        List<String> problems = new ArrayList<>();
        for (int m = FIRST; m < FIRST + COUNT; m++) {
            boolean zeroed = m == 9 || m == 10 || m == 12 || m == 14;
            String before = run.result("before" + m);
            String after = run.result("after" + m);
            String host = Images.sha256(image, m * MiB, MiB);
            assertNotNull(after, why);
            System.out.printf("[guest] MiB %2d %-9s before %.16s after %.16s image %.16s%n", m,
                    m == 12 ? "zeroout" : m == 14 ? "punch" : zeroed ? "discard" : "kept", before, after, host);
            if (!after.equals(host)) problems.add("MiB " + m + ": the guest read " + after + ", the image holds " + host);
            if (zeroed && !after.equals(ZERO_MIB_SHA256)) problems.add("MiB " + m + " does not read as zeros: " + after);
            if (!zeroed && !after.equals(before)) problems.add("MiB " + m + " changed: " + before + " -> " + after);
            if (before.equals(ZERO_MIB_SHA256)) problems.add("MiB " + m + " was not written");
        }
        assertEquals(List.of(), problems, why);
        assertTrue(isHole(image, 9 * MiB, 2 * MiB), "the discarded range is not a hole in the image\n" + why);
        assertTrue(isHole(image, 14 * MiB, MiB), "the range zeroed with UNMAP is not a hole in the image\n" + why);
        assertTrue(!isHole(image, 8 * MiB, MiB) && !isHole(image, 11 * MiB, MiB), "test bug: kept data reads as a hole");
    }
}
