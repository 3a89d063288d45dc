package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.*;
import static dev.vmm.nbd.protocol.NbdRep.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.testing.HoldingDriver;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.client.NbdClient.Reply;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.testing.NbdTestClient;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The asynchronous transmission phase, seen from a driver that holds completions
 * ({@link HoldingDriver}): pipelined requests are in flight at the driver together and answered
 * in completion order by cookie; the per-client in-flight bound holds; a WRITE reaches the disk
 * only once its whole payload arrived; a client that leaves while its node is half-way through a
 * move is not an error.
 */
@Timeout(120)
class NbdAsyncTransmissionTest {
    static final int SIZE = 64 << 20;

    @TempDir Path tmp;
    IOThread main;
    IOThread iot;
    Path image;
    RawFileDriver file;
    HoldingDriver driver;
    BlockNode node;
    NbdExport export;
    NbdServer server;
    byte[] firstMiB;

    @BeforeEach
    void start() throws Exception {
        main = IOThread.start("main");
        iot = IOThread.start("iot-test");
        image = tmp.resolve("disk.img");
        firstMiB = new byte[1 << 20];
        new Random(1).nextBytes(firstMiB);
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(SIZE);
            f.write(firstMiB);
        }
        file = RawFileDriver.open(image, false, false);
        driver = new HoldingDriver(file);
        node = new BlockNode("disk0", driver, iot);
        export = new NbdExport("e0", "disk0", null, node, true);
        server = new NbdServer(main, new NbdServer.Config(new InetSocketAddress("127.0.0.1", 0), 0, 10));
        server.addExport(export);
        server.start();
    }

    @AfterEach
    void stop() {
        onHome(() -> {
            driver.hold(false);
            driver.releaseAllReversed();
        });
        server.stop(5000);
        iot.submit(() -> { driver.close(); return null; }).join();
        iot.shutdown(5000);
        main.shutdown(5000);
    }

    NbdTestClient client(boolean structured) throws IOException {
        NbdTestClient c = new NbdTestClient((InetSocketAddress) server.boundAddress()).handshake();
        if (structured) assertEquals(NBD_REP_ACK, c.structuredReplies().type());
        c.go("disk0");
        return c;
    }

    void onHome(Runnable r) {
        iot.submit(() -> { r.run(); return null; }).join();
    }

    /** Writes the image back and drops it from the page cache (POSIX_FADV_DONTNEED), so no read range is resident. */
    void dropPageCache() {
        int fd = dev.vmm.core.linux.LibC.open(image.toString(), dev.vmm.core.linux.LibC.O_RDONLY);
        try {
            dev.vmm.core.linux.LibC.fdatasync(fd);
            assertEquals(0, dev.vmm.core.linux.LibC.posix_fadvise(fd, 0, 0, 4 /* POSIX_FADV_DONTNEED */));
        } finally {
            dev.vmm.core.linux.LibC.close(fd);
        }
    }

    static void await(String what, BooleanSupplier cond) throws InterruptedException {
        long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!cond.getAsBoolean()) {
            if (System.nanoTime() > until) fail("timed out waiting for " + what);
            Thread.sleep(2);
        }
    }

    @Test
    void thirtyTwoPipelinedRequestsAreInFlightTogetherAndAnsweredByCookieInCompletionOrder() throws Exception {
        onHome(() -> driver.hold(true));
        try (NbdTestClient c = client(true)) {
            // 16 writes to their own 64 KiB slots from 8 MiB on, 16 reads of the data in the first MiB
            Map<Long, Long> cookieAt = new HashMap<>();
            Map<Long, byte[]> written = new HashMap<>();
            for (int i = 0; i < 32; i++) {
                long cookie = 1000 + i;
                if (i % 2 == 0) {
                    long at = (8L << 20) + i * 65536L;
                    byte[] b = new byte[4096 + 512 * i];
                    new Random(i).nextBytes(b);
                    written.put(at, b);
                    cookieAt.put(cookie, at);
                    c.writeRequest(0, NBD_CMD_WRITE, cookie, at, b.length, b);
                } else {
                    long at = i * 16384L;
                    cookieAt.put(cookie, at);
                    c.writeRequest(0, NBD_CMD_READ, cookie, at, 8192, null);
                }
            }
            c.flushOutput();
            await("32 requests held at the driver", () -> driver.heldCount() == 32);
            assertEquals(32, driver.maxInFlight(), "all 32 in flight at the driver at once");

            List<Long> releaseOrder = new ArrayList<>();
            onHome(() -> {
                List<HoldingDriver.Held> held = driver.held();
                for (int i = held.size() - 1; i >= 0; i--) releaseOrder.add(held.get(i).offset());
                driver.releaseAllReversed();
            });
            List<Long> replyOrder = new ArrayList<>();
            Set<Long> cookies = new HashSet<>();
            for (int i = 0; i < 32; i++) {
                Reply r = c.readReply(0);
                assertEquals(0, r.error(), "reply to cookie " + r.cookie());
                assertTrue(cookies.add(r.cookie()), "one reply per cookie: " + r.cookie());
                long at = cookieAt.get(r.cookie());
                replyOrder.add(at);
                if ((r.cookie() - 1000) % 2 == 1) {
                    assertArrayEquals(Arrays.copyOfRange(firstMiB, (int) at, (int) at + 8192), NbdClient.readData(r, at, 8192),
                            "data of the read at " + at);
                }
            }
            assertEquals(releaseOrder, replyOrder, "answered in completion order, not request order");
            assertNotEquals(new ArrayList<>(new java.util.TreeMap<>(cookieAt).values()), replyOrder);
            onHome(() -> driver.hold(false));
            for (Map.Entry<Long, byte[]> w : written.entrySet()) {
                assertArrayEquals(w.getValue(), c.read(w.getKey(), w.getValue().length), "written at " + w.getKey());
            }
        }
    }

    @Test
    void aClientPipeliningPastTheBoundNeverHasMoreThanTheBoundInFlight() throws Exception {
        int n = TransmissionHandler.MAX_IN_FLIGHT + 72;
        onHome(() -> driver.hold(true));
        try (NbdTestClient c = client(false)) {
            for (int i = 0; i < n; i++) c.writeRequest(0, NBD_CMD_READ, i, (i % 256) * 4096L, 4096, null);
            c.flushOutput();
            await("the bound reached", () -> driver.heldCount() == TransmissionHandler.MAX_IN_FLIGHT);
            Thread.sleep(300); // the rest stays in the socket
            assertEquals(TransmissionHandler.MAX_IN_FLIGHT, driver.heldCount());
            assertEquals(TransmissionHandler.MAX_IN_FLIGHT, driver.maxInFlight());
            onHome(() -> {
                driver.hold(false);
                driver.releaseAllReversed();
            });
            Set<Long> cookies = new HashSet<>();
            for (int i = 0; i < n; i++) {
                Reply r = c.readReply(4096);
                assertEquals(0, r.error());
                long at = (r.cookie() % 256) * 4096L;
                assertArrayEquals(Arrays.copyOfRange(firstMiB, (int) at, (int) at + 4096), r.chunks().get(0).payload());
                assertTrue(cookies.add(r.cookie()));
            }
            assertEquals(n, cookies.size());
            assertEquals(TransmissionHandler.MAX_IN_FLIGHT, driver.maxInFlight(), "never more than the bound");
        }
    }

    @Test
    void theByteBoundKeepsThreeLargeReadsFromBeingInFlightTogether() throws Exception {
        int len = 24 << 20; // three of them exceed MAX_IN_FLIGHT_BYTES (64 MiB); two fit
        dropPageCache(); // a range in the page cache would leave with sendfile, not through the driver
        onHome(() -> driver.hold(true));
        try (NbdTestClient c = client(false)) {
            for (int i = 0; i < 3; i++) c.writeRequest(0, NBD_CMD_READ, i, 0, len, null);
            c.flushOutput();
            await("two reads held", () -> driver.heldCount() == 2);
            Thread.sleep(300);
            assertEquals(2, driver.heldCount(), "the third waits for the byte budget");
            onHome(() -> {
                driver.hold(false);
                driver.releaseAllReversed();
            });
            for (int i = 0; i < 3; i++) assertEquals(0, c.readReply(len).error());
            assertEquals(2, driver.maxInFlight());
        }
    }

    /** proto.md NBD_CMD_DISC: "The server MUST handle all outstanding requests" before it closes. */
    @Test
    void disconnectAnswersTheRequestsInFlightFirst() throws Exception {
        onHome(() -> driver.hold(true));
        try (NbdTestClient c = client(false)) {
            for (int i = 0; i < 8; i++) c.writeRequest(0, NBD_CMD_READ, i, i * 4096L, 4096, null);
            c.writeRequest(0, NBD_CMD_DISC, 99, 0, 0, null);
            c.flushOutput();
            await("8 reads held", () -> driver.heldCount() == 8);
            Thread.sleep(200);
            assertEquals(1, export.clients().size(), "still open while requests are in flight");
            onHome(driver::releaseAllReversed);
            for (int i = 0; i < 8; i++) {
                Reply r = c.readReply(4096);
                assertEquals(0, r.error());
                assertArrayEquals(Arrays.copyOfRange(firstMiB, (int) r.cookie() * 4096, (int) r.cookie() * 4096 + 4096), r.chunks().get(0).payload());
            }
            assertTrue(c.closedByServer(), "closed after the last reply");
        }
    }

    /** Server stop (and export removal, the same graceful close) with requests in flight: answered, then closed. */
    @Test
    void aServerStopWithRequestsInFlightAnswersThemBeforeClosing() throws Exception {
        onHome(() -> driver.hold(true));
        try (NbdTestClient c = client(true)) {
            for (int i = 0; i < 8; i++) c.writeRequest(0, NBD_CMD_READ, i, i * 65536L, 65536, null);
            c.flushOutput();
            await("8 reads held", () -> driver.heldCount() == 8);
            Thread stopper = new Thread(() -> server.stop(10_000), "stopper");
            stopper.start();
            Thread.sleep(300); // the close waits for the requests
            onHome(driver::releaseAllReversed);
            Set<Long> cookies = new HashSet<>();
            for (int i = 0; i < 8; i++) {
                Reply r = c.readReply(0);
                assertEquals(0, r.error());
                long at = r.cookie() * 65536L;
                assertArrayEquals(Arrays.copyOfRange(firstMiB, (int) at, (int) at + 65536), NbdClient.readData(r, at, 65536));
                assertTrue(cookies.add(r.cookie()));
            }
            assertTrue(c.closedByServer(), "closed after the last reply");
            stopper.join(20_000);
        }
    }

    /** A completion that arrives after its client left only releases its buffers: the server goes on. */
    @Test
    void completionsAfterTheClientLeftAreDroppedQuietly() throws Exception {
        onHome(() -> driver.hold(true));
        NbdTestClient c = client(true);
        byte[] b = new byte[1 << 20];
        for (int i = 0; i < 4; i++) c.writeRequest(0, NBD_CMD_READ, i, i * 65536L, 65536, null); // below SENDFILE_MIN
        for (int i = 0; i < 4; i++) c.writeRequest(0, NBD_CMD_WRITE, 10 + i, (16L << 20) + i * (1L << 20), b.length, b);
        c.flushOutput();
        await("8 requests held", () -> driver.heldCount() == 8);
        c.socket().setSoLinger(true, 0);
        c.close();
        await("the server saw the client leave", () -> export.clients().isEmpty());
        onHome(() -> {
            driver.hold(false);
            driver.releaseAllReversed();
        });
        assertEquals(0, iot.submit(driver::inFlight).join());
        try (NbdTestClient d = client(false)) {
            assertArrayEquals(Arrays.copyOf(firstMiB, 4096), d.read(0, 4096));
        }
    }

    /** Regression: the streamed and spliced WRITE paths wrote the first part of a payload whose client then left. */
    @Test
    void aClientThatLeavesInTheMiddleOfAWritePayloadChangesNothingOnTheDisk() throws Exception {
        for (boolean reset : new boolean[] {true, false}) {
            byte[] before = Files.readAllBytes(image);
            NbdTestClient c = client(false);
            DataOutputStream out = c.out();
            int len = 8 << 20;
            out.writeInt(NbdMagic.NBD_REQUEST_MAGIC);
            out.writeShort(0);
            out.writeShort(NBD_CMD_WRITE);
            out.writeLong(7);
            out.writeLong(0); // over the data in the first MiB, and the hole after it
            out.writeInt(len);
            byte[] half = new byte[len / 2];
            Arrays.fill(half, (byte) 0x5a);
            out.write(half);
            out.flush();
            Thread.sleep(300); // the server has read what was sent
            if (reset) c.socket().setSoLinger(true, 0); // RST instead of FIN
            c.close();
            await("the server saw the client leave", () -> export.clients().isEmpty());
            onHome(() -> { });
            assertEquals(0, iot.submit(driver::inFlight).join(), "nothing in flight");
            assertArrayEquals(before, Files.readAllBytes(image), (reset ? "reset" : "close") + " mid-payload changed the image");
        }
        try (NbdTestClient c = client(false)) { // and the server still serves
            assertArrayEquals(Arrays.copyOf(firstMiB, 4096), c.read(0, 4096));
        }
    }

    /**
     * Regression: a client that hung up while its node was half-way through a move made the
     * attach step fail with Netty's StacklessClosedChannelException, which the move logged as a
     * WARN with the exception's name. Leaving is normal: attach completes, and the client is gone
     * from the node and the export.
     */
    @Test
    void aClientThatLeftDuringAMoveDoesNotFailTheAttachStep() throws Exception {
        IOThread other = IOThread.start("iot-other");
        try {
            NbdTestClient c = client(false);
            await("the client is a user of the node", () -> node.users().size() == 1);
            TransmissionHandler tx = (TransmissionHandler) node.users().get(0);
            onHome(tx::quiesce);
            c.socket().setSoLinger(true, 0);
            c.close(); // the reset arrives while the client is quiesced on its old home
            await("the server saw the client leave", () -> export.clients().isEmpty());
            iot.submit(tx::detach).join().get(10, TimeUnit.SECONDS);
            other.submit(() -> tx.attach(other)).join().get(10, TimeUnit.SECONDS); // threw ExecutionException before
            other.submit(() -> { tx.resume(); return null; }).join();
            assertEquals(List.of(), node.users());
        } finally {
            other.shutdown(5000);
        }
    }
}
