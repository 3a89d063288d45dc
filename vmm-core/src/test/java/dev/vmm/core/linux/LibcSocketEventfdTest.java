package dev.vmm.core.linux;

import static org.junit.jupiter.api.Assertions.*;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import org.junit.jupiter.api.Test;

/** The eventfd helpers the virtqueue data path uses for kicks and calls. */
class LibcSocketEventfdTest {
    @Test
    void writesAddUpAndAReadDrainsTheCounter() {
        int fd = LibcSocket.eventfd();
        try (Memory scratch = new Memory(8)) {
            long s = Pointer.nativeValue(scratch);
            assertEquals(0, LibcSocket.eventfdRead(fd, s), "empty non-blocking eventfd reads 0");
            LibcSocket.eventfdWrite(fd, 1, s);
            LibcSocket.eventfdWrite(fd, 2, s);
            assertEquals(3, LibcSocket.eventfdRead(fd, s));
            assertEquals(0, LibcSocket.eventfdRead(fd, s));
        } finally {
            LibcSocket.closeQuietly(fd);
        }
    }
}
