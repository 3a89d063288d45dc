package dev.vmm.virtio.memory;

import dev.vmm.core.linux.Errno;

import dev.vmm.core.memory.RawMemory;
import static org.junit.jupiter.api.Assertions.*;

import com.sun.jna.LastErrorException;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcMemory;

class GuestMemoryTest {
    private static final long A_GPA = 0x10_0000L, A_UVA = 0x7f00_0000_0000L, SIZE = 0x10000L;
    private static final long B_GPA = A_GPA + SIZE, B_UVA = A_UVA + SIZE;

    private final GuestMemory mem = new GuestMemory();

    @AfterEach
    void tearDown() { mem.close(); }

    private static int memfd(long size) throws Exception {
        int fd = LibcMemory.memfdCreate("gm-test");
        LibcMemory.truncate(fd, size);
        return fd;
    }

    private void addAB() throws Exception {
        mem.addRegion(memfd(SIZE), A_GPA, SIZE, A_UVA, 0);
        mem.addRegion(memfd(SIZE), B_GPA, SIZE, B_UVA, 0);
    }

    @Test
    void firstAndLastByteOfRegionTranslate() throws Exception {
        addAB();
        long first = mem.gpaToHost(A_GPA, 1);
        assertEquals(first + SIZE - 1, mem.gpaToHost(A_GPA + SIZE - 1, 1));
        assertEquals(first, mem.gpaToHost(A_GPA, SIZE), "whole region in one range");
        assertEquals(first + 0x100, mem.uvaToHost(A_UVA + 0x100, 0x10));
        assertEquals(2, mem.regionCount());
        assertEquals(2 * SIZE, mem.regionsSize());
    }

    @Test
    void onePastAndBeforeRegionAreRefused() throws Exception {
        mem.addRegion(memfd(SIZE), A_GPA, SIZE, A_UVA, 0);
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA + SIZE, 1));
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA - 1, 1));
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA - 1, 2), "starts before, ends inside");
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA + SIZE - 1, 2), "ends one past");
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA, SIZE + 1));
        assertThrows(GuestMemoryException.class, () -> mem.uvaToHost(A_UVA + SIZE, 1));
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA, 0), "zero length");
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA, -1), "negative length");
        assertFalse(mem.isMapped(A_GPA + SIZE, 1));
        assertTrue(mem.isMapped(A_GPA + SIZE - 1, 1));
    }

    @Test
    void rangeStraddlingTwoAdjacentRegionsIsRefused() throws Exception {
        addAB();
        mem.gpaToHost(A_GPA + SIZE - 16, 16);
        mem.gpaToHost(B_GPA, 16);
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(B_GPA - 8, 16));
        assertThrows(GuestMemoryException.class, () -> mem.uvaToHost(B_UVA - 8, 16));
    }

    @Test
    void overflowingValuesAreRefused() throws Exception {
        addAB();
        long[] bad = {0xFFFF_FFFF_FFFF_F000L, Long.MIN_VALUE, Long.MAX_VALUE, -1L};
        for (long a : bad) {
            assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(a, 0x2000), Long.toHexString(a));
            assertThrows(GuestMemoryException.class, () -> mem.uvaToHost(a, 1), Long.toHexString(a));
        }
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA + 8, Long.MAX_VALUE));
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA, 0xFFFF_FFFF_FFFF_F000L));
    }

    @Test
    void badRegionsAreRefusedAndTheirFdClosed() throws Exception {
        mem.addRegion(memfd(SIZE), A_GPA, SIZE, A_UVA, 0);
        int[] fds = new int[8];
        fds[0] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[0], A_GPA + 0x1000, SIZE, 0x1000, 0), "gpa overlap");
        fds[1] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[1], 0x9000_0000L, SIZE, A_UVA + 0x8000, 0), "uva overlap");
        fds[2] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[2], 0x9000_0000L, 0, 0x1000, 0), "zero size");
        fds[3] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[3], 0x9000_0000L, -4096, 0x1000, 0), "negative size");
        fds[4] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[4], 0x7FFF_FFFF_FFFF_F000L, 0x2000, 0x1000, 0), "gpa end overflows");
        fds[5] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[5], 0xFFFF_FFFF_FFFF_F000L, 0x1000, 0x1000, 0), "negative gpa");
        fds[6] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[6], 0x9000_0000L, SIZE, 0x1000, 0x1000), "file too short for offset+size");
        fds[7] = memfd(SIZE);
        assertThrows(GuestMemoryException.class, () -> mem.addRegion(fds[7], 0x9000_0000L, 1L << 50, 0x1000, 0), "huge");
        for (int fd : fds) {
            LastErrorException e = assertThrows(LastErrorException.class, () -> LibC.close(fd), "fd closed by addRegion");
            assertEquals(Errno.EBADF, e.getErrorCode());
        }
        assertEquals(1, mem.regionCount());
    }

    @Test
    void mappingIsSharedAndHonoursMmapOffset() throws Exception {
        int fd = memfd(3 * SIZE);
        long own = LibcMemory.mapShared(fd, 3 * SIZE, 0, true);
        try {
            RawMemory.putLe64(own + 8192, 0x1122334455667788L);
            RawMemory.putLe64(own + 8192 + 100, 0x0102030405060708L);
            int dup = LibcMemory.dup(fd);
            mem.addRegion(dup, A_GPA, SIZE, A_UVA, 8192);
            assertEquals(0x1122334455667788L, RawMemory.getLe64(mem.gpaToHost(A_GPA, 8)));
            int dup2 = LibcMemory.dup(fd);
            mem.addRegion(dup2, B_GPA, SIZE, B_UVA, 8192 + 100); // not page-aligned
            assertEquals(0x0102030405060708L, RawMemory.getLe64(mem.gpaToHost(B_GPA, 8)));
            RawMemory.putLe32(mem.gpaToHost(A_GPA + 16, 4), 0xCAFEBABE);
            assertEquals(0xCAFEBABE, RawMemory.getLe32(own + 8192 + 16), "writes reach the shared file");
        } finally {
            LibcMemory.unmap(own, 3 * SIZE);
            LibC.close(fd);
        }
    }

    @Test
    void removeAndClearUnmapAndForget() throws Exception {
        addAB();
        assertFalse(mem.removeRegion(A_GPA, SIZE, A_UVA + 1), "uva must match");
        assertTrue(mem.removeRegion(A_GPA, SIZE, A_UVA));
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(A_GPA, 1));
        mem.gpaToHost(B_GPA, 1);
        assertEquals(1, mem.regionCount());
        mem.addRegion(memfd(SIZE), A_GPA, SIZE, A_UVA, 0); // the slot is free again
        mem.clear();
        assertEquals(0, mem.regionCount());
        assertEquals(0, mem.regionsSize());
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(B_GPA, 1));
    }

    @Test
    void atMost509Regions() throws Exception {
        for (int i = 0; i < GuestMemory.MAX_REGIONS; i++) {
            mem.addRegion(memfd(4096), (long) i * 4096, 4096, 0x1000_0000L + (long) i * 4096, 0);
        }
        int fd = memfd(4096);
        GuestMemoryException e = assertThrows(GuestMemoryException.class,
                () -> mem.addRegion(fd, 0x4000_0000L, 4096, 0x4000_0000L, 0));
        assertTrue(e.getMessage().contains("509"), e.getMessage());
        // Binary search over many regions: first, middle, last.
        for (int i : new int[] {0, 254, 508}) {
            assertEquals(mem.gpaToHost((long) i * 4096, 4096), mem.uvaToHost(0x1000_0000L + (long) i * 4096, 4096));
        }
        assertThrows(GuestMemoryException.class, () -> mem.gpaToHost(4096L * 509, 1));
    }
}
