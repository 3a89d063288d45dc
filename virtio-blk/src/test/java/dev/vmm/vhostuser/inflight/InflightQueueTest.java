package dev.vmm.vhostuser.inflight;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.memory.RawMemory;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * vhost-user.rst "Inflight I/O tracking": a back-end that dies at any point between taking a
 * request and publishing its completion leaves a region from which the next one resubmits
 * exactly the requests the guest has not seen complete, in the order they were taken. Each
 * test "kills" the first back-end by dropping its object and starts a second on the same memory.
 */
class InflightQueueTest {
    static final int QSIZE = 8;
    long region;

    @BeforeEach
    void map() {
        long size = InflightQueue.regionSize(QSIZE);
        region = RawMemory.allocate(size);
        RawMemory.fill(region, size, 0); // what a new memfd reads as
    }

    @AfterEach
    void unmap() {
        RawMemory.free(region);
    }

    @Test
    void regionSizeMatchesLibvhostUser() {
        assertEquals(192, InflightQueue.regionSize(8)); // ALIGN_UP(16*8 + 2, 64)
        assertEquals(2112, InflightQueue.regionSize(128));
        assertTrue(InflightQueue.regionSize(QSIZE) >= 16 + 16L * QSIZE, "header and descriptors fit");
    }

    @Test
    void aFreshRegionIsInitialisedAndNothingIsResubmitted() {
        InflightQueue q = new InflightQueue(region, QSIZE);
        assertNull(q.start(0));
        assertEquals(InflightQueue.VERSION, RawMemory.getLe16(region + 8));
        assertEquals(QSIZE, RawMemory.getLe16(region + 10));
    }

    @Test
    void takenButNotCompletedIsResubmittedInTakeOrder() {
        InflightQueue first = new InflightQueue(region, QSIZE);
        first.start(0);
        first.popped(6);
        first.popped(1);
        first.popped(4);
        first.completing(1); // 1 completed and published, 6 and 4 not
        first.beforePublish();
        first.published(1);
        assertArrayEquals(new int[] {6, 4}, new InflightQueue(region, QSIZE).start(1));
    }

    @Test
    void dyingAfterUsedIdxWasPublishedButBeforeTheBatchWasClearedDoesNotResubmitTheBatch() {
        InflightQueue first = new InflightQueue(region, QSIZE);
        first.start(0);
        first.popped(2);
        first.popped(5);
        first.popped(7);
        first.completing(2);
        first.completing(5);
        first.beforePublish();
        // the driver saw used->idx = 2 (heads 2 and 5) ... and the back-end died before published()
        int[] again = new InflightQueue(region, QSIZE).start(2);
        assertArrayEquals(new int[] {7}, again, "the guest saw 2 and 5 complete: re-running them could overwrite reused buffers");
        assertEquals(2, RawMemory.getLe16(region + 14), "used_idx repaired");
    }

    @Test
    void dyingBeforeUsedIdxWasPublishedResubmitsTheWholeBatch() {
        InflightQueue first = new InflightQueue(region, QSIZE);
        first.start(0);
        first.popped(3);
        first.popped(0);
        first.completing(3);
        first.completing(0);
        first.beforePublish(); // died here: used->idx still 0 in guest memory
        assertArrayEquals(new int[] {3, 0}, new InflightQueue(region, QSIZE).start(0));
    }

    @Test
    void countersKeepOrderAcrossRestartsAndIndicesWrap() {
        InflightQueue first = new InflightQueue(region, QSIZE);
        first.start(65534);
        first.popped(1);
        first.completing(1);
        first.beforePublish();
        first.published(65535);
        first.popped(2);
        InflightQueue second = new InflightQueue(region, QSIZE);
        assertArrayEquals(new int[] {2}, second.start(65535));
        second.popped(3); // taken after the resubmitted one: must sort after it next time
        second.popped(4);
        second.completing(2);
        second.beforePublish();
        second.published(0); // 65535 + 1 wraps
        assertArrayEquals(new int[] {3, 4}, new InflightQueue(region, QSIZE).start(0));
    }
}
