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
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A guest's writes through a vhost-user-blk device during a backup: the backup (slow, so the
 * guest overwrites clusters it has not copied yet) starts before the guest writes; the target
 * must then hold disk0 as it was at the start, and disk0 what the device acknowledged.
 */
@Timeout(120)
class VhostUserBackupTest {
    static final long SIZE = VhostUserBlkDeviceTest.SIZE;

    @TempDir Path tmp;
    Daemon daemon;
    VirtioBlkFrontend fe;

    @AfterEach
    void stop() {
        if (fe != null) fe.abort();
        if (daemon != null) daemon.shutdown(false);
    }

    @Test
    void guestWritesDuringABackupLeaveThePointInTimeOnTheTarget() throws Exception {
        daemon = VhostUserBlkDeviceTest.twoDisks(tmp);
        String sock = tmp.resolve("vub0.sock").toString();
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub0", "disk0", sock, true, 1));
        byte[] initial = Files.readAllBytes(tmp.resolve("disk.img"));
        byte[] reference = initial.clone();
        fe = VirtioBlkFrontend.connect(sock, VhostUserBlkDeviceTest.settings(1));
        List<String> events = Collections.synchronizedList(new ArrayList<>());
        daemon.blockdevBackup(Options.of("blockdev-backup", Map.of("job-id", "b0", "device", "disk0", "target", "disk1", "sync", "full",
                "speed", 16 << 20)), (e, d) -> events.add(e));
        AtomicBoolean run = new AtomicBoolean(true);
        AtomicLong writes = new AtomicLong();
        AtomicReference<Throwable> failed = new AtomicReference<>();
        Thread guest = new Thread(() -> {
            Random rnd = new Random(13);
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
        for (int i = 0; i < 3000 && !events.contains("BLOCK_JOB_COMPLETED"); i++) Thread.sleep(20);
        if (!events.contains("BLOCK_JOB_COMPLETED")) fail("no BLOCK_JOB_COMPLETED: " + events);
        run.set(false);
        guest.join(10_000);
        if (failed.get() != null) throw new AssertionError("guest write failed", failed.get());
        assertTrue(writes.get() > 0, "the guest wrote");
        assertEquals(-1, events.indexOf("BLOCK_JOB_ERROR"), events.toString());
        VhostUserBlkDeviceTest.assertOk(fe.queue(0).flush());
        assertArrayEquals(initial, Files.readAllBytes(tmp.resolve("disk1.img")), "the target holds disk0 at the start");
        assertArrayEquals(reference, Files.readAllBytes(tmp.resolve("disk.img")), "disk0 holds what the guest wrote");
    }
}
