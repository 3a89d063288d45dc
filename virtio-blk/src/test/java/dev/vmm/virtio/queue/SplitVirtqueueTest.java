package dev.vmm.virtio.queue;

import static dev.vmm.virtio.queue.VirtioRing.*;
import static org.junit.jupiter.api.Assertions.*;

import java.lang.management.ManagementFactory;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.VirtqueueException.Kind;
import dev.vmm.virtio.queue.driver.SplitQueueDriver;

/** Device-side split ring against the driver double, named after virtio 1.2 §2.7 sections. */
class SplitVirtqueueTest {
    private static final long GPA = 0x4000_0000L;
    private static final long MEM = 1L << 20;
    private static final long INDIRECT = 1L << VIRTIO_F_INDIRECT_DESC;
    private static final long EVENT_IDX = 1L << VIRTIO_F_EVENT_IDX;

    private SplitQueueDriver driver;
    private GuestMemory mem;
    private SplitVirtqueue q;
    private final DescriptorChain chain = new DescriptorChain(1024);
    private final int[] heads = new int[64];
    private final int[] lens = new int[64];

    private void setUp(int size, long features) throws Exception {
        driver = new SplitQueueDriver(size, MEM, GPA, features);
        mem = new GuestMemory();
        driver.shareWith(mem);
        q = SplitVirtqueue.ofUserAddresses(mem, size, driver.descUserAddr(), driver.availUserAddr(),
                driver.usedUserAddr(), features);
    }

    @AfterEach
    void tearDown() {
        if (mem != null) mem.close();
        if (driver != null) driver.close();
    }

    /** A virtio-blk shaped request: 16-byte header (readable), data, 1-byte status (writable). */
    private long[] blkRequest(int dataLen) {
        return new long[] {driver.alloc(16), driver.alloc(dataLen), driver.alloc(1)};
    }

    private VirtqueueException popFails() {
        return assertThrows(VirtqueueException.class, () -> q.pop(chain));
    }

    @Test
    void simpleChainPopsWithHostAddressesAndCompletes() throws Exception {
        setUp(256, 0);
        long[] gpa = blkRequest(512);
        RawMemory.putLe64(driver.host(gpa[0], 8), 0xABCDEF);
        int head = driver.submit(gpa, new int[] {16, 512, 1}, 1, 3);

        assertTrue(q.pop(chain));
        assertEquals(head, chain.head());
        assertEquals(3, chain.segmentCount());
        assertEquals(1, chain.readableCount());
        assertEquals(16, chain.readableLength());
        assertEquals(513, chain.writableLength());
        assertFalse(chain.writable(0));
        assertTrue(chain.writable(1));
        assertTrue(chain.writable(2));
        assertEquals(512, chain.length(1));
        assertEquals(0xABCDEF, RawMemory.getLe64(chain.address(0)), "device mapping sees the driver's bytes");
        RawMemory.putByte(chain.address(2), 0x5A);
        assertEquals(0x5A, RawMemory.getByte(driver.host(gpa[2], 1)));
        assertFalse(q.pop(chain), "ring is empty");

        q.pushUsed(head, 513);
        assertEquals(0, driver.pollUsed(heads, lens), "not visible before publishUsed");
        q.publishUsed();
        assertEquals(1, driver.pollUsed(heads, lens));
        assertEquals(head, heads[0]);
        assertEquals(513, lens[0]);
        assertEquals(256, driver.freeDescriptors());
    }

    @Test
    void iovecsCoverAByteSubrangeAcrossSegments() throws Exception {
        setUp(64, 0);
        long[] gpa = {driver.alloc(8), driver.alloc(100), driver.alloc(50)};
        driver.submit(gpa, new int[] {8, 100, 50}, 3, 3);
        assertTrue(q.pop(chain));
        try (IovecArray iov = new IovecArray(4)) {
            int n = chain.fillIovecs(iov, 4, 120); // 4 bytes of seg 0, all of seg 1, 16 of seg 2
            assertEquals(3, n);
            assertEquals(chain.address(0) + 4, iov.base(0));
            assertEquals(4, iov.length(0));
            assertEquals(chain.address(1), iov.base(1));
            assertEquals(100, iov.length(1));
            assertEquals(16, iov.length(2));
            assertEquals(-1, chain.fillIovecs(iov, 100, 59), "past the end");
            assertEquals(1, chain.fillIovecs(iov, 8, 100));
            assertEquals(chain.address(1), iov.base(0));
        }
        try (IovecArray small = new IovecArray(1)) {
            assertEquals(-1, small.capacity() == 1 ? chain.fillIovecs(small, 0, 158) : 0, "too many iovecs");
        }
        assertEquals(chain.address(1) + 2, chain.contiguous(10, 98));
        assertEquals(0, chain.contiguous(10, 99), "spans two segments");
    }

    @Test
    void indirectDescriptors_2_7_5_3() throws Exception {
        setUp(16, INDIRECT);
        long[] gpa = blkRequest(4096);
        int head = driver.submitIndirect(gpa, new int[] {16, 4096, 1}, 1, 3);
        assertTrue(q.pop(chain));
        assertEquals(head, chain.head());
        assertEquals(3, chain.segmentCount());
        assertEquals(16, chain.readableLength());
        assertEquals(4097, chain.writableLength());
        assertEquals(driver.host(gpa[1], 1) - driver.userAddress(), chain.address(1) - mem.gpaToHost(GPA, 1));
    }

    @Test
    void directDescriptorsFollowedByAnIndirectTable_2_7_5_3_2() throws Exception {
        setUp(16, INDIRECT);
        long hdr = driver.alloc(16), data = driver.alloc(512), status = driver.alloc(1);
        long table = driver.alloc(32);
        driver.writeTableDesc(table, 0, data, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        driver.writeTableDesc(table, 1, status, 1, VIRTQ_DESC_F_WRITE, 0);
        int head = driver.submit(new long[] {hdr, table}, new int[] {16, 32}, 2, 2);
        driver.writeDesc(driverNext(head), table, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assertTrue(q.pop(chain));
        assertEquals(head, chain.head());
        assertEquals(3, chain.segmentCount());
        assertEquals(16, chain.readableLength());
        assertEquals(513, chain.writableLength());
    }

    @Test
    void indirectWithoutTheFeatureIsARequestError() throws Exception {
        setUp(16, 0);
        long[] gpa = blkRequest(512);
        int head = driver.submitIndirect(gpa, new int[] {16, 512, 1}, 1, 3);
        VirtqueueException e = popFails();
        assertEquals(Kind.REQUEST, e.kind());
        assertEquals(head, e.head());
    }

    @Test
    void indicesWrapAround65535() throws Exception {
        setUp(8, INDIRECT);
        driver.startAt(65530);
        q = SplitVirtqueue.ofUserAddresses(mem, 8, driver.descUserAddr(), driver.availUserAddr(), driver.usedUserAddr(), INDIRECT);
        q.setLastAvailIdx(65530);
        assertEquals(65530, q.lastUsedIdx(), "used idx continues from memory");
        long buf = driver.alloc(64);
        for (int i = 0; i < 20; i++) {
            int head = i % 2 == 0
                    ? driver.submit(new long[] {buf}, new int[] {64}, 1, 1)
                    : driver.submitIndirect(new long[] {buf, buf}, new int[] {32, 32}, 1, 2);
            assertTrue(q.pop(chain), "iteration " + i);
            assertEquals(head, chain.head());
            q.pushUsed(head, i);
            q.publishUsed();
            assertEquals(1, driver.pollUsed(heads, lens));
            assertEquals(head, heads[0]);
            assertEquals(i, lens[0]);
        }
        assertEquals((65530 + 20) & 0xFFFF, q.lastAvailIdx());
        assertEquals(14, q.lastUsedIdx());
        assertEquals(14, driver.usedIdx());
        assertFalse(q.pop(chain));
    }

    @Test
    void eventIdxNotificationDecisions_2_7_7() throws Exception {
        setUp(16, EVENT_IDX);
        long buf = driver.alloc(64);
        for (int i = 0; i < 4; i++) driver.submit(new long[] {buf}, new int[] {64}, 0, 1);
        int[] popped = new int[4];
        for (int i = 0; i < 4; i++) {
            assertTrue(q.pop(chain));
            popped[i] = chain.head();
        }
        assertEquals(4, driver.availEvent(), "pop publishes avail_event = last_avail_idx");

        driver.setUsedEvent(0);
        q.pushUsed(popped[0], 0);
        q.publishUsed();                          // used idx 0 -> 1, crosses used_event 0
        assertTrue(q.needsNotify());
        assertFalse(q.needsNotify(), "nothing new published");

        driver.setUsedEvent(10);
        q.pushUsed(popped[1], 0);
        q.publishUsed();                          // 1 -> 2, used_event 10 not crossed
        assertFalse(q.needsNotify());

        driver.setUsedEvent(2);
        q.pushUsed(popped[2], 0);
        q.pushUsed(popped[3], 0);
        q.publishUsed();                          // 2 -> 4 crosses 2 (batch of two)
        assertTrue(q.needsNotify());
    }

    @Test
    void eventIdxKickSuppression_2_7_10() throws Exception {
        setUp(16, EVENT_IDX);
        long buf = driver.alloc(64);
        assertFalse(q.enableNotification(), "empty ring");
        driver.submit(new long[] {buf}, new int[] {64}, 0, 1);
        assertTrue(driver.needsKick(), "device asked for a kick at avail idx 0");
        q.disableNotification();
        assertTrue(q.pop(chain));
        driver.submit(new long[] {buf}, new int[] {64}, 0, 1);
        assertFalse(driver.needsKick(), "device is polling: avail_event not advanced");
        assertTrue(q.enableNotification(), "a buffer arrived while notifications were off");
        assertTrue(q.pop(chain));
        assertFalse(q.enableNotification());
        driver.submit(new long[] {buf}, new int[] {64}, 0, 1);
        assertTrue(driver.needsKick());
    }

    @Test
    void noInterruptAndNoNotifyFlagsWithoutEventIdx() throws Exception {
        setUp(16, 0);
        long buf = driver.alloc(64);
        driver.submit(new long[] {buf}, new int[] {64}, 0, 1);
        driver.submit(new long[] {buf}, new int[] {64}, 0, 1);
        assertTrue(q.pop(chain));
        int h0 = chain.head();
        assertTrue(q.pop(chain));
        int h1 = chain.head();
        driver.setNoInterrupt(true);
        q.pushUsed(h0, 0);
        q.publishUsed();
        assertFalse(q.needsNotify());
        driver.setNoInterrupt(false);
        q.pushUsed(h1, 0);
        q.publishUsed();
        assertTrue(q.needsNotify());

        q.disableNotification();
        assertEquals(VIRTQ_USED_F_NO_NOTIFY, driver.usedFlags());
        driver.submit(new long[] {buf}, new int[] {64}, 0, 1);
        assertFalse(driver.needsKick());
        assertTrue(q.enableNotification());
        assertEquals(0, driver.usedFlags());
    }

    // ---------------------------------------------------------------- hostile drivers

    private void assertQueueStillServes() throws Exception {
        long buf = driver.alloc(32);
        int head = driver.submit(new long[] {buf}, new int[] {32}, 1, 1);
        assertTrue(q.pop(chain));
        assertEquals(head, chain.head());
        assertEquals(32, chain.totalLength());
    }

    private void assertRequestError(int head) throws Exception {
        assertRequestError(head, "");
    }

    private void assertRequestError(int head, String messagePart) throws Exception {
        VirtqueueException e = popFails();
        assertTrue(e.getMessage().contains(messagePart), e.getMessage());
        assertEquals(Kind.REQUEST, e.kind(), e.getMessage());
        assertEquals(head, e.head());
        assertFalse(q.isBroken());
        q.pushUsed(e.head(), 0); // the head was consumed and can be completed
        q.publishUsed();
        assertQueueStillServes();
    }

    @Test
    void descriptorLoopIsARequestError() throws Exception {
        setUp(16, 0);
        assertRequestError(driver.submitLoop(driver.alloc(16), 16), "loop");
    }

    @Test
    void selfLoopInsideIndirectTableIsARequestError() throws Exception {
        setUp(16, INDIRECT);
        long buf = driver.alloc(16);
        int head = driver.submitIndirect(new long[] {buf, buf}, new int[] {16, 16}, 2, 2);
        long table = driver.indirectTable(head, 2);
        driver.writeTableDesc(table, 1, buf, 16, VIRTQ_DESC_F_NEXT, 0); // 0 -> 1 -> 0 ...
        assertRequestError(head, "loop");
    }

    @Test
    void outOfRangeAddressesAreRequestErrors() throws Exception {
        setUp(16, INDIRECT);
        long end = GPA + MEM;
        long[][] cases = {
            {0xFFFF_FFFF_FFFF_F000L, 0x2000},   // wraps
            {end, 1},                           // one past guest memory
            {end - 8, 16},                      // straddles the end
            {GPA - 1, 2},                       // starts before
            {0, 512},                           // below every region
            {GPA, 0xFFFF_FFFFL},                // enormous length
        };
        for (long[] c : cases) {
            assertRequestError(driver.submitRaw(c[0], c[1], 0), "not inside guest memory");
        }
        assertRequestError(driver.submitRaw(end - 16, 32, VIRTQ_DESC_F_INDIRECT), "indirect table"); // table out of range
    }

    @Test
    void availIdxJumpBreaksTheQueue() throws Exception {
        setUp(16, 0);
        driver.setAvailIdx(17);
        VirtqueueException e = popFails();
        assertEquals(Kind.BROKEN, e.kind());
        assertTrue(q.isBroken());
        assertEquals(Kind.BROKEN, popFails().kind(), "stays broken");
    }

    @Test
    void availIdxMovingExactlyQueueSizeIsAccepted() throws Exception {
        setUp(4, 0);
        long buf = driver.alloc(16);
        for (int i = 0; i < 4; i++) driver.submit(new long[] {buf}, new int[] {16}, 1, 1);
        for (int i = 0; i < 4; i++) assertTrue(q.pop(chain));
        assertFalse(q.pop(chain));
    }

    @Test
    void headOutsideTheTableBreaksTheQueue() throws Exception {
        setUp(16, 0);
        driver.publishHead(16);
        assertEquals(Kind.BROKEN, popFails().kind());
    }

    @Test
    void nestedIndirectIsARequestError() throws Exception {
        setUp(16, INDIRECT);
        assertRequestError(driver.submitNestedIndirect(driver.alloc(16), 16), "inside an indirect table");
    }

    @Test
    void zeroLengthDescriptorIsARequestError() throws Exception {
        setUp(16, INDIRECT);
        assertRequestError(driver.submitRaw(driver.alloc(16), 0, 0), "zero-length");
        long buf = driver.alloc(16);
        int head = driver.submitIndirect(new long[] {buf, buf}, new int[] {16, 0}, 1, 2);
        assertRequestError(head);
    }

    @Test
    void malformedIndirectDescriptorsAreRequestErrors() throws Exception {
        setUp(16, INDIRECT);
        long table = driver.alloc(64);
        driver.writeTableDesc(table, 0, driver.alloc(16), 16, 0, 0);
        assertRequestError(driver.submitRaw(table, 24, VIRTQ_DESC_F_INDIRECT), "multiple of 16");
        assertRequestError(driver.submitRaw(table, 0xFFFF_FFF0L, VIRTQ_DESC_F_INDIRECT), "multiple of 16"); // enormous table
        int head = driver.submitRaw(table, 16, VIRTQ_DESC_F_INDIRECT);
        driver.writeDesc(head, table, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1);  // INDIRECT|NEXT
        assertRequestError(head, "INDIRECT and NEXT");
    }

    @Test
    void readableAfterWritableIsARequestError_2_7_5_2() throws Exception {
        setUp(16, 0);
        long buf = driver.alloc(16);
        int head = driver.submit(new long[] {buf, buf}, new int[] {16, 16}, 2, 2); // both readable
        // Make the first one writable: writable, then readable.
        driver.writeDesc(head, buf, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, driverNext(head));
        assertRequestError(head, "readable descriptor after");
    }

    private int driverNext(int head) {
        // The driver chains head -> the next descriptor it took from its free list: read it back.
        long d = driver.descUserAddr() + 16L * head;
        return RawMemory.getLe16(d + 14);
    }

    @Test
    void nextIndexOutsideTheTableIsARequestError() throws Exception {
        setUp(16, 0);
        long buf = driver.alloc(16);
        int head = driver.submitRaw(buf, 16, 0);
        driver.writeDesc(head, buf, 16, VIRTQ_DESC_F_NEXT, 16);
        assertRequestError(head, "next index");
    }

    @Test
    void chainOfExactlyQueueSizeIsAcceptedAndOneLongerIsNot() throws Exception {
        setUp(8, INDIRECT);
        long buf = driver.alloc(8);
        long[] g = new long[8];
        int[] l = new int[8];
        java.util.Arrays.fill(g, buf);
        java.util.Arrays.fill(l, 8);
        driver.submit(g, l, 8, 8);
        assertTrue(q.pop(chain));
        assertEquals(8, chain.segmentCount());
        q.pushUsed(chain.head(), 0);
        q.publishUsed();
        driver.pollUsed(heads, lens);
        DescriptorChain small = new DescriptorChain(4);
        int head = driver.submitIndirect(g, l, 8, 8);
        VirtqueueException e = assertThrows(VirtqueueException.class, () -> q.pop(small));
        assertEquals(Kind.REQUEST, e.kind(), "more segments than the chain holds");
        assertEquals(head, e.head());
    }

    @Test
    void ringsOutsideMemoryOrMisalignedAreRefused() throws Exception {
        setUp(16, 0);
        long d = driver.descUserAddr(), a = driver.availUserAddr(), u = driver.usedUserAddr();
        long end = driver.userAddress() + MEM;
        assertEquals(Kind.BROKEN, assertThrows(VirtqueueException.class,
                () -> SplitVirtqueue.ofUserAddresses(mem, 16, end - 128, a, u, 0)).kind(), "desc table crosses the end");
        assertThrows(VirtqueueException.class, () -> SplitVirtqueue.ofUserAddresses(mem, 16, d + 8, a, u, 0), "desc misaligned");
        assertThrows(VirtqueueException.class, () -> SplitVirtqueue.ofUserAddresses(mem, 16, d, a + 1, u, 0), "avail misaligned");
        assertThrows(VirtqueueException.class, () -> SplitVirtqueue.ofUserAddresses(mem, 16, d, a, u + 2, 0), "used misaligned");
        assertThrows(VirtqueueException.class, () -> SplitVirtqueue.ofUserAddresses(mem, 16, d, a, end - 64, 0), "used ring crosses the end");
        assertThrows(VirtqueueException.class, () -> SplitVirtqueue.ofUserAddresses(mem, 12, d, a, u, 0), "not a power of two");
        assertThrows(VirtqueueException.class, () -> SplitVirtqueue.ofUserAddresses(mem, 65536, d, a, u, 0), "too large");
        assertThrows(VirtqueueException.class, () -> SplitVirtqueue.ofGuestPhysical(mem, 16, d, a, u, 0), "uvas are not gpas");
        SplitVirtqueue.ofGuestPhysical(mem, 16, driver.descGpa(), driver.availGpa(), driver.usedGpa(), 0);
    }

    @Test
    void driverAndDeviceOnTwoThreadsSeeEachOthersWrites() throws Exception {
        setUp(64, EVENT_IDX);
        final int total = 200_000;
        long[] bufs = new long[64];
        for (int i = 0; i < 64; i++) bufs[i] = driver.alloc(8);
        Throwable[] failure = new Throwable[1];
        Thread producer = new Thread(() -> {
            try {
                int[] h = new int[64], l = new int[64];
                long[] one = new long[1];
                int[] len = {8};
                int submitted = 0, completed = 0;
                while (completed < total) {
                    if (submitted < total && driver.freeDescriptors() > 0) {
                        one[0] = bufs[submitted & 63];
                        RawMemory.putLe64(driver.host(one[0], 8), submitted); // payload before publish
                        driver.submit(one, len, 1, 1);
                        submitted++;
                    }
                    int n = driver.pollUsed(h, l);
                    for (int i = 0; i < n; i++) {
                        if (l[i] != ((completed + i) & 0x7FFFFFFF)) throw new AssertionError("used len " + l[i] + " at " + (completed + i));
                    }
                    completed += n;
                }
            } catch (Throwable t) {
                failure[0] = t;
            }
        }, "driver");
        producer.start();
        long deadline = System.nanoTime() + 60_000_000_000L;
        int seen = 0;
        while (seen < total && System.nanoTime() < deadline && failure[0] == null) {
            if (!q.pop(chain)) {
                Thread.onSpinWait();
                continue;
            }
            long payload = RawMemory.getLe64(chain.address(0));
            assertEquals(seen, payload, "device read the payload published before avail->idx");
            q.pushUsed(chain.head(), seen);
            q.publishUsed();
            seen++;
        }
        producer.join(60_000);
        if (failure[0] != null) throw new AssertionError(failure[0]);
        assertEquals(total, seen);
        assertFalse(producer.isAlive());
    }

    // ---------------------------------------------------------------- no garbage

    @Test
    void popAndPushUsedAllocateNothing() throws Exception {
        setUp(256, INDIRECT | EVENT_IDX);
        long[] gpa = blkRequest(4096);
        int[] len = {16, 4096, 1};
        com.sun.management.ThreadMXBean mx = (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
        long tid = Thread.currentThread().getId();
        IovecArray iov = new IovecArray(8);
        try {
            long sink = runRequests(100_000, gpa, len, iov); // warm-up: JIT, class init
            long before = mx.getThreadAllocatedBytes(tid);
            sink += runRequests(100_000, gpa, len, iov);
            long allocated = mx.getThreadAllocatedBytes(tid) - before;
            assertTrue(sink > 0);
            assertTrue(allocated < 4096, "allocated " + allocated + " bytes over 100k requests");
        } finally {
            iov.close();
        }
    }

    private long runRequests(int n, long[] gpa, int[] len, IovecArray iov) throws VirtqueueException {
        long sink = 0;
        for (int i = 0; i < n; i++) {
            if ((i & 1) == 0) driver.submit(gpa, len, 1, 3);
            else driver.submitIndirect(gpa, len, 1, 3);
            if (!q.pop(chain)) throw new AssertionError("nothing popped at " + i);
            sink += chain.fillIovecs(iov, 16, 4096);
            q.pushUsed(chain.head(), 4097);
            q.publishUsed();
            if (q.needsNotify()) sink++;
            sink += driver.pollUsed(heads, lens);
        }
        return sink;
    }
}
