package dev.vmm.core.job;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.Options;
import dev.vmm.core.testing.Tools;
import dev.vmm.iothread.IOThread;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
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
 * docs/backup.md's fleecing flow (a qcow2 overlay whose backing is the live disk, a sync=none
 * backup into it): a read of the overlay that goes to the backing disk and is still in flight
 * when the guest overwrites that cluster must still return the point-in-time data. QEMU makes
 * the copy-before-write's writes into the overlay serialising against such reads (commit
 * "block/backup: fix fleecing scheme: use serialized writes"). Here the backing read is issued
 * late (a slow disk, a reordering I/O engine), after the guest write the copy let through.
 */
@Timeout(60)
class FleecingOverlayReadTest {
    static final int SIZE = 4 << 20;
    static final int READ = 12288;

    @TempDir
    Path dir;
    Daemon daemon;
    IOThread main;

    @BeforeEach
    void start() {
        daemon = Daemon.start();
        main = daemon.mainLoop();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    /** Issues reads of {@link #slowLength} bytes 500 ms late. */
    static final class SlowReads extends ForwardingBlockDriver {
        final IOThread home;
        volatile long slowLength = -1;
        volatile int delayed;
        int late;

        SlowReads(BlockDriver d, IOThread home) {
            super(d);
            this.home = home;
        }

        private boolean later(long length, Runnable issue) {
            if (length != slowLength) return false;
            delayed++;
            late++;
            home.loop().schedule(() -> {
                late--;
                issue.run();
            }, 500, TimeUnit.MILLISECONDS);
            return true;
        }

        @Override
        public void read(long o, long a, int l, IoCompletion c) throws BlockException {
            if (later(l, () -> {
                try {
                    d.read(o, a, l, c);
                } catch (BlockException e) {
                    c.ioDone(e.errno());
                }
            })) return;
            d.read(o, a, l, c);
        }

        @Override
        public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException {
            if (later(t, () -> {
                try {
                    d.readv(o, iov, n, t, c);
                } catch (BlockException e) {
                    c.ioDone(e.errno());
                }
            })) return;
            d.readv(o, iov, n, t, c);
        }

        @Override public int inFlight() { return d.inFlight() + late; }
    }

    @Test
    void anOverlayReadOfTheBackingInFlightDuringAGuestWriteSeesThePointInTime() throws Exception {
        Tools.require("qemu-img", "qemu-utils");
        byte[] src = new byte[SIZE];
        new Random(11).nextBytes(src);
        Files.write(dir.resolve("src.img"), src);
        SlowReads slow = new SlowReads(RawFileDriver.open(dir.resolve("src.img"), false, false), main);
        BlockNode source = new BlockNode("src", slow, main);
        daemon.addNode(source);
        Path fleece = dir.resolve("fleece.qcow2");
        Process p = new ProcessBuilder("qemu-img", "create", "-q", "-f", "qcow2", fleece.toString(), Integer.toString(SIZE))
                .inheritIO().start();
        assertEquals(0, p.waitFor());
        BlockNode overlay = daemon.blockdevAdd(KeyValueParser.parse("--blockdev",
                "driver=qcow2,node-name=fleece,file.driver=file,file.filename=" + fleece + ",backing=src", null));
        Map<String, Object> args = new LinkedHashMap<>();
        args.put("job-id", "fl");
        args.put("device", "src");
        args.put("target", "fleece");
        args.put("sync", "none");
        daemon.blockdevBackup(Options.of("blockdev-backup", args), (e, d) -> { });

        long base = RawMemory.allocate(2 * 4096 + READ + 4096);
        long readBuf = (base + 4095) & -4096L;
        long writeBuf = readBuf + READ;
        try {
            RawMemory.fill(writeBuf, 4096, 0x5a);
            RawMemory.fill(readBuf, READ, 0);
            slow.slowLength = READ;
            CompletableFuture<Integer> read = new CompletableFuture<>();
            CompletableFuture<Integer> write = new CompletableFuture<>();
            main.execute(() -> {
                try {
                    overlay.io().read(0, readBuf, READ, read::complete); // the backup program reads the view...
                } catch (BlockException e) {
                    read.complete(e.errno());
                }
                try {
                    source.io().write(0, writeBuf, 4096, false, write::complete); // ...while the guest overwrites it
                } catch (BlockException e) {
                    write.complete(e.errno());
                }
            });
            assertEquals(0, write.get(30, TimeUnit.SECONDS));
            assertEquals(0, read.get(30, TimeUnit.SECONDS));
            assertEquals(1, slow.delayed, "the overlay's read of its backing was not the delayed one");
            byte[] got = new byte[READ];
            for (int i = 0; i < READ; i++) got[i] = (byte) RawMemory.getByte(readBuf + i);
            assertArrayEquals(Arrays.copyOf(src, READ), got, "the fleecing view showed the guest's write made after its instant");
        } finally {
            RawMemory.free(base);
        }
    }
}
