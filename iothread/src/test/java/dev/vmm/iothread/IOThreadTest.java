package dev.vmm.iothread;

import static org.junit.jupiter.api.Assertions.*;

import io.netty.channel.epoll.Epoll;
import org.junit.jupiter.api.Test;

class IOThreadTest {
    @Test
    void epollIsAvailable() {
        assertTrue(Epoll.isAvailable(), () -> "epoll native library: " + Epoll.unavailabilityCause());
    }

    @Test
    void runsTasksOnItsOwnNamedThread() throws Exception {
        IOThread t = IOThread.start("iot-test");
        try {
            assertFalse(t.inThread());
            String name = t.call(() -> Thread.currentThread().getName());
            assertEquals("iothread-iot-test", name);
            assertTrue(t.call(t::inThread));
            assertSame(t.thread(), t.call(Thread::currentThread));
            assertThrows(IllegalStateException.class, () -> t.call(() -> { throw new IllegalStateException("boom"); }));
        } finally {
            assertTrue(t.shutdown(5000));
        }
    }
}
