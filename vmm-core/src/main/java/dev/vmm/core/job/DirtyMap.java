package dev.vmm.core.job;

/**
 * A mirror job's dirty map: one bit per chunk of {@code granularity} bytes of the source that
 * may differ on the target, plus one bit per chunk that a copy or a write-blocking write is
 * working on ("busy": at most one such operation per chunk, so two copies of a chunk never race
 * on the target). QEMU's dirty bitmap and in-flight bitmap of block/mirror.c.
 *
 * <p>Thread contract: the source node's home IOThread only (not thread-safe, no locks).
 */
public final class DirtyMap {
    private final long size;
    private final int granularity;
    private final int shift;
    private final long chunks;
    private final long[] dirty;
    private final long[] busy;
    private long dirtyCount;

    /**
     * @param size        bytes covered (the source's size)
     * @param granularity chunk size, a power of two
     */
    public DirtyMap(long size, int granularity) {
        if (granularity <= 0 || Integer.bitCount(granularity) != 1) throw new IllegalArgumentException("granularity " + granularity);
        this.size = size;
        this.granularity = granularity;
        this.shift = Integer.numberOfTrailingZeros(granularity);
        this.chunks = (size + granularity - 1) >>> shift;
        if (chunks > (long) Integer.MAX_VALUE * 64) throw new IllegalArgumentException("too many chunks: " + chunks);
        this.dirty = new long[(int) ((chunks + 63) >>> 6)];
        this.busy = new long[dirty.length];
    }

    public int granularity() { return granularity; }

    public long chunks() { return chunks; }

    /** Chunks marked dirty. */
    public long dirtyCount() { return dirtyCount; }

    /** Dirty bytes (whole chunks; the last one counts only up to {@code size}). */
    public long dirtyBytes() {
        if (dirtyCount == 0) return 0;
        long b = dirtyCount << shift;
        if (isDirty(chunks - 1)) b -= (chunks << shift) - size;
        return b;
    }

    /** The chunk that holds byte {@code offset}. */
    public long chunkOf(long offset) { return offset >>> shift; }

    /** The first byte of chunk {@code c}. */
    public long offsetOf(long c) { return c << shift; }

    /** Bytes of chunk {@code c} (the last one may be short). */
    public long lengthOf(long c) { return Math.min(granularity, size - (c << shift)); }

    /** Marks every chunk that overlaps {@code [offset, offset + length)}. */
    public void markRange(long offset, long length) {
        if (length <= 0 || offset >= size) return;
        long first = offset >>> shift;
        long last = (Math.min(size, offset + length) - 1) >>> shift;
        for (long c = first; c <= last; c++) mark(c);
    }

    /** Marks every chunk. */
    public void markAll() {
        for (long c = 0; c < chunks; c++) mark(c);
    }

    public void mark(long c) {
        int i = (int) (c >>> 6);
        long bit = 1L << c;
        if ((dirty[i] & bit) == 0) {
            dirty[i] |= bit;
            dirtyCount++;
        }
    }

    public void clear(long c) {
        int i = (int) (c >>> 6);
        long bit = 1L << c;
        if ((dirty[i] & bit) != 0) {
            dirty[i] &= ~bit;
            dirtyCount--;
        }
    }

    public boolean isDirty(long c) { return (dirty[(int) (c >>> 6)] & (1L << c)) != 0; }

    public boolean isBusy(long c) { return (busy[(int) (c >>> 6)] & (1L << c)) != 0; }

    public void setBusy(long c, boolean b) {
        if (b) busy[(int) (c >>> 6)] |= 1L << c;
        else busy[(int) (c >>> 6)] &= ~(1L << c);
    }

    /** True when a chunk overlapping {@code [offset, offset + length)} is busy. */
    public boolean anyBusy(long offset, long length) {
        if (length <= 0 || offset >= size) return false;
        long last = (Math.min(size, offset + length) - 1) >>> shift;
        for (long c = offset >>> shift; c <= last; c++) if (isBusy(c)) return true;
        return false;
    }

    /**
     * The first chunk at or after {@code from} that is dirty and not busy, wrapping around once;
     * -1 when there is none.
     */
    public long nextCopyable(long from) {
        if (dirtyCount == 0) return -1;
        long c = scan(from, chunks);
        return c >= 0 ? c : scan(0, Math.min(from, chunks));
    }

    private long scan(long from, long to) {
        for (int i = (int) (from >>> 6); i < dirty.length && ((long) i << 6) < to; i++) {
            long w = dirty[i] & ~busy[i];
            if (i == (int) (from >>> 6)) w &= -1L << from; // bits below from
            if (w != 0) {
                long c = ((long) i << 6) + Long.numberOfTrailingZeros(w);
                return c < to ? c : -1;
            }
        }
        return -1;
    }
}
