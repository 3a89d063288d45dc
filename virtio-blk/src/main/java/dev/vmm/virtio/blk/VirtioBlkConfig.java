package dev.vmm.virtio.blk;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * The device's config space, {@code struct virtio_blk_config} (virtio 1.2 §5.2.4), encoded
 * little-endian. Offsets of the fields we fill:
 *
 * <pre>
 *  0 le64 capacity (512-byte sectors)   24 u8  topology.physical_block_exp
 *  8 le32 size_max                      25 u8  topology.alignment_offset
 * 12 le32 seg_max                       26 le16 topology.min_io_size (blocks)
 * 16 le16 geometry.cylinders            28 le32 topology.opt_io_size (blocks)
 * 18 u8   geometry.heads, 19 sectors    32 u8  writeback, 33 unused
 * 20 le32 blk_size                      34 le16 num_queues
 * 36 le32 max_discard_sectors           48 le32 max_write_zeroes_sectors
 * 40 le32 max_discard_seg               52 le32 max_write_zeroes_seg
 * 44 le32 discard_sector_alignment      56 u8  write_zeroes_may_unmap, 57..59 unused
 * 60 le32 max_secure_erase_sectors ... (zero: not offered)
 * </pre>
 *
 * Thread contract: a value object; {@link #writeback} changes on the control plane (SET_CONFIG).
 */
public final class VirtioBlkConfig {
    /** Size of the struct up to and including the secure-erase fields. */
    public static final int SIZE = 72;
    /** Offset of the writeback byte, the only field a driver may write (CONFIG_WCE). */
    public static final int WRITEBACK_OFFSET = 32;

    public final long capacitySectors;
    public final int sizeMax;
    public final int segMax;
    public final int blkSize;
    public final int physicalBlockExp;
    public final int minIoSize;
    public final int optIoSize;
    public volatile boolean writeback;
    public final int numQueues;
    public final int maxDiscardSectors;
    public final int maxDiscardSeg;
    public final int discardSectorAlignment;
    public final int maxWriteZeroesSectors;
    public final int maxWriteZeroesSeg;
    public final boolean writeZeroesMayUnmap;

    public VirtioBlkConfig(long sizeBytes, int logicalBlockSize, int numQueues, int segMax, int sizeMax) {
        this.capacitySectors = sizeBytes >>> VirtioBlk.SECTOR_SHIFT;
        this.sizeMax = sizeMax;
        this.segMax = segMax;
        this.blkSize = logicalBlockSize;
        this.physicalBlockExp = 0;
        this.minIoSize = 1;
        this.optIoSize = 0;
        this.writeback = true;
        this.numQueues = numQueues;
        // One discard/zero request may cover up to 4 GiB - 1 sector in a single segment; the
        // limits are in sectors and alignment follows the logical block size.
        int blockSectors = Math.max(1, logicalBlockSize / VirtioBlk.SECTOR_SIZE);
        this.maxDiscardSectors = (int) ((0xFFFF_FFFFL / blockSectors) * blockSectors & 0x7FFF_FFFF);
        this.maxDiscardSeg = 1;
        this.discardSectorAlignment = blockSectors;
        this.maxWriteZeroesSectors = maxDiscardSectors;
        this.maxWriteZeroesSeg = 1;
        this.writeZeroesMayUnmap = true;
    }

    /** The whole config space. */
    public byte[] encode() {
        ByteBuffer b = ByteBuffer.allocate(SIZE).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(0, capacitySectors);
        b.putInt(8, sizeMax);
        b.putInt(12, segMax);
        // geometry (16..19) left zero: not offered (VIRTIO_BLK_F_GEOMETRY is legacy)
        b.putInt(20, blkSize);
        b.put(24, (byte) physicalBlockExp);
        b.put(25, (byte) 0);
        b.putShort(26, (short) minIoSize);
        b.putInt(28, optIoSize);
        b.put(WRITEBACK_OFFSET, (byte) (writeback ? 1 : 0));
        b.putShort(34, (short) numQueues);
        b.putInt(36, maxDiscardSectors);
        b.putInt(40, maxDiscardSeg);
        b.putInt(44, discardSectorAlignment);
        b.putInt(48, maxWriteZeroesSectors);
        b.putInt(52, maxWriteZeroesSeg);
        b.put(56, (byte) (writeZeroesMayUnmap ? 1 : 0));
        return b.array();
    }

    /**
     * {@code size} bytes of config space starting at {@code offset}, as GET_CONFIG answers;
     * bytes beyond our struct read as zero. Returns null for a range outside 0..256.
     */
    public byte[] read(int offset, int size) {
        if (offset < 0 || size < 0 || offset + size > 256) return null;
        byte[] all = encode();
        byte[] out = new byte[size];
        if (offset < SIZE) System.arraycopy(all, offset, out, 0, Math.min(size, SIZE - offset));
        return out;
    }
}
