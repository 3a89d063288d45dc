package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.stats.ExportStats;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.testing.NbdTestClient;
import io.netty.util.ResourceLeakDetector;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The per-export counters of NBD: every request counted once, in flight while parsed and not yet
 * answered, back to 0 afterwards; and counting them allocates nothing on the IOThread (the
 * data path's budget of docs/performance.md: well under a byte per request).
 */
@Timeout(120)
class ExportStatsTest extends NbdServerFixture {
    static final int DEPTH = 16;

    @Test
    void countsEveryRequestOnceAndAllocatesNothingPerRequest() throws Exception {
        NbdExport export = server.lookup("disk0");
        ExportStats s = export.stats();
        ResourceLeakDetector.Level level = ResourceLeakDetector.getLevel();
        ResourceLeakDetector.setLevel(ResourceLeakDetector.Level.DISABLED); // sampled leak records allocate; production runs without
        try (NbdTestClient c = client()) {
            c.go("disk0");
            c.write(4096, random(4096, 7), 0);
            c.request(0, NbdCmd.NBD_CMD_FLUSH, 0, 0, null);
            reads(c, 20_000); // warm-up: JIT, pools, the LongAdders' first use
            long before = iot.allocatedBytes();
            long t0 = System.nanoTime();
            int n = 200_000;
            reads(c, n);
            long elapsed = System.nanoTime() - t0;
            long allocated = iot.allocatedBytes() - before;
            double perRequest = (double) allocated / n;
            // The time is client and server on the same cores: compare runs, not absolute values.
            System.out.printf("[alloc] NBD 4k reads at QD%d: %,d bytes on the IOThread over %,d requests = %.3f B/request; %.0f ns/request%n",
                    DEPTH, allocated, n, perRequest, (double) elapsed / n);
            assertTrue(perRequest < 1.0, "the data path allocates " + perRequest + " bytes per request");
            assertEquals(220_000, s.readOps.sum());
            assertEquals(220_000L * 4096, s.readBytes.sum());
            assertEquals(1, s.writeOps.sum());
            assertEquals(4096, s.writeBytes.sum());
            assertEquals(1, s.otherOps.sum());
            assertEquals(0, s.errors.sum());
            assertEquals(1, s.connections.sum());
            long timed = export.node().home().call(s.latency::copy).count();
            assertEquals(220_000 + 1 + 1, timed, "every request's service time is in the export's histogram");
            // A read beyond the end is an error reply, counted for the export, not as a node I/O failure.
            assertTrue(c.request(0, NbdCmd.NBD_CMD_READ, SIZE, 4096, null).error() != 0);
            assertEquals(1, s.errors.sum());
            assertEquals(0, export.node().stats().errors.sum());
        } finally {
            ResourceLeakDetector.setLevel(level);
        }
        assertEquals(0, s.inFlightNow());
    }

    @Test
    void aStreamedWriteIsInFlightUntilItsPayloadHasArrived() throws Exception {
        ExportStats s = server.lookup("disk0").stats();
        try (NbdTestClient c = client()) {
            c.go("disk0");
            int len = 1 << 20;
            // Header and the first half of the payload: the server starts writing and waits for the rest.
            c.out().writeInt(dev.vmm.nbd.protocol.NbdMagic.NBD_REQUEST_MAGIC);
            c.out().writeShort(0);
            c.out().writeShort(NbdCmd.NBD_CMD_WRITE);
            c.out().writeLong(99);
            c.out().writeLong(0);
            c.out().writeInt(len);
            byte[] data = random(len, 3);
            c.out().write(data, 0, len / 2);
            c.out().flush();
            long deadline = System.nanoTime() + 10_000_000_000L;
            while (s.inFlightNow() != 1 && System.nanoTime() < deadline) Thread.sleep(5);
            assertEquals(1, s.inFlightNow(), "a WRITE whose payload is half there is in flight");
            c.out().write(data, len / 2, len - len / 2);
            c.out().flush();
            assertEquals(0, c.readReply(0).error());
            assertEquals(0, s.inFlightNow());
            assertEquals(1, s.writeOps.sum());
            assertEquals(len, s.writeBytes.sum());
            // Again, but the client goes away half-way: the request will never complete.
            halfAWrite(c, len, data);
            while (s.inFlightNow() != 1 && System.nanoTime() < deadline + 10_000_000_000L) Thread.sleep(5);
            assertEquals(1, s.inFlightNow());
        }
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (s.inFlightNow() != 0 && System.nanoTime() < deadline) Thread.sleep(5);
        assertEquals(0, s.inFlightNow(), "an abandoned streamed WRITE is no longer in flight");
        assertEquals(1, s.writeOps.sum());
    }

    private static void halfAWrite(NbdTestClient c, int len, byte[] data) throws Exception {
        c.out().writeInt(dev.vmm.nbd.protocol.NbdMagic.NBD_REQUEST_MAGIC);
        c.out().writeShort(0);
        c.out().writeShort(NbdCmd.NBD_CMD_WRITE);
        c.out().writeLong(100);
        c.out().writeLong(0);
        c.out().writeInt(len);
        c.out().write(data, 0, len / 2);
        c.out().flush();
    }

    /** {@code n} 4k reads, {@link #DEPTH} in flight at a time. */
    private static void reads(NbdTestClient c, int n) throws Exception {
        for (int done = 0; done < n; done += DEPTH) {
            for (int i = 0; i < DEPTH; i++) {
                c.out().writeInt(dev.vmm.nbd.protocol.NbdMagic.NBD_REQUEST_MAGIC);
                c.out().writeShort(0);
                c.out().writeShort(NbdCmd.NBD_CMD_READ);
                c.out().writeLong(done + i);
                c.out().writeLong(((done + i) % 256) * 4096L);
                c.out().writeInt(4096);
            }
            c.out().flush();
            for (int i = 0; i < DEPTH; i++) {
                if (c.readReply(4096).error() != 0) throw new AssertionError("read failed");
            }
        }
    }
}
