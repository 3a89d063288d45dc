package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledOnOs;
import org.junit.jupiter.api.condition.OS;
import org.junit.jupiter.api.io.TempDir;

/** The hand-built {@link BlockSyscall} programs run on the host (x86-64 Linux) against a regular file. */
@EnabledOnOs(value = OS.LINUX, architectures = {"amd64", "x86_64"})
class GuestSyscallHelperTest {
    @TempDir
    Path dir;

    private int run(byte[] program) throws Exception {
        Path exe = dir.resolve("prog");
        Files.write(exe, program);
        Files.setPosixFilePermissions(exe, PosixFilePermissions.fromString("rwx------"));
        Process p = new ProcessBuilder(exe.toString()).inheritIO().start();
        assertTrue(p.waitFor(10, TimeUnit.SECONDS));
        return p.exitValue();
    }

    @Test
    void punchHoleZeroesAFileRange() throws Exception {
        Path f = dir.resolve("data");
        Images.sparse(f, 1 << 20);
        Images.fill(f, 0, 1 << 20, 7);
        assertEquals(0, run(BlockSyscall.punchHole(f.toString(), 65536, 131072)));
        assertTrue(Images.isZero(f, 65536, 131072));
        assertTrue(!Images.isZero(f, 0, 65536) && !Images.isZero(f, 196608, 65536));
        assertEquals(1 << 20, Files.size(f));
    }

    @Test
    void zeroRangeZeroesAFileRange() throws Exception {
        Path f = dir.resolve("data");
        Images.sparse(f, 1 << 20);
        Images.fill(f, 0, 1 << 20, 7);
        assertEquals(0, run(BlockSyscall.zeroRange(f.toString(), 4096, 8192)));
        assertTrue(Images.isZero(f, 4096, 8192));
    }

    @Test
    void errorsBecomeTheExitCode() throws Exception {
        Path f = dir.resolve("data");
        Images.sparse(f, 4096);
        assertEquals(25, run(BlockSyscall.zeroOut(f.toString(), 0, 4096)), "ioctl on a file: ENOTTY");
        assertEquals(2, run(BlockSyscall.zeroOut(dir.resolve("missing").toString(), 0, 4096)), "open: ENOENT");
    }
}
