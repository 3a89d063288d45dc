package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;

/**
 * Vring area description (VhostUserVringArea) of the back-end's HOST_NOTIFIER message, 24 bytes
 * little-endian:
 * <pre>
 * offset 0   u64 u64      bits 0-7 vring index, bit 8 no-fd
 * offset 8   u64 size     mmap size of the area
 * offset 16  u64 offset   mmap offset of the area in the fd
 * </pre>
 */
public record VringArea(long u64, long size, long offset) {
    public static final int SIZE = 24;

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putLong(u64).putLong(size).putLong(offset);
    }

    public static VringArea decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        return new VringArea(in.getLong(), in.getLong(), in.getLong());
    }
}
