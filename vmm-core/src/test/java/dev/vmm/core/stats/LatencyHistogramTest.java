package dev.vmm.core.stats;

import static org.junit.jupiter.api.Assertions.*;

import org.junit.jupiter.api.Test;

class LatencyHistogramTest {
    @Test
    void percentilesWithinBucketErrorAndMerge() {
        LatencyHistogram a = new LatencyHistogram();
        LatencyHistogram b = new LatencyHistogram();
        for (long v = 1; v <= 100_000; v++) (v % 2 == 0 ? a : b).record(v * 1000);
        a.add(b);
        assertEquals(100_000, a.count());
        assertEquals(1000, a.min());
        assertEquals(100_000_000L, a.max());
        for (double p : new double[] {50, 99, 99.9}) {
            double want = p / 100 * 100_000 * 1000;
            assertEquals(want, a.percentile(p), want * 0.02, "p" + p);
        }
        assertEquals(50_000_500.0, a.mean(), 1);
        a.reset();
        assertEquals(0, a.percentile(50));
        a.record(5);
        assertEquals(5, a.percentile(99));
    }
}
