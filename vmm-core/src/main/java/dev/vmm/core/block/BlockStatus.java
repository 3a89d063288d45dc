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
    /**
     * Which layer of the node's chain allocates the extent (QEMU's {@code qemu:allocation-depth}):
     * 0 when none does (the extent reads from no layer: zeros), 1 when the node itself does, n + 1
     * when its n-th backing node does. A node without a backing chain (a raw file) says 1 for every
     * extent, holes included, as QEMU's file driver does.
     */
    public int depth = 1;

    /** One extent of a node without backing: depth 1. */
    public BlockStatus set(long length, int flags) {
        return set(length, flags, 1);
    }

    public BlockStatus set(long length, int flags, int depth) {
        this.length = length;
        this.flags = flags;
        this.depth = depth;
        return this;
    }

    @Override
    public String toString() { return "BlockStatus[length=" + length + ", flags=" + flags + ", depth=" + depth + "]"; }
}
