package dev.vmm.core.linux;

import static dev.vmm.core.testing.NativeBuffers.address;
import static dev.vmm.core.testing.NativeBuffers.allocate;
import static dev.vmm.core.testing.NativeBuffers.assertBytes;
import static dev.vmm.core.testing.NativeBuffers.fillPattern;
import static dev.vmm.core.testing.NativeBuffers.pattern;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class LibCTest {
    @TempDir
    Path dir;

    @Test
    void errnoComesBackThroughLastErrorException() {
        LastErrorException e = assertThrows(LastErrorException.class,
                () -> LibC.open(dir.resolve("missing").toString(), LibC.O_RDONLY | LibC.O_CLOEXEC));
        assertEquals(Errno.ENOENT, e.getErrorCode());
        assertEquals("No such file or directory (errno 2)", LibC.describe(Errno.ENOENT));
    }

    @Test
    void preadPwriteSeekDataAndStatx() throws Exception {
        Path f = dir.resolve("f");
        try (RandomAccessFile raf = new RandomAccessFile(f.toFile(), "rw")) {
            raf.setLength(1 << 20);
        }
        int fd = LibC.open(f.toString(), LibC.O_RDWR | LibC.O_CLOEXEC);
        try (Memory buf = allocate(8192); Memory stx = allocate(LibC.STATX_SIZEOF)) {
            fillPattern(buf, 0, 4096, 1, 0);
            assertEquals(4096, LibC.pwrite(fd, address(buf), 4096, 65536));
            assertEquals(4096, LibC.pread(fd, address(buf) + 4096, 4096, 65536));
            assertBytes(pattern(1, 0, 4096), buf, 4096, "pread after pwrite");
            assertEquals(0, LibC.pread(fd, address(buf), 10, 1 << 20), "EOF");
            assertEquals(65536, LibC.lseek(fd, 0, LibC.SEEK_DATA));
            assertEquals(65536 + 4096, LibC.lseek(fd, 65536, LibC.SEEK_HOLE));
            assertEquals(Errno.ENXIO, assertThrows(LastErrorException.class,
                    () -> LibC.lseek(fd, 65536 + 4096, LibC.SEEK_DATA)).getErrorCode(), "no data after the island");
            assertEquals(1 << 20, LibC.lseek(fd, 0, LibC.SEEK_END));
            LibC.statx(fd, "", LibC.AT_EMPTY_PATH, LibC.STATX_TYPE | LibC.STATX_SIZE, address(stx));
            assertEquals(LibC.S_IFREG, stx.getShort(LibC.STATX_OFF_MODE) & LibC.S_IFMT);
            assertEquals(1 << 20, stx.getLong(LibC.STATX_OFF_SIZE));
            assertEquals(Errno.EBADF, assertThrows(LastErrorException.class,
                    () -> LibC.pread(-1, address(buf), 1, 0)).getErrorCode());
            assertTrue(LibC.posix_fadvise(fd, 0, 4096, LibC.POSIX_FADV_WILLNEED) == 0);
        } finally {
            LibC.close(fd);
        }
    }
}
