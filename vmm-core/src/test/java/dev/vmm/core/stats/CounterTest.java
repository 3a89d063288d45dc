package dev.vmm.core.stats;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

class CounterTest {
    @Test
    void countsWhatItsOneWriterAdds() {
        Counter c = new Counter();
        c.increment();
        c.add(4096);
        c.decrement();
        assertEquals(4096, c.sum());
    }

    /**
     * A smoke test of the contract: a reader on another thread sees the writer's updates in order,
     * never torn. On 64-bit HotSpot and x86 plain longs neither tear nor go backwards, so this
     * cannot catch a missing VarHandle mode here; it guards against a counter that is not a long
     * or that a reader caches.
     */
    @Test
    @Timeout(30)
    void aReaderSeesTheWritersUpdatesWithoutGoingBackwards() throws Exception {
        Counter c = new Counter();
        long n = 5_000_000;
        long big = 1L << 33; // values above 2^32: a torn long would show up as a jump
        Thread writer = new Thread(() -> { for (long i = 0; i < n; i++) c.add(big); });
        writer.start();
        long last = 0;
        while (writer.isAlive()) {
            long v = c.sum();
            assertTrue(v >= last, "went back from " + last + " to " + v);
            assertEquals(0, v % big, "torn value " + v);
            last = v;
        }
        writer.join(); // join orders every update before this read
        assertEquals(n * big, c.sum());
    }
}
