package dev.vmm.core.block.qcow2;

import dev.vmm.core.memory.RawMemory;

/**
 * Aligned native allocations for tables and bounce buffers: {@link #allocate} returns the base
 * to free, {@link #aligned} the usable address. Thread contract: any thread; the caller owns the memory.
 */
final class NativeAlloc {
    private NativeAlloc() {}

    /** Allocates {@code size + alignment} bytes (free the result with RawMemory.free). */
    static long allocate(long size, int alignment) {
        return RawMemory.allocate(size + alignment);
    }

    static long aligned(long base, int alignment) {
        return (base + alignment - 1) & -(long) alignment;
    }
}
