package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.options.Options;
import dev.vmm.core.qmp.QmpCommands;
import dev.vmm.core.qmp.QmpServer;
import dev.vmm.core.qmp.TransactionAction;
import dev.vmm.iothread.IOThread;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The backup job in one process: the sync bitmap's end state for each bitmap mode (QEMU's
 * backup_cleanup_sync_bitmap: abdicate on success with on-success, reclaim otherwise, "always"
 * keeps what was not copied), with a target that fails writes past an offset, and the
 * {@code transaction} action kind {@code blockdev-backup} (prepare changes nothing; abort drops
 * the job; commit starts it).
 */
class BackupJobTest {
    static final int SIZE = 4 << 20;
    static final int K64 = 64 << 10;

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
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    /** Fails every asynchronous write at or past {@link #from} with EIO. */
    static final class FailPast extends ForwardingBlockDriver {
        volatile long from = Long.MAX_VALUE;

        FailPast(BlockDriver d) { super(d); }

        @Override
        public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
            if (o + l > from) {
                d.flush(x -> c.ioDone(Errno.EIO));
                return;
            }
            super.write(o, a, l, fua, c);
        }

        @Override
        public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
            if (o + l > from) {
                d.flush(x -> c.ioDone(Errno.EIO));
                return;
            }
            super.writeZeroes(o, l, u, f, fua, c);
        }
    }

    private byte[] src;
    private BlockNode source;
    private FailPast target;
    private DirtyBitmap bitmap;

    /** src (random), tgt (zeros, failing past {@code failFrom}), bitmap b0 over [0, 64k) and [1 MiB, 1 MiB + 128k). */
    private void nodes(long failFrom) throws Exception {
        src = new byte[SIZE];
        new Random(3).nextBytes(src);
        Files.write(dir.resolve("src.img"), src);
        Files.write(dir.resolve("tgt.img"), new byte[SIZE]);
        source = new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        target = new FailPast(RawFileDriver.open(dir.resolve("tgt.img"), false, false));
        target.from = failFrom;
        daemon.addNode(source);
        daemon.addNode(new BlockNode("tgt", target, main));
        bitmap = new DirtyBitmap("b0", SIZE, K64);
        bitmap.set(0, K64);
        bitmap.set(1 << 20, 2 * K64);
        source.addDirtyBitmap(bitmap);
    }

    private BackupJob backup(Object... kv) throws Exception {
        return daemon.blockdevBackup(Options.of("blockdev-backup", map(kv)), this::event);
    }

    private static Map<String, Object> map(Object... kv) {
        Map<String, Object> args = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) args.put((String) kv[i], kv[i + 1]);
        return args;
    }

    private void event(String e, Map<String, Object> d) {
        synchronized (events) {
            events.add(e.equals(Job.JOB_STATUS_CHANGE) ? (String) d.get("status") : e);
            eventData.add(d);
        }
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

    /** The bitmap's dirty ranges as {offset, length} pairs (read on the home thread). */
    private List<List<Long>> ranges(DirtyBitmap b) throws Exception {
        return main.call(() -> {
            List<List<Long>> out = new ArrayList<>();
            for (long off = b.nextDirty(0, SIZE); off >= 0; ) {
                long clean = b.nextClean(off, SIZE);
                long end = clean < 0 ? SIZE : clean;
                out.add(List.of(off, end - off));
                off = clean < 0 ? -1 : b.nextDirty(end, SIZE);
            }
            return out;
        });
    }

    @Test
    void onSuccessLeavesOnlyTheWritesMadeDuringTheJob() throws Exception {
        nodes(Long.MAX_VALUE);
        backup("job-id", "i0", "device", "src", "target", "tgt", "sync", "incremental", "bitmap", "b0", "speed", K64);
        assertTrue(bitmap.busy(), "the sync bitmap is busy during the job");
        assertTrue(bitmap.recording(), "QEMU shows a frozen bitmap recording (into its successor)");
        DirtyBitmap successor = source.dirtyBitmaps().get(0);
        assertNotSameBitmap(successor);
        // a write during the job, as the node's write marking records it (into the recording successor)
        main.call(() -> {
            successor.set(2 << 20, 4096);
            bitmap.set(2 << 20, 4096); // the node's marking marks every recording bitmap
            return null;
        });
        waitFor("BLOCK_JOB_COMPLETED");
        assertNull(dataOf("BLOCK_JOB_COMPLETED").get("error"));
        assertEquals(List.of(List.of((long) (2 << 20), (long) K64)), ranges(bitmap));
        assertFalse(bitmap.busy());
        assertTrue(bitmap.recording());
        assertEquals(List.of(bitmap), source.dirtyBitmaps(), "the successor is gone");
        byte[] tgt = Files.readAllBytes(dir.resolve("tgt.img"));
        byte[] want = new byte[SIZE];
        System.arraycopy(src, 0, want, 0, K64);
        System.arraycopy(src, 1 << 20, want, 1 << 20, 2 * K64);
        assertArrayEquals(want, tgt, "only the bitmap's clusters are copied");
    }

    private void assertNotSameBitmap(DirtyBitmap successor) {
        assertTrue(successor != bitmap && successor.name().isEmpty(), "an anonymous successor records during the job");
    }

    @Test
    void aFailedIncrementalBackupLosesNoBit() throws Exception {
        nodes(1 << 20); // the cluster at 0 is copied, the ones at 1 MiB fail
        backup("job-id", "i1", "device", "src", "target", "tgt", "sync", "incremental", "bitmap", "b0", "on-target-error", "report");
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals("Input/output error", dataOf("BLOCK_JOB_COMPLETED").get("error"));
        assertEquals(List.of(List.of(0L, (long) K64), List.of((long) (1 << 20), (long) (2 * K64))), ranges(bitmap));
        assertFalse(bitmap.busy());
        assertEquals(1, source.dirtyBitmaps().size());
        assertSame(source.driver(), main.call(() -> source.io().current()), "the layer is gone");
    }

    @Test
    void alwaysKeepsWhatWasNotCopiedAfterAFailure() throws Exception {
        nodes(1 << 20);
        backup("job-id", "a0", "device", "src", "target", "tgt", "sync", "bitmap", "bitmap", "b0", "bitmap-mode", "always",
                "on-target-error", "report");
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals("Input/output error", dataOf("BLOCK_JOB_COMPLETED").get("error"));
        assertEquals(List.of(List.of((long) (1 << 20), (long) (2 * K64))), ranges(bitmap), "the copied cluster is cleared");
    }

    @Test
    void neverLeavesTheBitmapAsItWas() throws Exception {
        nodes(Long.MAX_VALUE);
        backup("job-id", "n0", "device", "src", "target", "tgt", "sync", "bitmap", "bitmap", "b0", "bitmap-mode", "never");
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals(List.of(List.of(0L, (long) K64), List.of((long) (1 << 20), (long) (2 * K64))), ranges(bitmap));
        assertEquals(List.of("created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"), events);
    }

    @Test
    void aBusyBitmapIsRefused() throws Exception {
        nodes(Long.MAX_VALUE);
        backup("job-id", "s0", "device", "src", "target", "tgt", "sync", "none");
        Files.write(dir.resolve("t2.img"), new byte[SIZE]);
        daemon.addNode(new BlockNode("t2", RawFileDriver.open(dir.resolve("t2.img"), false, false), main));
        bitmap.setBusy(true);
        try {
            backup("job-id", "s1", "device", "src", "target", "t2", "sync", "bitmap", "bitmap", "b0", "bitmap-mode", "never");
            fail("a busy bitmap was used");
        } catch (dev.vmm.core.daemon.DaemonException e) {
            assertEquals("Bitmap 'b0' is currently in use by another operation and cannot be used", e.getMessage());
        }
        bitmap.setBusy(false);
        try {
            backup("job-id", "s2", "device", "src", "target", "t2", "sync", "full");
            fail("a second job on the source");
        } catch (dev.vmm.core.daemon.DaemonException e) {
            assertEquals("Node 'src' is busy: block device is in use by block job: backup", e.getMessage());
        }
        try {
            daemon.blockdevDel("tgt");
            fail("the target of a running backup was deleted");
        } catch (dev.vmm.core.daemon.DaemonException e) {
            assertEquals("Node 'tgt' is busy: block device is in use by block job: backup", e.getMessage());
        }
        daemon.jobs().get("s0").cancel(false);
        waitFor("BLOCK_JOB_CANCELLED");
        for (int i = 0; i < 100 && !source.jobLinks().isEmpty(); i++) Thread.sleep(20);
        daemon.blockdevDel("tgt"); // free again
    }

    @Test
    void aTargetOnAnotherIOThreadMovesToTheSourceAndPauseStopsTheCopies() throws Exception {
        IOThread iot1 = daemon.addIOThread("iot1");
        src = new byte[SIZE];
        new Random(4).nextBytes(src);
        Files.write(dir.resolve("src.img"), src);
        Files.write(dir.resolve("tgt.img"), new byte[SIZE]);
        source = new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        daemon.addNode(source);
        BlockNode tgt = new BlockNode("tgt", RawFileDriver.open(dir.resolve("tgt.img"), false, false), iot1);
        daemon.addNode(tgt);
        BackupJob job = backup("job-id", "p0", "device", "src", "target", "tgt", "sync", "full", "speed", 1 << 20);
        assertSame(main, tgt.home(), "the target moved to the source's IOThread");
        job.pause();
        Thread.sleep(300); // copies in flight end
        long at = job.offset();
        Thread.sleep(700);
        assertEquals(at, job.offset(), "no copy while paused");
        assertEquals(true, job.blockJobInfo().get("paused"));
        job.setSpeed(0);
        job.resume();
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals(List.of("created", "running", "paused", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"),
                events);
        assertArrayEquals(src, Files.readAllBytes(dir.resolve("tgt.img")));
        assertTrue(source.jobLinks().isEmpty());
    }

    @Test
    void transactionKindPreparesAbortsAndCommits() throws Exception {
        nodes(Long.MAX_VALUE);
        QmpCommands commands = new QmpCommands();
        dev.vmm.core.qmp.JobCommands.register(commands, daemon);
        TransactionAction.Registered kind = TransactionAction.KINDS.get("blockdev-backup");
        assertNotNull(kind, "the kind is registered");
        QmpServer server = new QmpServer(main, commands, new QmpServer.Version(7, 2, 0, ""));
        Options data = Options.of("blockdev-backup", map("job-id", "t0", "device", "src", "target", "tgt", "sync", "full"));
        TransactionAction a = kind.kind().prepare(data, daemon, server);
        assertNull(daemon.jobs().find("t0"), "prepare starts nothing");
        assertSame(source.driver(), main.call(() -> source.io().current()));
        a.abort();
        a.clean();
        assertNull(daemon.jobs().find("t0"));
        TransactionAction b = kind.kind().prepare(Options.of("blockdev-backup",
                map("job-id", "t0", "device", "src", "target", "tgt", "sync", "full")), daemon, server);
        b.commit();
        b.clean();
        for (int i = 0; i < 500 && daemon.jobs().find("t0") != null; i++) Thread.sleep(20);
        assertNull(daemon.jobs().find("t0"), "the committed job ran and was dismissed");
        assertTrue(Arrays.equals(src, Files.readAllBytes(dir.resolve("tgt.img"))), "the committed backup copied the source");
        try {
            kind.kind().prepare(Options.of("blockdev-backup", map("job-id", "t1", "device", "src", "target", "src", "sync", "full")), daemon,
                    server);
            fail("same node accepted");
        } catch (dev.vmm.core.daemon.DaemonException e) {
            assertEquals("Source and target cannot be the same", e.getMessage());
        }
    }
}
