package dev.vmm.core.block;

import dev.vmm.core.memory.RawMemory;

/**
 * QEMU's {@code detect-zeroes}: a write whose data is all zeros becomes a write-zeroes request
 * ({@code on}), which may leave a hole ({@code unmap}, allowed only with {@code discard=unmap}, as
 * QEMU). Saves space and I/O for guests that zero disks by writing zero buffers.
 *
 * <p>Thread contract: the node's home IOThread (the data path), as the driver that uses it. The
 * addresses are those the driver was handed, already bounds-checked by its caller.
 */
public enum DetectZeroes {
    OFF,
    ON,
    UNMAP;

    public static DetectZeroes parse(String s) {
        return valueOf(s.toUpperCase(java.util.Locale.ROOT));
    }

    /** Whether a zero write may become a hole. */
    public boolean mayUnmap() { return this == UNMAP; }

    /** True when the buffer is all zeros. */
    static boolean isZero(long address, long length) {
        return RawMemory.isZero(address, length);
    }

    /**
     * True when the {@code iovcnt} iovecs at {@code iov} (16 bytes each: base, len; native order)
     * hold only zeros in their first {@code total} bytes.
     */
    static boolean iovIsZero(long iov, int iovcnt, long total) {
        long left = total;
        for (int i = 0; i < iovcnt && left > 0; i++) {
            long base = RawMemory.getLe64(iov + 16L * i);
            long len = Math.min(RawMemory.getLe64(iov + 16L * i + 8), left);
            if (!RawMemory.isZero(base, len)) return false;
            left -= len;
        }
        return true;
    }
}
