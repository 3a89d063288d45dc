package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;

/**
 * Memory region (VhostUserMemoryRegion), 32 bytes little-endian:
 * <pre>
 * offset 0   u64 guestAddr    guest physical address of the region
 * offset 8   u64 size         bytes
 * offset 16  u64 userAddr     front-end virtual address of the region
 * offset 24  u64 mmapOffset   offset of the region in its fd
 * </pre>
 * As the single-region payload of ADD_MEM_REG / REM_MEM_REG (VhostUserMemRegMsg) it is
 * preceded by 8 bytes of padding: {@link #SINGLE_SIZE} = 40. Values are not checked here
 * (overlaps, overflow and zero sizes are the memory layer's job).
 */
public record MemoryRegion(long guestAddr, long size, long userAddr, long mmapOffset) {
    public static final int SIZE = 32;
    /** Size of the single-region payload: u64 padding + region. */
    public static final int SINGLE_SIZE = 8 + SIZE;

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putLong(guestAddr).putLong(size).putLong(userAddr).putLong(mmapOffset);
    }

    public static MemoryRegion decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        return new MemoryRegion(in.getLong(), in.getLong(), in.getLong(), in.getLong());
    }

    /** Writes the single-region payload (padding 0, then the region). */
    public void encodeSingle(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putLong(0);
        encode(out);
    }

    /** Reads the single-region payload, ignoring the padding. */
    public static MemoryRegion decodeSingle(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        in.getLong();
        return decode(in);
    }

    @Override
    public String toString() {
        return "MemoryRegion[gpa=0x" + Long.toHexString(guestAddr) + ", size=0x" + Long.toHexString(size)
                + ", uva=0x" + Long.toHexString(userAddr) + ", offset=0x" + Long.toHexString(mmapOffset) + "]";
    }
}
