package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Format.invalid;
import static dev.vmm.core.block.qcow2.Qcow2Format.MAX_HOST_OFFSET;
import static dev.vmm.core.linux.Errno.ENOMEM;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.memory.RawMemory;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;

/**
 * Reads the persistent dirty bitmaps of a qcow2 image (QEMU's docs/interop/qcow2.txt, "Bitmaps
 * extension", and block/qcow2-bitmap.c): the bitmap directory, each bitmap's table and its data
 * clusters, into {@link DirtyBitmap}s; and the pure parts of the write side (directory encoding,
 * in_use marking, serializing a bitmap's bits), which {@link Qcow2Driver} uses to store them.
 *
 * <p>Bitmap directory entry (big-endian, 8-byte aligned):
 * <pre>
 *  0..7   bitmap_table_offset   cluster aligned
 *  8..11  bitmap_table_size     entries (u64 each)
 * 12..15  flags                 bit 0 in_use, bit 1 auto, others reserved (QEMU refuses bit 2 too)
 * 16      type                  1 = dirty tracking bitmap
 * 17      granularity_bits      9..31
 * 18..19  name_size             1..1023
 * 20..23  extra_data_size       QEMU supports 0 only
 * 24..    extra data, name, padding to 8 bytes
 * </pre>
 * Bitmap table entry: bits 9..55 the offset of a data cluster; 0 with bit 0 clear = all zeros,
 * 0 with bit 0 set = all ones; bits 1..8 and 56..63 reserved. A data cluster holds
 * {@code cluster_size * 8} bits, bit {@code j} of byte {@code k} is chunk {@code 8k + j}.
 *
 * <p>Every field is checked before use, with QEMU's wording where QEMU has one; anything wrong is a
 * {@link BlockException} naming the bitmap. Thread contract: called by {@link Qcow2Driver} on
 * open, on the home thread (synchronous reads through the file child).
 */
final class Qcow2Bitmaps {
    private Qcow2Bitmaps() {}

    static final int BME_FLAG_IN_USE = 1;
    static final int BME_FLAG_AUTO = 1 << 1;
    /** QEMU 7.2 treats extra_data_compatible (bit 2) as reserved too. */
    static final int BME_RESERVED_FLAGS = 0xfffffffc;
    static final int BT_DIRTY_TRACKING_BITMAP = 1;
    static final int BME_MIN_GRANULARITY_BITS = 9;
    static final int BME_MAX_GRANULARITY_BITS = 31;
    static final int BME_MAX_NAME_SIZE = 1023;
    static final long BME_MAX_TABLE_SIZE = 0x8000000L;
    /** QEMU's cap on a bitmap's size in RAM (and on table_size * cluster_size). */
    static final long BME_MAX_PHYS_SIZE = 0x20000000L;
    static final long BME_TABLE_ENTRY_RESERVED_MASK = 0xff000000000001feL;
    static final long BME_TABLE_ENTRY_OFFSET_MASK = 0x00fffffffffffe00L;
    static final long BME_TABLE_ENTRY_FLAG_ALL_ONES = 1L;
    static final int DIR_ENTRY_FIXED = 24;

    /** Names the metadata that the clusters of {@code [off, off+len)} overlap, or null. */
    interface Overlap {
        String at(long off, long len);
    }

    /** One directory entry, checked. */
    record Entry(String name, long tableOffset, long tableSize, int flags, int granularityBits) {}

    /**
     * Loads every bitmap the header's valid extension lists. {@code h.nbBitmaps == 0} (no
     * extension, or one QEMU ignores): none.
     */
    static List<DirtyBitmap> load(BlockDriver file, Qcow2Format.Image h, Overlap overlap) throws BlockException {
        return load(file, h, overlap, new ArrayList<>());
    }

    /** As {@link #load(BlockDriver, Qcow2Format.Image, Overlap)}; adds the directory's entries to {@code entries}. */
    static List<DirtyBitmap> load(BlockDriver file, Qcow2Format.Image h, Overlap overlap, List<Entry> entries) throws BlockException {
        List<DirtyBitmap> out = new ArrayList<>();
        if (h.nbBitmaps == 0) return out;
        long fileSize = file.size();
        long cs = h.clusterSize;
        if (h.bitmapDirectorySize == 0) throw invalid("Requested bitmap directory size is zero");
        checkInFile("bitmap directory", h.bitmapDirectoryOffset, h.bitmapDirectorySize, fileSize);
        String o = overlap.at(h.bitmapDirectoryOffset, h.bitmapDirectorySize);
        if (o != null) throw invalid("bitmap directory overlaps " + o);
        entries.addAll(parseDirectory(Qcow2Format.readBytes(file, h.bitmapDirectoryOffset, (int) h.bitmapDirectorySize), h));
        long[] dir = {h.bitmapDirectoryOffset, h.bitmapDirectoryOffset + h.bitmapDirectorySize};
        long buf = NativeAlloc.allocate(cs, 4096);
        try {
            long a = NativeAlloc.aligned(buf, 4096);
            for (Entry e : entries) {
                DirtyBitmap b;
                try {
                    b = new DirtyBitmap(e.name(), h.size, 1L << e.granularityBits());
                } catch (OutOfMemoryError oom) {
                    throw new BlockException(ENOMEM, "qcow2: no memory for bitmap '" + e.name() + "'");
                }
                b.setPersistent(true);
                b.setRecording((e.flags() & BME_FLAG_AUTO) != 0);
                if ((e.flags() & BME_FLAG_IN_USE) != 0) {
                    b.setInconsistent(true); // data unusable: not read, as QEMU
                } else {
                    loadData(file, h, e, b, overlap, dir, a, fileSize);
                }
                out.add(b);
            }
        } finally {
            RawMemory.free(buf);
        }
        return out;
    }

    /** QEMU's bitmap_list_load and check_dir_entry. */
    static List<Entry> parseDirectory(byte[] d, Qcow2Format.Image h) throws BlockException {
        ByteBuffer b = ByteBuffer.wrap(d);
        List<Entry> out = new ArrayList<>();
        Set<String> names = new HashSet<>();
        long cs = h.clusterSize;
        int pos = 0;
        while (pos < d.length) {
            if (d.length - pos < DIR_ENTRY_FIXED) throw invalid("Broken bitmap directory");
            if (out.size() + 1 > h.nbBitmaps) throw invalid("More bitmaps found than specified in header extension");
            long tableOffset = b.getLong(pos);
            long tableSize = Integer.toUnsignedLong(b.getInt(pos + 8));
            int flags = b.getInt(pos + 12);
            int type = d[pos + 16] & 0xFF;
            int gbits = d[pos + 17] & 0xFF;
            int nameSize = b.getShort(pos + 18) & 0xFFFF;
            long extra = Integer.toUnsignedLong(b.getInt(pos + 20));
            long entrySize = (DIR_ENTRY_FIXED + nameSize + extra + 7) & ~7L;
            if (entrySize > d.length - pos) throw invalid("Broken bitmap directory");
            if (extra != 0) throw invalid("Bitmap extra data is not supported");
            int nameEnd = pos + DIR_ENTRY_FIXED + nameSize;
            int n = pos + DIR_ENTRY_FIXED;
            while (n < nameEnd && d[n] != 0) n++; // QEMU copies the name with g_strndup
            String name = new String(d, pos + DIR_ENTRY_FIXED, n - pos - DIR_ENTRY_FIXED, StandardCharsets.UTF_8);
            long phys = tableSize * cs;
            boolean fail = tableSize == 0 || tableOffset == 0 || (tableOffset & (cs - 1)) != 0
                    || tableSize > BME_MAX_TABLE_SIZE
                    || gbits > BME_MAX_GRANULARITY_BITS || gbits < BME_MIN_GRANULARITY_BITS
                    || (flags & BME_RESERVED_FLAGS) != 0
                    || nameSize > BME_MAX_NAME_SIZE || name.isEmpty()
                    || type != BT_DIRTY_TRACKING_BITMAP
                    || phys > BME_MAX_PHYS_SIZE
                    // a consistent bitmap's table must cover the disk
                    || (flags & BME_FLAG_IN_USE) == 0 && chunks(h.size, gbits) > phys * 8
                    // ours: even an in_use bitmap is allocated; QEMU's cap on its size in RAM
                    || gbits <= BME_MAX_GRANULARITY_BITS && (chunks(h.size, gbits) + 7) / 8 > BME_MAX_PHYS_SIZE;
            if (fail) throw invalid("Bitmap '" + name + "' doesn't satisfy the constraints");
            if (!names.add(name)) throw invalid("Bitmap already exists: " + name);
            out.add(new Entry(name, tableOffset, tableSize, flags, gbits));
            pos += (int) entrySize;
        }
        if (out.size() != h.nbBitmaps) throw invalid("Less bitmaps found than specified in header extension");
        return out;
    }

    /** The table (checked as QEMU's bitmap_table_load), then each data cluster. */
    private static void loadData(BlockDriver file, Qcow2Format.Image h, Entry e, DirtyBitmap b, Overlap overlap,
            long[] dir, long buf, long fileSize) throws BlockException {
        long cs = h.clusterSize;
        String what = "bitmap '" + e.name() + "'";
        long tableBytes = e.tableSize() * 8;
        checkInFile(what + " table", e.tableOffset(), tableBytes, fileSize);
        String o = overlap.at(e.tableOffset(), tableBytes);
        if (o == null && clustersMeet(e.tableOffset(), tableBytes, dir[0], dir[1] - dir[0], cs)) o = "the bitmap directory";
        if (o != null) throw invalid(what + " table overlaps " + o);
        // Table size as QEMU's load_bitmap_data: the serialized bitmap in clusters.
        long bitsPerCluster = cs * 8;
        long tab = (b.bitCount() + bitsPerCluster - 1) / bitsPerCluster;
        if (tab != e.tableSize()) {
            throw invalid("Could not read bitmap '" + e.name() + "' from image: Invalid argument (bitmap_table_size "
                    + e.tableSize() + ", the disk needs " + tab + ")");
        }
        byte[] table = Qcow2Format.readBytes(file, e.tableOffset(), (int) tableBytes);
        ByteBuffer t = ByteBuffer.wrap(table);
        for (int i = 0; i < e.tableSize(); i++) {
            long entry = t.getLong(i * 8);
            long off = entry & BME_TABLE_ENTRY_OFFSET_MASK;
            if ((entry & BME_TABLE_ENTRY_RESERVED_MASK) != 0 || off != 0
                    && ((entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) != 0 || (off & (cs - 1)) != 0)) {
                throw invalid("Could not read bitmap_table table from image for bitmap '" + e.name()
                        + "': Invalid argument (entry " + i + ": 0x" + Long.toHexString(entry) + ")");
            }
        }
        byte[] data = new byte[(int) cs];
        for (int i = 0; i < e.tableSize(); i++) {
            long entry = t.getLong(i * 8);
            long off = entry & BME_TABLE_ENTRY_OFFSET_MASK;
            long first = i * bitsPerCluster;
            if (off == 0) {
                if ((entry & BME_TABLE_ENTRY_FLAG_ALL_ONES) != 0) b.setBits(first, first + bitsPerCluster);
                continue;
            }
            checkInFile(what + " data cluster (table entry " + i + ")", off, cs, fileSize);
            o = overlap.at(off, cs);
            if (o == null && clustersMeet(off, cs, dir[0], dir[1] - dir[0], cs)) o = "the bitmap directory";
            if (o == null && clustersMeet(off, cs, e.tableOffset(), tableBytes, cs)) o = "its bitmap table";
            if (o != null) throw invalid(what + " data cluster (table entry " + i + ") overlaps " + o);
            file.read(off, buf, (int) cs);
            for (int k = 0; k < cs; k++) data[k] = (byte) RawMemory.getByte(buf + k);
            b.deserialize(first, data, 0, (int) cs);
        }
    }

    // ================================================================ write side

    /** Size of a directory entry with a name of {@code nameBytes} bytes and no extra data (QEMU's calc_dir_entry_size). */
    static long entrySize(int nameBytes) {
        return (DIR_ENTRY_FIXED + nameBytes + 7) & ~7L;
    }

    /** Size of the directory holding {@code entries}. */
    static long directorySize(List<Entry> entries) {
        long n = 0;
        for (Entry e : entries) n += entrySize(e.name().getBytes(StandardCharsets.UTF_8).length);
        return n;
    }

    /** The directory of {@code entries}, in their order (QEMU's bitmap_list_store layout, zero padding). */
    static byte[] encodeDirectory(List<Entry> entries) {
        ByteBuffer b = ByteBuffer.allocate((int) directorySize(entries));
        for (Entry e : entries) {
            byte[] name = e.name().getBytes(StandardCharsets.UTF_8);
            int pos = b.position();
            b.putLong(e.tableOffset()).putInt((int) e.tableSize()).putInt(e.flags());
            b.put((byte) BT_DIRTY_TRACKING_BITMAP).put((byte) e.granularityBits()).putShort((short) name.length).putInt(0);
            b.put(name);
            b.position(pos + (int) entrySize(name.length));
        }
        return b.array();
    }

    /**
     * Serializes the chunks {@code [firstBit, firstBit + out.length * 8)} of {@code b} into
     * {@code out} in QEMU's order (bit {@code j} of byte {@code k} is chunk {@code firstBit + 8k + j});
     * bits past the disk stay 0. True when any bit is set.
     */
    static boolean serialize(DirtyBitmap b, long firstBit, byte[] out) {
        java.util.Arrays.fill(out, (byte) 0);
        int g = Long.numberOfTrailingZeros(b.granularity());
        long size = b.size();
        if (firstBit >= b.bitCount()) return false;
        long from = firstBit << g;
        long lastBit = Math.min(b.bitCount(), firstBit + (long) out.length * 8);
        long to = Math.min(size, lastBit << g);
        boolean any = false;
        for (long off = b.nextDirty(from, to); off >= 0; ) {
            long clean = b.nextClean(off, to);
            long end = clean < 0 ? to : clean;
            long bit0 = (off >>> g) - firstBit;
            long bit1 = ((end - 1) >>> g) + 1 - firstBit;
            for (long i = bit0; i < bit1; ) {
                if ((i & 7) == 0 && bit1 - i >= 8) {
                    out[(int) (i >>> 3)] = (byte) 0xFF;
                    i += 8;
                } else {
                    out[(int) (i >>> 3)] |= (byte) (1 << (i & 7));
                    i++;
                }
            }
            any = true;
            off = clean < 0 ? -1 : b.nextDirty(end, to);
        }
        return any;
    }

    /** The number of table entries (data clusters) a bitmap of {@code bitCount} chunks needs. */
    static long tableSize(long bitCount, long clusterSize) {
        long bitsPerCluster = clusterSize * 8;
        return (bitCount + bitsPerCluster - 1) / bitsPerCluster;
    }

    /** {@code ceil(size / 2^gbits)} without overflow. */
    private static long chunks(long size, int gbits) {
        return (size >>> gbits) + ((size & ((1L << gbits) - 1)) != 0 ? 1 : 0);
    }

    private static void checkInFile(String what, long off, long len, long fileSize) throws BlockException {
        if (off <= 0 || len < 0 || off > MAX_HOST_OFFSET || len > MAX_HOST_OFFSET - off || off + len > fileSize) {
            throw invalid(what + " is outside the image (offset " + Long.toUnsignedString(off) + ", " + len
                    + " bytes, image of " + fileSize + " bytes)");
        }
    }

    /** True when {@code [a, a+alen)} and {@code [b, b+blen)} share a cluster. */
    private static boolean clustersMeet(long a, long alen, long b, long blen, long cs) {
        if (alen <= 0 || blen <= 0) return false;
        return a / cs <= (b + blen - 1) / cs && b / cs <= (a + alen - 1) / cs;
    }
}
