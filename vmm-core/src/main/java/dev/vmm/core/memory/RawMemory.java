package dev.vmm.core.memory;

import java.lang.invoke.VarHandle;
import java.lang.reflect.Field;
import java.nio.ByteOrder;

import sun.misc.Unsafe;

/**
 * Unchecked little-endian loads and stores at native addresses: the one place where the virtio
 * code touches memory. Nothing here checks bounds. Every caller MUST pass an address obtained
 * from a {@link GuestMemory} translation (or from memory it allocated itself) whose checked
 * length covers the access, and says so in a comment beside the call.
 *
 * <p>Virtio rings are little-endian (virtio 1.2 §2.7 "Split Virtqueues", all fields
 * {@code le16/le32/le64}); on a big-endian host the values are byte-swapped here (the branch is
 * a constant the JIT folds).
 *
 * <p>Memory ordering: {@link #getLe16Acquire} is a volatile (acquire) load,
 * {@link #putLe16Release} a release fence followed by the store. Callers name the pairing with
 * the other side of the ring beside each use.
 *
 * <p>Why {@code sun.misc.Unsafe}: it is the only allocation-free way on Java 17 to access
 * arbitrary 64-bit native addresses with acquire semantics (VarHandles need a heap array or a
 * ByteBuffer, and ByteBuffers stop at 2 GiB). {@code jdk.unsupported} exports it; no JVM flag is
 * needed. Thread contract: any thread; the caller owns the memory.
 */
public final class RawMemory {
    private RawMemory() {}

    private static final Unsafe U;
    private static final boolean BIG_ENDIAN = ByteOrder.nativeOrder() == ByteOrder.BIG_ENDIAN;

    static {
        try {
            Field f = Unsafe.class.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            U = (Unsafe) f.get(null);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    /** Reads an {@code le16} as an int in 0..65535. */
    public static int getLe16(long address) {
        short v = U.getShort(null, address);
        return (BIG_ENDIAN ? Short.reverseBytes(v) : v) & 0xFFFF;
    }

    /** Reads an {@code le16} with acquire semantics (a volatile load). */
    public static int getLe16Acquire(long address) {
        short v = U.getShortVolatile(null, address);
        return (BIG_ENDIAN ? Short.reverseBytes(v) : v) & 0xFFFF;
    }

    /** Reads an {@code le32} with acquire semantics (a volatile load): io_uring ring tails. */
    public static int getLe32Acquire(long address) {
        int v = U.getIntVolatile(null, address);
        return BIG_ENDIAN ? Integer.reverseBytes(v) : v;
    }

    /** Stores an {@code le32} with release semantics: earlier stores are visible before it (io_uring ring heads and tails). */
    public static void putLe32Release(long address, int value) {
        VarHandle.releaseFence();
        U.putInt(null, address, BIG_ENDIAN ? Integer.reverseBytes(value) : value);
    }

    /** Reads an {@code le32}, raw bits (callers mask with 0xFFFFFFFFL where unsigned). */
    public static int getLe32(long address) {
        int v = U.getInt(null, address);
        return BIG_ENDIAN ? Integer.reverseBytes(v) : v;
    }

    /** Reads an {@code le64}. */
    public static long getLe64(long address) {
        long v = U.getLong(null, address);
        return BIG_ENDIAN ? Long.reverseBytes(v) : v;
    }

    /** Reads one byte, 0..255. */
    public static int getByte(long address) {
        return U.getByte(null, address) & 0xFF;
    }

    /** Stores the low 16 bits as {@code le16}. */
    public static void putLe16(long address, int value) {
        short v = (short) value;
        U.putShort(null, address, BIG_ENDIAN ? Short.reverseBytes(v) : v);
    }

    /**
     * Stores an {@code le16} with release semantics: every load and store before this call is
     * ordered before it ({@link VarHandle#releaseFence()}, then the store).
     */
    public static void putLe16Release(long address, int value) {
        VarHandle.releaseFence();
        putLe16(address, value);
    }

    /** Stores an {@code le32}. */
    public static void putLe32(long address, int value) {
        U.putInt(null, address, BIG_ENDIAN ? Integer.reverseBytes(value) : value);
    }

    /** Stores an {@code le64}. */
    public static void putLe64(long address, long value) {
        U.putLong(null, address, BIG_ENDIAN ? Long.reverseBytes(value) : value);
    }

    /** Stores one byte. */
    public static void putByte(long address, int value) {
        U.putByte(null, address, (byte) value);
    }

    /** Copies {@code length} bytes between native ranges. */
    public static void copy(long src, long dst, long length) {
        U.copyMemory(null, src, null, dst, length);
    }

    /** Fills {@code length} bytes with {@code value}. */
    public static void fill(long address, long length, int value) {
        U.setMemory(address, length, (byte) value);
    }

    /**
     * True when {@code length} bytes at {@code address} are all zero (QEMU's buffer_is_zero, for
     * {@code detect-zeroes}). Data that is not zero usually differs in its first or last word, so
     * those are looked at first; a zero buffer is scanned 8 bytes a load.
     */
    public static boolean isZero(long address, long length) {
        if (length <= 0) return true;
        if (length < 16) {
            for (long i = 0; i < length; i++) if (U.getByte(null, address + i) != 0) return false;
            return true;
        }
        if (U.getLong(null, address) != 0 || U.getLong(null, address + length - 8) != 0) return false;
        long end = address + length - 8;
        long a = address + 8;
        long acc = 0;
        for (; a <= end - 32; a += 32) { // four loads per test: cheaper than a branch per word
            acc = U.getLong(null, a) | U.getLong(null, a + 8) | U.getLong(null, a + 16) | U.getLong(null, a + 24);
            if (acc != 0) return false;
        }
        for (; a < end; a += 8) if (U.getLong(null, a) != 0) return false;
        return true;
    }

    /** A full fence (StoreLoad included): a store before it is visible before a load after it. */
    public static void fullFence() {
        VarHandle.fullFence();
    }

    /** malloc-like native allocation for small device-private buffers (iovec arrays). */
    public static long allocate(long bytes) {
        return U.allocateMemory(bytes);
    }

    /** Frees memory from {@link #allocate}. */
    public static void free(long address) {
        U.freeMemory(address);
    }
}
