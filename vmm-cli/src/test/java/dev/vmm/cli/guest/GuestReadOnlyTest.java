package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import dev.vmm.cli.it.Images;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * A read-only export ({@code writable=off}): the guest sees {@code /sys/block/vda/ro = 1}, reads
 * work and match the image, and nothing it tries changes the image: a direct write (refused by
 * the guest kernel at open), the same after {@code blockdev --setrw} (which, if the kernel lets
 * it through, reaches the device and must get an I/O error), discard and BLKZEROOUT.
 */
class GuestReadOnlyTest extends GuestTestBase {
    static final long MiB = Images.MiB;

    @Test
    void readOnlyExportRefusesWrites() throws Exception {
        Path image = Images.sparse(dir.resolve("disk.img"), 16 * MiB);
        Images.fill(image, 0, (int) (2 * MiB), 42);
        Images.fill(image, 15 * MiB, (int) MiB, 43);
        String before = Images.sha256(image);
        VhostUserBlkServer.Export export = new VhostUserBlkServer.Export(image, socket(), false, 1);

        String tryWrite = "dd if=/tmp/w of=/dev/vda bs=4096 seek=16 count=1 oflag=direct conv=notrunc 2>/tmp/err";
        String w = "vmmtest ro $(cat /sys/block/vda/ro)\n"
                + BlockSyscall.shellInstall(BlockSyscall.zeroOut("/dev/vda", 0, MiB), "/bin/zeroout")
                + readSha("r0", 4096, 0, 2 * MiB)
                + readSha("r15", 65536, 15 * MiB, MiB)
                + "dd if=/dev/urandom of=/tmp/w bs=4096 count=1 2>/dev/null\n"
                + tryWrite + "; vmmtest write_rc $?; vmmtest write_err \"$(head -1 /tmp/err)\"\n"
                + "blockdev --setrw /dev/vda 2>/tmp/err; vmmtest setrw_rc $?\n"
                + "vmmtest ro_after_setrw $(cat /sys/block/vda/ro)\n"
                + tryWrite + "; vmmtest write2_rc $?; vmmtest write2_err \"$(head -1 /tmp/err)\"\n"
                + "blkdiscard -o 0 -l 1048576 /dev/vda 2>/dev/null; vmmtest discard_rc $?\n"
                + "/bin/zeroout; vmmtest zeroout_rc $?\n"
                + "blockdev --setro /dev/vda\n"
                + "echo 3 > /proc/sys/vm/drop_caches\n"
                + readSha("r0again", 4096, 0, 2 * MiB);

        GuestRun run = boot(export, w);
        String why = why(run);
        System.out.printf("[guest] %s read-only: ro=%s, write rc %s (%s), setrw rc %s, ro after setrw %s, write after setrw rc %s (%s),"
                        + " discard rc %s, BLKZEROOUT rc %s%n", server.name(), run.result("ro"), run.result("write_rc"), run.result("write_err"),
                run.result("setrw_rc"), run.result("ro_after_setrw"), run.result("write2_rc"), run.result("write2_err"),
                run.result("discard_rc"), run.result("zeroout_rc"));
        assertEquals("1", run.result("ro"), why);
        assertEquals(Images.sha256(image, 0, 2 * MiB), run.result("r0"), "reads do not match the image\n" + why);
        assertEquals(Images.sha256(image, 15 * MiB, MiB), run.result("r15"), "reads do not match the image\n" + why);
        assertEquals(run.result("r0"), run.result("r0again"), why);
        for (String rc : new String[] {"write_rc", "write2_rc", "discard_rc", "zeroout_rc"}) {
            assertNotNull(run.result(rc), why);
            assertNotEquals("0", run.result(rc), rc + ": a write to the read-only disk succeeded\n" + why);
        }
        assertEquals(before, Images.sha256(image), "the image changed\n" + why);
    }
}
