package dev.vmm.core.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
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
import dev.vmm.core.job.BackupJob;
import dev.vmm.core.job.Job;
import dev.vmm.core.job.JobStatus;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.core.options.Options;
import dev.vmm.iothread.IOThread;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayDeque;
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
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Bitmap commands while a backup job runs on the node (review of issue 13): a command's drained
 * section does not wait for the whole backup; the job's anonymous successor cannot be reached by
 * the name ""; a disabled sync bitmap gets a disabled successor (QEMU's
 * bdrv_dirty_bitmap_create_successor), so it records nothing during the job.
 */
@Timeout(120)
class BitmapsDuringBackupTest {
    static final int K64 = 64 << 10;

    @TempDir
    Path dir;
    Daemon daemon;
    IOThread main;
    final List<String> events = Collections.synchronizedList(new ArrayList<>());
    BlockNode source;
    int size;

    @BeforeEach
    void start() {
        daemon = Daemon.start();
        main = daemon.mainLoop();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    /** A target whose write completions arrive {@code delayMs} late (a slow backup target). */
    static final class Slow extends ForwardingBlockDriver {
        final IOThread home;
        final long delayMs;
        int late;
        final ArrayDeque<Runnable> idle = new ArrayDeque<>();

        Slow(BlockDriver d, IOThread home, long delayMs) {
            super(d);
            this.home = home;
            this.delayMs = delayMs;
        }

        private IoCompletion delayed(IoCompletion c) {
            if (delayMs == 0) return c;
            return e -> {
                late++;
                home.loop().schedule(() -> {
                    late--;
                    c.ioDone(e);
                    if (late == 0 && d.inFlight() == 0) while (!idle.isEmpty()) idle.poll().run();
                }, delayMs, TimeUnit.MILLISECONDS);
            };
        }

        @Override
        public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
            d.write(o, a, l, fua, delayed(c));
        }

        @Override
        public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
            d.writeZeroes(o, l, u, f, fua, delayed(c));
        }

        @Override public int inFlight() { return d.inFlight() + late; }

        @Override
        public void whenIdle(Runnable r) {
            if (late > 0) idle.add(r);
            else d.whenIdle(r);
        }
    }

    private void nodes(int bytes, long targetDelayMs) throws Exception {
        size = bytes;
        byte[] src = new byte[bytes];
        new Random(5).nextBytes(src);
        Files.write(dir.resolve("src.img"), src);
        Files.write(dir.resolve("tgt.img"), new byte[bytes]);
        source = new BlockNode("src", RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        daemon.addNode(source);
        daemon.addNode(new BlockNode("tgt", new Slow(RawFileDriver.open(dir.resolve("tgt.img"), false, false), main, targetDelayMs), main));
    }

    private static Map<String, Object> map(Object... kv) {
        Map<String, Object> args = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) args.put((String) kv[i], kv[i + 1]);
        return args;
    }

    private BackupJob backup(Object... kv) throws Exception {
        return daemon.blockdevBackup(Options.of("blockdev-backup", map(kv)), (e, d) -> {
            events.add(e.equals(Job.JOB_STATUS_CHANGE) ? (String) d.get("status") : e);
        });
    }

    /** One bitmap command, as QMP runs it (a transaction of one action). */
    private void command(String type, TransactionAction.Kind kind, Object... kv) throws Exception {
        TransactionCommand.run(daemon, null, List.of(new TransactionCommand.Step(type, kind, Options.of(type, map(kv)))), false);
    }

    private void waitFor(String event) throws Exception {
        for (int i = 0; i < 1500; i++) {
            if (events.contains(event)) return;
            Thread.sleep(20);
        }
        fail("no " + event + "; events: " + events);
    }

    /** A guest write through the node's io (marks its recording bitmaps), waited for. */
    private void guestWrite(long offset, int length) throws Exception {
        long buf = RawMemory.allocate(length);
        try {
            RawMemory.fill(buf, length, 0x5a);
            CompletableFuture<Integer> done = new CompletableFuture<>();
            main.execute(() -> {
                try {
                    source.io().write(offset, buf, length, false, done::complete);
                } catch (BlockException e) {
                    done.complete(e.errno());
                }
            });
            assertEquals(0, done.get(30, TimeUnit.SECONDS));
        } finally {
            RawMemory.free(buf);
        }
    }

    private boolean dirty(DirtyBitmap b, long offset) throws Exception {
        return main.call(() -> b.get(offset));
    }

    @Test
    void aBitmapCommandDuringABackupDoesNotWaitForTheWholeJob() throws Exception {
        // 32 one-MiB copies, four at a time, each 400 ms on the target: about 3.2 s of backup
        nodes(32 << 20, 400);
        BackupJob job = backup("job-id", "f0", "device", "src", "target", "tgt", "sync", "full");
        Thread.sleep(200);
        long t0 = System.nanoTime();
        command("block-dirty-bitmap-add", BitmapCommands::add, "node", "src", "name", "b1");
        long ms = (System.nanoTime() - t0) / 1_000_000;
        JobStatus during = job.status();
        waitFor("BLOCK_JOB_COMPLETED");
        assertEquals(JobStatus.RUNNING, during, "the add returned only after the backup's copies were all done (" + ms + " ms)");
        assertTrue(ms < 1500, "the add (and every guest request meanwhile) waited " + ms + " ms for the backup's copies");
    }

    @Test
    void theSuccessorHasNoNameAQmpCommandCanReach() throws Exception {
        nodes(8 << 20, 0);
        DirtyBitmap b0 = new DirtyBitmap("b0", size, K64);
        b0.set(0, 2 << 20);
        source.addDirtyBitmap(b0);
        BackupJob job = backup("job-id", "i0", "device", "src", "target", "tgt", "sync", "incremental", "bitmap", "b0", "speed", K64);
        guestWrite(6 << 20, 4096); // after the instant: recorded in the successor, for the next incremental backup
        Exception refused = null;
        try {
            command("block-dirty-bitmap-clear", BitmapCommands::clear, "node", "src", "name", "");
        } catch (Exception e) {
            refused = e;
        }
        job.setSpeed(0);
        waitFor("BLOCK_JOB_COMPLETED");
        assertTrue(dirty(b0, 6 << 20), "a write made during the backup is missing from the bitmap of the next incremental backup");
        assertNotNull(refused, "block-dirty-bitmap-clear name='' cleared the backup's successor");
        assertEquals("Dirty bitmap '' not found", refused.getMessage());
    }

    @Test
    void aDisabledSyncBitmapRecordsNothingDuringTheJob() throws Exception {
        nodes(8 << 20, 0);
        DirtyBitmap b0 = new DirtyBitmap("b0", size, K64);
        b0.set(0, 2 << 20);
        b0.setRecording(false);
        source.addDirtyBitmap(b0);
        BackupJob job = backup("job-id", "d0", "device", "src", "target", "tgt", "sync", "incremental", "bitmap", "b0", "speed", K64);
        guestWrite(6 << 20, 4096);
        job.setSpeed(0);
        waitFor("BLOCK_JOB_COMPLETED");
        // QEMU: the successor is disabled as its parent was; on success it takes the bitmap's place, empty
        assertFalse(dirty(b0, 6 << 20), "a disabled bitmap recorded a write made during the backup");
        assertFalse(b0.recording());
        assertEquals(0, b0.count());
    }
}
