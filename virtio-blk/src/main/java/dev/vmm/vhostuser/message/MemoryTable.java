package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

/**
 * Memory regions description (VhostUserMemory), little-endian:
 * <pre>
 * offset 0   u32 nregions   1..8 (VHOST_MEMORY_BASELINE_NREGIONS)
 * offset 4   u32 padding
 * offset 8   nregions x {@link MemoryRegion} (32 bytes each)
 * </pre>
 * QEMU sends exactly 8 + 32 * nregions bytes, with one fd per region in the same order.
 */
public record MemoryTable(List<MemoryRegion> regions) {
    /** Most regions in one SET_MEM_TABLE. */
    public static final int MAX_REGIONS = 8;
    /** Bytes before the regions. */
    public static final int HEADER_SIZE = 8;

    public MemoryTable {
        regions = List.copyOf(regions);
        if (regions.size() > MAX_REGIONS) throw new IllegalArgumentException("at most 8 regions");
    }

    public int size() { return HEADER_SIZE + regions.size() * MemoryRegion.SIZE; }

    public static int sizeFor(int nregions) { return HEADER_SIZE + nregions * MemoryRegion.SIZE; }

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putInt(regions.size()).putInt(0);
        for (MemoryRegion r : regions) r.encode(out);
    }

    /** Decodes a payload whose size was checked against {@code nregions} (see {@link VhostUserDecoder}). */
    public static MemoryTable decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        int n = in.getInt();
        in.getInt();
        if (n < 0 || n > MAX_REGIONS) throw new IllegalArgumentException("nregions " + Integer.toUnsignedString(n));
        List<MemoryRegion> list = new ArrayList<>(n);
        for (int i = 0; i < n; i++) list.add(MemoryRegion.decode(in));
        return new MemoryTable(list);
    }
}
