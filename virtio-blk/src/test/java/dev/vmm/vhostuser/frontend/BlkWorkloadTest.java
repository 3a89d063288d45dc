package dev.vmm.vhostuser.frontend;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.core.options.Options;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link BlkWorkload}'s accounting and data checks against our vhost-user-blk export in-process
 * (Daemon, IOThread, a 16 MiB image): failed requests are counted apart from IOPS, reads check the
 * {@link BlkStamp} pattern, flushes are counted apart, prefill stamps a disk.
 */
@Timeout(60)
class BlkWorkloadTest {
    static final long SIZE = 16L << 20;
    static final long RUN_NS = 200_000_000L;

    @TempDir Path tmp;
    Daemon daemon;
    Path image;
    String sock;
    VirtioBlkFrontend fe;

    @BeforeEach
    void start() throws Exception {
        image = tmp.resolve("disk.img");
        sock = tmp.resolve("vub0.sock").toString();
        byte[] junk = new byte[(int) SIZE];
        new Random(1).nextBytes(junk);                  // random, unstamped data
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.write(junk);
        }
        daemon = Daemon.start();
        daemon.objectAdd(Options.of("--object", Map.of("qom-type", "iothread", "id", "iot0")));
        daemon.blockdevAdd(Options.of("--blockdev", Map.of("driver", "file", "node-name", "disk0", "filename", image.toString())));
        daemon.exportAdd(dev.vmm.core.testing.TestExports.vhostUserBlk("vub0", "disk0", sock, true, 1));
        fe = VirtioBlkFrontend.connect(sock, new VirtioBlkFrontend.Settings().memory(64L << 20).depth(16).maxIoBytes(1 << 20).timeoutMs(5000));
    }

    @AfterEach
    void stop() {
        if (fe != null) fe.abort();
        daemon.shutdown(false);
    }

    static BlkWorkload.Spec spec(BlkWorkload.Pattern p, int bs, long regionOffset, long regionBytes, int flushEvery, boolean check) {
        return new BlkWorkload.Spec(p, bs, 8, regionOffset, regionBytes, RUN_NS, 0, 100, 5, flushEvery, check);
    }

    @Test
    void stampsCarryTheirOffsetAndZerosDoNot() {
        long a = RawMemory.allocate(4096);
        try {
            BlkStamp.stamp(a, 8192, 8, 42);
            for (int i = 0; i < 8; i++) assertTrue(BlkStamp.tagMatches(a + i * 512L, 8192 + i * 512L));
            assertFalse(BlkStamp.tagMatches(a, 8192 + 512), "a neighbour's sector");
            assertEquals(42, RawMemory.getLe64(a + 8));
            RawMemory.fill(a, 4096, 0);
            assertFalse(BlkStamp.tagMatches(a, 0), "an all-zero sector 0 has no stamp");
            assertNotEquals(BlkStamp.POISON, BlkStamp.tag(0));
            assertTrue(BlkStamp.describe(BlkStamp.tag(512), 3).contains("byte offset 512 (generation 3)"));
            assertTrue(BlkStamp.describe(BlkStamp.POISON, 0).contains("did not write"));
        } finally {
            RawMemory.free(a);
        }
        ByteBuffer b = ByteBuffer.allocate(1024);
        BlkStamp.stamp(b, 1 << 20, 0);
        assertTrue(BlkStamp.tagMatches(b, 512, (1 << 20) + 512));
        assertEquals(BlkStamp.tag(1 << 20), b.order(ByteOrder.LITTLE_ENDIAN).getLong(0));
    }

    @Test
    void sampledSectorsCoverEveryPositionOverRequests() {
        int[] out = new int[BlkStamp.CHECKED_SECTORS];
        assertEquals(8, BlkStamp.sampleSectors(8, 0, out));
        assertArrayEquals(new int[] {0, 1, 2, 3, 4, 5, 6, 7}, out);
        boolean[] seen = new boolean[2048];
        for (long n = 0; n < 256; n++) {
            assertEquals(8, BlkStamp.sampleSectors(2048, n, out));
            for (int s : out) {
                assertTrue(s >= 0 && s < 2048);
                seen[s] = true;
            }
        }
        for (int s = 0; s < 2048; s++) assertTrue(seen[s], "sector " + s + " checked by some request");
    }

    @Test
    void readsOfAnUnstampedDiskAreWrongAndNotCounted() throws Exception {
        VirtioBlkFrontend.Queue q = fe.queue(0);
        assertNotNull(BlkWorkload.probeStamped(q, 0, SIZE, 4096));
        BlkWorkload.Result r = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDREAD, 4096, 0, SIZE, 0, true)).run();
        assertTrue(r.wrongReads > 0, "random data has no stamps");
        assertEquals(0, r.ios, "wrong reads are not counted as I/O");
        assertEquals(0, r.latencies.count());
        assertFalse(r.valid());
        assertTrue(r.firstWrongRead.contains("no stamp"), r.firstWrongRead);
    }

    @Test
    void prefillThenCheckedReadsPass() throws Exception {
        VirtioBlkFrontend.Queue q = fe.queue(0);
        assertEquals(0, BlkWorkload.prefill(q, 0, SIZE, 8, true));
        assertNull(BlkWorkload.probeStamped(q, 0, SIZE, 4096));
        for (BlkWorkload.Pattern p : new BlkWorkload.Pattern[] {BlkWorkload.Pattern.RANDREAD, BlkWorkload.Pattern.READ}) {
            for (int bs : new int[] {4096, 1 << 20}) {
                BlkWorkload.Result r = new BlkWorkload(q, spec(p, bs, 0, SIZE, 0, true)).run();
                assertTrue(r.valid(), p + " " + bs + ": " + r.firstWrongRead + " / " + r.firstError);
                assertTrue(r.ios > 0);
                assertEquals(r.ios, r.latencies.count());
                assertTrue(r.checkedReads >= r.ios);
            }
        }
        // writes keep the disk stamped for later checked reads
        BlkWorkload.Result w = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDWRITE, 4096, 0, SIZE, 0, false)).run();
        assertTrue(w.valid(), w.firstVerifyFailure);
        assertTrue(w.verified > 0);
        BlkWorkload.Result r = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDREAD, 4096, 0, SIZE, 0, true)).run();
        assertTrue(r.valid(), r.firstWrongRead);
    }

    @Test
    void aCorruptedBlockIsCaught() throws Exception {
        VirtioBlkFrontend.Queue q = fe.queue(0);
        assertEquals(0, BlkWorkload.prefill(q, 0, SIZE, 8, true));
        // behind the server's back: the 2nd sector of block 3 now holds block 5's stamp
        ByteBuffer wrong = ByteBuffer.allocate(512);
        BlkStamp.stamp(wrong, 5 * 4096, 0);
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.seek(3 * 4096 + 512);
            f.write(wrong.array());
        }
        BlkWorkload.Result r = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDREAD, 4096, 0, 16 * 4096, 0, true)).run();
        assertTrue(r.wrongReads > 0);
        assertTrue(r.ios > 0, "the other blocks are fine");
        assertFalse(r.valid());
        assertTrue(r.firstWrongRead.contains("at byte " + (3 * 4096 + 512) + " holds the stamp of byte offset " + 5 * 4096), r.firstWrongRead);
    }

    @Test
    void failedRequestsAreCountedApartFromIops() throws Exception {
        VirtioBlkFrontend.Queue q = fe.queue(0);
        // a region past the end of the disk: every request fails (VIRTIO_BLK_S_IOERR)
        BlkWorkload.Result r = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDREAD, 4096, SIZE, 1 << 20, 0, false)).run();
        assertTrue(r.errors > 0);
        assertEquals(0, r.ios, "failed requests are not I/O");
        assertEquals(0, r.iops());
        assertFalse(r.valid());
        assertTrue(r.firstError.startsWith("read at byte "), r.firstError);
        // half inside, half outside: IOPS counts the OK half only
        r = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDWRITE, 4096, SIZE - (1 << 20), 2 << 20, 0, false)).run();
        assertTrue(r.errors > 0 && r.ios > 0, r.errors + " / " + r.ios);
        assertEquals(r.ios, r.latencies.count());
        assertEquals(r.ios * 4096, r.bytes);
        assertFalse(r.valid());
    }

    @Test
    void flushEveryQueuesFlushesCountedApart() throws Exception {
        VirtioBlkFrontend.Queue q = fe.queue(0);
        BlkWorkload.Result r = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDWRITE, 4096, 0, SIZE, 1, false)).run();
        assertTrue(r.valid(), r.firstError + " / " + r.firstVerifyFailure);
        assertTrue(r.flushes > 0);
        assertTrue(Math.abs(r.flushes - r.ios) <= 8, "one flush per write: " + r.flushes + " flushes, " + r.ios + " writes");
        assertEquals(r.flushes, r.flushLatencies.count());
        assertEquals(r.ios, r.latencies.count());
        r = new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDWRITE, 4096, 0, SIZE, 4, false)).run();
        assertTrue(r.flushes > 0 && r.ios >= 3 * r.flushes, r.flushes + " flushes, " + r.ios + " writes");
        assertThrows(IllegalArgumentException.class, () -> new BlkWorkload(q, spec(BlkWorkload.Pattern.RANDREAD, 4096, 0, SIZE, 1, false)));
    }
}
