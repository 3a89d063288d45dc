package dev.vmm.core.block;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

import dev.vmm.iothread.IOThread;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code discard=ignore} answers a discard without I/O; the answer must still obey the
 * {@link IoCompletion} contract: never from inside the submitting call (virtio-blk's QueueWorker
 * marks a request submitted only after the call returns, and drops an earlier completion as a
 * "second completion": the guest's DISCARD was never answered), and counted in flight until
 * delivered (a move must not drain past it and have it delivered on the old home).
 */
class IgnoredDiscardCompletionTest {
    @TempDir
    Path dir;
    IOThread home;

    @BeforeEach
    void start() {
        home = IOThread.start("t-home");
    }

    @AfterEach
    void stop() {
        home.shutdown(5000);
    }

    RawFileDriver file() throws Exception {
        Path p = dir.resolve("a.img");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        return RawFileDriver.open(p, false, false);
    }

    void check(BlockDriver d) throws Exception {
        new BlockNode("n", "x", d, home, List.of()); // attaches the driver to its home
        CompletableFuture<Integer> done = new CompletableFuture<>();
        boolean[] insideCall = new boolean[1];
        int[] inFlightAfter = new int[1];
        CompletableFuture<Void> idle = new CompletableFuture<>();
        home.call(() -> {
            boolean[] inCall = {true};
            d.discard(0, 4096, errno -> {
                insideCall[0] = inCall[0];
                done.complete(errno);
            });
            inCall[0] = false;
            inFlightAfter[0] = d.inFlight();
            d.whenIdle(() -> idle.complete(null));
            return null;
        });
        assertEquals(0, done.get(5, TimeUnit.SECONDS));
        idle.get(5, TimeUnit.SECONDS);
        assertFalse(insideCall[0], "completion ran inside the submitting call");
        assertEquals(1, inFlightAfter[0], "an accepted discard counts as in flight until its completion ran");
        d.close();
    }

    @Test
    void rawNodeWithDiscardIgnore() throws Exception {
        RawFileDriver f = file();
        new BlockNode("f", f, home); // the child is a node of its own, attached to the same home
        try {
            check(new RawFormatDriver(f, 0, -1, false, false));
        } finally {
            home.call(() -> {
                f.close();
                return null;
            });
        }
    }

    @Test
    void formatNodeWithDiscardIgnore() throws Exception {
        check(new NoDiscardDriver(file()));
    }
}
