package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.Options;
import dev.vmm.core.testing.HoldingDriver;
import dev.vmm.core.testing.NativeBuffers;
import dev.vmm.iothread.IOThread;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Review findings on the mirror job, shown as failing tests. */
class MirrorReviewTest {
    static final int SIZE = 4 << 20;

    @TempDir
    Path dir;
    Daemon daemon;
    IOThread main;
    final List<String> events = Collections.synchronizedList(new ArrayList<>());

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        main = daemon.mainLoop();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    private MirrorJob mirror(Object... kv) throws Exception {
        Map<String, Object> args = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) args.put((String) kv[i], kv[i + 1]);
        return daemon.blockdevMirror(Options.of("blockdev-mirror", args),
                (e, d) -> events.add(e.equals(Job.JOB_STATUS_CHANGE) ? (String) d.get("status") : e));
    }

    /**
     * MirrorJob.stop() returns early in Phase.STARTING ("the start's whenIdle sees STOPPING"),
     * but the whenIdle callback in startOnHome returns as soon as the phase is not STARTING,
     * without calling end(): a forced cancel while the source still has requests in flight at the
     * job's start leaves the job running forever, and source and target tied.
     */
    @Test
    void aForcedCancelWhileTheJobWaitsForTheSourceToBeIdleEndsTheJob() throws Exception {
        Files.write(dir.resolve("src.img"), new byte[SIZE]);
        Files.write(dir.resolve("tgt.img"), new byte[SIZE]);
        HoldingDriver holding = new HoldingDriver(RawFileDriver.open(dir.resolve("src.img"), false, false));
        BlockNode src = new BlockNode("src", holding, main);
        BlockNode tgt = new BlockNode("tgt", RawFileDriver.open(dir.resolve("tgt.img"), false, false), main);
        daemon.addNode(src);
        daemon.addNode(tgt);
        Memory buf = NativeBuffers.aligned(4096, 4096);
        CompletableFuture<Integer> guestWrite = new CompletableFuture<>();
        main.call(() -> {
            holding.hold(true);
            src.io().write(0, NativeBuffers.address(buf), 4096, false, guestWrite::complete);
            return null;
        });
        for (int i = 0; i < 250 && holding.heldCount() == 0; i++) Thread.sleep(20);
        assertEquals(1, holding.heldCount(), "a guest write in flight below the node");

        CompletableFuture<MirrorJob> started = CompletableFuture.supplyAsync(() -> {
            try {
                return mirror("job-id", "jr", "device", "src", "target", "tgt", "sync", "full");
            } catch (Exception e) {
                throw new CompletionException(e);
            }
        });
        Job job = null;
        for (int i = 0; i < 250; i++) {
            job = daemon.jobs().find("jr");
            if (job != null && job.status() == JobStatus.RUNNING) break;
            Thread.sleep(20);
        }
        assertNotNull(job, "the job is registered while it waits for the source to be idle");
        job.cancel(true); // job-cancel from another monitor, or shutdown
        Thread.sleep(200);
        main.call(() -> {
            holding.hold(false);
            holding.releaseAllReversed();
            return null;
        });
        assertEquals(0, guestWrite.get(5, TimeUnit.SECONDS));
        started.get(10, TimeUnit.SECONDS);
        for (int i = 0; i < 250 && job.status() != JobStatus.NULL; i++) Thread.sleep(20);
        assertEquals(JobStatus.NULL, job.status(), "the cancelled job never ended; events: " + events);
        assertTrue(src.jobLinks().isEmpty(), "source and target are still tied");
    }
    /**
     * Job.cancel() clears userPaused but leaves the status PAUSED/STANDBY, and Job.finished()
     * calls abort() first, which tries PAUSED -> ABORTING: not a transition of job.c's table, so
     * transition() throws IllegalStateException on the IOThread from MirrorJob.end(). The job
     * stays "paused" forever (no BLOCK_JOB_CANCELLED, never concluded, its id taken).
     */
    @Test
    void aForcedCancelOfAPausedJobEndsTheJob() throws Exception {
        Files.write(dir.resolve("src.img"), new byte[SIZE]);
        Files.write(dir.resolve("tgt.img"), new byte[SIZE]);
        daemon.addNode(new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main));
        daemon.addNode(new BlockNode("tgt", RawFileDriver.open(dir.resolve("tgt.img"), false, false), main));
        MirrorJob job = mirror("job-id", "jp", "device", "src", "target", "tgt", "sync", "full", "speed", 65536);
        Thread.sleep(100);
        job.pause();
        Thread.sleep(100);
        assertEquals(JobStatus.PAUSED, job.status());
        job.cancel(true); // job-cancel of a paused job
        for (int i = 0; i < 250 && job.status() != JobStatus.NULL; i++) Thread.sleep(20);
        assertEquals(JobStatus.NULL, job.status(), "the cancelled paused job never ended; events: " + events);
        assertTrue(events.contains("BLOCK_JOB_CANCELLED"), events.toString());
    }
    /**
     * MirrorJob.check() reaches the end of the first pass while the job is paused (the copies in
     * flight at the pause complete): readyReached is set and Job.ready() emits BLOCK_JOB_READY but
     * does not leave PAUSED. After job-resume the job is RUNNING, and check() never calls ready()
     * again: the job can never be completed (job-complete needs READY) nor cancelled in sync.
     */
    @Test
    void aPauseWhileTheFirstPassEndsStillLetsTheJobBecomeReady() throws Exception {
        byte[] data = new byte[SIZE];
        new java.util.Random(1).nextBytes(data);
        Files.write(dir.resolve("src.img"), data);
        Files.write(dir.resolve("tgt.img"), new byte[SIZE]);
        HoldingDriver holding = new HoldingDriver(RawFileDriver.open(dir.resolve("tgt.img"), false, false));
        daemon.addNode(new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main));
        daemon.addNode(new BlockNode("tgt", holding, main));
        main.call(() -> {
            holding.hold(true);
            return null;
        });
        MirrorJob job = mirror("job-id", "jq", "device", "src", "target", "tgt", "sync", "full", "buf-size", 16 << 20);
        for (int i = 0; i < 250 && holding.heldCount() < 4; i++) Thread.sleep(20);
        assertEquals(4, holding.heldCount(), "the whole first pass in flight (4 copies of 1 MiB)");
        job.pause();
        Thread.sleep(100);
        main.call(() -> {
            holding.hold(false);
            holding.releaseAllReversed();
            return null;
        });
        Thread.sleep(200);
        job.resume();
        for (int i = 0; i < 250 && job.status() != JobStatus.READY; i++) Thread.sleep(20);
        assertEquals(JobStatus.READY, job.status(), "events: " + events);
    }
    /**
     * ImagePermissions knows exports and child edges only: a mirror's target takes no image lock
     * (QEMU's mirror takes "write" on it and unshares "consistent read"), so another process can
     * open the target for writing during the job (and after the pivot, while the source's users
     * write it).
     */
    @Test
    @org.junit.jupiter.api.Disabled("known gap, docs/jobs.md: image locks do not see mirror jobs yet; this reproduces it")
    void theMirrorTargetIsLockedForWriting() throws Exception {
        Files.write(dir.resolve("src.img"), new byte[SIZE]);
        Files.write(dir.resolve("tgt.img"), new byte[SIZE]);
        for (String n : new String[] {"src", "tgt"}) {
            Map<String, Object> a = new LinkedHashMap<>();
            a.put("driver", "file");
            a.put("node-name", n);
            a.put("filename", dir.resolve(n + ".img").toString());
            daemon.blockdevAdd(Options.of("blockdev-add", a));
        }
        MirrorJob job = mirror("job-id", "jl", "device", "src", "target", "tgt", "sync", "full", "speed", 65536);
        RawFileDriver t = (RawFileDriver) daemon.node("tgt").driver();
        assertNotNull(t.imageLock());
        assertTrue(t.imageLock().enabled(), "OFD locks available");
        assertTrue((t.imageLock().perm() & dev.vmm.core.block.ImageLock.BLK_PERM_WRITE) != 0,
                "target perm " + t.imageLock().perm() + " shared " + t.imageLock().shared() + " while job " + job.status());
    }
}
