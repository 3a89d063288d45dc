package dev.vmm.nbd.handoff;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdCmdFlags;
import dev.vmm.nbd.server.NbdServerComponent;
import dev.vmm.nbd.testing.NbdTestClient;
import java.io.RandomAccessFile;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Live handoff of a node with connected NBD clients (DESIGN.md "Context handoff"): clients keep
 * writing and verifying while the node hops between IOThreads; no request fails, is lost or is
 * answered out of its data, and a move's pause is reported. Every request asserts (tests run with
 * -ea) that it runs on the node's current home thread: a violation closes that client, which the
 * workers report as an error.
 */
@Timeout(120)
class NbdHandoffTest {
    static final long SIZE = 64L << 20;

    @TempDir Path tmp;
    Daemon daemon;
    InetSocketAddress address;
    Path image;

    @BeforeEach
    void start() throws Exception {
        image = tmp.resolve("disk.img");
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        daemon = Daemon.start();
        for (String id : List.of("iot0", "iot1", "iot2")) daemon.addIOThread(id);
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=disk0,filename=" + image, null));
        NbdServerComponent nbd = NbdServerComponent.configure(daemon,
                KeyValueParser.parse("--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=0", null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e0,node-name=disk0,writable=on,iothread=iot0", "type"));
        nbd.start();
        address = (InetSocketAddress) nbd.server().boundAddress();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    /** One client: pipelined writes of seeded blocks to its own region, then read-back checks. */
    static final class Worker implements Runnable {
        final InetSocketAddress address;
        final int id;
        final boolean extended;
        final AtomicBoolean stop;
        final AtomicLong ops;
        final ConcurrentLinkedQueue<String> errors;
        /** Non-null: STARTTLS first, with this client context. */
        javax.net.ssl.SSLContext tls;

        Worker(InetSocketAddress address, int id, boolean extended, AtomicBoolean stop, AtomicLong ops, ConcurrentLinkedQueue<String> errors) {
            this.address = address;
            this.id = id;
            this.extended = extended;
            this.stop = stop;
            this.ops = ops;
            this.errors = errors;
        }

        @Override
        public void run() {
            long base = (long) id * (8 << 20);
            byte[][] expect = new byte[64][];
            Random r = new Random(id);
            try (NbdTestClient c = new NbdTestClient(address).handshake()) {
                if (tls != null && c.startTls(tls).isError()) throw new java.io.IOException("STARTTLS refused");
                if (extended) c.extendedHeaders(); else c.structuredReplies();
                c.go("disk0");
                int round = 0;
                while (!stop.get()) {
                    // 16 writes in flight, then a flush, then 16 reads checked against what was written
                    for (int i = 0; i < 16; i++) {
                        int slot = (round * 16 + i) % 64;
                        byte[] b = new byte[4096 * (1 + (i % 4))];
                        r.nextBytes(b);
                        expect[slot] = b;
                        c.sendRequest(extended ? NbdCmdFlags.NBD_CMD_FLAG_PAYLOAD_LEN : 0, NbdCmd.NBD_CMD_WRITE, base + slot * 65536L, b.length, b);
                    }
                    for (int i = 0; i < 16; i++) {
                        int err = c.readReply(0).error();
                        if (err != 0) errors.add("client " + id + ": write error " + err);
                    }
                    if (c.request(0, NbdCmd.NBD_CMD_FLUSH, 0, 0, null).error() != 0) errors.add("client " + id + ": flush error");
                    for (int i = 0; i < 16; i++) {
                        int slot = (round * 16 + i) % 64;
                        byte[] got = c.read(base + slot * 65536L, expect[slot].length, 0);
                        if (!Arrays.equals(got, expect[slot])) errors.add("client " + id + ": slot " + slot + " read back different data");
                    }
                    ops.addAndGet(33);
                    round++;
                }
                c.disconnect();
            } catch (Exception e) {
                errors.add("client " + id + ": " + e);
            }
        }
    }

    /**
     * Moves disk0 around {@code ring} back to back (2 ms apart) for {@code seconds}, checking each
     * move lands, then that the clients counting {@code ops} still make progress; the pauses.
     */
    static List<Long> moveAround(Daemon daemon, BlockNode node, String[] ring, int seconds, AtomicLong ops) throws Exception {
        List<Long> pauses = new ArrayList<>();
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (System.nanoTime() < end) {
            String to = ring[pauses.size() % ring.length];
            pauses.add(daemon.moveNode("disk0", to).get(10, TimeUnit.SECONDS));
            assertEquals(to, node.home().id());
            Thread.sleep(2);
        }
        long before = ops.get();
        Thread.sleep(200);
        assertTrue(ops.get() > before, "clients still make progress after the last move");
        return pauses;
    }

    @Test
    void clientsKeepWorkingWhileTheNodeHopsBetweenThreeIOThreads() throws Exception {
        AtomicBoolean stop = new AtomicBoolean();
        AtomicLong ops = new AtomicLong();
        ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            Thread t = new Thread(new Worker(address, i, i % 2 == 1, stop, ops, errors), "client-" + i);
            t.start();
            threads.add(t);
        }
        BlockNode node = daemon.node("disk0");
        while (node.users().size() < 4) Thread.sleep(10);

        List<Long> pauses = moveAround(daemon, node, new String[] {"iot1", "iot2", "iot0"}, 4, ops);
        int moves = pauses.size();
        stop.set(true);
        for (Thread t : threads) t.join(20_000);
        assertEquals(List.of(), List.copyOf(errors));
        pauses.sort(null);
        System.out.printf("[handoff] %d moves, %d client ops; pause p50 %d us, p99 %d us, max %d us%n", moves, ops.get(),
                pauses.get(pauses.size() / 2) / 1000, pauses.get((int) (pauses.size() * 0.99)) / 1000, pauses.get(pauses.size() - 1) / 1000);
        assertTrue(moves > 20, "moves done: " + moves);
        assertTrue(ops.get() > 1000, "client ops: " + ops.get());
    }

    /**
     * A move with requests in flight: the drain waits for them on the old home, where they are
     * answered; after the move every request has exactly one reply, the data is right, and the
     * client is served on the new home.
     */
    @Test
    void aMoveWithRequestsInFlightLosesAndDuplicatesNoReply() throws Exception {
        Path heldImage = tmp.resolve("held.img");
        byte[] data = new byte[1 << 20];
        new Random(5).nextBytes(data);
        try (RandomAccessFile f = new RandomAccessFile(heldImage.toFile(), "rw")) {
            f.setLength(SIZE);
            f.write(data);
        }
        dev.vmm.core.testing.HoldingDriver held = new dev.vmm.core.testing.HoldingDriver(
                dev.vmm.core.block.RawFileDriver.open(heldImage, false, false));
        dev.vmm.iothread.IOThread iot0 = daemon.iothread("iot0");
        BlockNode node = new BlockNode("held0", held, iot0);
        daemon.addNode(node);
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e1,node-name=held0,writable=on,iothread=iot0", "type"));
        try (NbdTestClient c = new NbdTestClient(address).handshake()) {
            c.structuredReplies();
            c.go("held0");
            iot0.submit(() -> { held.hold(true); return null; }).join();
            byte[][] written = new byte[16][];
            for (int i = 0; i < 32; i++) {
                if (i < 16) {
                    written[i] = new byte[4096];
                    new Random(100 + i).nextBytes(written[i]);
                    c.writeRequest(0, NbdCmd.NBD_CMD_WRITE, i, (8L << 20) + i * 4096L, 4096, written[i]);
                } else {
                    c.writeRequest(0, NbdCmd.NBD_CMD_READ, i, (i - 16) * 65536L, 65536, null);
                }
            }
            c.flushOutput();
            long until = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (held.heldCount() < 32 && System.nanoTime() < until) Thread.sleep(2);
            assertEquals(32, held.heldCount(), "32 requests in flight at the driver");

            CompletableFuture<Long> move = daemon.moveNode("held0", "iot1");
            Thread.sleep(300);
            assertFalse(move.isDone(), "the move waits for the requests in flight");
            iot0.submit(() -> {
                held.hold(false);
                held.releaseAllReversed();
                return null;
            }).join();
            move.get(10, TimeUnit.SECONDS);
            assertEquals("iot1", node.home().id());

            java.util.Set<Long> cookies = new java.util.HashSet<>();
            for (int i = 0; i < 32; i++) {
                NbdClient.Reply r = c.readReply(0);
                assertEquals(0, r.error(), "reply to " + r.cookie());
                assertTrue(cookies.add(r.cookie()), "a second reply to cookie " + r.cookie());
                if (r.cookie() >= 16) {
                    long at = (r.cookie() - 16) * 65536L;
                    assertArrayEquals(Arrays.copyOfRange(data, (int) at, (int) at + 65536), NbdClient.readData(r, at, 65536));
                }
            }
            assertEquals(32, cookies.size());
            // Served on the new home, and no stray reply is waiting in front of this one.
            for (int i = 0; i < 16; i++) assertArrayEquals(written[i], c.read((8L << 20) + i * 4096L, 4096));
            c.disconnect();
        }
    }

    @Test
    void movesRequestedBackToBackRunOneAfterTheOther() throws Exception {
        List<CompletableFuture<Long>> fs = new ArrayList<>();
        for (int i = 0; i < 30; i++) fs.add(daemon.moveNode("disk0", "iot" + (i % 3)));
        for (CompletableFuture<Long> f : fs) f.get(10, TimeUnit.SECONDS);
        assertEquals("iot2", daemon.node("disk0").home().id(), "the last move wins");
        try (NbdTestClient c = new NbdTestClient(address).handshake()) {
            c.go("disk0");
            assertEquals(0, c.write(0, new byte[4096], 0));
        }
    }

    @Test
    void moveToTheCurrentThreadIsANoOpAndUnknownTargetsFail() throws Exception {
        assertEquals(0L, daemon.moveNode("disk0", "iot0").get(5, TimeUnit.SECONDS));
        var unknownThread = daemon.moveNode("disk0", "nope");
        var unknownNode = daemon.moveNode("nope", "iot1");
        assertTrue(assertThrows(Exception.class, () -> unknownThread.get(5, TimeUnit.SECONDS)).getMessage().contains("nope"));
        assertTrue(assertThrows(Exception.class, () -> unknownNode.get(5, TimeUnit.SECONDS)).getMessage().contains("nope"));
    }

    @Test
    void clientsConnectingAndLeavingDuringMovesAreServedOnTheRightThread() throws Exception {
        AtomicBoolean stop = new AtomicBoolean();
        ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();
        Thread churn = new Thread(() -> {
            int n = 0;
            while (!stop.get()) {
                try (NbdTestClient c = new NbdTestClient(address).handshake()) {
                    c.go("disk0");
                    byte[] b = new byte[512];
                    new Random(n).nextBytes(b);
                    if (c.write(40L << 20, b, NbdCmdFlags.NBD_CMD_FLAG_FUA) != 0) errors.add("write failed");
                    if (!Arrays.equals(b, c.read(40L << 20, 512, 0))) errors.add("read back differs");
                    if (n++ % 2 == 0) c.disconnect(); // and otherwise just drop the socket
                } catch (Exception e) {
                    errors.add(e.toString());
                }
            }
        }, "churn");
        churn.start();
        for (int i = 0; i < 60; i++) daemon.moveNode("disk0", "iot" + (i % 3)).get(10, TimeUnit.SECONDS);
        stop.set(true);
        churn.join(20_000);
        assertEquals(List.of(), List.copyOf(errors));
        Thread.sleep(200);
        assertEquals(0, daemon.node("disk0").users().size(), "every client that left was removed from the node");
        assertTrue(Files.size(image) == SIZE);
    }
}
