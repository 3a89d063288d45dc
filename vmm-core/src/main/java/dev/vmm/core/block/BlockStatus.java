package dev.vmm.core.block;

/**
 * A reusable holder for the answer of {@link BlockDriver#status}: one extent. Not thread-safe:
 * each caller keeps its own (the data path allocates nothing per request).
 */
public final class BlockStatus {
    /** The extent is not allocated (reads as zeros, costs no space). Same value as NBD_STATE_HOLE. */
    public static final int HOLE = 1;
    /** The extent reads as zeros. Same value as NBD_STATE_ZERO. */
    public static final int ZERO = 2;

    /** Length of the extent in bytes. */
    public long length;
    /** {@link #HOLE} and/or {@link #ZERO}, or 0 for allocated data. */
    public int flags;

    public BlockStatus set(long length, int flags) {
        this.length = length;
        this.flags = flags;
        return this;
    }

    @Override
    public String toString() { return "BlockStatus[length=" + length + ", flags=" + flags + "]"; }
}
