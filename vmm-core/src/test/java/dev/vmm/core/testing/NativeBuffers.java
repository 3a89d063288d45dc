package dev.vmm.core.testing;

import static org.junit.jupiter.api.Assertions.fail;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;

/**
 * Native memory for tests: allocate (optionally aligned), fill with a position-dependent
 * pattern, compare, and build {@code struct iovec} arrays. Shipped in vmm-core's test-jar.
 *
 * <p>The pattern byte depends on a seed and an absolute position (e.g. the image offset the
 * byte is meant for), so a test can check any window of an image without keeping a copy.
 * Thread contract: static helpers, any thread; the returned memory belongs to the caller.
 */
public final class NativeBuffers {
    private NativeBuffers() {}

    /** Size of struct iovec on x86_64: void *iov_base; size_t iov_len. */
    public static final int IOVEC_SIZEOF = 16;

    /** Zeroed native memory of {@code size} bytes (at least 1). */
    public static Memory allocate(long size) {
        Memory m = new Memory(Math.max(1, size));
        m.clear();
        return m;
    }

    /**
     * Zeroed native memory of {@code size} bytes whose address is a multiple of
     * {@code alignment} (a power of two). The view keeps its backing allocation alive.
     */
    public static Memory aligned(long size, int alignment) {
        Memory backing = allocate(size + alignment);
        return (Memory) backing.align(alignment).share(0, Math.max(1, size));
    }

    /** The native address of {@code p}. */
    public static long address(Pointer p) {
        return Pointer.nativeValue(p);
    }

    /** The pattern byte for {@code position} under {@code seed}. */
    public static byte patternByte(long seed, long position) {
        long x = (position + 1) * 0x9E3779B97F4A7C15L ^ seed * 0xC2B2AE3D27D4EB4FL;
        x ^= x >>> 29;
        return (byte) (x >>> 23);
    }

    /** Fills {@code length} bytes at {@code p + offset} with the pattern for positions from {@code position}. */
    public static void fillPattern(Pointer p, long offset, int length, long seed, long position) {
        byte[] b = pattern(seed, position, length);
        p.write(offset, b, 0, length);
    }

    /** The pattern for {@code length} positions from {@code position}, as a Java array. */
    public static byte[] pattern(long seed, long position, int length) {
        byte[] b = new byte[length];
        for (int i = 0; i < length; i++) {
            b[i] = patternByte(seed, position + i);
        }
        return b;
    }

    /** Fills {@code length} bytes at {@code p + offset} with {@code value}. */
    public static void fill(Pointer p, long offset, long length, byte value) {
        p.setMemory(offset, length, value);
    }

    /** Copies {@code length} bytes at {@code p + offset} into a new array. */
    public static byte[] bytes(Pointer p, long offset, int length) {
        return p.getByteArray(offset, length);
    }

    /** Fails with the first differing index unless native bytes equal {@code expected}. */
    public static void assertBytes(byte[] expected, Pointer p, long offset, String what) {
        byte[] actual = bytes(p, offset, expected.length);
        for (int i = 0; i < expected.length; i++) {
            if (actual[i] != expected[i]) {
                fail(what + ": first difference at byte " + i + " of " + expected.length + ": expected "
                        + expected[i] + " but was " + actual[i]);
            }
        }
    }

    /** Fails unless {@code length} native bytes at {@code p + offset} are all zero. */
    public static void assertZero(Pointer p, long offset, int length, String what) {
        assertBytes(new byte[length], p, offset, what);
    }

    /**
     * An iovec array: {@code segments[i]} is {base address, length}. The memory holds only the
     * array, not the buffers it points at.
     */
    public static Memory iovecs(long[]... segments) {
        Memory iov = allocate((long) segments.length * IOVEC_SIZEOF);
        for (int i = 0; i < segments.length; i++) {
            iov.setLong((long) i * IOVEC_SIZEOF, segments[i][0]);
            iov.setLong((long) i * IOVEC_SIZEOF + 8, segments[i][1]);
        }
        return iov;
    }

    /**
     * Splits {@code buffer} (from its start) into consecutive iovecs of the given lengths, e.g.
     * {@code split(buf, 1, 4095, 0, 10000)} (zero-length entries are allowed).
     */
    public static Memory split(Pointer buffer, long... lengths) {
        long[][] segs = new long[lengths.length][];
        long at = address(buffer);
        for (int i = 0; i < lengths.length; i++) {
            segs[i] = new long[] {at, lengths[i]};
            at += lengths[i];
        }
        return iovecs(segs);
    }
}
