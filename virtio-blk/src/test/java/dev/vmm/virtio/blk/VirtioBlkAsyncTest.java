package dev.vmm.virtio.blk;

import static dev.vmm.virtio.blk.VirtioBlk.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.core.options.Options;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend.Queue;
import dev.vmm.virtio.memory.GuestMemory;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;
import java.util.function.Predicate;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The asynchronous virtio-blk data path against a block driver that holds requests: many requests
 * of one queue in flight at once, completions in any order answered and published as a batch,
 * other disks and other requests served while one request is outstanding, back-pressure at the
 * request pool's size, and ring/memory teardown with requests in flight. Runs with whatever
 * engine {@code VMM_AIO} selects (io_uring by default, {@code threads}).
 */
@Timeout(60)
class VirtioBlkAsyncTest {
    static final int BLOCK = 4096;

    @TempDir Path tmp;
    Daemon daemon;
    HoldingDriver holding;
    BlockNode node0;
    final List<VirtioBlkFrontend> frontends = new ArrayList<>();
    final long scratch = RawMemory.allocate(8);

    /**
     * Holds the requests whose operation {@link #which} selects: their completions
     * ({@link Hold#COMPLETIONS}: the I/O is done, the caller is not told) or their submission
     * ({@link Hold#SUBMISSIONS}: the I/O has not started, so the kernel writes guest memory only
     * at {@link #releaseAll}). Held requests count as in flight, so a move's drain waits for them.
     * Home thread, except the atomic counters the test reads.
     */
    static final class HoldingDriver extends ForwardingBlockDriver {
        enum Hold { NONE, COMPLETIONS, SUBMISSIONS }

        volatile Hold hold = Hold.NONE;
        volatile Predicate<String> which = op -> true;
        /** Accepted requests, completions delivered to the caller, requests held now. */
        final AtomicInteger accepted = new AtomicInteger();
        final AtomicInteger completed = new AtomicInteger();
        final AtomicInteger heldNow = new AtomicInteger();
        /** The most requests in flight at once. */
        final AtomicInteger maxInFlight = new AtomicInteger();
        /** Every errno the real driver reported. */
        final List<Integer> errnos = Collections.synchronizedList(new ArrayList<>());
        private final List<long[]> heldOrder = new ArrayList<>(); // {seq, index into heldTasks}
        private final List<Runnable> heldTasks = new ArrayList<>();
        private long seq;
        private int pending;
        private final List<Runnable> idleWaiters = new ArrayList<>();

        HoldingDriver(BlockDriver d) { super(d); }

        interface Submit { void run(IoCompletion c) throws BlockException; }

        private void submit(String op, IoCompletion c, Submit s) throws BlockException {
            Hold mode = which.test(op) ? hold : Hold.NONE;
            long mySeq = seq++;
            IoCompletion w = errno -> {
                pending--;
                errnos.add(errno);
                if (mode == Hold.COMPLETIONS) {
                    park(mySeq, () -> deliver(c, errno));
                } else {
                    deliver(c, errno);
                }
            };
            if (mode == Hold.SUBMISSIONS) {
                park(mySeq, () -> {
                    try {
                        s.run(w);
                    } catch (BlockException e) {
                        pending--;
                        deliver(c, e.errno());
                    }
                });
                pending++;
            } else {
                s.run(w); // a refusal throws here: not accepted
                pending++;
            }
            accepted.incrementAndGet();
            maxInFlight.accumulateAndGet(inFlight(), Math::max);
        }

        private void park(long s, Runnable r) {
            heldOrder.add(new long[] {s, heldTasks.size()});
            heldTasks.add(r);
            heldNow.incrementAndGet();
        }

        private void deliver(IoCompletion c, int errno) {
            completed.incrementAndGet();
            c.ioDone(errno);
            idleCheck();
        }

        /** Home thread: lets every held request go, in submission order or its reverse. */
        void releaseAll(boolean reverse) {
            List<long[]> order = new ArrayList<>(heldOrder);
            List<Runnable> tasks = new ArrayList<>(heldTasks);
            heldOrder.clear();
            heldTasks.clear();
            heldNow.set(0);
            order.sort((a, b) -> Long.compare(a[0], b[0]));
            if (reverse) Collections.reverse(order);
            for (long[] o : order) tasks.get((int) o[1]).run();
            idleCheck();
        }

        private void idleCheck() {
            if (inFlight() != 0 || idleWaiters.isEmpty()) return;
            List<Runnable> ws = new ArrayList<>(idleWaiters);
            idleWaiters.clear();
            ws.forEach(Runnable::run);
        }

        @Override public int inFlight() { return pending + heldTasks.size(); }
        /** Accepted and not completed, readable from the test thread. */
        int inFlightFromAnyThread() { return accepted.get() - completed.get(); }
        @Override public void whenIdle(Runnable idle) { if (inFlight() == 0) idle.run(); else idleWaiters.add(idle); }
        @Override public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException {
            submit("readv", c, w -> d.readv(o, iov, n, t, w));
        }
        @Override public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
            submit("writev", c, w -> d.writev(o, iov, n, t, fua, w));
        }
        @Override public void flush(IoCompletion c) throws BlockException { submit("flush", c, d::flush); }
        @Override public void discard(long o, long l, IoCompletion c) throws BlockException {
            submit("discard", c, w -> d.discard(o, l, w));
        }
        @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
            submit("writeZeroes", c, w -> d.writeZeroes(o, l, u, f, fua, w));
        }
    }

    @BeforeEach
    void start() throws Exception {
        VhostUserBlkDeviceTest.makeImage(tmp.resolve("disk.img"));
        VhostUserBlkDeviceTest.makeImage(tmp.resolve("disk1.img"));
        daemon = Daemon.start();
        daemon.objectAdd(Options.of("--object", Map.of("qom-type", "iothread", "id", "iot0")));
        holding = new HoldingDriver(RawFileDriver.open(tmp.resolve("disk.img"), false, false));
        node0 = new BlockNode("disk0", holding, daemon.mainLoop());
        daemon.addNode(node0);
        daemon.blockdevAdd(Options.of("--blockdev", Map.of("driver", "file", "node-name", "disk1",
                "filename", tmp.resolve("disk1.img").toString())));
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub0", "disk0", sock("vub0"), true, 1));
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub1", "disk1", sock("vub1"), true, 1));
    }

    @AfterEach
    void stop() {
        QueueWorker.maxInFlight = QueueWorker.MAX_IN_FLIGHT;
        VhostUserBlkDevice.drainTimeoutMs = 30_000;
        try {
            if (holding.heldNow.get() > 0) node0.home().submit(() -> {
                holding.hold = HoldingDriver.Hold.NONE;
                holding.releaseAll(false);
                return null;
            }).get(5, TimeUnit.SECONDS);
        } catch (Exception e) {
            // the daemon goes anyway
        }
        for (VirtioBlkFrontend fe : frontends) fe.abort();
        daemon.shutdown(false);
        RawMemory.free(scratch);
    }

    String sock(String id) { return tmp.resolve(id + ".sock").toString(); }

    VirtioBlkFrontend connect(String id, VirtioBlkFrontend.Settings s) throws Exception {
        VirtioBlkFrontend fe = VirtioBlkFrontend.connect(sock(id), s);
        frontends.add(fe);
        return fe;
    }

    static VirtioBlkFrontend.Settings settings() {
        return new VirtioBlkFrontend.Settings().memory(16L << 20).queues(1).queueSize(128).depth(32).maxIoBytes(BLOCK).timeoutMs(5000);
    }

    static void waitFor(String what, BooleanSupplier cond) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (!cond.getAsBoolean()) {
            if (System.nanoTime() > deadline) fail("timed out waiting for " + what);
            Thread.sleep(2);
        }
    }

    void releaseOnHome(boolean reverse) throws Exception {
        node0.home().submit(() -> {
            holding.releaseAll(reverse);
            return null;
        }).get(5, TimeUnit.SECONDS);
    }

    long exportInFlight(String id) { return daemon.export(id).stats().inFlight.sum(); }

    /** {slot, status, usedLen} of each used entry, in used-ring order, until {@code n} came. */
    static List<int[]> reap(Queue q, int n) throws InterruptedException {
        List<int[]> got = new ArrayList<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (got.size() < n) {
            if (System.nanoTime() > deadline) fail("only " + got.size() + " of " + n + " completions");
            if (q.reap((slot, status, used, lat) -> got.add(new int[] {slot, status, used})) == 0) Thread.sleep(1);
        }
        return got;
    }

    static byte[] bytes(long addr, int len) {
        byte[] b = new byte[len];
        for (int i = 0; i < len; i++) b[i] = (byte) RawMemory.getByte(addr + i);
        return b;
    }

    static void put(long addr, byte[] b) {
        for (int i = 0; i < b.length; i++) RawMemory.putByte(addr + i, b[i]);
    }

    @Test
    void thirtyTwoRequestsAreInFlightAtOnceAndCompleteInReverseOrderAsOneBatch() throws Exception {
        holding.hold = HoldingDriver.Hold.COMPLETIONS;
        // No EVENT_IDX and NO_INTERRUPT clear: every publish that the device makes signals the
        // call eventfd, whose counter then says how many publishes there were.
        VirtioBlkFrontend fe = connect("vub0", settings().indirect(false).dropFeatures(1L << VIRTIO_RING_F_EVENT_IDX));
        Queue q = fe.queue(0);
        q.driver().setNoInterrupt(false);
        byte[] image = VhostUserBlkDeviceTest.random(1 << 20, 7); // what makeImage wrote at 0
        int[] slots = new int[32];
        for (int i = 0; i < 32; i++) {
            int slot = q.acquire();
            slots[i] = slot;
            if (i % 2 == 0) {
                q.submit(slot, VIRTIO_BLK_T_IN, (long) i * BLOCK >> SECTOR_SHIFT, BLOCK);
            } else {
                put(q.dataAddress(slot), VhostUserBlkDeviceTest.random(BLOCK, 100 + i));
                q.submit(slot, VIRTIO_BLK_T_OUT, ((2L << 20) + (long) i * BLOCK) >> SECTOR_SHIFT, BLOCK);
            }
        }
        q.kickNow();

        waitFor("32 requests done by the disk and held", () -> holding.heldNow.get() == 32);
        assertEquals(32, holding.accepted.get(), "all 32 reached the driver at once");
        assertEquals(0, holding.completed.get());
        assertEquals(0, q.driver().usedIdx(), "nothing is used before a completion");
        assertEquals(32, exportInFlight("vub0"), "export requests in flight");
        assertEquals(0, LibcSocket.eventfdRead(q.callFd(), scratch), "no interrupt yet");

        releaseOnHome(true);
        List<int[]> used = reap(q, 32);
        for (int k = 0; k < 32; k++) {
            int i = 31 - k; // reverse order of submission
            int[] u = used.get(k);
            assertEquals(slots[i], u[0], "used entry " + k + " is request " + i);
            assertEquals(VIRTIO_BLK_S_OK, u[1], "status of request " + i);
            if (i % 2 == 0) {
                assertEquals(BLOCK + 1, u[2], "used length of read " + i);
                assertArrayEquals(Arrays.copyOfRange(image, i * BLOCK, (i + 1) * BLOCK), bytes(q.dataAddress(slots[i]), BLOCK),
                        "data of read " + i);
            } else {
                assertEquals(1, u[2], "used length of write " + i);
            }
        }
        assertEquals(1, LibcSocket.eventfdRead(q.callFd(), scratch), "one publish and one interrupt for the batch of 32");
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(tmp.resolve("disk.img").toFile(), "r")) {
            for (int i = 1; i < 32; i += 2) {
                byte[] b = new byte[BLOCK];
                f.seek((2L << 20) + (long) i * BLOCK);
                f.readFully(b);
                assertArrayEquals(VhostUserBlkDeviceTest.random(BLOCK, 100 + i), b, "write " + i + " in the image");
            }
        }
        assertEquals(0, exportInFlight("vub0"));
        assertEquals(16, daemon.export("vub0").stats().readOps.sum());
        assertEquals(16, daemon.export("vub0").stats().writeOps.sum());
        assertEquals(0, daemon.export("vub0").stats().errors.sum());
    }

    @Test
    void otherDisksAndOtherRequestsAreServedWhileAFlushIsOutstanding() throws Exception {
        holding.which = op -> op.equals("flush");
        holding.hold = HoldingDriver.Hold.COMPLETIONS;
        VirtioBlkFrontend fe0 = connect("vub0", settings());
        VirtioBlkFrontend fe1 = connect("vub1", settings());
        assertEquals(node0.home(), daemon.node("disk1").home(), "both disks on one IOThread");
        Queue q0 = fe0.queue(0);
        int flushSlot = q0.acquire();
        q0.submit(flushSlot, VIRTIO_BLK_T_FLUSH, 0, 0);
        q0.kickNow();
        waitFor("the flush held", () -> holding.heldNow.get() == 1);

        byte[] data = VhostUserBlkDeviceTest.random(BLOCK, 3);
        Queue q1 = fe1.queue(0);
        assertEquals(VIRTIO_BLK_S_OK, q1.write(8192, data).status());
        assertArrayEquals(data, q1.read(8192, BLOCK).data(), "the other disk serves");
        assertEquals(VIRTIO_BLK_S_OK, q0.write(8192, data).status(), "the same queue serves behind the flush");
        assertArrayEquals(data, q0.read(8192, BLOCK).data());
        assertEquals(1, holding.heldNow.get(), "the flush is still outstanding");
        assertEquals(1, exportInFlight("vub0"));

        releaseOnHome(false);
        List<int[]> done = reap(q0, 1);
        assertEquals(flushSlot, done.get(0)[0]);
        assertEquals(VIRTIO_BLK_S_OK, done.get(0)[1], "flush status");
        assertEquals(0, exportInFlight("vub0"));
    }

    @Test
    void disconnectWithRequestsInFlightKeepsGuestMemoryMappedUntilTheyAreOver() throws Exception {
        holding.which = op -> op.equals("readv");
        holding.hold = HoldingDriver.Hold.SUBMISSIONS; // the kernel writes guest memory only after the disconnect
        int retiredBefore = GuestMemory.retiredRegions();
        VirtioBlkFrontend fe = connect("vub0", settings());
        Queue q = fe.queue(0);
        for (int i = 0; i < 8; i++) q.submit(q.acquire(), VIRTIO_BLK_T_IN, (long) i * BLOCK >> SECTOR_SHIFT, BLOCK);
        q.kickNow();
        waitFor("8 reads held", () -> holding.heldNow.get() == 8);
        assertEquals(retiredBefore, GuestMemory.retiredRegions());

        fe.abort(); // the front-end dies: the device resets with 8 reads not yet started
        waitFor("guest memory retired, still mapped", () -> GuestMemory.retiredRegions() == retiredBefore + 1);
        Thread.sleep(50);
        assertEquals(retiredBefore + 1, GuestMemory.retiredRegions(), "not unmapped while reads are in flight");
        assertEquals(8, exportInFlight("vub0"));

        releaseOnHome(false); // the reads now go to the kernel, into the retired mapping
        waitFor("the reads completed", () -> holding.completed.get() == 8);
        waitFor("guest memory unmapped", () -> GuestMemory.retiredRegions() == retiredBefore);
        assertEquals(0, exportInFlight("vub0"), "dropped completions still uncount");
        assertEquals(0, holding.inFlightFromAnyThread());
        assertEquals(List.of(0, 0, 0, 0, 0, 0, 0, 0), holding.errnos, "the kernel wrote into mapped memory (no EFAULT)");

        holding.hold = HoldingDriver.Hold.NONE;
        VirtioBlkFrontend again = connect("vub0", settings());
        assertEquals(VIRTIO_BLK_S_OK, again.queue(0).read(0, BLOCK).status(), "the device serves a new front-end");
    }

    @Test
    void getVringBaseAnswersTheRequestsInFlightFirst() throws Exception {
        holding.hold = HoldingDriver.Hold.COMPLETIONS;
        VirtioBlkFrontend fe = connect("vub0", settings());
        Queue q = fe.queue(0);
        for (int i = 0; i < 4; i++) q.submit(q.acquire(), VIRTIO_BLK_T_IN, (long) i * BLOCK >> SECTOR_SHIFT, BLOCK);
        q.kickNow();
        waitFor("4 reads held", () -> holding.heldNow.get() == 4);
        CompletableFuture<Integer> base = CompletableFuture.supplyAsync(() -> {
            try {
                return fe.stopQueue(0);
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        Thread.sleep(300);
        assertFalse(base.isDone(), "GET_VRING_BASE waits for the requests in flight");
        releaseOnHome(false);
        assertEquals(4, base.get(5, TimeUnit.SECONDS), "the ring base");
        assertEquals(4, q.driver().usedIdx(), "all four published before the base was reported");
        for (int[] u : reap(q, 4)) assertEquals(VIRTIO_BLK_S_OK, u[1]);
        assertEquals(0, exportInFlight("vub0"));
    }

    @Test
    void getVringBaseGivesUpAfterTheDrainTimeoutAndDropsLateCompletions() throws Exception {
        VhostUserBlkDevice.drainTimeoutMs = 300;
        holding.hold = HoldingDriver.Hold.COMPLETIONS;
        VirtioBlkFrontend fe = connect("vub0", settings());
        Queue q = fe.queue(0);
        for (int i = 0; i < 2; i++) q.submit(q.acquire(), VIRTIO_BLK_T_IN, (long) i * BLOCK >> SECTOR_SHIFT, BLOCK);
        q.kickNow();
        waitFor("2 reads held", () -> holding.heldNow.get() == 2);
        long t0 = System.nanoTime();
        assertEquals(2, fe.stopQueue(0));
        assertTrue(System.nanoTime() - t0 >= TimeUnit.MILLISECONDS.toNanos(250), "waited for the timeout");
        releaseOnHome(false);
        waitFor("completions delivered", () -> holding.completed.get() == 2);
        waitFor("uncounted", () -> exportInFlight("vub0") == 0);
        assertEquals(0, q.driver().usedIdx(), "a ring given up is not written");
    }

    @Test
    void aQueueTakesNoMoreThanThePoolAndGoesOnWhenCompletionsFreeIt() throws Exception {
        QueueWorker.maxInFlight = 4; // read when the ring starts
        holding.hold = HoldingDriver.Hold.COMPLETIONS;
        VirtioBlkFrontend fe = connect("vub0", settings());
        Queue q = fe.queue(0);
        for (int i = 0; i < 16; i++) q.submit(q.acquire(), VIRTIO_BLK_T_IN, (long) i * BLOCK >> SECTOR_SHIFT, BLOCK);
        q.kickNow();
        List<int[]> used = new ArrayList<>();
        for (int round = 0; round < 4; round++) {
            int r = round;
            waitFor("4 more reads held", () -> holding.heldNow.get() == 4 && holding.accepted.get() == 4 * (r + 1));
            Thread.sleep(20);
            assertEquals(4 * (round + 1), holding.accepted.get(), "no more than the pool in flight");
            releaseOnHome(false); // frees the pool: the worker pops the next four without a kick
            used.addAll(reap(q, 4));
        }
        assertEquals(16, used.size());
        for (int[] u : used) assertEquals(VIRTIO_BLK_S_OK, u[1]);
        assertEquals(4, holding.maxInFlight.get(), "most requests in flight at once");
        assertEquals(0, exportInFlight("vub0"));
    }
}
