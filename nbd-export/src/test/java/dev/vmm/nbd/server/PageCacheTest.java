package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.linux.LibC;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** cachestat(2) decides whether a READ may leave with sendfile: only a range wholly in the page cache. */
class PageCacheTest {
    @TempDir Path tmp;

    @Test
    void aRangeIsResidentAfterItWasReadAndNotAfterItWasDropped() throws Exception {
        Path f = tmp.resolve("f");
        Files.write(f, new byte[1 << 20]);
        int fd = LibC.open(f.toString(), LibC.O_RDONLY);
        try {
            LibC.fdatasync(fd); // clean pages can be dropped
            assertEquals(0, LibC.posix_fadvise(fd, 0, 0, 4 /* POSIX_FADV_DONTNEED */));
            assertFalse(PageCache.resident(fd, 0, 1 << 20), "dropped from the page cache");
            Files.readAllBytes(f);
            assertTrue(PageCache.resident(fd, 0, 1 << 20), "read into the page cache");
            assertTrue(PageCache.resident(fd, 4096 + 100, 8192), "an unaligned part of it");
            assertEquals(0, LibC.posix_fadvise(fd, 512 << 10, 4096, 4));
            assertFalse(PageCache.resident(fd, 0, 1 << 20), "one page missing");
            assertTrue(PageCache.resident(fd, 0, 512 << 10), "the part before it");
        } finally {
            LibC.close(fd);
        }
    }
}
