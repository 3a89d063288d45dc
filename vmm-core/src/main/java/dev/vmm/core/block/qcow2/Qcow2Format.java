package dev.vmm.core.block.qcow2;

import static dev.vmm.core.linux.Errno.EACCES;
import static dev.vmm.core.linux.Errno.EINVAL;
import static dev.vmm.core.linux.Errno.ENOTSUP;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.memory.RawMemory;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * The qcow2 on-disk format (QEMU's docs/interop/qcow2.txt): constants named as in the spec and
 * QEMU, big-endian accessors, and the parsed header ({@link Image}) with every field checked
 * before use. All numbers in qcow2 are big-endian.
 *
 * <p>Thread contract: static helpers, any thread; {@link #parse} reads through a driver and so
 * runs on that driver's home thread.
 */
final class Qcow2Format {
    private Qcow2Format() {}

    // ---- header layout (byte offsets) ----
    static final int HDR_MAGIC = 0;
    static final int HDR_VERSION = 4;
    static final int HDR_BACKING_FILE_OFFSET = 8;
    static final int HDR_BACKING_FILE_SIZE = 16;
    static final int HDR_CLUSTER_BITS = 20;
    static final int HDR_SIZE = 24;
    static final int HDR_CRYPT_METHOD = 32;
    static final int HDR_L1_SIZE = 36;
    static final int HDR_L1_TABLE_OFFSET = 40;
    static final int HDR_REFCOUNT_TABLE_OFFSET = 48;
    static final int HDR_REFCOUNT_TABLE_CLUSTERS = 56;
    static final int HDR_NB_SNAPSHOTS = 60;
    static final int HDR_SNAPSHOTS_OFFSET = 64;
    static final int HDR_INCOMPATIBLE_FEATURES = 72;
    static final int HDR_COMPATIBLE_FEATURES = 80;
    static final int HDR_AUTOCLEAR_FEATURES = 88;
    static final int HDR_REFCOUNT_ORDER = 96;
    static final int HDR_HEADER_LENGTH = 100;
    static final int HDR_COMPRESSION_TYPE = 104;
    /** Header length of version 2 (no feature fields). */
    static final int QCOW2_V2_HEADER_LENGTH = 72;
    /** Smallest version 3 header (up to header_length). */
    static final int QCOW2_V3_HEADER_LENGTH = 104;

    // ---- feature bits ----
    static final long QCOW2_INCOMPAT_DIRTY = 1L;
    static final long QCOW2_INCOMPAT_CORRUPT = 1L << 1;
    static final long QCOW2_INCOMPAT_DATA_FILE = 1L << 2;
    static final long QCOW2_INCOMPAT_COMPRESSION = 1L << 3;
    static final long QCOW2_INCOMPAT_EXTL2 = 1L << 4;
    static final long QCOW2_INCOMPAT_MASK = 0x1F;
    static final long QCOW2_COMPAT_LAZY_REFCOUNTS = 1L;
    static final long QCOW2_AUTOCLEAR_BITMAPS = 1L;
    static final long QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1L << 1;
    /** The autoclear bits QEMU knows; a writable open clears the others. */
    static final long QCOW2_AUTOCLEAR_MASK = QCOW2_AUTOCLEAR_BITMAPS | QCOW2_AUTOCLEAR_DATA_FILE_RAW;

    static final int QCOW2_COMPRESSION_TYPE_ZLIB = 0;
    static final int QCOW2_COMPRESSION_TYPE_ZSTD = 1;

    // ---- header extension types ----
    static final int QCOW2_EXT_MAGIC_END = 0;
    static final int QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xe2792aca;
    static final int QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803f857;
    static final int QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537be77;
    static final int QCOW2_EXT_MAGIC_BITMAPS = 0x23852875;
    static final int QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441;

    // ---- table entries ----
    static final long QCOW_OFLAG_COPIED = 1L << 63;
    static final long QCOW_OFLAG_COMPRESSED = 1L << 62;
    static final long QCOW_OFLAG_ZERO = 1L;
    static final long L1E_OFFSET_MASK = 0x00fffffffffffe00L;
    static final long L2E_OFFSET_MASK = 0x00fffffffffffe00L;
    static final long REFT_OFFSET_MASK = 0xfffffffffffffe00L;
    /** L1 entry bits 0-8 and 56-62 are reserved. */
    static final long L1E_RESERVED_MASK = 0x7f000000000001ffL;
    /** Standard L2 descriptor bits 1-8 and 56-61 are reserved. */
    static final long L2E_STD_RESERVED_MASK = 0x3f000000000001feL;
    static final long REFT_RESERVED_MASK = 0x1ffL;

    // ---- QEMU's limits against hostile images ----
    static final long QCOW_MAX_L1_SIZE = 32L << 20;
    static final long QCOW_MAX_REFTABLE_SIZE = 8L << 20;
    static final int QCOW_MAX_SNAPSHOTS = 65536;
    static final long QCOW_MAX_SNAPSHOTS_SIZE = 1024L * QCOW_MAX_SNAPSHOTS;
    static final int QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024;
    static final int MIN_CLUSTER_BITS = 9;
    static final int MAX_CLUSTER_BITS = 21;
    /** Host offsets are 56 bits (bits 9-55 of an entry). */
    static final long MAX_HOST_OFFSET = 1L << 56;
    /** QEMU's limit on the virtual size (QCOW_MAX_... : 2^63 guarded by l1 size). */
    static final int SNAPSHOT_ENTRY_FIXED = 40;
    /** Bitmaps extension: nb_bitmaps, reserved32, bitmap_directory_size, bitmap_directory_offset. */
    static final int BITMAPS_EXT_LENGTH = 24;
    static final int QCOW2_MAX_BITMAPS = 65535;
    static final long QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024L * QCOW2_MAX_BITMAPS;

    static long be64(long a) { return Long.reverseBytes(RawMemory.getLe64(a)); }
    static long be32(long a) { return Integer.reverseBytes(RawMemory.getLe32(a)) & 0xFFFFFFFFL; }
    static int be16(long a) { return Short.reverseBytes((short) RawMemory.getLe16(a)) & 0xFFFF; }
    static void putBe64(long a, long v) { RawMemory.putLe64(a, Long.reverseBytes(v)); }
    static void putBe32(long a, long v) { RawMemory.putLe32(a, Integer.reverseBytes((int) v)); }
    static void putBe16(long a, int v) { RawMemory.putLe16(a, Short.reverseBytes((short) v) & 0xFFFF); }

    static BlockException invalid(String what) {
        return new BlockException(EINVAL, "qcow2: " + what);
    }

    /** One snapshot's L1 table (only what overlap checks need). */
    record Snapshot(long l1Offset, long l1Size) {}

    /** A parsed, checked header. Immutable after {@link #parse}. */
    static final class Image {
        int version;
        long backingFileOffset;
        long backingFileSize;
        int clusterBits;
        int clusterSize;
        long size;
        long cryptMethod;
        long l1Size;
        long l1Offset;
        long reftableOffset;
        long reftableClusters;
        long nbSnapshots;
        long snapshotsOffset;
        long incompat;
        long compat;
        long autoclear;
        int refcountOrder;
        int headerLength;
        int compressionType;
        String backingFile;
        String backingFormat;
        boolean extL2;
        /** A bitmaps extension is present (valid or not). */
        boolean hasBitmaps;
        /** From a valid bitmaps extension (autoclear bit 0 set), else 0. Checked by {@link #parse}. */
        long nbBitmaps;
        long bitmapDirectorySize;
        long bitmapDirectoryOffset;
        /** The whole first cluster, as read (aligned native copy made by the driver). */
        byte[] headerCluster;

        Qcow2Header toRecord() {
            return new Qcow2Header(version, size, clusterSize, backingFile, backingFormat);
        }
    }

    /** Reads the header cluster through {@code file} (synchronously) and checks it. */
    static Image parse(BlockDriver file) throws BlockException {
        long fileSize = file.size();
        if (fileSize < QCOW2_V2_HEADER_LENGTH) {
            throw invalid("image is too small to hold a qcow2 header (" + fileSize + " bytes)");
        }
        int first = (int) Math.min(fileSize, 4096);
        byte[] head = readBytes(file, 0, first);
        java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(head); // big-endian by default
        if (b.getInt(HDR_MAGIC) != Qcow2Driver.QCOW_MAGIC) throw invalid("image is not in qcow2 format (bad magic)");
        Image h = new Image();
        h.version = b.getInt(HDR_VERSION);
        if (h.version != 2 && h.version != 3) {
            throw new BlockException(ENOTSUP, "qcow2: Unsupported qcow2 version " + Integer.toUnsignedString(h.version));
        }
        h.clusterBits = b.getInt(HDR_CLUSTER_BITS);
        if (h.clusterBits < MIN_CLUSTER_BITS || h.clusterBits > MAX_CLUSTER_BITS) {
            throw invalid("Unsupported cluster size: 2^" + Integer.toUnsignedString(h.clusterBits) + " (cluster_bits)");
        }
        h.clusterSize = 1 << h.clusterBits;
        if (h.version == 3) {
            if (first < QCOW2_V3_HEADER_LENGTH) throw invalid("qcow2 header too short (image of " + fileSize + " bytes)");
            h.headerLength = b.getInt(HDR_HEADER_LENGTH);
            if (h.headerLength < QCOW2_V3_HEADER_LENGTH) throw invalid("qcow2 header too short (header_length " + h.headerLength + ")");
            if (Integer.toUnsignedLong(h.headerLength) > h.clusterSize) {
                throw invalid("qcow2 header exceeds cluster size (header_length " + Integer.toUnsignedString(h.headerLength) + ")");
            }
            h.incompat = b.getLong(HDR_INCOMPATIBLE_FEATURES);
            h.compat = b.getLong(HDR_COMPATIBLE_FEATURES);
            h.autoclear = b.getLong(HDR_AUTOCLEAR_FEATURES);
            h.refcountOrder = b.getInt(HDR_REFCOUNT_ORDER);
        } else {
            h.headerLength = QCOW2_V2_HEADER_LENGTH;
            h.refcountOrder = 4;
        }
        // The whole header cluster: extensions and the backing file name live in it.
        int hdrLen = (int) Math.min(fileSize, h.clusterSize);
        byte[] cl = hdrLen <= head.length ? java.util.Arrays.copyOf(head, hdrLen) : readBytes(file, 0, hdrLen);
        h.headerCluster = cl;
        if (h.headerLength > cl.length) throw invalid("qcow2 header extends past the end of the image");
        b = java.nio.ByteBuffer.wrap(cl);
        if (h.version == 3 && h.headerLength > HDR_COMPRESSION_TYPE) {
            h.compressionType = cl[HDR_COMPRESSION_TYPE] & 0xFF;
        }
        h.backingFileOffset = b.getLong(HDR_BACKING_FILE_OFFSET);
        h.backingFileSize = Integer.toUnsignedLong(b.getInt(HDR_BACKING_FILE_SIZE));
        h.size = b.getLong(HDR_SIZE);
        h.cryptMethod = Integer.toUnsignedLong(b.getInt(HDR_CRYPT_METHOD));
        h.l1Size = Integer.toUnsignedLong(b.getInt(HDR_L1_SIZE));
        h.l1Offset = b.getLong(HDR_L1_TABLE_OFFSET);
        h.reftableOffset = b.getLong(HDR_REFCOUNT_TABLE_OFFSET);
        h.reftableClusters = Integer.toUnsignedLong(b.getInt(HDR_REFCOUNT_TABLE_CLUSTERS));
        h.nbSnapshots = Integer.toUnsignedLong(b.getInt(HDR_NB_SNAPSHOTS));
        h.snapshotsOffset = b.getLong(HDR_SNAPSHOTS_OFFSET);

        // Extensions first: the feature name table words the unsupported-feature error.
        long extEnd = h.backingFileOffset != 0 ? Math.min(h.backingFileOffset, cl.length) : cl.length;
        java.util.Map<Integer, String> incompatNames = new java.util.HashMap<>();
        for (long off = h.headerLength; ; ) {
            if (off + 8 > extEnd) break; // no room for another extension header: treat as end
            int type = b.getInt((int) off);
            long len = Integer.toUnsignedLong(b.getInt((int) off + 4));
            off += 8;
            if (type == QCOW2_EXT_MAGIC_END) break;
            if (len > extEnd - off) throw invalid("header extension 0x" + Integer.toHexString(type) + ": ext_len " + len + " too large");
            int o = (int) off;
            switch (type) {
                case QCOW2_EXT_MAGIC_BACKING_FORMAT -> {
                    if (len >= 16) throw invalid("ext_backing_format: len=" + len + " too large");
                    h.backingFormat = new String(cl, o, (int) len, StandardCharsets.UTF_8);
                }
                case QCOW2_EXT_MAGIC_FEATURE_TABLE -> {
                    for (int i = 0; i + 48 <= len; i += 48) {
                        int ftype = cl[o + i] & 0xFF;
                        int bit = cl[o + i + 1] & 0xFF;
                        int n = 0;
                        while (n < 46 && cl[o + i + 2 + n] != 0) n++;
                        if (ftype == 0) incompatNames.put(bit, new String(cl, o + i + 2, n, StandardCharsets.UTF_8));
                    }
                }
                case QCOW2_EXT_MAGIC_BITMAPS -> {
                    h.hasBitmaps = true;
                    if (len != BITMAPS_EXT_LENGTH) throw invalid("bitmaps_ext: Invalid extension length");
                    // Without the autoclear bit a program unaware of bitmaps wrote the image
                    // after them: QEMU ignores the extension (the bitmaps are lost), so do we.
                    if (h.version == 3 && (h.autoclear & QCOW2_AUTOCLEAR_BITMAPS) != 0) parseBitmapsExt(h, b, o);
                }
                default -> { /* unknown extensions are ignored (and kept: we never rewrite them) */ }
            }
            off += (len + 7) & ~7L;
        }
        if (h.version == 3) {
            long unknown = h.incompat & ~QCOW2_INCOMPAT_MASK;
            if (unknown != 0) {
                StringBuilder sb = new StringBuilder("qcow2: Unsupported qcow2 feature(s): ");
                String sep = "";
                for (int bit = 0; bit < 64; bit++) {
                    if ((unknown & (1L << bit)) == 0) continue;
                    String n = incompatNames.get(bit);
                    sb.append(sep).append(n != null ? n : "Unknown incompatible feature: " + Long.toHexString(1L << bit));
                    sep = ", ";
                }
                throw new BlockException(ENOTSUP, sb.toString());
            }
            if ((h.incompat & QCOW2_INCOMPAT_DATA_FILE) != 0) {
                throw new BlockException(ENOTSUP, "qcow2: images with an external data file are not supported");
            }
            if ((h.incompat & QCOW2_INCOMPAT_COMPRESSION) != 0) {
                if (h.compressionType == QCOW2_COMPRESSION_TYPE_ZSTD) {
                    throw new BlockException(ENOTSUP, "qcow2: zstd compressed clusters are not supported");
                }
                if (h.compressionType != QCOW2_COMPRESSION_TYPE_ZLIB) {
                    throw invalid("Unknown compression type " + h.compressionType);
                }
            } else if (h.compressionType != QCOW2_COMPRESSION_TYPE_ZLIB) {
                throw invalid("Invalid compression type: compression_type is " + h.compressionType
                        + " but the compression type bit is not set");
            }
            h.extL2 = (h.incompat & QCOW2_INCOMPAT_EXTL2) != 0;
            if (h.extL2 && h.clusterBits < 14) throw invalid("Extended L2 entries need a cluster size of at least 16 KiB (cluster_bits " + h.clusterBits + ")");
            if (h.refcountOrder < 0 || h.refcountOrder > 6) {
                throw invalid("Reference count entry width too large; may not exceed 64 bits (refcount_order " + h.refcountOrder + ")");
            }
        }
        if (h.cryptMethod != 0) {
            throw new BlockException(ENOTSUP, "qcow2: encrypted images are not supported (crypt_method " + h.cryptMethod + ")");
        }
        if (h.size < 0) throw invalid("Image is too big (size " + Long.toUnsignedString(h.size) + ")");
        // L1: enough entries to map the disk, no more than QEMU allows.
        int l2Bits = h.clusterBits - (h.extL2 ? 4 : 3);
        int shift = h.clusterBits + l2Bits;
        long l1Needed = shift >= 63 ? 1 : (h.size + (1L << shift) - 1) >>> shift;
        if (h.size > 0 && l1Needed > Integer.MAX_VALUE) throw invalid("Image is too big (size " + h.size + ")");
        if (h.l1Size > QCOW_MAX_L1_SIZE / 8) throw invalid("Active L1 table too large (l1_size " + h.l1Size + ")");
        if (h.l1Size < l1Needed) throw invalid("L1 table is too small (l1_size " + h.l1Size + ", the size needs " + l1Needed + ")");
        checkTable("L1 table", h.l1Offset, h.l1Size * 8, h, fileSize, h.l1Size > 0);
        if (h.reftableClusters == 0) throw invalid("Image does not contain a reference count table");
        if (h.reftableClusters > QCOW_MAX_REFTABLE_SIZE / h.clusterSize) {
            throw invalid("Reference count table too large (refcount_table_clusters " + h.reftableClusters + ")");
        }
        checkTable("Reference count table", h.reftableOffset, h.reftableClusters << h.clusterBits, h, fileSize, true);
        if (h.nbSnapshots > QCOW_MAX_SNAPSHOTS) throw invalid("Too many snapshots (nb_snapshots " + h.nbSnapshots + ")");
        if (h.nbSnapshots > 0) checkTable("Snapshot table", h.snapshotsOffset, h.nbSnapshots * SNAPSHOT_ENTRY_FIXED, h, fileSize, true);
        if (h.backingFileOffset != 0) {
            if (h.backingFileOffset > h.clusterSize || h.backingFileSize > 1023
                    || h.backingFileOffset + h.backingFileSize > cl.length) {
                throw invalid("Backing file name too long (backing_file_offset " + h.backingFileOffset
                        + ", backing_file_size " + h.backingFileSize + ")");
            }
            h.backingFile = new String(cl, (int) h.backingFileOffset, (int) h.backingFileSize, StandardCharsets.UTF_8);
            if (h.backingFile.isEmpty()) h.backingFile = null;
        }
        return h;
    }

    /** The bitmaps extension's fields, with QEMU's checks and wording (qcow2_read_extensions). */
    private static void parseBitmapsExt(Image h, java.nio.ByteBuffer b, int o) throws BlockException {
        long nb = Integer.toUnsignedLong(b.getInt(o));
        if (b.getInt(o + 4) != 0) throw invalid("bitmaps_ext: Reserved field is not zero");
        long dirSize = b.getLong(o + 8);
        long dirOffset = b.getLong(o + 16);
        if (nb > QCOW2_MAX_BITMAPS) {
            throw invalid("bitmaps_ext: Image has " + nb + " bitmaps, exceeding the QEMU supported maximum of " + QCOW2_MAX_BITMAPS);
        }
        if (nb == 0) throw invalid("found bitmaps extension with zero bitmaps");
        if ((dirOffset & (h.clusterSize - 1)) != 0) throw invalid("bitmaps_ext: invalid bitmap directory offset");
        if (Long.compareUnsigned(dirSize, QCOW2_MAX_BITMAP_DIRECTORY_SIZE) > 0) {
            throw invalid("bitmaps_ext: bitmap directory size (" + Long.toUnsignedString(dirSize)
                    + ") exceeds the maximum supported size (" + QCOW2_MAX_BITMAP_DIRECTORY_SIZE + ")");
        }
        h.nbBitmaps = nb;
        h.bitmapDirectorySize = dirSize;
        h.bitmapDirectoryOffset = dirOffset;
    }

    /**
     * Rewrites the header cluster {@code cl} (a v3 header of {@code headerLength} bytes, checked
     * by {@link #parse}) with a bitmaps extension of {@code nb} bitmaps whose directory is
     * {@code dirSize} bytes at {@code dirOffset} ({@code nb == 0}: no bitmaps extension), keeping
     * every other extension and the backing file name, whose offset moves (QEMU's
     * qcow2_update_header rewrites the whole cluster the same way). Returns the bytes used.
     */
    static int rebuildHeader(byte[] cl, int headerLength, long nb, long dirSize, long dirOffset) throws BlockException {
        java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(cl);
        long backingOffset = b.getLong(HDR_BACKING_FILE_OFFSET);
        int backingSize = backingOffset != 0 ? b.getInt(HDR_BACKING_FILE_SIZE) : 0;
        long extEnd = backingOffset != 0 ? Math.min(backingOffset, cl.length) : cl.length;
        java.io.ByteArrayOutputStream exts = new java.io.ByteArrayOutputStream();
        if (nb > 0) {
            java.nio.ByteBuffer e = java.nio.ByteBuffer.allocate(8 + BITMAPS_EXT_LENGTH);
            e.putInt(QCOW2_EXT_MAGIC_BITMAPS).putInt(BITMAPS_EXT_LENGTH).putInt((int) nb).putInt(0).putLong(dirSize).putLong(dirOffset);
            exts.writeBytes(e.array());
        }
        for (long off = headerLength; off + 8 <= extEnd; ) {
            int type = b.getInt((int) off);
            long len = Integer.toUnsignedLong(b.getInt((int) off + 4));
            if (type == QCOW2_EXT_MAGIC_END) break;
            if (len > extEnd - off - 8) throw invalid("header extension 0x" + Integer.toHexString(type) + ": ext_len " + len + " too large");
            long padded = (len + 7) & ~7L;
            if (type != QCOW2_EXT_MAGIC_BITMAPS) {
                exts.write(cl, (int) off, (int) (8 + len));
                exts.writeBytes(new byte[(int) (padded - len)]);
            }
            off += 8 + padded;
        }
        exts.writeBytes(new byte[8]); // end of extensions
        byte[] backing = backingOffset != 0 ? java.util.Arrays.copyOfRange(cl, (int) backingOffset, (int) backingOffset + backingSize) : new byte[0];
        int used = headerLength + exts.size() + backing.length;
        if (used > cl.length) throw new BlockException(dev.vmm.core.linux.Errno.ENOSPC, "qcow2: the header extensions do not fit in the header cluster");
        byte[] n = new byte[cl.length];
        System.arraycopy(cl, 0, n, 0, headerLength);
        System.arraycopy(exts.toByteArray(), 0, n, headerLength, exts.size());
        if (backingOffset != 0) {
            System.arraycopy(backing, 0, n, headerLength + exts.size(), backing.length);
            java.nio.ByteBuffer.wrap(n).putLong(HDR_BACKING_FILE_OFFSET, headerLength + exts.size());
        }
        System.arraycopy(n, 0, cl, 0, cl.length);
        return used;
    }

    /** Offsets aligned, inside the file, no overflow. */
    static void checkTable(String what, long offset, long bytes, Image h, long fileSize, boolean used) throws BlockException {
        if (!used) return;
        if (offset <= 0 || (offset & (h.clusterSize - 1)) != 0) throw invalid(what + " offset invalid (" + offset + ")");
        if (bytes < 0 || offset > MAX_HOST_OFFSET || bytes > MAX_HOST_OFFSET - offset) {
            throw invalid(what + " too large (offset " + offset + ", " + bytes + " bytes)");
        }
        if (offset + bytes > fileSize) {
            throw invalid(what + " extends past the end of the image (offset " + offset + ", " + bytes
                    + " bytes, image of " + fileSize + " bytes)");
        }
    }

    /** Reads {@code length} bytes at {@code offset} synchronously through an aligned native buffer. */
    static byte[] readBytes(BlockDriver file, long offset, int length) throws BlockException {
        long buf = NativeAlloc.allocate(Math.max(length, 1), 4096);
        try {
            file.read(offset, NativeAlloc.aligned(buf, 4096), length);
            byte[] out = new byte[length];
            long a = NativeAlloc.aligned(buf, 4096);
            for (int i = 0; i < length; i++) out[i] = (byte) RawMemory.getByte(a + i);
            return out;
        } finally {
            RawMemory.free(buf);
        }
    }

    /** The snapshot table: each entry's L1 table, checked. */
    static List<Snapshot> readSnapshots(BlockDriver file, Image h) throws BlockException {
        List<Snapshot> out = new ArrayList<>();
        long pos = h.snapshotsOffset;
        long fileSize = file.size();
        for (long i = 0; i < h.nbSnapshots; i++) {
            if (pos - h.snapshotsOffset > QCOW_MAX_SNAPSHOTS_SIZE) throw invalid("Snapshot table too large");
            if (pos + SNAPSHOT_ENTRY_FIXED > fileSize) throw invalid("Snapshot table extends past the end of the image");
            byte[] e = readBytes(file, pos, SNAPSHOT_ENTRY_FIXED);
            java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(e);
            long l1Off = b.getLong(0);
            long l1Size = Integer.toUnsignedLong(b.getInt(8));
            int idLen = b.getShort(12) & 0xFFFF;
            int nameLen = b.getShort(14) & 0xFFFF;
            long extra = Integer.toUnsignedLong(b.getInt(36));
            if (extra > QCOW_MAX_SNAPSHOT_EXTRA_DATA) throw invalid("Too much extra metadata in snapshot table entry " + i);
            if (l1Size > QCOW_MAX_L1_SIZE / 8) throw invalid("Snapshot L1 table too large (snapshot " + i + ")");
            checkTable("Snapshot L1 table (snapshot " + i + ")", l1Off, l1Size * 8, h, fileSize, l1Size > 0);
            out.add(new Snapshot(l1Off, l1Size));
            pos += SNAPSHOT_ENTRY_FIXED + extra + idLen + nameLen;
            // QEMU may end the file before the last entry's padding
            if (pos > fileSize) throw invalid("Snapshot table extends past the end of the image");
            pos = (pos + 7) & ~7L;
        }
        return out;
    }

    /** Rejects the corrupt bit for a writable open, as QEMU. */
    static void checkCorruptForWrite(Image h) throws BlockException {
        if ((h.incompat & QCOW2_INCOMPAT_CORRUPT) != 0) {
            throw new BlockException(EACCES, "qcow2: Image is corrupt; cannot be opened read/write");
        }
    }
}
