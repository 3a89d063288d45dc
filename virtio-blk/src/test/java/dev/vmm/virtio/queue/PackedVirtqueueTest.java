package dev.vmm.virtio.queue;

import static dev.vmm.virtio.queue.PackedRing.*;
import static dev.vmm.virtio.queue.VirtioRing.*;
import static org.junit.jupiter.api.Assertions.*;

import java.lang.management.ManagementFactory;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.VirtqueueException.Kind;
import dev.vmm.virtio.queue.driver.PackedQueueDriver;

/** Device-side packed ring against the driver double, named after virtio 1.2 §2.8 sections. */
class PackedVirtqueueTest {
    private static final long GPA = 0x4000_0000L;
    private static final long MEM = 1L << 20;
    private static final long INDIRECT = 1L << VIRTIO_F_INDIRECT_DESC;
    private static final long EVENT_IDX = 1L << VIRTIO_F_EVENT_IDX;

    private PackedQueueDriver driver;
    private GuestMemory mem;
    private PackedVirtqueue q;
    private final DescriptorChain chain = new DescriptorChain(1024);
    private final int[] ids = new int[64];
    private final int[] lens = new int[64];

    private void setUp(int size, long features) throws Exception {
        driver = new PackedQueueDriver(size, MEM, GPA, features);
        mem = new GuestMemory();
        driver.shareWith(mem);
        q = newQueue(features);
    }

    private PackedVirtqueue newQueue(long features) throws VirtqueueException {
        return PackedVirtqueue.ofUserAddresses(mem, driver.queueSize(), driver.descUserAddr(),
                driver.driverEventUserAddr(), driver.deviceEventUserAddr(), features);
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

    private void complete(int id, int written) {
        q.pushUsed(id, written);
        q.publishUsed();
    }

    @Test
    void simpleListPopsWithHostAddressesAndCompletes_2_8_6() throws Exception {
        setUp(256, 0);
        long[] gpa = blkRequest(512);
        RawMemory.putLe64(driver.host(gpa[0], 8), 0xABCDEF);
        int id = driver.submit(gpa, new int[] {16, 512, 1}, 1, 3);

        assertTrue(q.pop(chain));
        assertEquals(id, chain.head());
        assertEquals(3, chain.segmentCount());
        assertEquals(1, chain.readableCount());
        assertEquals(16, chain.readableLength());
        assertEquals(513, chain.writableLength());
        assertEquals(0xABCDEF, RawMemory.getLe64(chain.address(0)), "device mapping sees the driver's bytes");
        RawMemory.putByte(chain.address(2), 0x5A);
        assertEquals(0x5A, RawMemory.getByte(driver.host(gpa[2], 1)));
        assertFalse(q.pop(chain), "ring is empty");
        assertEquals(1, q.inFlightCount());

        q.pushUsed(id, 513);
        assertEquals(0, driver.pollUsed(ids, lens), "not visible before publishUsed");
        q.publishUsed();
        assertEquals(1, driver.pollUsed(ids, lens));
        assertEquals(id, ids[0]);
        assertEquals(513, lens[0]);
        assertEquals(256, driver.freeDescriptors());
        assertEquals(3, driver.nextUsed(), "driver skipped the list's three slots");
        assertEquals(3, q.lastUsedIdx() & 0x7FFF);
        assertEquals(0, q.inFlightCount());
    }

    @Test
    void indirectDescriptors_2_8_6() throws Exception {
        setUp(16, INDIRECT);
        long[] gpa = blkRequest(4096);
        int id = driver.submitIndirect(gpa, new int[] {16, 4096, 1}, 1, 3);
        assertTrue(q.pop(chain));
        assertEquals(id, chain.head());
        assertEquals(3, chain.segmentCount());
        assertEquals(16, chain.readableLength());
        assertEquals(4097, chain.writableLength());
        assertEquals(driver.host(gpa[1], 1) - driver.userAddress(), chain.address(1) - mem.gpaToHost(GPA, 1));
        complete(id, 1);
        assertEquals(1, driver.pollUsed(ids, lens));
        assertEquals(1, driver.nextUsed(), "an indirect buffer occupies one slot");
    }

    @Test
    void indirectTableIgnoresReservedFlagsAndIds_2_8_6() throws Exception {
        setUp(16, INDIRECT);
        long buf = driver.alloc(64), table = driver.alloc(32);
        // NEXT and a nested INDIRECT bit are reserved inside the table: the device ignores them.
        driver.writeTableDesc(table, 0, buf, 32, 777, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT);
        driver.writeTableDesc(table, 1, buf + 32, 32, 9, VIRTQ_DESC_F_WRITE);
        int id = driver.submitRaw(table, 32, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE);
        assertTrue(q.pop(chain));
        assertEquals(id, chain.head());
        assertEquals(2, chain.segmentCount());
        assertEquals(32, chain.readableLength());
        assertEquals(32, chain.writableLength());
    }

    @Test
    void outOfOrderCompletionsAreBatchedAndSkipByListLength_2_8_7() throws Exception {
        setUp(8, 0);
        long buf = driver.alloc(64);
        int a = driver.submit(new long[] {buf, buf, buf}, new int[] {8, 8, 8}, 1, 3);
        int b = driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        int c = driver.submit(new long[] {buf, buf}, new int[] {8, 8}, 1, 2);
        for (int i = 0; i < 3; i++) assertTrue(q.pop(chain));
        q.pushUsed(c, 2);
        q.pushUsed(a, 3);
        assertEquals(0, driver.pollUsed(ids, lens), "first used descriptor's flags are stored last");
        q.pushUsed(b, 1);
        q.publishUsed();
        assertEquals(3, driver.pollUsed(ids, lens));
        assertArrayEquals(new int[] {c, a, b}, java.util.Arrays.copyOf(ids, 3), "in completion order");
        assertArrayEquals(new int[] {2, 3, 1}, java.util.Arrays.copyOf(lens, 3));
        assertEquals(6, driver.nextUsed());
        assertEquals(8, driver.freeDescriptors());
    }

    @Test
    void wrapCountersFlipOverManyLapsOfANonPowerOfTwoRing_2_8_1() throws Exception {
        setUp(5, INDIRECT);
        long buf = driver.alloc(256);
        java.util.Random rnd = new java.util.Random(42);
        int[] inFlight = new int[5];
        int[] popped = new int[5];
        int submitted = 0, completed = 0, lapsSeen = 0;
        boolean lastWrap = driver.availWrap();
        while (completed < 500) {
            // Fill what fits with lists of 1..3 descriptors or indirect tables.
            while (true) {
                int n = 1 + rnd.nextInt(3);
                int id = rnd.nextInt(4) == 0
                        ? driver.submitIndirect(new long[] {buf, buf + 64, buf + 128}, new int[] {64, 64, 64}, 1, n)
                        : driver.submit(new long[] {buf, buf + 64, buf + 128}, new int[] {64, 64, 64}, 1, n);
                if (id < 0) break;
                RawMemory.putLe32(driver.host(buf + 192 + 4 * id, 4), submitted++);
            }
            int k = 0;
            while (q.pop(chain)) {
                assertEquals(64, chain.readableLength());
                popped[k++] = chain.head();
            }
            assertTrue(k > 0);
            // Complete in reverse order: out of order whenever k > 1.
            for (int i = k - 1; i >= 0; i--) q.pushUsed(popped[i], popped[i] + 1);
            q.publishUsed();
            int got = driver.pollUsed(ids, lens);
            assertEquals(k, got);
            for (int i = 0; i < got; i++) {
                assertEquals(popped[k - 1 - i], ids[i]);
                assertEquals(ids[i] + 1, lens[i]);
            }
            completed += got;
            if (driver.availWrap() != lastWrap) {
                lapsSeen++;
                lastWrap = driver.availWrap();
            }
            assertEquals(5, driver.freeDescriptors());
        }
        assertTrue(lapsSeen > 20, "laps " + lapsSeen);
        assertFalse(q.pop(chain));
        assertEquals(driver.nextAvail(), q.lastAvailIdx() & 0x7FFF);
        assertEquals(driver.availWrap(), (q.lastAvailIdx() & 0x8000) != 0);
        assertEquals(driver.nextUsed(), (q.lastAvailIdx() >>> 16) & 0x7FFF);
        assertEquals(driver.usedWrap(), q.lastAvailIdx() < 0, "bit 31: used wrap counter");
    }

    @Test
    void listWrappingAroundTheEndOfTheRing() throws Exception {
        setUp(4, 0);
        long buf = driver.alloc(64);
        for (int i = 0; i < 3; i++) {
            int id = driver.submit(new long[] {buf}, new int[] {8}, 1, 1);
            assertTrue(q.pop(chain));
            complete(id, 0);
            driver.pollUsed(ids, lens);
        }
        // Slots 3, 0, 1: the second and third carry the flipped wrap bits.
        int id = driver.submit(new long[] {buf, buf, buf}, new int[] {8, 8, 8}, 1, 3);
        assertTrue(q.pop(chain));
        assertEquals(id, chain.head());
        assertEquals(3, chain.segmentCount());
        complete(id, 16);
        assertEquals(1, driver.pollUsed(ids, lens));
        assertEquals(16, lens[0]);
        assertEquals(2, driver.nextUsed());
        assertFalse(driver.usedWrap());
    }

    // ---------------------------------------------------------------- event suppression

    private int popOne() throws VirtqueueException {
        assertTrue(q.pop(chain));
        return chain.head();
    }

    @Test
    void usedNotificationFlags_2_8_10() throws Exception {
        setUp(8, 0);
        long buf = driver.alloc(64);
        for (int i = 0; i < 3; i++) driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        int a = popOne(), b = popOne(), c = popOne();
        driver.setDriverEvent(RING_EVENT_FLAGS_DISABLE, 0);
        complete(a, 1);
        assertFalse(q.needsNotify(), "DISABLE");
        driver.setDriverEvent(RING_EVENT_FLAGS_ENABLE, 0);
        complete(b, 1);
        assertTrue(q.needsNotify(), "ENABLE");
        assertFalse(q.needsNotify(), "nothing new published");
        driver.setDriverEvent(RING_EVENT_FLAGS_DESC, 0);
        complete(c, 1);
        assertTrue(q.needsNotify(), "DESC without EVENT_IDX is not valid: notify");
    }

    @Test
    void usedNotificationAtADescriptorWithEventIdx_2_8_10() throws Exception {
        setUp(4, EVENT_IDX);
        long buf = driver.alloc(64);
        for (int i = 0; i < 4; i++) driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        int[] p = new int[4];
        for (int i = 0; i < 4; i++) p[i] = popOne();

        driver.setDriverEvent(RING_EVENT_FLAGS_DESC, PackedQueueDriver.offWrap(0, true));
        complete(p[0], 1);                            // used slot 0 -> 1: slot 0 was used
        assertTrue(q.needsNotify());

        driver.setDriverEvent(RING_EVENT_FLAGS_DESC, PackedQueueDriver.offWrap(3, true));
        complete(p[1], 1);                            // 1 -> 2: event at 3 not reached
        assertFalse(q.needsNotify());
        q.pushUsed(p[2], 1);
        q.pushUsed(p[3], 1);
        q.publishUsed();                              // 2 -> 4 = 0 of the next lap: crosses 3
        assertTrue(q.needsNotify());
        assertEquals(4, driver.pollUsed(ids, lens));

        // Next lap (wrap 0): event at slot 1 of wrap 0.
        for (int i = 0; i < 3; i++) driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        for (int i = 0; i < 3; i++) p[i] = popOne();
        driver.setDriverEvent(RING_EVENT_FLAGS_DESC, PackedQueueDriver.offWrap(1, false));
        complete(p[0], 1);                            // 0 -> 1
        assertFalse(q.needsNotify());
        complete(p[1], 1);                            // 1 -> 2: slot 1 used
        assertTrue(q.needsNotify());
        // An event index of the previous lap is already behind us.
        driver.setDriverEvent(RING_EVENT_FLAGS_DESC, PackedQueueDriver.offWrap(3, true));
        complete(p[2], 1);
        assertFalse(q.needsNotify());
    }

    @Test
    void kickSuppressionWithoutEventIdx_2_8_10() throws Exception {
        setUp(8, 0);
        long buf = driver.alloc(64);
        q.disableNotification();
        assertEquals(RING_EVENT_FLAGS_DISABLE, driver.deviceEventFlags());
        driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        assertFalse(driver.needsKick());
        assertTrue(q.enableNotification(), "a buffer arrived while kicks were off");
        assertEquals(RING_EVENT_FLAGS_ENABLE, driver.deviceEventFlags());
        popOne();
        assertFalse(q.enableNotification());
        driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        assertTrue(driver.needsKick());
    }

    @Test
    void kickSuppressionWithEventIdx_2_8_10() throws Exception {
        setUp(4, EVENT_IDX);
        long buf = driver.alloc(64);
        assertFalse(q.enableNotification(), "empty ring");
        assertEquals(RING_EVENT_FLAGS_DESC, driver.deviceEventFlags());
        assertEquals(PackedQueueDriver.offWrap(0, true), driver.deviceEventOffWrap());
        driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        assertTrue(driver.needsKick(), "device asked for a kick at slot 0");
        q.disableNotification();
        int id = popOne();
        driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        assertFalse(driver.needsKick(), "device is polling");
        assertTrue(q.enableNotification());
        int id2 = popOne();
        assertEquals(PackedQueueDriver.offWrap(2, true), driver.deviceEventOffWrap(), "pop advances off_wrap while enabled");
        complete(id, 0);
        complete(id2, 0);
        driver.pollUsed(ids, lens);
        // Across the end of the ring: slots 2, 3, then slot 0 of wrap 0.
        for (int i = 0; i < 2; i++) {
            driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
            assertTrue(driver.needsKick());
            complete(popOne(), 0);
            driver.pollUsed(ids, lens);
        }
        assertEquals(PackedQueueDriver.offWrap(0, false), driver.deviceEventOffWrap());
        assertFalse(q.enableNotification());
        driver.submit(new long[] {buf}, new int[] {8}, 0, 1);
        assertTrue(driver.needsKick(), "kick at slot 0 of the second lap");
    }

    // ---------------------------------------------------------------- vhost-user base

    @Test
    void vringBaseRoundTripsPositionsAndWrapCounters() throws Exception {
        setUp(6, 0);
        long buf = driver.alloc(64);
        for (int i = 0; i < 4; i++) {
            int id = driver.submit(new long[] {buf, buf}, new int[] {8, 8}, 1, 2);
            assertTrue(q.pop(chain));
            complete(id, 0);
            driver.pollUsed(ids, lens);
        }
        int base = q.lastAvailIdx();
        assertEquals(PackedRing.encodeBase(2, false, 2, false), base, "8 slots of a ring of 6: slot 2 of lap 2");
        q = newQueue(0);
        assertEquals(INITIAL_BASE, q.lastAvailIdx(), "fresh ring: both wrap counters 1");
        q.setLastAvailIdx(base);
        assertEquals(base, q.lastAvailIdx());
        int id = driver.submit(new long[] {buf}, new int[] {8}, 1, 1);
        assertTrue(q.pop(chain));
        assertEquals(id, chain.head());
        complete(id, 0);
        assertEquals(1, driver.pollUsed(ids, lens));

        // A frontend that sends only the avail half: used = avail, unless a zero upper half is a
        // plausible used position (slot 0 of an odd lap, at most a lap behind): QEMU's encoding wins.
        PackedVirtqueue other = newQueue(0);
        other.setLastAvailIdx(0x8003);
        assertEquals(PackedRing.encodeBase(3, true, 3, true), other.lastAvailIdx());
        other.setLastAvailIdx(0x8000);
        assertEquals(INITIAL_BASE, other.lastAvailIdx());
        other.setLastAvailIdx(PackedRing.encodeBase(3, false, 0, false));
        assertEquals(PackedRing.encodeBase(3, false, 0, false), other.lastAvailIdx(), "3 in flight after a lap");

        other.setLastAvailIdx(PackedRing.encodeBase(6, true, 0, true));
        assertTrue(other.isBroken());
        assertEquals(Kind.BROKEN, assertThrows(VirtqueueException.class, () -> other.pop(chain)).kind());
    }

    // ---------------------------------------------------------------- hostile drivers

    private void assertQueueStillServes() throws Exception {
        long buf = driver.alloc(32);
        int id = driver.submit(new long[] {buf}, new int[] {32}, 1, 1);
        assertTrue(q.pop(chain));
        assertEquals(id, chain.head());
        assertEquals(32, chain.totalLength());
        complete(id, 0);
        driver.pollUsed(ids, lens);
    }

    private void assertRequestError(int id, String messagePart) throws Exception {
        VirtqueueException e = popFails();
        assertTrue(e.getMessage().contains(messagePart), e.getMessage());
        assertEquals(Kind.REQUEST, e.kind(), e.getMessage());
        assertEquals(id, e.head());
        assertFalse(q.isBroken());
        complete(e.head(), 0); // the buffer was consumed and can be completed
        assertEquals(1, driver.pollUsed(ids, lens));
        assertEquals(id, ids[0]);
        assertQueueStillServes();
    }

    private void assertBroken(String messagePart) {
        VirtqueueException e = popFails();
        assertEquals(Kind.BROKEN, e.kind(), e.getMessage());
        assertTrue(e.getMessage().contains(messagePart), e.getMessage());
        assertTrue(q.isBroken());
        assertEquals(Kind.BROKEN, popFails().kind(), "stays broken");
    }

    @Test
    void endlessListBreaksTheQueue_2_8_5_1() throws Exception {
        setUp(8, 0);
        driver.submitEndlessList(driver.alloc(16), 16);
        assertBroken("still linked after 8");
    }

    @Test
    void bufferIdOutOfRangeBreaksTheQueue() throws Exception {
        setUp(8, 0);
        long buf = driver.alloc(16);
        driver.submitList(new long[] {buf}, new long[] {16}, new int[] {0}, 8, 1);
        assertBroken("buffer id 8");
    }

    @Test
    void bufferIdAlreadyInFlightBreaksTheQueue() throws Exception {
        setUp(8, 0);
        long buf = driver.alloc(16);
        int id = driver.submit(new long[] {buf}, new int[] {16}, 1, 1);
        assertTrue(q.pop(chain));
        driver.submitList(new long[] {buf}, new long[] {16}, new int[] {0}, id, 1);
        assertBroken("in flight");
    }

    @Test
    void wrongWrapBitsAtTheNextSlotMeanNothingIsAvailable_2_8_1() throws Exception {
        setUp(8, 0);
        long buf = driver.alloc(16);
        driver.submitWrongWrap(buf, 16, false);
        assertFalse(q.pop(chain), "AVAIL/USED of the other lap");
        driver.submitWrongWrap(buf, 16, true);
        assertFalse(q.pop(chain), "AVAIL == USED: a used descriptor");
        assertFalse(q.enableNotification());
        assertFalse(q.isBroken());
        assertQueueStillServes();
    }

    @Test
    void listWhoseTailIsNotAvailableBreaksTheQueue() throws Exception {
        setUp(8, 0);
        driver.submitTornList(driver.alloc(16), 16);
        assertBroken("not available");
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
        assertRequestError(driver.submitRaw(end - 16, 32, VIRTQ_DESC_F_INDIRECT), "indirect table");
    }

    @Test
    void badElementInTheMiddleOfAListIsARequestErrorForTheWholeList() throws Exception {
        setUp(8, 0);
        long buf = driver.alloc(16);
        int id = driver.submitList(new long[] {buf, 0, buf}, new long[] {16, 16, 16}, new int[] {0, 0, VIRTQ_DESC_F_WRITE}, 5, 3);
        assertRequestError(id, "not inside guest memory");
        assertEquals(4, q.lastUsedIdx() & 0x7FFF, "skipped the three slots, then one");
    }

    @Test
    void zeroLengthAndReadableAfterWritableAreRequestErrors_2_8_5_1() throws Exception {
        setUp(16, INDIRECT);
        long buf = driver.alloc(16);
        assertRequestError(driver.submitRaw(buf, 0, 0), "zero-length");
        int id = driver.submitIndirect(new long[] {buf, buf}, new int[] {16, 0}, 1, 2);
        assertRequestError(id, "zero-length");
        id = driver.submitList(new long[] {buf, buf}, new long[] {16, 16}, new int[] {VIRTQ_DESC_F_WRITE, 0}, 3, 2);
        assertRequestError(id, "readable descriptor after");
        id = driver.submitIndirect(new long[] {buf, buf}, new int[] {16, 16}, 2, 2);
        driver.writeTableDesc(driver.indirectTable(id, 2), 0, buf, 16, 0, VIRTQ_DESC_F_WRITE);
        assertRequestError(id, "readable descriptor after");
    }

    @Test
    void malformedIndirectDescriptorsAreRequestErrors_2_8_6_1() throws Exception {
        setUp(16, INDIRECT);
        long buf = driver.alloc(16);
        long table = driver.alloc(64);
        driver.writeTableDesc(table, 0, buf, 16, 0, 0);
        assertRequestError(driver.submitRaw(table, 24, VIRTQ_DESC_F_INDIRECT), "multiple of 16");
        assertRequestError(driver.submitRaw(table, 0, VIRTQ_DESC_F_INDIRECT), "multiple of 16");
        assertRequestError(driver.submitRaw(table, 0xFFFF_FFF0L, VIRTQ_DESC_F_INDIRECT), "multiple of 16");
        int id = driver.submitList(new long[] {table, buf}, new long[] {16, 16}, new int[] {VIRTQ_DESC_F_INDIRECT, 0}, 7, 2);
        assertRequestError(id, "linked by NEXT");
        id = driver.submitList(new long[] {buf, table}, new long[] {16, 16}, new int[] {0, VIRTQ_DESC_F_INDIRECT}, 7, 2);
        assertRequestError(id, "linked by NEXT");
    }

    @Test
    void indirectWithoutTheFeatureIsARequestError() throws Exception {
        setUp(16, 0);
        long[] gpa = blkRequest(512);
        int id = driver.submitIndirect(gpa, new int[] {16, 512, 1}, 1, 3);
        assertRequestError(id, "VIRTIO_F_INDIRECT_DESC");
    }

    @Test
    void listOfExactlyQueueSizeIsAcceptedAndMoreSegmentsThanTheChainHoldsIsNot() throws Exception {
        setUp(8, INDIRECT);
        long buf = driver.alloc(8);
        long[] g = new long[8];
        int[] l = new int[8];
        java.util.Arrays.fill(g, buf);
        java.util.Arrays.fill(l, 8);
        int id = driver.submit(g, l, 8, 8);
        assertTrue(q.pop(chain));
        assertEquals(8, chain.segmentCount());
        complete(id, 0);
        driver.pollUsed(ids, lens);
        DescriptorChain small = new DescriptorChain(4);
        id = driver.submitIndirect(g, l, 8, 8);
        VirtqueueException e = assertThrows(VirtqueueException.class, () -> q.pop(small));
        assertEquals(Kind.REQUEST, e.kind());
        assertEquals(id, e.head());
    }

    @Test
    void ringPartsOutsideMemoryOrMisalignedAreRefused() throws Exception {
        setUp(16, 0);
        long d = driver.descUserAddr(), dr = driver.driverEventUserAddr(), dv = driver.deviceEventUserAddr();
        long end = driver.userAddress() + MEM;
        assertEquals(Kind.BROKEN, assertThrows(VirtqueueException.class,
                () -> PackedVirtqueue.ofUserAddresses(mem, 16, end - 128, dr, dv, 0)).kind(), "ring crosses the end");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofUserAddresses(mem, 16, d + 8, dr, dv, 0), "ring misaligned");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofUserAddresses(mem, 16, d, dr + 2, dv, 0), "driver area misaligned");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofUserAddresses(mem, 16, d, dr, dv + 2, 0), "device area misaligned");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofUserAddresses(mem, 16, d, dr, end - 2, 0), "device area crosses the end");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofUserAddresses(mem, 16, d, end, dv, 0), "driver area outside");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofUserAddresses(mem, 32769, d, dr, dv, 0), "too large");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofUserAddresses(mem, 0, d, dr, dv, 0), "empty");
        assertThrows(VirtqueueException.class, () -> PackedVirtqueue.ofGuestPhysical(mem, 16, d, dr, dv, 0), "uvas are not gpas");
        PackedVirtqueue.ofGuestPhysical(mem, 16, driver.descGpa(), driver.driverEventGpa(), driver.deviceEventGpa(), 0);
        PackedVirtqueue.ofUserAddresses(mem, 12, d, dr, dv, 0); // any size, no power of two needed
    }

    // ---------------------------------------------------------------- concurrency

    @Test
    void driverAndDeviceOnTwoThreadsSeeEachOthersWrites() throws Exception {
        setUp(64, EVENT_IDX | INDIRECT);
        final int total = 200_000;
        long[] bufs = new long[64];
        for (int i = 0; i < 64; i++) bufs[i] = driver.alloc(16);
        Throwable[] failure = new Throwable[1];
        Thread producer = new Thread(() -> {
            try {
                int[] h = new int[64], l = new int[64];
                long[] two = new long[2];
                int[] len = {8, 8};
                int submitted = 0, completed = 0;
                while (completed < total) {
                    if (submitted < total) {
                        long b = bufs[submitted & 63];
                        two[0] = b;
                        two[1] = b + 8;
                        RawMemory.putLe64(driver.host(b, 8), submitted); // payload before the flags
                        int id = (submitted % 3 == 0) ? driver.submitIndirect(two, len, 1, 2)
                                : driver.submit(two, len, 1, submitted % 3);
                        if (id >= 0) submitted++;
                    }
                    int n = driver.pollUsed(h, l);
                    for (int i = 0; i < n; i++) {
                        if (l[i] != completed + i) throw new AssertionError("used len " + l[i] + " at " + (completed + i));
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
            assertEquals(seen, payload, "device read the payload published before the flags");
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
        driver.setDriverEvent(RING_EVENT_FLAGS_DESC, 0);
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
            q.disableNotification();
            if (!q.pop(chain)) throw new AssertionError("nothing popped at " + i);
            if (q.enableNotification()) sink++;
            sink += chain.fillIovecs(iov, 16, 4096);
            q.pushUsed(chain.head(), 4097);
            q.publishUsed();
            if (q.needsNotify()) sink++;
            sink += driver.pollUsed(ids, lens);
        }
        return sink;
    }
}
