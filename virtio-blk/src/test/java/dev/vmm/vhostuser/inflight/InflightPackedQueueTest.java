package dev.vmm.vhostuser.inflight;

import static dev.vmm.virtio.queue.PackedRing.*;
import static dev.vmm.virtio.queue.VirtioRing.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.virtio.memory.GuestMemory;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.DescriptorChain;
import dev.vmm.virtio.queue.PackedDescriptorList;
import dev.vmm.virtio.queue.PackedVirtqueue;
import dev.vmm.virtio.queue.driver.PackedQueueDriver;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/**
 * vhost-user.rst "Inflight I/O tracking", "For packed virtqueue": a back-end that dies after any
 * store of the take / complete / publish sequence leaves a region from which the next one
 * resubmits exactly the buffers the guest has not seen complete, in the order they were taken,
 * and recovers the ring positions (which a packed ring's front-end cannot give back).
 *
 * <p>A real device queue ({@link PackedVirtqueue}) and driver double ({@link PackedQueueDriver})
 * run a scenario; after every step, and for every prefix of the region stores a tracker call
 * makes (in the order the code makes them: descriptor entries, then header fields in offset
 * order), the region and the ring are copied. Each copy is a crash: a fresh tracker starts on the
 * copied region and must recover what the guest could see at that moment.
 */
class InflightPackedQueueTest {
    static final long GPA = 0x4000_0000L;
    static final long MEM = 1L << 20;
    static final long FEATURES = 1L << VIRTIO_F_VERSION_1 | 1L << VIRTIO_F_INDIRECT_DESC;

    int qsize;
    PackedQueueDriver driver;
    GuestMemory mem;
    PackedVirtqueue vq;
    InflightPackedQueue tracker;
    long region;
    long regionSize;
    final DescriptorChain chain = new DescriptorChain(64);
    /** Bytes after the region, filled with {@link #CANARY}: a store past the region lands there. */
    long guard;
    static final int CANARY = 0xA5;

    // ---- what the guest may see: the expectation at each crash point ----
    /** Buffer ids taken and recorded, not yet published as used, in take order. */
    final List<Integer> inflight = new ArrayList<>();
    /** Each taken id's descriptor addresses, to compare with what a restart reads back. */
    final Map<Integer, long[]> addrs = new HashMap<>();
    int expectUsed;   // slot | wrap << 15, as the driver sees it
    int expectAvail;  // slot | wrap << 15: where the next buffer starts
    final List<Integer> batch = new ArrayList<>();

    record Crash(String where, byte[] area, byte[] ring, List<Integer> inflight, int used, int avail, Map<Integer, long[]> addrs) {}
    final List<Crash> crashes = new ArrayList<>();

    void setUp(int size) throws Exception {
        qsize = size;
        driver = new PackedQueueDriver(size, MEM, GPA, FEATURES);
        mem = new GuestMemory();
        driver.shareWith(mem);
        vq = PackedVirtqueue.ofGuestPhysical(mem, size, driver.descGpa(), driver.driverEventGpa(), driver.deviceEventGpa(), FEATURES);
        regionSize = InflightPackedQueue.regionSize(size);
        region = RawMemory.allocate(regionSize + guard);
        RawMemory.fill(region, regionSize, 0); // a new memfd
        RawMemory.fill(region + regionSize, guard, CANARY);
        tracker = new InflightPackedQueue(region, size);
        vq.recordPopsInto(tracker.popList());
        assertNull(tracker.start(0, true, vq::descriptorFlags), "fresh region");
        expectUsed = INITIAL_BASE >>> 16 & 0xFFFF;
        expectAvail = INITIAL_BASE & 0xFFFF;
        crash("start");
    }

    @AfterEach
    void tearDown() {
        if (mem != null) mem.close();
        if (driver != null) driver.close();
        if (region != 0) RawMemory.free(region);
    }

    // ---- scenario steps ----

    /** A direct list of n descriptors (header readable, the rest writable). */
    int submit(int n) {
        long[] gpa = new long[n];
        int[] len = new int[n];
        for (int i = 0; i < n; i++) {
            gpa[i] = driver.alloc(64);
            len[i] = 64;
        }
        int id = driver.submit(gpa, len, 1, n);
        assertTrue(id >= 0, "ring space");
        addrs.put(id, gpa);
        return id;
    }

    int submitIndirect(int n) {
        long[] gpa = new long[n];
        int[] len = new int[n];
        for (int i = 0; i < n; i++) {
            gpa[i] = driver.alloc(64);
            len[i] = 64;
        }
        int id = driver.submitIndirect(gpa, len, 1, n);
        assertTrue(id >= 0);
        addrs.put(id, new long[] {driver.indirectTable(id, n)});
        return id;
    }

    void pop(int expectedId) throws Exception {
        assertTrue(vq.pop(chain));
        assertEquals(expectedId, chain.head());
        crash("popped " + expectedId + " (ring read, not recorded)");
        tornStores("recording " + expectedId, () -> tracker.popped(expectedId), false);
        inflight.add(expectedId);
        expectAvail = vq.lastAvailIdx() & 0xFFFF;
        crash("recorded " + expectedId);
    }

    void complete(int id) {
        tracker.completing(id);
        vq.pushUsed(id, 1);
        batch.add(id);
        crash("pushed " + id);
    }

    void publish() {
        tornStores("linking the batch", tracker::beforePublish, false);
        vq.publishUsed();
        inflight.removeAll(batch);
        batch.clear();
        expectUsed = vq.lastUsedIdx();
        crash("published to the ring");
        tornStores("clearing the batch", () -> tracker.published(vq.lastUsedIdx()), true);
        crash("batch cleared");
    }

    void reap(int n) {
        int[] ids = new int[qsize];
        int[] lens = new int[qsize];
        assertEquals(n, driver.pollUsed(ids, lens), "the driver sees the published batches");
    }

    // ---- crash points ----

    void crash(String where) {
        crashes.add(new Crash(where, copy(region, regionSize), copy(driver.host(driver.descGpa(), 16L * qsize), 16L * qsize),
                List.copyOf(inflight), expectUsed, expectAvail, Map.copyOf(addrs)));
    }

    /**
     * Runs {@code op} and records a crash after each prefix of its region stores: u16 fields that
     * changed, descriptor entries first, then the header in offset order (the code's order).
     * {@code afterExpectation}: torn states already carry the expectation after the op (the op
     * follows the ring publish).
     */
    void tornStores(String what, Runnable op, boolean afterExpectation) {
        byte[] before = copy(region, regionSize);
        op.run();
        byte[] after = copy(region, regionSize);
        List<Integer> changed = new ArrayList<>();
        for (int off = 32; off < regionSize; off += 2) if (differs(before, after, off)) changed.add(off);
        for (int off = 0; off < 32; off += 2) if (differs(before, after, off)) changed.add(off);
        for (int k = 1; k < changed.size(); k++) {
            byte[] torn = before.clone();
            for (int i = 0; i < k; i++) {
                int off = changed.get(i);
                torn[off] = after[off];
                torn[off + 1] = after[off + 1];
            }
            crashes.add(new Crash(what + ", " + k + "/" + changed.size() + " stores", torn,
                    copy(driver.host(driver.descGpa(), 16L * qsize), 16L * qsize), List.copyOf(inflight), expectUsed, expectAvail,
                    Map.copyOf(addrs)));
        }
        if (afterExpectation) {
            // torn states of a call after the ring publish: the guest may have seen the batch
            for (int i = crashes.size() - (changed.size() - 1); i < crashes.size(); i++) {
                Crash c = crashes.get(i);
                crashes.set(i, new Crash(c.where, c.area, c.ring, List.copyOf(inflight), expectUsed, expectAvail, c.addrs));
            }
        }
    }

    static boolean differs(byte[] a, byte[] b, int off) {
        return a[off] != b[off] || a[off + 1] != b[off + 1];
    }

    static byte[] copy(long addr, long len) {
        byte[] b = new byte[(int) len];
        for (int i = 0; i < len; i++) b[i] = (byte) RawMemory.getByte(addr + i);
        return b;
    }

    /** A fresh back-end on each crash's copy recovers exactly the expectation. */
    void verifyEveryCrash() {
        assertTrue(crashes.size() > 20, "the scenario has crash points: " + crashes.size());
        long area = RawMemory.allocate(regionSize);
        try {
            for (Crash c : crashes) {
                for (int i = 0; i < c.area.length; i++) RawMemory.putByte(area + i, c.area[i]);
                InflightPackedQueue second = new InflightPackedQueue(area, qsize);
                // SET_VRING_BASE after a crash is stale for packed rings: pass the initial one, unused
                InflightPackedQueue.Recovery r = second.start(0, true,
                        slot -> (c.ring[16 * slot + 14] & 0xFF) | (c.ring[16 * slot + 15] & 0xFF) << 8);
                assertNotNull(r, c.where + ": recovered, not started afresh");
                List<Integer> ids = new ArrayList<>();
                for (PackedDescriptorList l : r.resubmit()) {
                    ids.add(l.id());
                    long[] a = c.addrs.get(l.id());
                    assertEquals(a.length, l.count(), c.where + ": descriptors of " + l.id());
                    for (int i = 0; i < a.length; i++) assertEquals(a[i], l.addr(i), c.where + ": descriptor " + i + " of " + l.id());
                }
                assertEquals(c.inflight, ids, c.where + ": resubmitted in take order");
                assertEquals(c.used, r.usedSlot() | (r.usedWrap() ? 1 << 15 : 0), c.where + ": used position");
                assertEquals(c.avail, r.availSlot() | (r.availWrap() ? 1 << 15 : 0), c.where + ": avail position");
            }
        } finally {
            RawMemory.free(area);
        }
    }

    // ---- tests ----

    @Test
    void regionSizeIsDpdksAndHoldsHeaderAndEntries() {
        assertEquals(320, InflightPackedQueue.regionSize(8)); // ALIGN_UP(32 + 32*8, 64)
        assertEquals(4160, InflightPackedQueue.regionSize(128));
        assertEquals(1048640, InflightPackedQueue.regionSize(32768));
    }

    @Test
    void aFreshRegionIsInitialisedAsTheSpecLaysItOut() throws Exception {
        setUp(8);
        assertEquals(InflightPackedQueue.VERSION, RawMemory.getLe16(region + 8), "version");
        assertEquals(8, RawMemory.getLe16(region + 10), "desc_num");
        assertEquals(0, RawMemory.getLe16(region + 12), "free_head");
        assertEquals(1, RawMemory.getByte(region + 20), "used_wrap_counter starts at 1");
        assertEquals(1, RawMemory.getByte(region + 21), "old_used_wrap_counter");
        for (int e = 0; e < 8; e++) assertEquals(e + 1, RawMemory.getLe16(region + 32 + 32 * e + 2), "next of " + e);
    }

    @Test
    void takenListsAreRecordedAtTheSpecsOffsets() throws Exception {
        setUp(8);
        int a = submit(2);
        pop(a);
        long head = region + 32; // desc[0]
        assertEquals(1, RawMemory.getByte(head), "inflight");
        assertEquals(1, RawMemory.getLe16(head + 4), "last: the second entry");
        assertEquals(2, RawMemory.getLe16(head + 6), "num");
        assertEquals(1, RawMemory.getLe64(head + 8), "counter");
        assertEquals(addrs.get(a)[0], RawMemory.getLe64(head + 24), "addr");
        assertEquals(64, RawMemory.getLe32(head + 20), "len");
        assertEquals(addrs.get(a)[1], RawMemory.getLe64(head + 32 + 24), "addr of the second entry");
        assertEquals(a, RawMemory.getLe16(head + 32 + 16), "id in the last entry");
        assertEquals(2, RawMemory.getLe16(region + 12), "free_head");
        assertEquals(2, RawMemory.getLe16(region + 14), "old_free_head");
    }

    @Test
    void crashAtEveryStepOfOutOfOrderBatchesAcrossWraps() throws Exception {
        setUp(8);
        int a = submit(2);
        int b = submit(1);
        int c = submit(3);
        pop(a);
        pop(b);
        pop(c);
        complete(c); // C's used descriptor overwrites A's first slot: only the region still has A
        complete(a);
        publish();
        reap(2);
        int d = submit(2); // slots 6, 7
        int e = submit(2); // slots 0, 1 of the next lap
        pop(d);
        pop(e);
        complete(b);
        publish();
        complete(e);
        complete(d);
        publish(); // the used position wraps
        reap(3);
        int f = submitIndirect(3);
        pop(f);
        int g = submit(1);
        pop(g);
        complete(g);
        publish();
        complete(f);
        publish();
        reap(2);
        verifyEveryCrash();
    }

    /** Where the first byte after the region that is not {@link #CANARY} is, or -1. */
    long firstStoreOutside() {
        for (long i = 0; i < guard; i++) if (RawMemory.getByte(region + regionSize + i) != CANARY) return regionSize + i;
        return -1;
    }

    /** What a hostile front-end may do to the area at any time. */
    void rewriteArea(Random r) {
        switch (r.nextInt(4)) {
            case 0 -> RawMemory.fill(region, regionSize, 0xFF); // every index 0xFFFF
            case 1 -> { for (long i = 0; i < regionSize; i++) RawMemory.putByte(region + i, r.nextInt(256)); }
            case 2 -> { // the fields the tracker used to read back: free_head, used_idx, and each entry's next/last/num
                for (int off : new int[] {12, 14, 16, 18}) RawMemory.putLe16(region + off, 0xFFFF);
                for (int e = 0; e < qsize; e++) for (int f : new int[] {2, 4, 6}) RawMemory.putLe16(region + 32 + 32L * e + f, 0xFFFF);
            }
            default -> { for (int k = 0; k < 8; k++) RawMemory.putByte(region + r.nextInt((int) regionSize), r.nextInt(256)); }
        }
    }

    /**
     * Regression (a front-end rewriting the area between a pop and its completion made
     * beforePublish() store at desc(last) for last = 0xFFFF, 2 MB past a 320-byte region): the
     * area is write-only in steady state, so whatever it holds the tracker stores inside it and
     * the ring keeps working.
     */
    @Test
    void aFrontEndRewritingTheAreaCannotMakeTheTrackerStoreOutsideIt() throws Exception {
        guard = 32L * 0x10000 + 64; // past desc(0xFFFF) + 32
        setUp(8);
        Random r = new Random(7);
        for (int round = 0; round < 300; round++) {
            List<Integer> ids = new ArrayList<>();
            int slots = 0;
            while (ids.size() < 3) {
                int n = 1 + r.nextInt(3);
                if (slots + n > qsize) break;
                slots += n;
                ids.add(submit(n));
            }
            for (int id : ids) {
                assertTrue(vq.pop(chain));
                assertEquals(id, chain.head());
                tracker.popped(id);
                if (r.nextBoolean()) rewriteArea(r);
            }
            rewriteArea(r);
            java.util.Collections.shuffle(ids, r);
            for (int id : ids) {
                tracker.completing(id);
                vq.pushUsed(id, 1);
            }
            if (r.nextBoolean()) rewriteArea(r);
            tracker.beforePublish();
            assertEquals(-1, firstStoreOutside(), "round " + round + ": a store outside the region at this offset");
            vq.publishUsed();
            rewriteArea(r);
            tracker.published(vq.lastUsedIdx());
            assertEquals(-1, firstStoreOutside(), "round " + round + ": a store outside the region at this offset");
            int[] got = new int[qsize];
            assertEquals(ids.size(), driver.pollUsed(got, new int[qsize]), "round " + round + ": the ring goes on");
        }
    }

    @Test
    void crashAroundABatchOfExactlyOneLap() throws Exception {
        // used_idx == old_used_idx after linking such a batch: only the wrap counter differs
        setUp(4);
        int[] ids = {submit(1), submit(2), submit(1)};
        for (int id : ids) pop(id);
        for (int id : ids) complete(id);
        publish();
        reap(3);
        verifyEveryCrash();
    }

    @Test
    void aRestartedBackendResubmitsThenContinuesTheRing() throws Exception {
        setUp(8);
        int a = submit(2);
        int b = submit(3);
        int c = submit(1);
        pop(a);
        pop(b);
        pop(c);
        complete(b);
        publish();
        reap(1);
        int d = submit(3); // not taken before the crash
        // crash: a new queue and tracker on the same ring and region, positions from the region
        PackedVirtqueue vq2 = PackedVirtqueue.ofGuestPhysical(mem, 8, driver.descGpa(), driver.driverEventGpa(), driver.deviceEventGpa(), FEATURES);
        vq2.setLastAvailIdx(INITIAL_BASE); // what a front-end sends for a packed ring after a crash
        InflightPackedQueue t2 = new InflightPackedQueue(region, 8);
        vq2.recordPopsInto(t2.popList());
        InflightPackedQueue.Recovery r = t2.start(0, true, vq2::descriptorFlags);
        vq2.restore(r.availSlot(), r.availWrap(), r.usedSlot(), r.usedWrap());
        List<Integer> again = new ArrayList<>();
        for (PackedDescriptorList l : r.resubmit()) {
            vq2.popRecorded(l, chain);
            again.add(chain.head());
            assertEquals(addrs.get(l.id()).length, chain.segmentCount());
            t2.completing(chain.head());
            vq2.pushUsed(chain.head(), 1);
        }
        assertEquals(List.of(a, c), again);
        assertTrue(vq2.pop(chain), "the buffer submitted before the restart is found where the driver put it");
        assertEquals(d, chain.head());
        t2.popped(d);
        t2.completing(d);
        vq2.pushUsed(d, 1);
        t2.beforePublish();
        vq2.publishUsed();
        t2.published(vq2.lastUsedIdx());
        reap(3);
        assertEquals(vq2.lastUsedIdx(), t2.usedIdx(), "region and ring agree");
        // and a third back-end finds nothing in flight and the same positions
        InflightPackedQueue.Recovery r3 = new InflightPackedQueue(region, 8).start(0, true, vq2::descriptorFlags);
        assertTrue(r3.resubmit().isEmpty());
        assertEquals(vq2.lastAvailIdx() & 0x7FFF, r3.availSlot());
        assertEquals(vq2.lastUsedIdx() & 0x7FFF, r3.usedSlot());
    }
}
