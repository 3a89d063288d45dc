package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.NodeUser;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.options.Options;
import dev.vmm.core.testing.NativeBuffers;
import dev.vmm.iothread.IOThread;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The mirror job in one process, where faults can be injected: a target that fails its writes
 * (on-target-error=report ends the job with its error and leaves the source serving; stop pauses
 * it with io-status failed until resumed), and a move of the source's graph to another IOThread
 * while a guest writes and the job copies. The guest is a {@link NodeUser} that writes random
 * data through the source's io one request at a time and keeps what it wrote in a reference.
 */
class MirrorJobTest {
    static final int SIZE = 4 << 20;

    @TempDir
    Path dir;
    Daemon daemon;
    IOThread main;
    final List<String> events = Collections.synchronizedList(new ArrayList<>());
    final List<Map<String, Object>> eventData = Collections.synchronizedList(new ArrayList<>());

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        main = daemon.mainLoop();
        daemon.addIOThread("iot1");
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    /** Fails every asynchronous write with {@link #errno} while it is not 0. */
    static final class Faulty extends ForwardingBlockDriver {
        volatile int errno;

        Faulty(BlockDriver d) { super(d); }

        @Override
        public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
            int e = errno;
            if (e != 0) {
                d.flush(x -> c.ioDone(e)); // completes later, on the home thread, as a real failure
                return;
            }
            super.write(o, a, l, fua, c);
        }

        @Override
        public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
            int e = errno;
            if (e != 0) {
                d.flush(x -> c.ioDone(e));
                return;
            }
            super.writeZeroes(o, l, u, f, fua, c);
        }
    }

    /** A guest writing random 4 KiB..64 KiB blocks, one at a time, through the node's io. */
    final class Guest implements NodeUser {
        final BlockNode node;
        final byte[] reference = new byte[SIZE];
        final Memory buf = NativeBuffers.aligned(64 << 10, 4096);
        final Random rnd = new Random(7);
        volatile boolean running = true;
        boolean quiesced;
        boolean inFlight;
        volatile int writes;
        volatile int errors;
        final CompletableFuture<Void> stopped = new CompletableFuture<>();

        Guest(BlockNode node, byte[] initial) {
            this.node = node;
            System.arraycopy(initial, 0, reference, 0, SIZE);
            node.addUser(this);
            node.home().execute(this::next);
        }

        void next() {
            if (!running) {
                stopped.complete(null);
                return;
            }
            if (quiesced || inFlight) return;
            int len = (1 + rnd.nextInt(16)) * 4096;
            long off = (long) rnd.nextInt((SIZE - len) / 4096 + 1) * 4096;
            byte[] data = new byte[len];
            rnd.nextBytes(data);
            buf.write(0, data, 0, len);
            inFlight = true;
            try {
                node.io().write(off, NativeBuffers.address(buf), len, false, e -> {
                    inFlight = false;
                    if (e == 0) {
                        System.arraycopy(data, 0, reference, (int) off, len);
                        writes++;
                    } else {
                        errors++;
                    }
                    // a paced guest (about 500 writes/s), so that a background mirror converges
                    node.home().loop().schedule(() -> node.home().execute(this::next), 2, TimeUnit.MILLISECONDS);
                });
            } catch (BlockException e) {
                inFlight = false;
                errors++;
            }
        }

        /** Stops after the write in flight; the reference is then final. */
        void stop() throws Exception {
            running = false;
            node.home().execute(() -> {
                if (!inFlight) stopped.complete(null);
            });
            stopped.get(10, TimeUnit.SECONDS);
            node.removeUser(this);
        }

        @Override public String describe() { return "test guest"; }
        @Override public void quiesce() { quiesced = true; }
        @Override public CompletableFuture<Void> detach() { return CompletableFuture.completedFuture(null); }
        @Override public CompletableFuture<Void> attach(IOThread newHome) { return CompletableFuture.completedFuture(null); }
        @Override public void resume() {
            quiesced = false;
            next();
        }
    }

    private byte[] image(String name, Path file, boolean random) throws Exception {
        byte[] b = new byte[SIZE];
        if (random) new Random(name.hashCode()).nextBytes(b);
        Files.write(file, b);
        return b;
    }

    private MirrorJob mirror(Object... kv) throws Exception {
        Map<String, Object> args = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) args.put((String) kv[i], kv[i + 1]);
        return daemon.blockdevMirror(Options.of("blockdev-mirror", args), (e, d) -> {
            synchronized (events) {
                events.add(e.equals(Job.JOB_STATUS_CHANGE) ? (String) d.get("status") : e);
                eventData.add(d);
            }
        });
    }

    private void waitFor(String event) throws Exception {
        for (int i = 0; i < 600; i++) {
            if (events.contains(event)) return;
            Thread.sleep(20);
        }
        fail("no " + event + "; events: " + events);
    }

    private Map<String, Object> dataOf(String event) {
        synchronized (events) {
            return eventData.get(events.indexOf(event));
        }
    }

    @Test
    void targetErrorWithReportFailsTheJobAndTheSourceKeepsServing() throws Exception {
        byte[] initial = image("src", dir.resolve("src.img"), true);
        image("tgt", dir.resolve("tgt.img"), false);
        BlockNode src = new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        Faulty faulty = new Faulty(RawFileDriver.open(dir.resolve("tgt.img"), false, false));
        BlockNode tgt = new BlockNode("tgt", faulty, main);
        daemon.addNode(src);
        daemon.addNode(tgt);
        faulty.errno = Errno.EIO;
        Guest guest = new Guest(src, initial);
        MirrorJob job = mirror("job-id", "j0", "device", "src", "target", "tgt", "sync", "full", "on-target-error", "report");
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals("Input/output error", dataOf("BLOCK_JOB_COMPLETED").get("error"));
        Map<String, Object> err = dataOf("BLOCK_JOB_ERROR");
        assertEquals(Map.of("device", "j0", "operation", "write", "action", "report"), err);
        assertEquals(List.of("created", "running", "BLOCK_JOB_ERROR", "aborting", "BLOCK_JOB_COMPLETED", "concluded", "null"),
                events.stream().distinct().toList());
        int before = guest.writes;
        Thread.sleep(200);
        guest.stop();
        assertTrue(guest.writes > before, "the guest kept writing to the source");
        assertEquals(0, guest.errors);
        assertSame(src.driver(), main.call(() -> src.io().current()), "the filter is gone");
        assertTrue(src.jobLinks().isEmpty());
        assertArrayEquals(guest.reference, Files.readAllBytes(dir.resolve("src.img")));
        assertEquals(null, daemon.jobs().find("j0"));
        daemon.blockdevDel("tgt"); // free again
        assertTrue(job.error() != null);
    }

    @Test
    void targetErrorWithStopPausesUntilResumedThenPivots() throws Exception {
        byte[] initial = image("src", dir.resolve("src.img"), true);
        image("tgt", dir.resolve("tgt.img"), false);
        BlockNode src = new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        Faulty faulty = new Faulty(RawFileDriver.open(dir.resolve("tgt.img"), false, false));
        BlockNode tgt = new BlockNode("tgt", faulty, main);
        daemon.addNode(src);
        daemon.addNode(tgt);
        faulty.errno = Errno.ENOSPC;
        Guest guest = new Guest(src, initial);
        MirrorJob job = mirror("job-id", "j1", "device", "src", "target", "tgt", "sync", "full", "on-target-error", "enospc",
                "copy-mode", "write-blocking");
        waitFor("BLOCK_JOB_ERROR");
        assertEquals("stop", dataOf("BLOCK_JOB_ERROR").get("action"));
        for (int i = 0; i < 100 && job.status() != JobStatus.PAUSED; i++) Thread.sleep(20);
        assertEquals(JobStatus.PAUSED, job.status());
        assertEquals("nospace", job.blockJobInfo().get("io-status"));
        assertEquals(true, job.blockJobInfo().get("paused"));
        Thread.sleep(100);
        assertEquals(0, guest.errors, "write-blocking guest writes succeed when the target fails");
        faulty.errno = 0;
        job.resume();
        assertEquals("ok", job.blockJobInfo().get("io-status"));
        waitFor("BLOCK_JOB_READY");
        job.complete();
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals(null, dataOf("BLOCK_JOB_COMPLETED").get("error"));
        assertSame(tgt.io(), main.call(() -> src.io().current()), "the source's users write to the target");
        Thread.sleep(100);
        guest.stop();
        assertTrue(guest.writes > 0);
        assertArrayEquals(guest.reference, Files.readAllBytes(dir.resolve("tgt.img")));
        // the target is in use by the source's users now; the source can go
        try {
            daemon.blockdevDel("tgt");
            fail("the pivoted target was deleted under its users");
        } catch (dev.vmm.core.daemon.DaemonException e) {
            assertTrue(e.getMessage().contains("in use"), e.getMessage());
        }
    }

    @Test
    void moveOfTheSourceDuringTheJobTakesTheTargetAndTheJobAlong() throws Exception {
        byte[] initial = image("src", dir.resolve("src.img"), true);
        image("tgt", dir.resolve("tgt.img"), false);
        BlockNode src = new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        BlockNode tgt = new BlockNode("tgt", RawFileDriver.open(dir.resolve("tgt.img"), false, false), main);
        daemon.addNode(src);
        daemon.addNode(tgt);
        Guest guest = new Guest(src, initial);
        MirrorJob job = mirror("job-id", "j2", "device", "src", "target", "tgt", "sync", "full", "speed", 1 << 20,
                "granularity", 65536, "buf-size", 65536);
        Thread.sleep(100);
        job.pause();
        Thread.sleep(50); // a copy in flight at the pause still lands
        long at = job.offset();
        Thread.sleep(300);
        assertEquals(at, job.offset(), "a paused job copies nothing");
        job.resume();
        for (int round = 0; round < 4; round++) {
            String to = round % 2 == 0 ? "iot1" : "main";
            daemon.moveNode("src", to).get(30, TimeUnit.SECONDS);
            assertEquals(to, src.home().id());
            assertEquals(to, tgt.home().id(), "the target follows the source");
            Thread.sleep(100);
        }
        assertEquals(JobStatus.RUNNING, job.status());
        job.setSpeed(0);
        waitFor("BLOCK_JOB_READY");
        daemon.moveNode("tgt", "iot1").get(30, TimeUnit.SECONDS); // asked on the target: the source goes too
        assertEquals("iot1", src.home().id());
        job.complete();
        waitFor("BLOCK_JOB_COMPLETED");
        Thread.sleep(100);
        guest.stop();
        assertEquals(0, guest.errors);
        assertArrayEquals(guest.reference, Files.readAllBytes(dir.resolve("tgt.img")));
    }

    /** Fails every asynchronous read with EIO while {@link #failReads} is set. */
    static final class FailingReads extends ForwardingBlockDriver {
        volatile boolean failReads;

        FailingReads(BlockDriver d) { super(d); }

        @Override
        public void read(long o, long a, int l, IoCompletion c) throws BlockException {
            if (failReads) {
                d.flush(x -> c.ioDone(Errno.EIO));
                return;
            }
            super.read(o, a, l, c);
        }
    }

    @Test
    void sourceReadErrorIsReportedAsReadAndIgnoreRetries() throws Exception {
        image("src", dir.resolve("src.img"), true);
        image("tgt", dir.resolve("tgt.img"), false);
        FailingReads reads = new FailingReads(RawFileDriver.open(dir.resolve("src.img"), false, false));
        BlockNode src = new BlockNode("src", reads, main);
        BlockNode tgt = new BlockNode("tgt", RawFileDriver.open(dir.resolve("tgt.img"), false, false), main);
        daemon.addNode(src);
        daemon.addNode(tgt);
        reads.failReads = true;
        MirrorJob job = mirror("job-id", "j3", "device", "src", "target", "tgt", "sync", "full", "on-source-error", "ignore");
        waitFor("BLOCK_JOB_ERROR");
        assertEquals(Map.of("device", "j3", "operation", "read", "action", "ignore"), dataOf("BLOCK_JOB_ERROR"));
        assertEquals(JobStatus.RUNNING, job.status());
        reads.failReads = false; // ignored chunks stay dirty and are copied once reads work
        waitFor("BLOCK_JOB_READY");
        job.cancel(false);
        waitFor("BLOCK_JOB_COMPLETED");
        assertArrayEquals(Files.readAllBytes(dir.resolve("src.img")), Files.readAllBytes(dir.resolve("tgt.img")));
        reads.failReads = true;
        synchronized (events) {
            events.clear();
            eventData.clear();
        }
        MirrorJob again = mirror("job-id", "j4", "device", "src", "target", "tgt", "sync", "full", "on-source-error", "report");
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals("read", dataOf("BLOCK_JOB_ERROR").get("operation"));
        assertEquals("Input/output error", dataOf("BLOCK_JOB_COMPLETED").get("error"));
        assertTrue(again.error() != null);
    }

    @Test
    void shutdownCancelsARunningJobFirst() throws Exception {
        image("src", dir.resolve("src.img"), true);
        image("tgt", dir.resolve("tgt.img"), false);
        daemon.addNode(new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main));
        daemon.addNode(new BlockNode("tgt", RawFileDriver.open(dir.resolve("tgt.img"), false, false), main));
        MirrorJob job = mirror("job-id", "j5", "device", "src", "target", "tgt", "sync", "full", "speed", 65536);
        long t0 = System.nanoTime();
        assertTrue(daemon.shutdown(false), "every node flushed");
        assertTrue(System.nanoTime() - t0 < 10_000_000_000L, "shutdown took too long");
        assertEquals(JobStatus.NULL, job.status());
        assertTrue(events.contains("BLOCK_JOB_CANCELLED"), events.toString());
    }

    @Test
    void aPauseDuringThePivotReleasesTheHeldGuestRequests() throws Exception {
        image("src", dir.resolve("src.img"), true);
        image("tgt", dir.resolve("tgt.img"), false);
        BlockNode src = new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        dev.vmm.core.testing.HoldingDriver holding = new dev.vmm.core.testing.HoldingDriver(RawFileDriver.open(dir.resolve("tgt.img"), false, false));
        BlockNode tgt = new BlockNode("tgt", holding, main);
        daemon.addNode(src);
        daemon.addNode(tgt);
        MirrorJob job = mirror("job-id", "j6", "device", "src", "target", "tgt", "sync", "full");
        waitFor("BLOCK_JOB_READY");
        Memory buf = NativeBuffers.aligned(65536, 4096);
        CompletableFuture<Integer> first = new CompletableFuture<>();
        main.execute(() -> {
            holding.hold(true);
            try {
                src.io().write(0, NativeBuffers.address(buf), 65536, false, first::complete);
            } catch (BlockException e) {
                first.completeExceptionally(e);
            }
        });
        assertEquals(0, first.get(5, TimeUnit.SECONDS));
        for (int i = 0; i < 250 && holding.heldCount() == 0; i++) Thread.sleep(20); // the copy of the dirty chunk, held
        assertTrue(holding.heldCount() > 0);
        job.complete(); // converges: holds new requests, waits for the held copy
        Thread.sleep(100);
        CompletableFuture<Integer> second = new CompletableFuture<>();
        main.execute(() -> {
            try {
                src.io().write(1 << 20, NativeBuffers.address(buf), 4096, false, second::complete);
            } catch (BlockException e) {
                second.completeExceptionally(e);
            }
        });
        Thread.sleep(200);
        assertTrue(!second.isDone(), "held while the job converges");
        job.pause();
        assertEquals(0, second.get(5, TimeUnit.SECONDS), "a paused job does not keep guest requests waiting");
        assertEquals(JobStatus.STANDBY, job.status());
        main.call(() -> {
            holding.hold(false);
            holding.releaseAllReversed();
            return null;
        });
        job.resume();
        waitFor("BLOCK_JOB_COMPLETED");
        assertSame(tgt.io(), main.call(() -> src.io().current()));
        assertArrayEquals(Files.readAllBytes(dir.resolve("src.img")), Files.readAllBytes(dir.resolve("tgt.img")));
    }
}
