package dev.vmm.core.stats;

/**
 * Request latencies in nanoseconds, in log-linear buckets (HdrHistogram's idea, 64 sub-buckets per
 * power of two: under 1.6% relative error), preallocated so that {@link #record} allocates
 * nothing. Also keeps the exact count, sum, min and max.
 *
 * <p>Thread contract: one writer; merge per-thread histograms with {@link #add} after the writers
 * stopped.
 */
public final class LatencyHistogram {
    private static final int SUB_BITS = 6;
    private static final int SUB = 1 << SUB_BITS;
    /** Bucket (e, s): values with highest bit e (e >= SUB_BITS) and next SUB_BITS bits s; values < SUB exact. */
    private final long[] counts = new long[(64 - SUB_BITS + 1) * SUB];
    private long count;
    private long sum;
    private long min = Long.MAX_VALUE;
    private long max;

    private static int index(long v) {
        if (v < SUB) return (int) Math.max(v, 0);
        int e = 63 - Long.numberOfLeadingZeros(v);            // >= SUB_BITS
        int s = (int) (v >>> (e - SUB_BITS)) & (SUB - 1);
        return (e - SUB_BITS + 1) * SUB + s;
    }

    /** The middle of bucket {@code i}'s value range. */
    private static long value(int i) {
        if (i < SUB) return i;
        int e = i / SUB - 1 + SUB_BITS;
        long s = i % SUB;
        long lo = (1L << e) | (s << (e - SUB_BITS));
        long width = 1L << (e - SUB_BITS);
        return lo + width / 2;
    }

    public void record(long nanos) {
        counts[index(nanos)]++;
        count++;
        sum += nanos;
        if (nanos < min) min = nanos;
        if (nanos > max) max = nanos;
    }

    public void add(LatencyHistogram o) {
        for (int i = 0; i < counts.length; i++) counts[i] += o.counts[i];
        count += o.count;
        sum += o.sum;
        min = Math.min(min, o.min);
        max = Math.max(max, o.max);
    }

    /** A copy, for readers on other threads (take it on the writer's thread). */
    public LatencyHistogram copy() {
        LatencyHistogram c = new LatencyHistogram();
        c.add(this);
        return c;
    }

    public void reset() {
        java.util.Arrays.fill(counts, 0);
        count = 0;
        sum = 0;
        min = Long.MAX_VALUE;
        max = 0;
    }

    public long count() { return count; }

    /** Sum of every value recorded, in ns. */
    public long sum() { return sum; }

    public long min() { return count == 0 ? 0 : min; }

    public long max() { return max; }

    public double mean() { return count == 0 ? 0 : (double) sum / count; }

    /** The latency at percentile {@code p} (0..100), in ns; 0 when empty. */
    public long percentile(double p) {
        if (count == 0) return 0;
        long rank = (long) Math.ceil(p / 100.0 * count);
        if (rank < 1) rank = 1;
        long seen = 0;
        for (int i = 0; i < counts.length; i++) {
            seen += counts[i];
            if (seen >= rank) return Math.min(Math.max(value(i), min), max);
        }
        return max;
    }
}
