package dev.vmm.core.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Pointer;
import org.junit.jupiter.api.Test;

class LibcMemoryTest {
    @Test
    void memfdMappedTwiceSharedIsOneMemory() throws Exception {
        int fd = LibcMemory.memfdCreate("libc-memory-test");
        try {
            LibcMemory.truncate(fd, 2 * LibcMemory.pageSize());
            long a = LibcMemory.mapShared(fd, 2 * LibcMemory.pageSize(), 0, true);
            long b = LibcMemory.mapShared(fd, LibcMemory.pageSize(), LibcMemory.pageSize(), false);
            assertNotEquals(a, b);
            new Pointer(a).setInt(LibcMemory.pageSize() + 4, 0x12345678);
            assertEquals(0x12345678, new Pointer(b).getInt(4), "second mapping at offset one page sees the write");
            LibcMemory.unmap(a, 2 * LibcMemory.pageSize());
            LibcMemory.unmap(b, LibcMemory.pageSize());
        } finally {
            LibC.close(fd);
        }
    }

    @Test
    void failuresCarryErrnoAndNeverAnAddress() throws Exception {
        LibcMemory.ErrnoException e = assertThrows(LibcMemory.ErrnoException.class,
                () -> LibcMemory.mapShared(-1, 4096, 0, true));
        assertEquals(Errno.EBADF, e.errno());
        assertTrue(e.getMessage().contains("mmap") && e.getMessage().contains("errno 9"), e.getMessage());
        int fd = LibcMemory.memfdCreate("libc-memory-test");
        try {
            LibcMemory.truncate(fd, 4096);
            assertEquals(Errno.EINVAL,
                    assertThrows(LibcMemory.ErrnoException.class, () -> LibcMemory.mapShared(fd, 4096, 100, true)).errno(),
                    "unaligned offset");
            assertThrows(LibcMemory.ErrnoException.class, () -> LibcMemory.mapShared(fd, 0, 0, true));
            assertThrows(LibcMemory.ErrnoException.class, () -> LibcMemory.truncate(-1, 4096));
        } finally {
            LibC.close(fd);
        }
    }
}
