package dev.vmm.vhostuser.frontend;

import static dev.vmm.virtio.blk.VirtioBlk.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.vhostuser.frontend.VirtioBlkFrontend.Completion;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend.Queue;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Java front-end against the reference back-end, qemu-storage-daemon's vhost-user-blk export
 * (skipped when {@code qemu-storage-daemon} is not installed): proves the front-end speaks
 * vhost-user as QEMU does, independently of our device.
 */
@Timeout(120)
class VirtioBlkFrontendQsdTest {
    static final long SIZE = 64L << 20;

    @TempDir Path tmp;
    Process qsd;
    Path image;
    String sock;

    @BeforeEach
    void start() throws Exception {
        String qsdBinary = dev.vmm.core.testing.Tools.require("qemu-storage-daemon", "qemu-system-common");
        image = tmp.resolve("disk.img");
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        sock = tmp.resolve("qsd.sock").toString();
        qsd = new ProcessBuilder(List.of(qsdBinary,
                "--blockdev", "driver=file,node-name=disk0,filename=" + image,
                "--object", "iothread,id=iot0",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + sock
                        + ",writable=on,iothread=iot0,num-queues=2"))
                .redirectErrorStream(true).redirectOutput(tmp.resolve("qsd.log").toFile()).start();
        long end = System.nanoTime() + 10_000_000_000L;
        while (!Files.exists(Path.of(sock))) {
            if (!qsd.isAlive()) fail("qemu-storage-daemon exited: " + Files.readString(tmp.resolve("qsd.log")));
            if (System.nanoTime() > end) fail("no socket from qemu-storage-daemon");
            Thread.sleep(20);
        }
    }


    @AfterEach
    void stop() throws Exception {
        if (qsd != null) {
            qsd.destroy();
            if (!qsd.waitFor(5, TimeUnit.SECONDS)) qsd.destroyForcibly();
        }
    }

    static byte[] random(int len, long seed) {
        byte[] b = new byte[len];
        new Random(seed).nextBytes(b);
        return b;
    }

    @Test
    void negotiatesAndServesIoLikeOurs() throws Exception {
        try (VirtioBlkFrontend fe = VirtioBlkFrontend.connect(sock, new VirtioBlkFrontend.Settings()
                .memory(64L << 20).queues(2).depth(16).timeoutMs(5000))) {
            assertEquals(SIZE / 512, fe.capacitySectors());
            assertEquals(2, fe.backendQueues());
            assertTrue(fe.hasFeature(VIRTIO_RING_F_EVENT_IDX));
            assertTrue(fe.hasFeature(VIRTIO_BLK_F_FLUSH));
            Queue q = fe.queue(1);
            long[] offsets = {0, 1 << 20, SIZE - 4096 - 512, SIZE - 512};
            int[] lengths = {65536, 4096, 4096, 512};
            for (int i = 0; i < offsets.length; i++) {
                byte[] d = random(lengths[i], i);
                assertEquals(VIRTIO_BLK_S_OK, q.write(offsets[i], d).status());
                Completion r = fe.queue(0).read(offsets[i], lengths[i]);
                assertEquals(VIRTIO_BLK_S_OK, r.status());
                assertArrayEquals(d, r.data());
            }
            assertEquals(VIRTIO_BLK_S_OK, q.flush().status());
            try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "r")) {
                byte[] last = new byte[512];
                f.seek(SIZE - 512);
                f.readFully(last);
                assertArrayEquals(random(512, 3), last);
            }
            assertEquals(VIRTIO_BLK_S_OK, q.getId().status());
            assertEquals(VIRTIO_BLK_S_IOERR, q.read(SIZE, 512).status(), "read beyond the end");
            if (fe.hasFeature(VIRTIO_BLK_F_WRITE_ZEROES)) {
                assertEquals(VIRTIO_BLK_S_OK, q.discardOrZeroes(true, 0, 128, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).status());
                assertArrayEquals(new byte[65536], q.read(0, 65536).data());
            }
            BlkWorkload.Result r = new BlkWorkload(fe.queue(0), new BlkWorkload.Spec(BlkWorkload.Pattern.RANDWRITE, 4096, 16,
                    0, 16 << 20, 500_000_000L, 0, 300, 5)).run();
            assertTrue(r.ios > 100);
            assertEquals(0, r.errors);
            assertEquals(0, r.verifyFailures, r.firstVerifyFailure);
        } // close(): GET_VRING_BASE on both rings
        assertTrue(qsd.isAlive());
    }
}
