package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class DirtyMapTest {
    @Test
    void marksEveryChunkARangeTouches() {
        DirtyMap m = new DirtyMap(10 * 65536 + 100, 65536);
        assertEquals(11, m.chunks());
        m.markRange(65535, 2); // straddles chunks 0 and 1
        assertTrue(m.isDirty(0) && m.isDirty(1) && !m.isDirty(2));
        assertEquals(2, m.dirtyCount());
        m.markRange(0, 65536); // already dirty: counted once
        assertEquals(2, m.dirtyCount());
        m.markRange(10 * 65536, 1 << 20); // past the end: clipped to the last, short chunk
        assertTrue(m.isDirty(10));
        assertEquals(2 * 65536 + 100, m.dirtyBytes());
        m.markRange(11 * 65536, 10); // wholly past the end: nothing
        m.markRange(5, 0);
        assertEquals(3, m.dirtyCount());
    }

    @Test
    void nextCopyableSkipsBusyChunksAndWraps() {
        DirtyMap m = new DirtyMap(200L * 4096, 4096);
        assertEquals(-1, m.nextCopyable(0));
        m.mark(3);
        m.mark(70);
        m.mark(150);
        assertEquals(3, m.nextCopyable(0));
        assertEquals(70, m.nextCopyable(4));
        assertEquals(150, m.nextCopyable(71));
        assertEquals(3, m.nextCopyable(151)); // wraps
        m.setBusy(70, true);
        assertEquals(150, m.nextCopyable(4));
        assertTrue(m.anyBusy(70 * 4096 + 10, 1));
        assertFalse(m.anyBusy(71 * 4096, 4096));
        m.clear(3);
        m.clear(150);
        assertEquals(-1, m.nextCopyable(0)); // 70 is dirty but busy
        m.setBusy(70, false);
        assertEquals(70, m.nextCopyable(100));
        assertEquals(1, m.dirtyCount());
    }

    @Test
    void markAllAndClearCountExactly() {
        DirtyMap m = new DirtyMap(130L * 512, 512);
        m.markAll();
        assertEquals(130, m.dirtyCount());
        assertEquals(130L * 512, m.dirtyBytes());
        for (long c = 0; c < 130; c++) m.clear(c);
        m.clear(5);
        assertEquals(0, m.dirtyCount());
        assertEquals(0, m.dirtyBytes());
    }

    @Test
    void granularityMustBeAPowerOfTwo() {
        assertThrows(IllegalArgumentException.class, () -> new DirtyMap(1 << 20, 1000));
        assertThrows(IllegalArgumentException.class, () -> new DirtyMap(1 << 20, 0));
    }
}
