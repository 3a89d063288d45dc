package dev.vmm.core.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.core.options.Options;
import dev.vmm.iothread.IOThread;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A transaction naming a node and its child (bitmaps on a qcow2 node and on its file node) while
 * a write is in flight on the parent that still has to issue a request to the child (as qcow2 does:
 * an L2 read, then the data write): the child's hold must not keep that request, or the parent
 * never drains and the transaction fails after 30 s with the guest's I/O held meanwhile. QEMU
 * drains the subtree with its parents' requests still allowed to reach the children.
 */
@Timeout(90)
class TransactionParentChildTest {
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

    /** A parent's driver that sends each write to its child 300 ms after accepting it. */
    static final class Relay extends ForwardingBlockDriver {
        final BlockDriver child;
        final IOThread home;
        int late;
        final ArrayDeque<Runnable> idle = new ArrayDeque<>();

        Relay(BlockDriver own, BlockDriver child, IOThread home) {
            super(own);
            this.child = child;
            this.home = home;
        }

        private void done(IoCompletion c, int e) {
            late--;
            c.ioDone(e);
            if (late == 0) while (!idle.isEmpty()) idle.poll().run();
        }

        @Override
        public void write(long o, long a, int l, boolean fua, IoCompletion c) {
            late++;
            home.loop().schedule(() -> {
                try {
                    child.write(o, a, l, fua, e -> done(c, e));
                } catch (BlockException e) {
                    done(c, e.errno());
                }
            }, 300, TimeUnit.MILLISECONDS);
        }

        @Override public int inFlight() { return d.inFlight() + late; }

        @Override
        public void whenIdle(Runnable r) {
            if (late > 0) idle.add(r);
            else d.whenIdle(r);
        }
    }

    private static Map<String, Object> map(Object... kv) {
        Map<String, Object> args = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) args.put((String) kv[i], kv[i + 1]);
        return args;
    }

    @Test
    void aTransactionOverAParentAndItsChildDrainsWhileAParentWriteIsInFlight() throws Exception {
        Files.write(dir.resolve("bot.img"), new byte[1 << 20]);
        Files.write(dir.resolve("top.img"), new byte[1 << 20]);
        BlockNode bottom = new BlockNode("bot", RawFileDriver.open(dir.resolve("bot.img"), false, false), main);
        daemon.addNode(bottom);
        Relay relay = new Relay(RawFileDriver.open(dir.resolve("top.img"), false, false), bottom.io(), main);
        BlockNode top = new BlockNode("top", "raw", relay, main, List.of(new BlockNode.Child(BlockNode.FILE, bottom, false)));
        daemon.addNode(top);
        long buf = RawMemory.allocate(4096);
        try {
            RawMemory.fill(buf, 4096, 7);
            CompletableFuture<Integer> write = new CompletableFuture<>();
            main.execute(() -> {
                try {
                    top.io().write(0, buf, 4096, false, write::complete);
                } catch (BlockException e) {
                    write.complete(e.errno());
                }
            });
            Thread.sleep(50);
            long t0 = System.nanoTime();
            Exception failed = null;
            try {
                TransactionCommand.run(daemon, null, List.of(
                        new TransactionCommand.Step("block-dirty-bitmap-add", BitmapCommands::add,
                                Options.of("a", map("node", "top", "name", "t"))),
                        new TransactionCommand.Step("block-dirty-bitmap-add", BitmapCommands::add,
                                Options.of("b", map("node", "bot", "name", "b")))), false);
            } catch (Exception e) {
                failed = e;
            }
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertEquals(0, write.get(40, TimeUnit.SECONDS));
            assertEquals(null, failed == null ? null : failed.getMessage(), "the transaction failed after " + ms + " ms");
            assertNotNull(top.dirtyBitmap("t"));
            assertNotNull(bottom.dirtyBitmap("b"));
        } finally {
            RawMemory.free(buf);
        }
    }
}
