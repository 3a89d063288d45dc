package dev.vmm.core.block;

import dev.vmm.core.linux.Errno;

import static dev.vmm.core.testing.NativeBuffers.address;
import static dev.vmm.core.testing.NativeBuffers.aligned;
import static dev.vmm.core.testing.NativeBuffers.allocate;
import static dev.vmm.core.testing.NativeBuffers.assertBytes;
import static dev.vmm.core.testing.NativeBuffers.assertZero;
import static dev.vmm.core.testing.NativeBuffers.fill;
import static dev.vmm.core.testing.NativeBuffers.fillPattern;
import static dev.vmm.core.testing.NativeBuffers.pattern;
import static dev.vmm.core.testing.NativeBuffers.split;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import dev.vmm.core.linux.LibC;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Comparator;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Nested;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class RawFileDriverTest {
    static final int KiB = 1024;
    static final int MiB = 1024 * KiB;

    @TempDir
    Path dir;

    RawFileDriver driver;

    @AfterEach
    void closeDriver() {
        if (driver != null) {
            driver.close();
        }
        RawFileDriver.resetFuaStrategy(false);
    }

    // ------------------------------------------------------------------ helpers

    /** A sparse file of {@code size} bytes. */
    static Path sparse(Path dir, String name, long size) throws IOException {
        Path p = dir.resolve(name);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(size);
        }
        return p;
    }

    /** A fully written file of {@code size} bytes holding the pattern of {@code seed}. */
    static Path filled(Path dir, String name, int size, long seed) throws IOException {
        Path p = dir.resolve(name);
        Files.write(p, pattern(seed, 0, size));
        return p;
    }

    static byte[] fileBytes(Path p, long offset, int length) throws IOException {
        byte[] all = Files.readAllBytes(p);
        return Arrays.copyOfRange(all, (int) offset, (int) offset + length);
    }

    /** Bytes allocated to the file (statx stx_blocks * 512). */
    static long allocated(Path p) {
        try (Memory stx = allocate(LibC.STATX_SIZEOF)) {
            LibC.statx(LibC.AT_FDCWD, p.toString(), 0, LibC.STATX_BLOCKS, address(stx));
            return stx.getLong(LibC.STATX_OFF_BLOCKS) * 512;
        }
    }

    /** The open(2) flags of this process's fd on {@code p}, from /proc/self/fdinfo, or null. */
    static Integer openFlags(Path p) throws IOException {
        Path real = p.toRealPath();
        try (Stream<Path> fds = Files.list(Path.of("/proc/self/fd"))) {
            for (Path fd : (Iterable<Path>) fds::iterator) {
                try {
                    if (Files.readSymbolicLink(fd).equals(real)) {
                        for (String line : Files.readAllLines(Path.of("/proc/self/fdinfo", fd.getFileName().toString()))) {
                            if (line.startsWith("flags:")) {
                                return Integer.parseInt(line.substring(6).trim(), 8);
                            }
                        }
                    }
                } catch (IOException gone) {
                    // an fd closed while we looked
                }
            }
        }
        return null;
    }

    static int errno(BlockException e) { return e.errno(); }

    /** Walks status over [offset, end) and renders "flags:length" extents. */
    static String extents(BlockDriver d, long offset, long end) throws BlockException {
        StringBuilder sb = new StringBuilder();
        BlockStatus st = new BlockStatus();
        while (offset < end) {
            d.status(offset, end - offset, st);
            assertTrue(st.length >= 1 && st.length <= end - offset, "extent length " + st.length);
            if (sb.length() > 0) {
                sb.append(' ');
            }
            sb.append(st.flags).append(':').append(st.length);
            offset += st.length;
        }
        return sb.toString();
    }

    /**
     * Random writes (plain and vectored, some FUA) and reads checked against a Java model of the
     * image. Offsets and lengths are deliberately unaligned around 4 KiB block boundaries.
     */
    static void modelCheck(RawFileDriver d, Path file, long seed, int ops) throws Exception {
        int size = (int) d.size();
        byte[] model = Files.readAllBytes(file);
        assertEquals(size, model.length);
        Random rnd = new Random(seed);
        try (Memory buf = aligned(64 * KiB + 8, 4096)) {
            for (int op = 0; op < ops; op++) {
                int len = 1 + rnd.nextInt(rnd.nextBoolean() ? 64 * KiB : 9000);
                int off = rnd.nextInt(size - len + 1);
                if (rnd.nextInt(4) == 0) {
                    off &= ~4095;
                    len = Math.max(4096, len & ~4095);
                }
                int shift = rnd.nextInt(3) == 0 ? 1 + rnd.nextInt(7) : 0; // unaligned buffer sometimes
                int kind = rnd.nextInt(4);
                if (kind == 0) {
                    fillPattern(buf, shift, len, op, off);
                    d.write(off, address(buf) + shift, len, rnd.nextInt(5) == 0);
                    System.arraycopy(pattern(op, off, len), 0, model, off, len);
                } else if (kind == 1) {
                    fillPattern(buf, shift, len, op, off);
                    long a = rnd.nextInt(len + 1);
                    long b = rnd.nextInt(len + 1);
                    long lo = Math.min(a, b);
                    long hi = Math.max(a, b);
                    try (Memory iov = split(buf.share(shift), lo, 0, hi - lo, len - hi)) {
                        d.writev(off, address(iov), 4, len, rnd.nextInt(5) == 0);
                    }
                    System.arraycopy(pattern(op, off, len), 0, model, off, len);
                } else if (kind == 2) {
                    fill(buf, 0, len + shift, (byte) 0x5a);
                    d.read(off, address(buf) + shift, len);
                    assertBytes(Arrays.copyOfRange(model, off, off + len), buf, shift, "op " + op + " read " + off + "+" + len);
                } else {
                    fill(buf, 0, len + shift, (byte) 0x5a);
                    long a = rnd.nextInt(len + 1);
                    try (Memory iov = split(buf.share(shift), a, len - a)) {
                        d.readv(off, address(iov), 2, len);
                    }
                    assertBytes(Arrays.copyOfRange(model, off, off + len), buf, shift, "op " + op + " readv " + off + "+" + len);
                }
            }
        }
        assertArrayEquals(model, Files.readAllBytes(file), "image contents after " + ops + " ops");
    }

    // ------------------------------------------------------------------ read / write

    @Test
    void writeThenReadRoundTripAligned() throws Exception {
        Path f = sparse(dir, "a.img", MiB);
        driver = RawFileDriver.open(f, false, false);
        assertEquals(MiB, driver.size());
        assertFalse(driver.readOnly());
        int flags = openFlags(f);
        assertEquals(LibC.O_RDWR, flags & 3, "opened read-write");
        assertTrue((flags & LibC.O_CLOEXEC) != 0, "O_CLOEXEC");
        assertEquals(0, flags & LibC.O_DIRECT, "buffered");
        try (Memory buf = aligned(64 * KiB, 4096)) {
            fillPattern(buf, 0, 64 * KiB, 1, 4096);
            driver.write(4096, address(buf), 64 * KiB, false);
            fill(buf, 0, 64 * KiB, (byte) 0);
            driver.read(4096, address(buf), 64 * KiB);
            assertBytes(pattern(1, 4096, 64 * KiB), buf, 0, "read back");
        }
        assertArrayEquals(pattern(1, 4096, 64 * KiB), fileBytes(f, 4096, 64 * KiB), "bytes in the file");
    }

    @Test
    void unalignedOffsetsAndLengthsRoundTrip() throws Exception {
        Path f = filled(dir, "u.img", 512 * KiB, 7);
        driver = RawFileDriver.open(f, false, false);
        modelCheck(driver, f, 42, 300);
    }

    @Test
    void fuaWriteUsesPwritev2DsyncHere() throws Exception {
        Path f = sparse(dir, "fua.img", 64 * KiB);
        driver = RawFileDriver.open(f, false, false);
        RawFileDriver.resetFuaStrategy(false);
        try (Memory buf = allocate(5000)) {
            fillPattern(buf, 0, 5000, 3, 100);
            driver.write(100, address(buf), 5000, true);
        }
        assertFalse(RawFileDriver.fuaFallbackInUse(), "pwritev2(RWF_DSYNC) should work on this kernel");
        assertArrayEquals(pattern(3, 100, 5000), fileBytes(f, 100, 5000));
    }

    @Test
    void fuaWriteFallbackWritesThenSyncs() throws Exception {
        Path f = sparse(dir, "fua2.img", 64 * KiB);
        driver = RawFileDriver.open(f, false, false);
        RawFileDriver.resetFuaStrategy(true);
        try (Memory buf = allocate(3 * 4096)) {
            fillPattern(buf, 0, 3 * 4096, 4, 0);
            driver.write(0, address(buf), 4096, true);
            try (Memory iov = split(buf.share(4096), 1000, 7192)) {
                driver.writev(4096, address(iov), 2, 8192, true);
            }
        }
        assertTrue(RawFileDriver.fuaFallbackInUse());
        assertArrayEquals(pattern(4, 0, 3 * 4096), fileBytes(f, 0, 3 * 4096));
    }

    @Test
    void writevAndReadvWithSeveralIovecs() throws Exception {
        Path f = sparse(dir, "v.img", MiB);
        driver = RawFileDriver.open(f, false, false);
        int total = 1 + 4095 + 0 + 10000 + 333 + 65536;
        try (Memory src = allocate(total); Memory dst = allocate(total)) {
            fillPattern(src, 0, total, 9, 777);
            try (Memory iov = split(src, 1, 4095, 0, 10000, 333, 65536)) {
                driver.writev(777, address(iov), 6, total, false);
            }
            assertArrayEquals(pattern(9, 777, total), fileBytes(f, 777, total), "writev landed in order");
            try (Memory iov = split(dst, 65536, 7, 0, total - 65536 - 7)) {
                driver.readv(777, address(iov), 4, total);
            }
            assertBytes(pattern(9, 777, total), dst, 0, "readv");
        }
    }

    @Test
    void iovecTotalMustMatchAndCountIsBounded() throws Exception {
        Path f = sparse(dir, "vb.img", MiB);
        driver = RawFileDriver.open(f, false, false);
        try (Memory buf = allocate(8192); Memory iov = split(buf, 4096, 4096)) {
            // Lengths adding up to more than the stated total would let the kernel write past the checked range.
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class,
                    () -> driver.writev(MiB - 4096, address(iov), 2, 4096, false))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class,
                    () -> driver.readv(0, address(iov), 2, 8193))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class,
                    () -> driver.readv(0, address(iov), LibC.IOV_MAX + 1, 8192))));
        }
        assertEquals(MiB, Files.size(f), "file not extended");
    }

    @Test
    void readPastEofOfTruncatedFileGivesZeros() throws Exception {
        Path f = filled(dir, "t.img", 64 * KiB, 5);
        driver = RawFileDriver.open(f, false, false);
        try (RandomAccessFile raf = new RandomAccessFile(f.toFile(), "rw")) {
            raf.setLength(10000); // behind the driver's back
        }
        assertEquals(64 * KiB, driver.size(), "raw size is fixed at open");
        try (Memory buf = allocate(8192)) {
            fill(buf, 0, 8192, (byte) 0xaa);
            driver.read(8192, address(buf), 8192);
            assertBytes(pattern(5, 8192, 10000 - 8192), buf, 0, "data before EOF");
            assertZero(buf, 10000 - 8192, 8192 - (10000 - 8192), "past EOF");

            // Vectored, with EOF inside the second iovec: the continuation and the zero fill
            // must walk the remaining iovecs.
            fill(buf, 0, 8192, (byte) 0xaa);
            try (Memory iov = split(buf, 1000, 3000, 4192)) {
                driver.readv(8000, address(iov), 3, 8192);
            }
            assertBytes(pattern(5, 8000, 2000), buf, 0, "readv data before EOF");
            assertZero(buf, 2000, 8192 - 2000, "readv past EOF");
        }
        BlockStatus st = new BlockStatus();
        driver.status(16384, 64 * KiB, st);
        assertEquals(BlockStatus.HOLE | BlockStatus.ZERO, st.flags, "past EOF is a hole");
        assertEquals(64 * KiB - 16384, st.length);
    }

    @Test
    void outOfRangeRequestsFailWithEinval() throws Exception {
        Path f = sparse(dir, "r.img", 64 * KiB);
        driver = RawFileDriver.open(f, false, false);
        try (Memory buf = allocate(8192)) {
            long a = address(buf);
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class, () -> driver.read(64 * KiB - 10, a, 20))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class, () -> driver.read(-1, a, 1))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class, () -> driver.read(0, a, -1))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class, () -> driver.write(64 * KiB, a, 1, false))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class, () -> driver.write(Long.MAX_VALUE, a, 2, false))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class, () -> driver.discard(60 * KiB, 8 * KiB))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class,
                    () -> driver.writeZeroes(60 * KiB, 8 * KiB, true, false, false))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class, () -> driver.prefetch(0, 64 * KiB + 1))));
            assertEquals(Errno.EINVAL, errno(assertThrows(BlockException.class,
                    () -> driver.status(64 * KiB, 1, new BlockStatus()))));
            driver.read(64 * KiB - 20, a, 20); // the last bytes are in range
            driver.read(64 * KiB, a, 0);       // an empty request at the end is too
        }
        assertEquals(64 * KiB, Files.size(f), "file not extended");
    }

    @Test
    void readOnlyRefusesWritesWithErofs() throws Exception {
        Path f = filled(dir, "ro.img", 64 * KiB, 6);
        driver = RawFileDriver.open(f, true, false);
        assertTrue(driver.readOnly());
        try (Memory buf = allocate(4096); Memory iov = split(buf, 4096)) {
            long a = address(buf);
            assertEquals(Errno.EROFS, errno(assertThrows(BlockException.class, () -> driver.write(0, a, 4096, false))));
            assertEquals(Errno.EROFS, errno(assertThrows(BlockException.class,
                    () -> driver.writev(0, address(iov), 1, 4096, true))));
            assertEquals(Errno.EROFS, errno(assertThrows(BlockException.class, () -> driver.discard(0, 4096))));
            assertEquals(Errno.EROFS, errno(assertThrows(BlockException.class,
                    () -> driver.writeZeroes(0, 4096, true, false, false))));
            driver.read(0, a, 4096);
            assertBytes(pattern(6, 0, 4096), buf, 0, "reads still work");
            driver.flush();
        }
        assertArrayEquals(pattern(6, 0, 64 * KiB), Files.readAllBytes(f), "file unchanged");
    }

    // ------------------------------------------------------------------ discard, zeroes, status

    @Test
    void discardPunchesAHoleThatReadsAsZeros() throws Exception {
        Path f = filled(dir, "d.img", MiB, 8);
        driver = RawFileDriver.open(f, false, false);
        driver.flush();
        long before = allocated(f);
        driver.discard(256 * KiB, 256 * KiB);
        assertTrue(allocated(f) <= before - 256 * KiB, "blocks freed: " + before + " -> " + allocated(f));
        BlockStatus st = new BlockStatus();
        driver.status(256 * KiB, MiB, st);
        assertEquals(BlockStatus.HOLE | BlockStatus.ZERO, st.flags);
        assertEquals(256 * KiB, st.length);
        driver.status(0, MiB, st);
        assertEquals(0, st.flags);
        assertEquals(256 * KiB, st.length);
        byte[] all = Files.readAllBytes(f);
        assertEquals(MiB, all.length, "size kept");
        assertArrayEquals(new byte[256 * KiB], Arrays.copyOfRange(all, 256 * KiB, 512 * KiB), "hole reads zeros");
        assertArrayEquals(pattern(8, 512 * KiB, 512 * KiB), Arrays.copyOfRange(all, 512 * KiB, MiB), "data after kept");
        // Unaligned discard: partial blocks are zeroed, neighbours kept.
        driver.discard(700 * KiB + 1, 10);
        all = Files.readAllBytes(f);
        assertEquals(pattern(8, 700 * KiB, 1)[0], all[700 * KiB]);
        assertArrayEquals(new byte[10], Arrays.copyOfRange(all, 700 * KiB + 1, 700 * KiB + 11));
        assertEquals(pattern(8, 700 * KiB + 11, 1)[0], all[700 * KiB + 11]);
    }

    @Test
    void discardIgnoreKeepsDataAndZeroingNeverUnmaps() throws Exception {
        Path f = filled(dir, "di.img", MiB, 12);
        driver = RawFileDriver.open(f, false, false);
        driver.setUnmap(false); // --blockdev ...,discard=ignore
        driver.flush();
        long before = allocated(f);
        driver.discard(0, 256 * KiB);
        assertArrayEquals(pattern(12, 0, 256 * KiB), Arrays.copyOfRange(Files.readAllBytes(f), 0, 256 * KiB), "discard ignored");
        driver.writeZeroes(256 * KiB, 256 * KiB, true, false, false);
        assertArrayEquals(new byte[256 * KiB], Arrays.copyOfRange(Files.readAllBytes(f), 256 * KiB, 512 * KiB), "zeros written");
        assertTrue(allocated(f) >= before, "nothing unmapped: " + before + " -> " + allocated(f));
    }

    @Test
    void writeZeroesWithUnmapFreesBlocks() throws Exception {
        Path f = filled(dir, "z1.img", MiB, 10);
        driver = RawFileDriver.open(f, false, false);
        driver.flush();
        long before = allocated(f);
        driver.writeZeroes(128 * KiB, 512 * KiB, true, true, true);
        assertTrue(allocated(f) <= before - 512 * KiB, "unmapped: " + before + " -> " + allocated(f));
        byte[] all = Files.readAllBytes(f);
        assertArrayEquals(new byte[512 * KiB], Arrays.copyOfRange(all, 128 * KiB, 640 * KiB));
        assertArrayEquals(pattern(10, 640 * KiB, MiB - 640 * KiB), Arrays.copyOfRange(all, 640 * KiB, MiB));
        assertEquals("0:131072 3:524288 0:393216", extents(driver, 0, MiB));
    }

    @Test
    void writeZeroesWithoutUnmapKeepsBlocksAllocated() throws Exception {
        Path f = filled(dir, "z2.img", MiB, 11);
        driver = RawFileDriver.open(f, false, false);
        driver.flush();
        long before = allocated(f);
        driver.writeZeroes(128 * KiB + 3, 512 * KiB, false, false, false);
        assertTrue(allocated(f) >= before, "still allocated: " + before + " -> " + allocated(f));
        byte[] all = Files.readAllBytes(f);
        assertArrayEquals(pattern(11, 0, 128 * KiB + 3), Arrays.copyOfRange(all, 0, 128 * KiB + 3));
        assertArrayEquals(new byte[512 * KiB], Arrays.copyOfRange(all, 128 * KiB + 3, 640 * KiB + 3));
        assertArrayEquals(pattern(11, 640 * KiB + 3, MiB - 640 * KiB - 3), Arrays.copyOfRange(all, 640 * KiB + 3, MiB));
    }

    @Test
    void writeZeroesWithoutFallocateWritesZerosOrFailsFast() throws Exception {
        Path f = filled(dir, "z3.img", 3 * MiB, 12);
        driver = RawFileDriver.open(f, false, false);
        driver.simulateNoFallocate();
        assertEquals(Errno.ENOTSUP, errno(assertThrows(BlockException.class,
                () -> driver.writeZeroes(0, 4096, true, true, false))), "FAST_ZERO refused");
        assertArrayEquals(pattern(12, 0, 4096), fileBytes(f, 0, 4096), "nothing written when refusing");
        long start = 100;
        long len = 2 * MiB + 12345; // more than the 1 MiB zero buffer, unaligned
        driver.writeZeroes(start, len, true, false, true);
        byte[] all = Files.readAllBytes(f);
        assertArrayEquals(pattern(12, 0, 100), Arrays.copyOfRange(all, 0, 100));
        assertArrayEquals(new byte[(int) len], Arrays.copyOfRange(all, 100, (int) (100 + len)));
        assertArrayEquals(pattern(12, 100 + len, (int) (3 * MiB - 100 - len)), Arrays.copyOfRange(all, (int) (100 + len), 3 * MiB));
        // Discard is advisory: without hole punching it succeeds and changes nothing.
        driver.discard(2 * MiB + 20000, 4096);
        assertArrayEquals(pattern(12, 2 * MiB + 20000, 4096), fileBytes(f, 2 * MiB + 20000, 4096));
    }

    @Test
    void statusOverSparseFileWithDataIslands() throws Exception {
        Path f = sparse(dir, "s.img", 4 * MiB);
        driver = RawFileDriver.open(f, false, false);
        assertEquals("3:4194304", extents(driver, 0, 4 * MiB), "all hole");
        try (Memory buf = allocate(64 * KiB)) {
            fillPattern(buf, 0, 64 * KiB, 13, 0);
            driver.write(MiB, address(buf), 64 * KiB, false);
            driver.write(3 * MiB - 4096, address(buf), 4096, false);
        }
        assertEquals("3:1048576 0:65536 3:2027520 0:4096 3:1048576", extents(driver, 0, 4 * MiB));
        BlockStatus st = new BlockStatus();
        driver.status(0, 100, st);
        assertEquals(100, st.length, "clamped to maxLength in a hole");
        assertEquals(BlockStatus.HOLE | BlockStatus.ZERO, st.flags);
        driver.status(MiB + 10, 100, st);
        assertEquals(100, st.length, "clamped to maxLength in data");
        assertEquals(0, st.flags);
        driver.status(MiB + 10, 4 * MiB, st);
        assertEquals(64 * KiB - 10, st.length, "from inside an island");
        driver.status(4 * MiB - 1, Long.MAX_VALUE, st);
        assertEquals(1, st.length, "clamped to size");
    }

    @Test
    void prefetchAndFlushSucceed() throws Exception {
        Path f = filled(dir, "p.img", 64 * KiB, 14);
        driver = RawFileDriver.open(f, false, false);
        driver.prefetch(0, 64 * KiB);
        driver.prefetch(64 * KiB, 0);
        driver.flush();
        assertEquals(4096, driver.preferredBlockSize());
    }

    @Test
    void hotPathAllocatesNothing() throws Exception {
        Path f = filled(dir, "h.img", MiB, 15);
        driver = RawFileDriver.open(f, false, false);
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        Assumptions.assumeTrue(mx instanceof com.sun.management.ThreadMXBean, "needs HotSpot's allocation counter");
        com.sun.management.ThreadMXBean hs = (com.sun.management.ThreadMXBean) mx;
        try (Memory buf = allocate(16 * KiB); Memory iov = split(buf, 1000, 3096, 100)) {
            long a = address(buf);
            long v = address(iov);
            BlockStatus st = new BlockStatus();
            for (int round = 0; round < 2; round++) { // the first round warms up
                long before = hs.getCurrentThreadAllocatedBytes();
                for (int i = 0; i < 5000; i++) {
                    driver.read(i * 100L, a, 5000);
                    driver.write(i * 37L, a + 3, 1234, false);
                    driver.readv(i * 64L, v, 3, 4196);
                    driver.writev(i * 64L, v, 3, 4196, false);
                    driver.status(i * 128L, MiB, st);
                }
                long allocated = hs.getCurrentThreadAllocatedBytes() - before;
                if (round == 1) {
                    assertTrue(allocated < 16 * KiB, "allocated " + allocated + " bytes over 25000 requests");
                }
            }
        }
    }

    // ------------------------------------------------------------------ lifecycle and errors

    @Test
    void closeIsIdempotentAndLaterCallsFailWithEio() throws Exception {
        Path f = sparse(dir, "c.img", 64 * KiB);
        RawFileDriver d = RawFileDriver.open(f, false, false);
        d.close();
        d.close();
        try (Memory buf = allocate(4096)) {
            BlockException e = assertThrows(BlockException.class, () -> d.read(0, address(buf), 4096));
            assertEquals(Errno.EIO, e.errno());
            assertTrue(e.getMessage().contains("closed"), e.getMessage());
            assertEquals(Errno.EIO, errno(assertThrows(BlockException.class, () -> d.write(0, address(buf), 1, false))));
            assertEquals(Errno.EIO, errno(assertThrows(BlockException.class, d::flush)));
            assertEquals(Errno.EIO, errno(assertThrows(BlockException.class, () -> d.status(0, 1, new BlockStatus()))));
            assertEquals(Errno.EIO, errno(assertThrows(BlockException.class, () -> d.writeZeroes(0, 1, true, false, false))));
        }
        assertEquals(64 * KiB, d.size());
    }

    @Test
    void missingFileGivesClearMessage() {
        Path f = dir.resolve("nope.img");
        BlockException e = assertThrows(BlockException.class, () -> RawFileDriver.open(f, false, false));
        assertEquals(Errno.ENOENT, e.errno());
        assertTrue(e.getMessage().contains(f.toAbsolutePath().toString()), e.getMessage());
        assertTrue(e.getMessage().contains("No such file or directory"), e.getMessage());
    }

    @Test
    void directoryIsRefused() {
        for (boolean ro : new boolean[] {true, false}) {
            BlockException e = assertThrows(BlockException.class, () -> RawFileDriver.open(dir, ro, false));
            assertEquals(Errno.EISDIR, e.errno(), e.getMessage());
            assertTrue(e.getMessage().contains(dir.toAbsolutePath().toString()), e.getMessage());
        }
    }

    // ------------------------------------------------------------------ O_DIRECT

    /**
     * O_DIRECT tests run on the module's target/ directory: @TempDir may be a tmpfs, which
     * refuses O_DIRECT before Linux 6.6. If target/ refuses it too, these tests are skipped, not failed.
     */
    @Nested
    class Direct {
        Path ddir;

        Path directDir() throws IOException {
            Path target = Path.of("target");
            Files.createDirectories(target);
            ddir = Files.createTempDirectory(target, "direct-io-");
            return ddir;
        }

        @AfterEach
        void cleanup() throws IOException {
            if (driver != null) {
                driver.close();
                driver = null;
            }
            if (ddir != null) {
                try (Stream<Path> s = Files.walk(ddir)) {
                    s.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
                }
            }
        }

        RawFileDriver openDirect(Path f, boolean ro) throws BlockException {
            try {
                return RawFileDriver.open(f, ro, true);
            } catch (BlockException e) {
                Assumptions.assumeFalse(e.errno() == Errno.EINVAL && e.getMessage().contains("may not support O_DIRECT"),
                        "O_DIRECT not supported under " + f.toAbsolutePath().getParent() + ": " + e.getMessage());
                throw e;
            }
        }

        @Test
        void alignedRoundTripGoesStraightThrough() throws Exception {
            Path f = sparse(directDir(), "da.img", MiB);
            driver = openDirect(f, false);
            assertTrue(driver.direct());
            assertTrue(openFlags(f) != null && (openFlags(f) & LibC.O_DIRECT) != 0, "fd opened O_DIRECT: " + openFlags(f));
            int al = driver.offsetAlignment();
            assertTrue(al >= 512 && Integer.bitCount(al) == 1, "alignment " + al);
            assertEquals(al, driver.preferredBlockSize());
            try (Memory buf = aligned(128 * KiB, 4096)) {
                fillPattern(buf, 0, 128 * KiB, 20, 64 * KiB);
                driver.write(64 * KiB, address(buf), 128 * KiB, true);
                fill(buf, 0, 128 * KiB, (byte) 0);
                driver.read(64 * KiB, address(buf), 128 * KiB);
                assertBytes(pattern(20, 64 * KiB, 128 * KiB), buf, 0, "direct read back");
                try (Memory iov = split(buf, 4096, 0, 8192)) {
                    driver.readv(0, address(iov), 3, 12288);
                }
                assertZero(buf, 0, 12288, "aligned readv of a hole");
            }
            assertArrayEquals(pattern(20, 64 * KiB, 128 * KiB), fileBytes(f, 64 * KiB, 128 * KiB));
        }

        @Test
        void unalignedRequestsAreBounced() throws Exception {
            Path f = filled(directDir(), "du.img", 512 * KiB, 21);
            driver = openDirect(f, false);
            modelCheck(driver, f, 4242, 300);
        }

        @Test
        void unalignedIovecsAreBounced() throws Exception {
            Path f = filled(directDir(), "dv.img", 256 * KiB, 22);
            driver = openDirect(f, false);
            // Aligned offset and total, but iovec lengths that are not block multiples.
            int total = 3 * 4096;
            try (Memory buf = aligned(total, 4096)) {
                fillPattern(buf, 0, total, 23, 8192);
                try (Memory iov = split(buf, 100, 4000, total - 4100)) {
                    driver.writev(8192, address(iov), 3, total, false);
                }
                fill(buf, 0, total, (byte) 0x77);
                try (Memory iov = split(buf, 4096, 1, total - 4097)) {
                    driver.readv(8192, address(iov), 3, total);
                }
                assertBytes(pattern(23, 8192, total), buf, 0, "bounced readv");
            }
            assertArrayEquals(pattern(22, 0, 8192), fileBytes(f, 0, 8192), "before untouched");
            assertArrayEquals(pattern(23, 8192, total), fileBytes(f, 8192, total));
            assertArrayEquals(pattern(22, 8192 + total, 4096), fileBytes(f, 8192 + total, 4096), "after untouched");
        }

        @Test
        void aFileWhoseSizeIsNotAlignedOpensReadWriteAndItsTailIsServed() throws Exception {
            // qemu-img writes qcow2 files of sizes like 196616: QEMU serves them with O_DIRECT, so do we.
            int size = 3 * 65536 + 8;
            Path f = filled(directDir(), "dt.img", size, 26);
            driver = openDirect(f, false);
            assertEquals(size, driver.size());
            try (Memory buf = allocate(100)) {
                driver.read(size - 100, address(buf), 100);
                assertBytes(pattern(26, size - 100, 100), buf, 0, "tail read");
                fillPattern(buf, 0, 100, 27, size - 100);
                driver.write(size - 100, address(buf), 100, true);
            }
            byte[] all = Files.readAllBytes(f);
            assertArrayEquals(pattern(27, size - 100, 100), Arrays.copyOfRange(all, size - 100, size));
            assertArrayEquals(pattern(26, 0, size - 100), Arrays.copyOfRange(all, 0, size - 100), "before the tail untouched");
            for (int i = size; i < all.length; i++) assertEquals(0, all[i], "padding past the old end is zero");
            assertEquals(0, all.length % driver.offsetAlignment(), "the write padded the file to the alignment");
        }

        @Test
        void largeUnalignedWriteIsBouncedInChunks() throws Exception {
            Path f = filled(directDir(), "dl.img", 4 * MiB, 24);
            driver = openDirect(f, false);
            int len = 2 * MiB + 777;
            try (Memory buf = allocate(len)) {
                fillPattern(buf, 0, len, 25, 333);
                driver.write(333, address(buf), len, false);
                fill(buf, 0, len, (byte) 0);
                driver.read(333, address(buf), len);
                assertBytes(pattern(25, 333, len), buf, 0, "chunked bounce read");
            }
            byte[] all = Files.readAllBytes(f);
            assertArrayEquals(pattern(24, 0, 333), Arrays.copyOfRange(all, 0, 333));
            assertArrayEquals(pattern(25, 333, len), Arrays.copyOfRange(all, 333, 333 + len));
            assertArrayEquals(pattern(24, 333 + len, 4 * MiB - 333 - len), Arrays.copyOfRange(all, 333 + len, 4 * MiB));
        }

        @Test
        void writeZeroesFallbackUnderDirect() throws Exception {
            Path f = filled(directDir(), "dz.img", 3 * MiB, 26);
            driver = openDirect(f, false);
            driver.simulateNoFallocate();
            driver.writeZeroes(5, MiB + 10, false, false, false);
            byte[] all = Files.readAllBytes(f);
            assertArrayEquals(pattern(26, 0, 5), Arrays.copyOfRange(all, 0, 5));
            assertArrayEquals(new byte[MiB + 10], Arrays.copyOfRange(all, 5, MiB + 15));
            assertArrayEquals(pattern(26, MiB + 15, 2 * MiB - 15), Arrays.copyOfRange(all, MiB + 15, 3 * MiB));
        }

        @Test
        void unalignedSizeIsReadableReadOnly() throws Exception {
            Path f = filled(directDir(), "odd.img", 10000, 27);
            driver = openDirect(f, true);
            try (Memory buf = allocate(10000)) {
                driver.read(0, address(buf), 10000);
                assertBytes(pattern(27, 0, 10000), buf, 0, "whole odd-sized image");
                driver.read(9990, address(buf), 10);
                assertBytes(pattern(27, 9990, 10), buf, 0, "its tail");
            }
        }
    }

    @AfterAll
    static void resetFua() {
        RawFileDriver.resetFuaStrategy(false);
    }
}
