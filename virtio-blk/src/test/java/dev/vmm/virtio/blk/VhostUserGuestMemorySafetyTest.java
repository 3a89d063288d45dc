package dev.vmm.virtio.blk;

import static org.junit.jupiter.api.Assertions.*;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcMemory;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection;
import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection.VhostUserNackException;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend.Queue;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.VringAddr;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The device never touches memory outside what the front-end's files really hold (vhost-user.rst
 * "Memory region description": the back-end mmaps each fd at mmap_offset). A MAP_SHARED page
 * beyond the end of its file raises SIGBUS when touched, and a MAP_SHARED PROT_WRITE mapping of
 * a write-sealed memfd is refused by the kernel; both must become an error reply, never a dead
 * JVM. The used ring must be writable, so read-only guest memory is refused at SET_MEM_TABLE.
 * A memfd shrunk AFTER it was mapped (a hostile front-end; QEMU's memory-backend-memfd seals
 * against it by default) stops the ring that touches the missing pages, not the process.
 */
@Timeout(60)
class VhostUserGuestMemorySafetyTest {
    static final long GPA = VirtioBlkFrontend.GUEST_PHYS_BASE;
    static final int F_ADD_SEALS = 1033;
    static final int F_SEAL_SEAL = 0x1, F_SEAL_SHRINK = 0x2, F_SEAL_GROW = 0x4, F_SEAL_WRITE = 0x8, F_SEAL_FUTURE_WRITE = 0x10;

    @TempDir Path tmp;
    Daemon daemon;
    String sock;
    String sock1;
    Path image;

    @BeforeEach
    void start() throws Exception {
        image = tmp.resolve("disk.img");
        sock = tmp.resolve("vub0.sock").toString();
        sock1 = tmp.resolve("vub1.sock").toString();
        daemon = VhostUserBlkDeviceTest.twoDisks(tmp);
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub0", "disk0", sock, true, 2));
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub1", "disk1", sock1, true, 1));
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    static int memfd(long size, int seals) throws IOException {
        int fd = LibcMemory.memfd_create("safety-test", LibcMemory.MFD_CLOEXEC | LibcMemory.MFD_ALLOW_SEALING);
        LibcMemory.truncate(fd, size);
        if (seals != 0) LibcSocket.fcntl(fd, F_ADD_SEALS, seals);
        return fd;
    }

    /** A front-end that negotiated (REPLY_ACK on: every refusal is a NACK) and sent no memory yet. */
    VirtioBlkFrontend negotiated() throws IOException {
        VirtioBlkFrontend fe = VirtioBlkFrontend.open(sock, VhostUserBlkDeviceTest.settings(1));
        fe.negotiate();
        return fe;
    }

    static void assertStillServing(Queue q, long seed) throws IOException {
        byte[] d = VhostUserBlkDeviceTest.random(4096, seed);
        assertEquals(VirtioBlk.VIRTIO_BLK_S_OK, q.write(5 << 20, d).status());
        assertArrayEquals(d, q.read(5 << 20, 4096).data());
    }

    void assertFreshFrontendWorks(long seed) throws IOException {
        try (VirtioBlkFrontend fe = VirtioBlkFrontend.connect(sock, VhostUserBlkDeviceTest.settings(1));
             VirtioBlkFrontend other = VirtioBlkFrontend.connect(sock1, VhostUserBlkDeviceTest.settings(1))) {
            assertStillServing(fe.queue(0), seed);
            assertStillServing(other.queue(0), seed + 1);
        }
    }

    /**
     * Regression guard (SIGBUS): a region reaching past the end of its memfd would map, and the
     * first ring access beyond the file's end would fault. Refused at SET_MEM_TABLE and
     * ADD_MEM_REG, whether the size or the mmap offset is what reaches past the end.
     */
    @Test
    void regionBeyondTheEndOfItsMemfdIsRefused() throws Exception {
        try (VirtioBlkFrontend fe = negotiated()) {
            VhostUserFrontendConnection c = fe.connection();
            long uva = 0x7f10_0000_0000L;
            long[][] regions = { // size, mmap offset: each reaches past a 64 KiB file
                {1L << 20, 0}, {65536, 4096}, {4096, 65536}, {4096, 1L << 30}, {65536 + 1, 0},
            };
            for (long[] rg : regions) {
                int fd = memfd(65536, 0);
                try {
                    MemoryRegion r = new MemoryRegion(GPA, rg[0], uva, rg[1]);
                    assertThrows(VhostUserNackException.class, () -> c.setMemTable(List.of(r), new int[] {fd}), "SET_MEM_TABLE " + r);
                    assertThrows(VhostUserNackException.class, () -> c.addMemReg(r, fd), "ADD_MEM_REG " + r);
                } finally {
                    LibC.close(fd);
                }
            }
            // A ring inside the refused region never starts: there is no memory behind it.
            c.setVringNum(0, 128);
            c.setVringBase(0, 0);
            int kick = LibcSocket.eventfd();
            try {
                assertThrows(VhostUserNackException.class, () -> {
                    c.setVringAddr(new VringAddr(0, 0, uva + (512 << 10), uva + (520 << 10), uva + (516 << 10), 0));
                    c.setVringKick(0, kick);
                });
            } finally {
                LibcSocket.closeQuietly(kick);
            }
            // The same connection goes on with a proper table.
            fe.setMemTable();
            fe.startQueue(0);
            fe.enableQueue(0, true);
            assertStillServing(fe.queue(0), 1);
        }
        assertFreshFrontendWorks(2);
    }

    /**
     * "A used ring in read-only memory": the device maps guest RAM MAP_SHARED with PROT_WRITE,
     * which the kernel refuses for a memfd sealed against writing (EPERM) and for a read-only fd
     * (EACCES). Those tables are refused; the seals QEMU's memory-backend-memfd sets by default
     * (SHRINK, GROW, SEAL) are fine. Anything but a regular file is refused too.
     */
    @Test
    void readOnlyOrNonRegularGuestMemoryIsRefused() throws Exception {
        try (VirtioBlkFrontend fe = negotiated()) {
            VhostUserFrontendConnection c = fe.connection();
            MemoryRegion r = new MemoryRegion(GPA, 1L << 20, 0x7f10_0000_0000L, 0);
            for (int seals : new int[] {F_SEAL_WRITE, F_SEAL_FUTURE_WRITE, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL}) {
                int fd = memfd(1L << 20, seals);
                try {
                    assertThrows(VhostUserNackException.class, () -> c.setMemTable(List.of(r), new int[] {fd}), "seals 0x" + Integer.toHexString(seals));
                } finally {
                    LibC.close(fd);
                }
            }
            int fd = memfd(1L << 20, 0);
            int ro = LibC.open("/proc/self/fd/" + fd, LibC.O_RDONLY | LibC.O_CLOEXEC); // the same file, read-only
            int efd = LibcSocket.eventfd();
            try {
                assertThrows(VhostUserNackException.class, () -> c.setMemTable(List.of(r), new int[] {ro}), "read-only fd");
                assertThrows(VhostUserNackException.class, () -> c.setMemTable(List.of(r), new int[] {efd}), "an eventfd");
            } finally {
                LibC.close(ro);
                LibC.close(fd);
                LibC.close(efd);
            }
            int sealed = memfd(1L << 20, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
            try {
                c.setMemTable(List.of(r), new int[] {sealed}); // QEMU's default seals: accepted
            } finally {
                LibC.close(sealed);
            }
            fe.setMemTable();
            fe.startQueue(0);
            fe.enableQueue(0, true);
            assertStillServing(fe.queue(0), 3);
        }
        assertFreshFrontendWorks(4);
    }

    /**
     * A front-end shrinks its memfd after SET_MEM_TABLE so that ring 1 now lies beyond the end
     * of the file. The device's next access to that ring faults; HotSpot turns SIGBUS in an
     * Unsafe access into an InternalError, the worker stops that queue and signals its error
     * eventfd. Ring 0 (still inside the file), the other disk and the process go on.
     */
    @Test
    void memfdShrunkAfterMappingStopsOnlyTheRingBeyondItsEnd() throws Exception {
        VirtioBlkFrontend fe = VirtioBlkFrontend.connect(sock, VhostUserBlkDeviceTest.settings(2));
        try {
            Queue q0 = fe.queue(0), q1 = fe.queue(1);
            assertStillServing(q0, 5);
            assertStillServing(q1, 6);
            // Ring 1 and its buffers live in the second half of guest RAM (one slice per queue).
            long half = fe.memorySize() / 2;
            assertTrue(q1.driver().descUserAddr() >= fe.memoryBase() + half);
            LibcMemory.truncate(q1.driver().fd(), half);
            try (Memory scratch = new Memory(8)) {
                // Kick without touching our own (now also truncated) view of ring 1.
                LibcSocket.eventfdWrite(q1.kickFd(), 1, Pointer.nativeValue(scratch));
            }
            long end = System.nanoTime() + 5_000_000_000L;
            boolean err = false;
            while (!err && System.nanoTime() < end) {
                err = q1.errorSignalled();
                if (!err) Thread.sleep(5);
            }
            assertTrue(err, "ring 1 stopped and signalled its error eventfd");
            assertStillServing(q0, 7);
            try (VirtioBlkFrontend other = VirtioBlkFrontend.connect(sock1, VhostUserBlkDeviceTest.settings(1))) {
                assertStillServing(other.queue(0), 8);
            }
        } finally {
            fe.abort();
        }
        assertFreshFrontendWorks(9);
    }
}
