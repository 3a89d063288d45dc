package dev.vmm.core.stats;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.Test;

class HandoffLogTest {
    @Test
    void keepsTheLastMovesAndCountsThemAll() {
        HandoffLog log = new HandoffLog();
        for (int i = 1; i <= HandoffLog.CAPACITY + 10; i++) log.record(new HandoffLog.Handoff("disk0", "iot0", "iot1", i * 1000L, i));
        List<HandoffLog.Handoff> recent = log.recent();
        assertEquals(HandoffLog.CAPACITY, recent.size());
        assertEquals(11, recent.get(0).epochMillis(), "oldest kept");
        assertEquals(HandoffLog.CAPACITY + 10, recent.get(recent.size() - 1).epochMillis(), "newest last");
        assertEquals(HandoffLog.CAPACITY + 10, log.total());
        assertEquals((HandoffLog.CAPACITY + 10) * 1000L, log.pauses().max());
    }
}
