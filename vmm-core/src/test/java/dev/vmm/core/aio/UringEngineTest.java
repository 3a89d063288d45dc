package dev.vmm.core.aio;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import com.sun.jna.LastErrorException;
import dev.vmm.iothread.IOThread;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The ring itself: more requests than it has entries, completion order and thread. */
class UringEngineTest {
    IOThread iot;
    UringEngine ring;

    @BeforeEach
    void start() throws Exception {
        iot = IOThread.start("uring-test");
        try {
            ring = iot.call(() -> UringEngine.create(iot, 4)); // 4 SQEs, 8 CQEs: easy to fill
        } catch (LastErrorException e) {
            // The project's machines allow io_uring; a CI without it must say so, not pass silently.
            assumeTrue(!"true".equals(System.getenv("CI")), "io_uring refused: " + e);
            throw e;
        }
    }

    @AfterEach
    void stop() throws Exception {
        if (ring != null) iot.call(() -> { ring.shutdown(); return null; });
        iot.shutdown(5000);
    }

    final class Nop extends AioRequest {
        final int id;
        final int[] order;
        final int[] count;
        final CompletableFuture<Void> all;
        final int total;
        boolean inSubmit;

        Nop(int id, int[] order, int[] count, CompletableFuture<Void> all, int total) {
            this.id = id;
            this.order = order;
            this.count = count;
            this.all = all;
            this.total = total;
            opcode = IoEngine.OP_NOP;
            fd = -1;
        }

        @Override
        public void completed(int res) {
            if (!iot.inThread() || inSubmit || res != 0) {
                all.completeExceptionally(new AssertionError("nop " + id + ": res " + res + ", on home " + iot.inThread() + ", inside submit " + inSubmit));
                return;
            }
            order[count[0]++] = id;
            if (count[0] == total) all.complete(null);
        }
    }

    @Test
    void moreRequestsThanEntriesAllCompleteOnTheHomeThreadAndNeverInsideSubmit() throws Exception {
        int total = 1000;
        int[] order = new int[total];
        int[] count = {0};
        int[] maxInFlight = {0};
        CompletableFuture<Void> all = new CompletableFuture<>();
        iot.execute(() -> {
            for (int i = 0; i < total; i++) {
                Nop n = new Nop(i, order, count, all, total);
                n.inSubmit = true;
                ring.submit(n);
                n.inSubmit = false;
                maxInFlight[0] = Math.max(maxInFlight[0], ring.inFlight());
            }
        });
        all.get(10, TimeUnit.SECONDS);
        assertTrue(maxInFlight[0] <= 8, "never more in the kernel than the completion queue holds: " + maxInFlight[0]);
        assertEquals(8, maxInFlight[0], "the ring was filled");
        boolean[] seen = new boolean[total];
        for (int id : order) {
            assertFalse(seen[id], "completed twice: " + id);
            seen[id] = true;
        }
        assertEquals(0, (int) iot.call(ring::inFlight));
    }
}
