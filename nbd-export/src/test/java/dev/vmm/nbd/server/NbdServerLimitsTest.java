package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.nbd.testing.NbdTestClient;
import java.net.InetSocketAddress;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** max-connections and handshake-max-seconds (qemu-storage-daemon's --nbd-server keys). */
@Timeout(60)
class NbdServerLimitsTest extends NbdServerFixture {
    @Override
    int maxConnections() { return 2; }

    @Override
    int handshakeSeconds() { return 1; }

    @Test
    void clientsBeyondMaxConnectionsAreRefused() throws Exception {
        try (NbdTestClient a = client(); NbdTestClient b = client()) {
            a.go("disk0");
            NbdTestClient c = new NbdTestClient((InetSocketAddress) server.boundAddress());
            assertTrue(c.closedByServer(), "third client refused");
            c.close();
            b.go("disk0");
            assertNotNull(a.read(0, 512, 0));
        }
        Thread.sleep(200);
        try (NbdTestClient again = client()) { // slots are given back
            again.go("disk0");
        }
    }

    @Test
    void aClientThatNeverFinishesItsHandshakeIsDropped() throws Exception {
        long t0 = System.nanoTime(); // before connecting: the server's clock starts at accept
        try (NbdTestClient c = client()) {
            assertTrue(c.closedByServer());
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertTrue(ms >= 900 && ms < 5000, "dropped after " + ms + " ms (handshake-max-seconds=1)");
        }
    }
}
