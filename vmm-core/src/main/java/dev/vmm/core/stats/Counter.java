package dev.vmm.core.stats;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;

/**
 * A counter with one writer at a time, read by monitors from any thread: the data path's
 * replacement for {@link java.util.concurrent.atomic.LongAdder}, which pays a locked
 * read-modify-write per update for writers that never race here.
 *
 * <p>Thread contract: {@link #increment}, {@link #add} and {@link #decrement} are called by the
 * one writer (a node's home IOThread). A handoff moves the writer to another thread; it orders
 * the old thread's updates before the new one's (the quiesce/resume hand-over of the move), so
 * the new writer's plain read of {@link #value} sees them. {@link #sum} may be called from any
 * thread.
 *
 * <p>Ordering: the writer stores with {@code setOpaque} and readers load with {@code getOpaque}:
 * a long is never torn (JLS 17.7 lets plain long accesses tear), a reader's successive reads
 * never go backwards, and a store becomes visible without a fence. No other memory is published
 * through a counter, so release/acquire is not needed. On x86 and AArch64 both are ordinary
 * loads and stores.
 */
public final class Counter {
    private static final VarHandle VALUE;

    static {
        try {
            VALUE = MethodHandles.lookup().findVarHandle(Counter.class, "value", long.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    /** Written by the one writer only (plain read, opaque store); other threads read it opaquely. */
    private long value;

    /** Adds 1. On the writer's thread only. */
    public void increment() {
        VALUE.setOpaque(this, value + 1);
    }

    /** Subtracts 1. On the writer's thread only. */
    public void decrement() {
        VALUE.setOpaque(this, value - 1);
    }

    /** Adds {@code n}. On the writer's thread only. */
    public void add(long n) {
        VALUE.setOpaque(this, value + n);
    }

    /**
     * The value now, from any thread: every update of the writer that is visible to this thread,
     * a recent value rather than a snapshot across several counters. Named as LongAdder's read.
     */
    public long sum() {
        return (long) VALUE.getOpaque(this);
    }

    @Override
    public String toString() {
        return Long.toString(sum());
    }
}
