package dev.vmm.core.bitmap;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

/** {@link DirtyBitmap} against a model (one boolean per chunk), and QEMU's edge cases. */
class DirtyBitmapTest {

    @Test
    void granularityMustBeAPowerOfTwoInQemusRange() {
        assertThrows(IllegalArgumentException.class, () -> new DirtyBitmap("b", 1 << 20, 256));
        assertThrows(IllegalArgumentException.class, () -> new DirtyBitmap("b", 1 << 20, 3 << 10));
        assertThrows(IllegalArgumentException.class, () -> new DirtyBitmap("b", 1 << 20, 1L << 32));
        assertThrows(IllegalArgumentException.class, () -> new DirtyBitmap("b", -1, 512));
        new DirtyBitmap("b", 1 << 20, 512);
        new DirtyBitmap("b", 1 << 20, 1L << 31);
    }

    @Test
    void setRoundsOutwardsResetInwardsCountIsBytesOfWholeChunks() {
        DirtyBitmap b = new DirtyBitmap("b", 100_000, 4096); // 25 chunks, last one partial
        assertEquals(25, b.bitCount());
        b.set(4095, 2); // chunks 0 and 1
        assertEquals(2 * 4096, b.count());
        assertTrue(b.get(0));
        assertTrue(b.get(8191));
        assertFalse(b.get(8192));
        b.reset(1, 8190); // covers no whole chunk
        assertEquals(2 * 4096, b.count());
        b.reset(0, 4096);
        assertFalse(b.get(0));
        assertTrue(b.get(4096));
        b.set(99_999, 1); // the partial last chunk counts whole, as QEMU's count
        assertEquals(2 * 4096, b.count());
        b.reset(98_304 + 1, 100_000 - 98_305); // reaches the end but not the chunk start: kept
        assertTrue(b.get(99_999));
        b.reset(98_304, 100_000 - 98_304); // the whole partial chunk up to the end
        assertFalse(b.get(99_999));
        assertThrows(IndexOutOfBoundsException.class, () -> b.set(99_999, 2));
        assertThrows(IndexOutOfBoundsException.class, () -> b.get(100_000));
        b.clear();
        assertEquals(0, b.count());
    }

    @Test
    void nextDirtyAndNextCleanStartAtTheOffsetAndStopAtTheEnd() {
        DirtyBitmap b = new DirtyBitmap("b", 1 << 20, 65536);
        b.set(3 * 65536, 1);
        assertEquals(3 * 65536, b.nextDirty(0, 1 << 20));
        assertEquals(3 * 65536 + 5, b.nextDirty(3 * 65536 + 5, 1 << 20));
        assertEquals(-1, b.nextDirty(0, 3 * 65536));
        assertEquals(-1, b.nextDirty(4 * 65536, 1 << 30));
        assertEquals(0, b.nextClean(0, 1 << 20));
        assertEquals(4 * 65536, b.nextClean(3 * 65536 + 7, 1 << 20));
        b.set(0, 1 << 20);
        assertEquals(-1, b.nextClean(0, 1 << 20));
        assertEquals(-1, b.nextDirty(1 << 20, 2 << 20));
        DirtyBitmap empty = new DirtyBitmap("e", 0, 512);
        assertEquals(-1, empty.nextDirty(0, 100));
        assertEquals(-1, empty.nextClean(0, 100));
    }

    @Test
    void randomOperationsMatchAModel() {
        Random r = new Random(13);
        for (int round = 0; round < 200; round++) {
            long g = 512L << r.nextInt(6);
            long size = 1 + r.nextInt(300_000);
            int chunks = (int) ((size + g - 1) / g);
            boolean[] model = new boolean[chunks];
            DirtyBitmap b = new DirtyBitmap("b", size, g);
            for (int op = 0; op < 40; op++) {
                long off = (long) (r.nextDouble() * size);
                long len = (long) (r.nextDouble() * (size - off) / (r.nextBoolean() ? 1 : 16));
                if (r.nextInt(3) > 0) {
                    b.set(off, len);
                    if (len > 0) for (long c = off / g; c <= (off + len - 1) / g; c++) model[(int) c] = true;
                } else {
                    b.reset(off, len);
                    long from = (off + g - 1) / g;
                    long to = off + len >= size ? chunks : (off + len) / g;
                    for (long c = from; c < to; c++) model[(int) c] = false;
                }
                long n = 0;
                for (boolean d : model) if (d) n++;
                assertEquals(n * g, b.count(), "count");
                long q = (long) (r.nextDouble() * size);
                long end = q + (long) (r.nextDouble() * (size - q + g));
                assertEquals(modelNext(model, g, q, Math.min(end, size), true), b.nextDirty(q, end), "nextDirty " + q);
                assertEquals(modelNext(model, g, q, Math.min(end, size), false), b.nextClean(q, end), "nextClean " + q);
                assertEquals(model[(int) (q / g)], b.get(q));
            }
        }
    }

    private static long modelNext(boolean[] model, long g, long from, long end, boolean dirty) {
        for (long o = from; o < end; o = (o / g + 1) * g) if (model[(int) (o / g)] == dirty) return o;
        return -1;
    }

    @Test
    void mergeOrsAnyGranularity() {
        long size = 10L << 20;
        DirtyBitmap dst = new DirtyBitmap("dst", size, 65536);
        DirtyBitmap same = new DirtyBitmap("same", size, 65536);
        DirtyBitmap fine = new DirtyBitmap("fine", size, 512);
        DirtyBitmap coarse = new DirtyBitmap("coarse", size, 1 << 20);
        dst.set(0, 1);
        same.set(0, 65536 * 3);
        fine.set(5L << 20, 1); // one 512 B chunk -> one 64 KiB chunk
        coarse.set(9L << 20, 1); // one 1 MiB chunk -> sixteen 64 KiB chunks
        dst.merge(same);
        assertEquals(3 * 65536, dst.count());
        dst.merge(fine);
        assertEquals(4 * 65536, dst.count());
        assertTrue(dst.get(5L << 20));
        dst.merge(coarse);
        assertEquals(20 * 65536, dst.count());
        assertEquals(9L << 20, dst.nextDirty(6L << 20, size));
        assertEquals(-1, dst.nextClean(9L << 20, size));
        assertThrows(IllegalArgumentException.class, () -> dst.merge(new DirtyBitmap("x", size + 1, 65536)));
    }

    @Test
    void deserializeUsesQemusBitOrder() {
        DirtyBitmap b = new DirtyBitmap("b", 70 * 512, 512); // 70 chunks: two words, the last partial
        byte[] data = new byte[16];
        data[0] = 0b0000_0101; // chunks 0 and 2
        data[8] = (byte) 0xFF; // chunks 64..71, only 64..69 exist
        b.deserialize(0, data, 0, 16);
        assertTrue(b.get(0));
        assertFalse(b.get(512));
        assertTrue(b.get(2 * 512));
        assertEquals(-1, b.nextClean(64 * 512, 70 * 512));
        assertEquals(8L * 512, b.count());
    }

    @Test
    void flags() {
        DirtyBitmap b = new DirtyBitmap("b", 4096, 512);
        assertTrue(b.recording());
        assertFalse(b.persistent() || b.busy() || b.inconsistent());
        b.setPersistent(true);
        b.setBusy(true);
        b.setInconsistent(true); // disables, as QEMU
        assertFalse(b.recording());
        assertTrue(b.persistent() && b.busy() && b.inconsistent());
    }

    /** The hash qemu-storage-daemon 7.2 gives an empty 64 MiB bitmap of 64 KiB chunks (16 zero words). */
    @Test
    void sha256OfAnEmptyBitmapIsQsds() {
        assertEquals("38723a2e5e8a17aa7950dc008209944e898f69a7bd10a23c839d341e935fd5ca", new DirtyBitmap("a", 64 << 20, 65536).sha256());
        // one chunk of 2 GiB still hashes one word, as QEMU's HBitmap has at least one
        assertEquals(new DirtyBitmap("b", 1, 512).sha256(), new DirtyBitmap("c", 64 << 20, 1L << 31).sha256());
        DirtyBitmap d = new DirtyBitmap("d", 64 << 20, 65536);
        d.set(0, 1);
        assertFalse(d.sha256().equals(new DirtyBitmap("e", 64 << 20, 65536).sha256()));
    }

    @Test
    void markClipsWhereSetChecks() {
        DirtyBitmap b = new DirtyBitmap("m", 10_000, 512);
        b.mark(9_900, 5_000); // past the end: clipped
        b.mark(20_000, 1);    // wholly past: nothing
        b.mark(0, 0);
        assertEquals(512, b.count());
        assertThrows(IndexOutOfBoundsException.class, () -> b.set(9_900, 5_000));
    }

    @Test
    void resizeKeepsBitsAndCleansTheNewRange() {
        DirtyBitmap b = new DirtyBitmap("r", 100_000, 512);
        b.set(0, 512);
        b.set(99_000, 1000);
        long before = b.count();
        b.resize(1 << 20);
        assertEquals(1 << 20, b.size());
        assertEquals(before, b.count());
        assertTrue(b.get(99_999));
        assertEquals(100_000, b.nextDirty(100_000, 1 << 20)); // the old last chunk, partial, was dirty
        assertEquals(-1, b.nextDirty(100_352, 1 << 20));
        b.set(500_000, 1);
        b.resize(50_000); // shrinks: the bits past the end go, and the count with them
        assertEquals(512, b.count());
        assertEquals(-1, b.nextDirty(512, 50_000));
        DirtyBitmap odd = new DirtyBitmap("o", 64 * 512 * 3, 512);
        odd.set(0, odd.size());
        odd.resize(64 * 512 + 512 * 5); // a cut inside a word
        assertEquals(69L * 512, odd.count());
    }

    @Test
    void copyAndRestoreUndoAClearAndAMerge() {
        DirtyBitmap b = new DirtyBitmap("u", 1 << 20, 4096);
        b.set(8192, 100);
        DirtyBitmap backup = b.copy("u");
        b.clear();
        DirtyBitmap other = new DirtyBitmap("o", 1 << 20, 512);
        other.set(700_000, 1);
        b.merge(other);
        assertEquals(4096, b.count());
        b.restore(backup);
        assertEquals(backup.sha256(), b.sha256());
        assertEquals(4096, b.count());
        assertTrue(b.get(8192));
        assertThrows(IllegalArgumentException.class, () -> b.restore(other));
    }
}
