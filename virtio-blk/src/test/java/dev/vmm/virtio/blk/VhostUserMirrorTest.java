package dev.vmm.virtio.blk;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.Options;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * A guest's writes through a vhost-user-blk device are tracked by a mirror job: a front-end
 * writes random blocks to disk0 (keeping a reference of what the device acknowledged) while disk0
 * is mirrored to disk1; after BLOCK_JOB_READY, job-complete pivots and the writes go on, now into
 * disk1; disk1's image must then equal the reference.
 */
@Timeout(120)
class VhostUserMirrorTest {
    static final long SIZE = VhostUserBlkDeviceTest.SIZE;

    @TempDir Path tmp;
    Daemon daemon;
    VirtioBlkFrontend fe;

    @AfterEach
    void stop() {
        if (fe != null) fe.abort();
        if (daemon != null) daemon.shutdown(false);
    }

    @ParameterizedTest
    @ValueSource(strings = {"background", "write-blocking"})
    void guestWritesDuringTheMirrorEndUpOnTheTarget(String copyMode) throws Exception {
        daemon = VhostUserBlkDeviceTest.twoDisks(tmp);
        String sock = tmp.resolve("vub0.sock").toString();
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub0", "disk0", sock, true, 1));
        byte[] reference = Files.readAllBytes(tmp.resolve("disk.img"));
        fe = VirtioBlkFrontend.connect(sock, VhostUserBlkDeviceTest.settings(1));
        AtomicBoolean run = new AtomicBoolean(true);
        AtomicLong writes = new AtomicLong();
        AtomicReference<Throwable> failed = new AtomicReference<>();
        Thread guest = new Thread(() -> {
            Random rnd = new Random(11);
            try {
                while (run.get()) {
                    int len = (1 + rnd.nextInt(32)) * 4096;
                    long off = (long) rnd.nextInt((int) ((SIZE - len) / 4096) + 1) * 4096;
                    byte[] data = new byte[len];
                    rnd.nextBytes(data);
                    VhostUserBlkDeviceTest.assertOk(fe.queue(0).write(off, data));
                    System.arraycopy(data, 0, reference, (int) off, len);
                    writes.incrementAndGet();
                }
            } catch (Throwable t) {
                failed.set(t);
            }
        }, "guest");
        guest.start();
        List<String> events = Collections.synchronizedList(new ArrayList<>());
        Thread.sleep(200);
        daemon.blockdevMirror(Options.of("blockdev-mirror", Map.of("job-id", "m0", "device", "disk0", "target", "disk1", "sync", "full",
                "copy-mode", copyMode)), (e, d) -> events.add(e));
        waitFor(events, "BLOCK_JOB_READY");
        long atReady = writes.get();
        Thread.sleep(300);
        daemon.jobs().get("m0").complete();
        waitFor(events, "BLOCK_JOB_COMPLETED");
        Thread.sleep(300);
        run.set(false);
        guest.join(10_000);
        if (failed.get() != null) throw new AssertionError("guest write failed", failed.get());
        assertTrue(writes.get() > atReady, "the guest wrote after the ready state");
        assertEquals(-1, events.indexOf("BLOCK_JOB_ERROR"), events.toString());
        VhostUserBlkDeviceTest.assertOk(fe.queue(0).flush());
        assertArrayEquals(reference, Files.readAllBytes(tmp.resolve("disk1.img")), "the target holds what the guest wrote");
    }

    private static void waitFor(List<String> events, String event) throws InterruptedException {
        for (int i = 0; i < 1500 && !events.contains(event); i++) Thread.sleep(20);
        if (!events.contains(event)) fail("no " + event + ": " + events);
    }
}
