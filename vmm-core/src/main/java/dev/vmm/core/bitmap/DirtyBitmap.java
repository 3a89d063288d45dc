package dev.vmm.core.bitmap;

import java.util.Objects;

/**
 * A dirty bitmap with QEMU's {@code BdrvDirtyBitmap} semantics: one bit per {@code granularity}
 * bytes of a disk of {@code size} bytes; a set bit means "this chunk may have changed". Byte
 * ranges are rounded outwards when set (a partly written chunk is dirty) and inwards when reset
 * (a chunk is clean only when the whole of it was reset; the last, partial chunk counts as whole
 * when the range reaches the end of the disk), so a reset never forgets a change.
 *
 * <p>Bit {@code i} covers bytes {@code [i*granularity, (i+1)*granularity)}; it is bit
 * {@code i % 64} of {@code bits[i / 64]}, which is also QEMU's serialization order (bit
 * {@code i % 8} of byte {@code i / 8}, least significant first) when the words are stored
 * little-endian.
 *
 * <p>Thread contract: the owning node's home IOThread for everything that changes or reads bits.
 * The QMP main loop may read {@link #name}, the flags and {@link #count} for
 * {@code query-named-block-nodes}: the flags are volatile and the count is a volatile long
 * written only by the home thread, so such a reader sees a recent value, never a torn one.
 */
public final class DirtyBitmap {
    /** QEMU's smallest granularity (BME_MIN_GRANULARITY_BITS 9). */
    public static final long MIN_GRANULARITY = 1L << 9;
    /** QEMU's largest granularity (BME_MAX_GRANULARITY_BITS 31). */
    public static final long MAX_GRANULARITY = 1L << 31;
    /** QEMU's limit on a bitmap's name (BDRV_BITMAP_MAX_NAME_SIZE). */
    public static final int MAX_NAME_SIZE = 1023;

    private final String name;
    private volatile long size; // grows with the node (resize), home thread
    private final long granularity;
    private final int granularityBits;
    private long nbits;
    private long[] bits;

    // ---- written on the home thread, read by QMP ----
    private volatile long dirtyBits;
    private volatile boolean recording = true;
    private volatile boolean persistent;
    private volatile boolean busy;
    private volatile boolean inconsistent;
    private volatile boolean readOnly;

    /**
     * An empty (all clean), recording, non-persistent bitmap.
     *
     * @throws IllegalArgumentException for a granularity that is not a power of two in
     *                                  [512 B, 2 GiB], a negative size, or a bitmap too large
     *                                  for one Java array (2^37 chunks)
     */
    public DirtyBitmap(String name, long size, long granularity) {
        this.name = Objects.requireNonNull(name, "name");
        if (granularity < MIN_GRANULARITY || granularity > MAX_GRANULARITY || Long.bitCount(granularity) != 1) {
            throw new IllegalArgumentException("Granularity must be power of 2 between 512 and 2147483648 (" + granularity + ")");
        }
        if (size < 0) throw new IllegalArgumentException("negative size " + size);
        this.size = size;
        this.granularity = granularity;
        this.granularityBits = Long.numberOfTrailingZeros(granularity);
        this.nbits = (size + granularity - 1) >>> granularityBits;
        long words = (nbits + 63) >>> 6;
        if (words > Integer.MAX_VALUE - 8) throw new IllegalArgumentException("bitmap too large: " + nbits + " chunks");
        this.bits = new long[(int) words];
    }

    public String name() { return name; }

    /** Bytes of disk covered. */
    public long size() { return size; }

    public long granularity() { return granularity; }

    /** Number of chunks (bits). */
    public long bitCount() { return nbits; }

    /** Dirty bytes as QEMU counts them ({@code count}): dirty chunks times the granularity. */
    public long count() { return dirtyBits << granularityBits; }

    /** Whether writes are recorded (QEMU's {@code recording}, the bitmap is enabled). */
    public boolean recording() { return recording; }

    public void setRecording(boolean on) { recording = on; }

    /** Stored in the image at close (QEMU's {@code persistent}). */
    public boolean persistent() { return persistent; }

    public void setPersistent(boolean on) { persistent = on; }

    /** In use by an operation (a job, an export) that forbids changing it (QEMU's {@code busy}). */
    public boolean busy() { return busy; }

    public void setBusy(boolean on) { busy = on; }

    /**
     * The stored bits may miss changes (QEMU's {@code inconsistent}, from the image's in_use
     * flag after a crash): not usable, only removable.
     */
    public boolean inconsistent() { return inconsistent; }

    /** Marks the bitmap inconsistent, which also stops recording (QEMU's bdrv_dirty_bitmap_set_inconsistent). */
    public void setInconsistent(boolean on) {
        inconsistent = on;
        if (on) recording = false;
    }

    /**
     * Loaded from an image opened read-only: its bits cannot change (QEMU's {@code readonly}:
     * "Bitmap 'x' is readonly and cannot be modified" for clear, merge into it and remove).
     */
    public boolean readOnly() { return readOnly; }

    public void setReadOnly(boolean on) { readOnly = on; }

    // ================================================================ bits

    /**
     * The write path's mark: as {@link #set} but clipped to the disk instead of checked (the
     * driver below has checked the range already; a request past the end marks nothing more).
     */
    public void mark(long offset, long length) {
        if (offset < 0 || offset >= size || length <= 0) return;
        long end = length > size - offset ? size : offset + length;
        setBits(offset >>> granularityBits, ((end - 1) >>> granularityBits) + 1);
    }

    /**
     * The node grew (a qcow2 image's file node as clusters are allocated) or shrank: QEMU's
     * bdrv_dirty_bitmap_truncate. Bits of the kept range stay, a new range is clean.
     *
     * @throws IllegalArgumentException for a size whose bitmap would not fit one Java array
     */
    public void resize(long newSize) {
        if (newSize < 0) throw new IllegalArgumentException("negative size " + newSize);
        long newBits = (newSize + granularity - 1) >>> granularityBits;
        long words = (newBits + 63) >>> 6;
        if (words > Integer.MAX_VALUE - 8) throw new IllegalArgumentException("bitmap too large: " + newBits + " chunks");
        long[] nb = java.util.Arrays.copyOf(bits, (int) words);
        if (newBits < nbits) {
            // drop the bits past the new end (the last word's tail and any word beyond)
            if ((newBits & 63) != 0) nb[(int) (newBits >>> 6)] &= (1L << (newBits & 63)) - 1;
            long n = 0;
            for (long w : nb) n += Long.bitCount(w);
            dirtyBits = n;
        }
        bits = nb;
        nbits = newBits;
        size = newSize;
    }

    /** A copy of the bits and geometry (flags not copied), for undoing a clear or a merge. */
    public DirtyBitmap copy(String copyName) {
        DirtyBitmap c = new DirtyBitmap(copyName, size, granularity);
        System.arraycopy(bits, 0, c.bits, 0, bits.length);
        c.dirtyBits = dirtyBits;
        return c;
    }

    /** Sets the bits back to those of {@code backup}, a {@link #copy} of this bitmap. */
    public void restore(DirtyBitmap backup) {
        if (backup.granularity != granularity) throw new IllegalArgumentException("not a copy of " + name);
        if (backup.size != size) resize(backup.size);
        System.arraycopy(backup.bits, 0, bits, 0, bits.length);
        dirtyBits = backup.dirtyBits;
    }

    /**
     * QEMU's {@code x-debug-block-dirty-bitmap-sha256} (hbitmap_sha256): SHA-256 of the last
     * level of the HBitmap, its array of 64-bit words in host (little-endian) order, at least one
     * word; as lowercase hex. Equal hashes mean bit-for-bit equal bitmaps of the same geometry.
     */
    public String sha256() {
        int words = Math.max(1, bits.length);
        java.nio.ByteBuffer buf = java.nio.ByteBuffer.allocate(words * 8).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        for (long w : bits) buf.putLong(w);
        try {
            byte[] h = java.security.MessageDigest.getInstance("SHA-256").digest(buf.array());
            return java.util.HexFormat.of().formatHex(h);
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is part of every Java platform", e);
        }
    }

    /** True when the chunk holding byte {@code offset} is dirty. */
    public boolean get(long offset) {
        checkOffset(offset);
        return bit(offset >>> granularityBits);
    }

    /** Marks dirty every chunk that {@code [offset, offset+length)} touches (clipped to the size). */
    public void set(long offset, long length) {
        checkRange(offset, length);
        if (length == 0) return;
        setBits(offset >>> granularityBits, ((offset + length - 1) >>> granularityBits) + 1);
    }

    /**
     * Marks clean every chunk wholly inside {@code [offset, offset+length)}; a range reaching the
     * end of the disk also covers the last, partial chunk.
     */
    public void reset(long offset, long length) {
        checkRange(offset, length);
        long from = (offset + granularity - 1) >>> granularityBits;
        long to = offset + length >= size ? nbits : (offset + length) >>> granularityBits;
        if (from < to) resetBits(from, to);
    }

    /** Marks everything clean. */
    public void clear() {
        java.util.Arrays.fill(bits, 0);
        dirtyBits = 0;
    }

    /**
     * The first dirty byte in {@code [offset, end)} (the start of its chunk, but not before
     * {@code offset}), or -1. {@code end} is clipped to the size.
     */
    public long nextDirty(long offset, long end) {
        if (offset < 0) throw new IndexOutOfBoundsException("offset " + offset);
        end = Math.min(end, size);
        if (offset >= end) return -1;
        long b = findBit(offset >>> granularityBits, ((end - 1) >>> granularityBits) + 1, true);
        return b < 0 ? -1 : Math.max(offset, b << granularityBits);
    }

    /** The first clean byte in {@code [offset, end)}, as {@link #nextDirty}, or -1. */
    public long nextClean(long offset, long end) {
        if (offset < 0) throw new IndexOutOfBoundsException("offset " + offset);
        end = Math.min(end, size);
        if (offset >= end) return -1;
        long b = findBit(offset >>> granularityBits, ((end - 1) >>> granularityBits) + 1, false);
        return b < 0 ? -1 : Math.max(offset, b << granularityBits);
    }

    /**
     * ORs {@code src} into this bitmap. Same granularity: word by word; otherwise every dirty
     * range of {@code src} is set here (rounded outwards as {@link #set}). Both must cover the
     * same size, as QEMU requires ("Bitmaps are incompatible and can't be merged" otherwise).
     */
    public void merge(DirtyBitmap src) {
        if (src.size != size) throw new IllegalArgumentException("Bitmaps are incompatible and can't be merged");
        if (src == this) return;
        if (src.granularity == granularity) {
            long n = dirtyBits;
            for (int i = 0; i < bits.length; i++) {
                long w = bits[i] | src.bits[i];
                n += Long.bitCount(w) - Long.bitCount(bits[i]);
                bits[i] = w;
            }
            dirtyBits = n;
            return;
        }
        for (long off = src.nextDirty(0, size); off >= 0; ) {
            long clean = src.nextClean(off, size);
            long stop = clean < 0 ? size : clean;
            set(off, stop - off);
            off = clean < 0 ? -1 : src.nextDirty(clean, size);
        }
    }

    /** Sets bits {@code [from, to)} (chunk indexes, clipped to {@link #bitCount}). */
    public void setBits(long from, long to) {
        to = Math.min(to, nbits);
        long added = 0;
        for (long b = from; b < to; ) {
            int w = (int) (b >>> 6);
            int lo = (int) (b & 63);
            int n = (int) Math.min(64 - lo, to - b);
            long mask = (n == 64 ? -1L : ((1L << n) - 1)) << lo;
            added += Long.bitCount(mask & ~bits[w]);
            bits[w] |= mask;
            b += n;
        }
        // release store: a QMP reader sees a whole value, and the write path (marking every write
        // of the node) pays no full fence per bitmap as a volatile store would
        if (added != 0) DIRTY_BITS.setRelease(this, dirtyBits + added);
    }

    private static final java.lang.invoke.VarHandle DIRTY_BITS;

    static {
        try {
            DIRTY_BITS = java.lang.invoke.MethodHandles.lookup().findVarHandle(DirtyBitmap.class, "dirtyBits", long.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    private void resetBits(long from, long to) {
        long removed = 0;
        for (long b = from; b < to; ) {
            int w = (int) (b >>> 6);
            int lo = (int) (b & 63);
            int n = (int) Math.min(64 - lo, to - b);
            long mask = (n == 64 ? -1L : ((1L << n) - 1)) << lo;
            removed += Long.bitCount(mask & bits[w]);
            bits[w] &= ~mask;
            b += n;
        }
        if (removed != 0) dirtyBits -= removed;
    }

    /**
     * ORs in {@code nbytes} serialized bytes (QEMU's order: bit {@code j} of byte {@code k} is
     * chunk {@code firstBit + 8k + j}) read from {@code src}; bits past {@link #bitCount} are
     * ignored. {@code firstBit} must be a multiple of 64. For loaders (qcow2 bitmap data).
     */
    public void deserialize(long firstBit, byte[] src, int srcOffset, int nbytes) {
        if ((firstBit & 63) != 0 || firstBit < 0) throw new IllegalArgumentException("firstBit " + firstBit);
        Objects.checkFromIndexSize(srcOffset, nbytes, src.length);
        long added = 0;
        for (int k = 0; k < nbytes; k += 8) {
            long word = firstBit + 8L * k >>> 6;
            if (word >= bits.length) break;
            long v = 0;
            for (int j = 0; j < 8 && k + j < nbytes; j++) v |= (src[srcOffset + k + j] & 0xFFL) << (8 * j);
            if (word == bits.length - 1 && (nbits & 63) != 0) v &= (1L << (nbits & 63)) - 1;
            int w = (int) word;
            added += Long.bitCount(v & ~bits[w]);
            bits[w] |= v;
        }
        if (added != 0) dirtyBits += added;
    }

    private boolean bit(long b) {
        return (bits[(int) (b >>> 6)] & (1L << (b & 63))) != 0;
    }

    /** The first chunk in {@code [from, to)} whose bit is {@code dirty}, or -1. */
    private long findBit(long from, long to, boolean dirty) {
        to = Math.min(to, nbits);
        for (long b = from; b < to; ) {
            int w = (int) (b >>> 6);
            long v = dirty ? bits[w] : ~bits[w];
            v &= -1L << (b & 63);
            if (v != 0) {
                long hit = ((long) w << 6) + Long.numberOfTrailingZeros(v);
                return hit < to ? hit : -1;
            }
            b = ((long) w + 1) << 6;
        }
        return -1;
    }

    private void checkOffset(long offset) {
        if (offset < 0 || offset >= size) {
            throw new IndexOutOfBoundsException("offset " + offset + " outside a bitmap of " + size + " bytes");
        }
    }

    private void checkRange(long offset, long length) {
        if (offset < 0 || length < 0 || offset > size || length > size - offset) {
            throw new IndexOutOfBoundsException("range " + offset + "+" + length + " outside a bitmap of " + size + " bytes");
        }
    }

    @Override
    public String toString() {
        return "DirtyBitmap[" + name + ", granularity " + granularity + ", " + count() + " dirty bytes of " + size + "]";
    }
}
