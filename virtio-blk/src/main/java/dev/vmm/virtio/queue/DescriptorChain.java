package dev.vmm.virtio.queue;

import dev.vmm.core.memory.RawMemory;

/**
 * One popped buffer: its head index and its segments as host addresses, device-readable
 * segments first, then device-writable ones (the order virtio 1.2 §2.7.5.2 requires and
 * {@link SplitVirtqueue#pop} enforces). Reusable: preallocated arrays, refilled by each pop, so
 * a request allocates nothing.
 *
 * <p>The chain's bytes form one stream: offsets {@code [0, readableLength())} are the readable
 * part, {@code [readableLength(), totalLength())} the writable part. Virtio devices MUST NOT
 * assume a particular descriptor layout (§2.6.4 "Message Framing"), so consumers address the
 * stream by byte offset (e.g. virtio-blk: 16-byte header at 0, status at totalLength()-1).
 *
 * <p>Memory safety: every segment was translated by {@code GuestMemory} for its full length at
 * pop time; the helpers below only touch bytes inside segments. Addresses stay valid while the
 * memory table is unchanged (the device is quiesced before it changes).
 *
 * <p>Thread contract: owned by one IOThread.
 */
public final class DescriptorChain {
    private final long[] addr;
    private final long[] len;
    private int head = -1;
    private int count;
    private int readableCount;
    private long readableLength;
    private long writableLength;

    /** A chain of at most {@code capacity} segments (a larger chain is a request error). */
    public DescriptorChain(int capacity) {
        if (capacity <= 0) throw new IllegalArgumentException("capacity " + capacity);
        addr = new long[capacity];
        len = new long[capacity];
    }

    void reset(int head) {
        this.head = head;
        count = 0;
        readableCount = 0;
        readableLength = 0;
        writableLength = 0;
    }

    /** Sets the head after the segments were added (packed rings: the buffer id comes last). */
    void setHead(int head) {
        this.head = head;
    }

    /** False when full. Readable segments must come first (the queue checks the order). */
    boolean add(long hostAddress, long length, boolean writable) {
        if (count == addr.length) return false;
        addr[count] = hostAddress;
        len[count] = length;
        count++;
        if (writable) {
            writableLength += length;
        } else {
            readableCount++;
            readableLength += length;
        }
        return true;
    }

    /** Most segments. */
    public int capacity() { return addr.length; }

    /** Head descriptor index: pass it to {@link Virtqueue#pushUsed}. */
    public int head() { return head; }

    /** Number of segments. */
    public int segmentCount() { return count; }

    /** Host address of segment {@code i}. */
    public long address(int i) { check(i); return addr[i]; }

    /** Length of segment {@code i} in bytes (1 .. 2^32-1). */
    public long length(int i) { check(i); return len[i]; }

    /** Whether segment {@code i} is device-writable. */
    public boolean writable(int i) { check(i); return i >= readableCount; }

    /** Number of device-readable segments (they are segments 0 .. readableCount()-1). */
    public int readableCount() { return readableCount; }

    /** Bytes the device may read. */
    public long readableLength() { return readableLength; }

    /** Bytes the device may write. */
    public long writableLength() { return writableLength; }

    /** readableLength() + writableLength(). */
    public long totalLength() { return readableLength + writableLength; }

    private void check(int i) {
        if (i < 0 || i >= count) throw new IndexOutOfBoundsException(i);
    }

    /**
     * Fills {@code iov} with the segments' pieces that cover stream bytes
     * {@code [offset, offset + length)}. Returns the iovec count (0 for length 0), or -1 when the
     * range is not inside the chain or needs more iovecs than {@code iov} holds. The range may
     * span readable and writable segments; callers that care check it against
     * {@link #readableLength()} first.
     */
    public int fillIovecs(IovecArray iov, long offset, long length) {
        if (offset < 0 || length < 0 || offset > totalLength() || length > totalLength() - offset) return -1;
        int n = 0;
        long skip = offset;
        long remaining = length;
        for (int i = 0; i < count && remaining > 0; i++) {
            long segLen = len[i];
            if (skip >= segLen) {
                skip -= segLen;
                continue;
            }
            long piece = Math.min(segLen - skip, remaining);
            if (n == iov.capacity()) return -1;
            // Bounds: [addr[i] + skip, + piece) lies inside segment i (skip + piece <= segLen).
            iov.set(n++, addr[i] + skip, piece);
            remaining -= piece;
            skip = 0;
        }
        return n;
    }

    /**
     * Host address of stream bytes {@code [offset, offset + length)} when they lie in one
     * segment, else 0 (then use {@link #copyOut}/{@link #copyIn}).
     */
    public long contiguous(long offset, long length) {
        if (offset < 0 || length <= 0) return 0;
        long skip = offset;
        for (int i = 0; i < count; i++) {
            if (skip < len[i]) return length <= len[i] - skip ? addr[i] + skip : 0;
            skip -= len[i];
        }
        return 0;
    }

    /**
     * Copies stream bytes {@code [offset, offset + length)} to native memory at {@code dst}
     * (which must hold {@code length} bytes). False, copying nothing, if the range is not inside
     * the chain.
     */
    public boolean copyOut(long offset, long dst, long length) {
        return copy(offset, dst, length, false);
    }

    /** Copies {@code length} bytes from {@code src} into stream bytes at {@code offset}. */
    public boolean copyIn(long src, long offset, long length) {
        return copy(offset, src, length, true);
    }

    private boolean copy(long offset, long other, long length, boolean intoChain) {
        if (offset < 0 || length < 0 || offset > totalLength() || length > totalLength() - offset) return false;
        long skip = offset;
        long remaining = length;
        long pos = other;
        for (int i = 0; i < count && remaining > 0; i++) {
            if (skip >= len[i]) {
                skip -= len[i];
                continue;
            }
            long piece = Math.min(len[i] - skip, remaining);
            // Bounds: the chain side stays inside segment i (skip + piece <= len[i]).
            if (intoChain) RawMemory.copy(pos, addr[i] + skip, piece);
            else RawMemory.copy(addr[i] + skip, pos, piece);
            pos += piece;
            remaining -= piece;
            skip = 0;
        }
        return true;
    }
}
