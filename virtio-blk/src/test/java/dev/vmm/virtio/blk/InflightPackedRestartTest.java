package dev.vmm.virtio.blk;

import static dev.vmm.virtio.blk.VirtioBlk.*;
import static dev.vmm.virtio.queue.PackedRing.INITIAL_BASE;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.core.options.Options;
import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection;
import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection.InflightReply;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.VhostUserProtocolFeature;
import dev.vmm.vhostuser.message.VringAddr;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.driver.PackedQueueDriver;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * vhost-user.rst "Inflight I/O tracking" on a packed ring, end to end: a Java front-end with a
 * packed-ring driver double negotiates VIRTIO_F_RING_PACKED and INFLIGHT_SHMFD with our export;
 * the first back-end dies in the middle of a write (its block driver throws InternalError, as
 * a SIGBUS in guest memory would: the queue stops with the request taken and not completed, the
 * requests behind it not taken; the writes submitted before it were in flight and are still
 * answered), and is shut down. A second back-end on the same socket gets
 * the same in-flight area and, as QEMU sends for a packed ring after a crash, a stale
 * SET_VRING_BASE (the ring's start). It must complete the interrupted write and the ones behind
 * it, and go on with new requests where the driver put them.
 */
@Timeout(60)
class InflightPackedRestartTest {
    static final long SIZE = 8L << 20;
    static final int QSIZE = 16;
    static final int BLOCK = 4096;

    @TempDir Path tmp;
    Daemon daemon;
    Path image;
    String sock;
    PackedQueueDriver driver;
    VhostUserFrontendConnection conn;
    int kick = -1, call = -1, err = -1;
    /** The in-flight area, as the front-end keeps it across back-end restarts. */
    int areaFd = -1;
    dev.vmm.vhostuser.message.Inflight inflight;
    final long scratch = RawMemory.allocate(8);
    /** Per buffer id: its status byte (guest-physical) and the sector it wrote or read. */
    final Map<Integer, long[]> requests = new LinkedHashMap<>();

    @AfterEach
    void stop() {
        if (conn != null) conn.close();
        if (daemon != null) daemon.shutdown(false);
        for (int fd : new int[] {kick, call, err, areaFd}) if (fd >= 0) LibcSocket.closeQuietly(fd);
        if (driver != null) driver.close();
        RawMemory.free(scratch);
    }

    /** Dies (InternalError) in the first write at {@code trapOffset}. */
    static final class DyingDriver extends dev.vmm.core.block.ForwardingBlockDriver {
        final long trapOffset;
        volatile boolean died;

        DyingDriver(BlockDriver d, long trapOffset) {
            super(d);
            this.trapOffset = trapOffset;
        }

        private void maybeDie(long offset) {
            if (offset == trapOffset && !died) {
                died = true;
                throw new InternalError("simulated back-end death in the middle of a write");
            }
        }

        @Override public void write(long o, long a, int l, boolean fua) throws BlockException { maybeDie(o); d.write(o, a, l, fua); }
        @Override public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException { maybeDie(o); d.writev(o, iov, n, t, fua); }
        @Override public void write(long o, long a, int l, boolean fua, dev.vmm.core.block.IoCompletion c) throws BlockException { maybeDie(o); d.write(o, a, l, fua, c); }
        @Override public void writev(long o, long iov, int n, long t, boolean fua, dev.vmm.core.block.IoCompletion c) throws BlockException { maybeDie(o); d.writev(o, iov, n, t, fua, c); }
    }

    Daemon startDaemon(BlockDriver blockDriver) throws Exception {
        Daemon dm = Daemon.start();
        dm.objectAdd(Options.of("--object", Map.of("qom-type", "iothread", "id", "iot0")));
        dm.addNode(new BlockNode("disk0", blockDriver, dm.mainLoop()));
        dm.exportAdd(dev.vmm.core.testing.TestExports.vhostUserBlk("vub0", "disk0", sock, true, 1));
        return dm;
    }

    /** What QEMU's vhost-user-blk does at (re)connection: features before the in-flight area. */
    void connectFrontend(boolean first) throws Exception {
        conn = VhostUserFrontendConnection.connect(sock, 5000);
        long offered = conn.getFeatures();
        long proto = conn.getProtocolFeatures();
        long wantedProto = VhostUserProtocolFeature.mask(VhostUserProtocolFeature.REPLY_ACK)
                | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.CONFIG)
                | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.INFLIGHT_SHMFD);
        assertEquals(wantedProto, proto & wantedProto, "INFLIGHT_SHMFD offered");
        conn.setProtocolFeatures(proto & wantedProto);
        conn.setReplyAck(true);
        conn.setOwner();
        long features = 1L << VIRTIO_F_VERSION_1 | 1L << VIRTIO_F_RING_PACKED
                | 1L << VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES;
        assertEquals(features, offered & features);
        conn.setFeatures(features);
        if (first) {
            InflightReply r = conn.getInflightFd(1, QSIZE);
            areaFd = r.fd();
            inflight = r.inflight();
            assertTrue(inflight.mmapSize() >= dev.vmm.vhostuser.inflight.InflightPackedQueue.regionSize(QSIZE),
                    "the area is sized for a packed ring: " + inflight);
        }
        conn.setInflightFd(inflight, areaFd);
        conn.setMemTable(List.of(new MemoryRegion(driver.guestPhysBase(), driver.memorySize(), driver.userAddress(), 0)),
                new int[] {driver.fd()});
        conn.setVringNum(0, QSIZE);
        conn.setVringBase(0, INITIAL_BASE); // after a crash QEMU has nothing better for a packed ring
        conn.setVringAddr(new VringAddr(0, 0, driver.descUserAddr(), driver.deviceEventUserAddr(), driver.driverEventUserAddr(), 0));
        conn.setVringErr(0, err);
        conn.setVringKick(0, kick);
        conn.setVringCall(0, call);
        conn.setVringEnable(0, true);
    }

    /** A virtio-blk request: header (readable), one block of data, status (writable). */
    int submit(int type, long sector, byte[] data) {
        long hdr = driver.alloc(16);
        long buf = driver.alloc(BLOCK);
        long status = driver.alloc(1);
        long h = driver.host(hdr, 16);
        RawMemory.putLe32(h, type);
        RawMemory.putLe32(h + 4, 0);
        RawMemory.putLe64(h + 8, sector);
        long b = driver.host(buf, BLOCK);
        if (data != null) for (int i = 0; i < BLOCK; i++) RawMemory.putByte(b + i, data[i]);
        RawMemory.putByte(driver.host(status, 1), 0xFF);
        int id = driver.submit(new long[] {hdr, buf, status}, new int[] {16, BLOCK, 1}, type == VIRTIO_BLK_T_OUT ? 2 : 1, 3);
        assertTrue(id >= 0, "ring space");
        requests.put(id, new long[] {status, sector, buf});
        return id;
    }

    void kick() {
        LibcSocket.eventfdWrite(kick, 1, scratch);
    }

    /** Waits for {@code n} used buffers; returns their ids in used order. */
    List<Integer> awaitUsed(int n) throws InterruptedException {
        List<Integer> got = new ArrayList<>();
        int[] ids = new int[QSIZE];
        int[] lens = new int[QSIZE];
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (got.size() < n && System.nanoTime() < deadline) {
            int k = driver.pollUsed(ids, lens);
            for (int i = 0; i < k; i++) got.add(ids[i]);
            if (k == 0) Thread.sleep(2);
        }
        assertEquals(n, got.size(), "used buffers, got " + got);
        return got;
    }

    /**
     * Used order is completion order: requests in flight together (io_uring, aio=threads) may
     * complete in any order, so the test compares which buffers were used, not their order.
     */
    static List<Integer> sorted(List<Integer> ids) {
        List<Integer> l = new ArrayList<>(ids);
        java.util.Collections.sort(l);
        return l;
    }

    int status(int id) {
        return RawMemory.getByte(driver.host(requests.get(id)[0], 1));
    }

    static byte[] block(long seed) {
        byte[] b = new byte[BLOCK];
        new Random(seed).nextBytes(b);
        return b;
    }

    @Test
    void writesInFlightWhenTheBackendDiedCompleteAfterRestart() throws Exception {
        image = tmp.resolve("disk.img");
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        sock = tmp.resolve("vub0.sock").toString();
        driver = new PackedQueueDriver(QSIZE, 1L << 20, 1L << 32, 1L << VIRTIO_F_VERSION_1 | 1L << VIRTIO_F_RING_PACKED);
        kick = LibcSocket.eventfd();
        call = LibcSocket.eventfd();
        err = LibcSocket.eventfd();
        int trapped = 4; // the write of block 4 kills the first back-end
        DyingDriver dying = new DyingDriver(RawFileDriver.open(image, false, false), (long) trapped * BLOCK);
        daemon = startDaemon(dying);
        connectFrontend(true);

        // Two writes complete normally (slots 0..5).
        List<Integer> first = List.of(submit(VIRTIO_BLK_T_OUT, 0, block(0)), submit(VIRTIO_BLK_T_OUT, 8, block(1)));
        kick();
        assertEquals(sorted(first), sorted(awaitUsed(2)));
        // Five more (15 slots: the ring wraps); the third of them dies in the back-end.
        List<Integer> second = new ArrayList<>();
        for (int blk = 2; blk < 7; blk++) second.add(submit(VIRTIO_BLK_T_OUT, blk * 8L, block(blk)));
        kick();
        assertEquals(sorted(second.subList(0, 2)), sorted(awaitUsed(2)), "the writes before the one that died complete");
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (LibcSocket.eventfdRead(err, scratch) == 0 && System.nanoTime() < deadline) Thread.sleep(2);
        assertTrue(dying.died, "the first back-end died in the write of block " + trapped);
        Thread.sleep(50);
        int[] ids = new int[QSIZE];
        assertEquals(0, driver.pollUsed(ids, new int[QSIZE]), "nothing more completes on the dead back-end");

        // The back-end goes away; a new one starts on the same socket; the front-end keeps its area.
        conn.close();
        conn = null;
        daemon.shutdown(false);
        daemon = startDaemon(RawFileDriver.open(image, false, false));
        connectFrontend(false);
        assertEquals(sorted(second.subList(2, 5)), sorted(awaitUsed(3)), "the interrupted write and the ones behind it");
        for (int id : second) assertEquals(VIRTIO_BLK_S_OK, status(id), "status of " + id);

        // The ring goes on where the driver is: read every block back through it.
        List<Integer> reads = new ArrayList<>();
        for (int blk = 0; blk < 4; blk++) reads.add(submit(VIRTIO_BLK_T_IN, blk * 8L, null));
        kick();
        assertEquals(sorted(reads), sorted(awaitUsed(4)));
        for (int i = 0; i < reads.size(); i++) {
            int id = reads.get(i);
            assertEquals(VIRTIO_BLK_S_OK, status(id));
            byte[] got = new byte[BLOCK];
            long b = driver.host(requests.get(id)[2], BLOCK);
            for (int k = 0; k < BLOCK; k++) got[k] = (byte) RawMemory.getByte(b + k);
            assertArrayEquals(block(i), got, "block " + i + " read through the restarted ring");
        }
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "r")) {
            for (int blk = 0; blk < 7; blk++) {
                byte[] got = new byte[BLOCK];
                f.seek((long) blk * BLOCK);
                f.readFully(got);
                assertTrue(Arrays.equals(block(blk), got), "block " + blk + " in the image");
            }
        }
        // Regression: the resubmitted buffers were completed without being counted as taken (-1).
        assertEquals(0, daemon.export("vub0").stats().inFlight.sum(), "requests in flight on the restarted export");
    }
}
