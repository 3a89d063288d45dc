package dev.vmm.core.block;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.vmm.core.linux.Errno;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@link RawFileDriver#grow}: what a format driver uses to allocate past the end of its file. */
class RawFileDriverGrowTest {
    @TempDir
    Path dir;

    @Test
    void growsNeverShrinksAndRefusesWhenReadOnly() throws Exception {
        Path p = dir.resolve("g.img");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(4096);
        }
        try (RawFileDriver d = RawFileDriver.open(p, false, false)) {
            d.grow(1 << 20);
            assertEquals(1 << 20, d.size());
            assertEquals(1 << 20, Files.size(p));
            d.grow(8192);
            assertEquals(1 << 20, d.size(), "never shrinks");
        }
        try (RawFileDriver d = RawFileDriver.open(p, true, false)) {
            assertEquals(Errno.EROFS, assertThrows(BlockException.class, () -> d.grow(2 << 20)).errno());
        }
        try (RawFileDriver d = RawFileDriver.open(p, false, true)) {
            assertEquals(Errno.EINVAL, assertThrows(BlockException.class, () -> d.grow((1 << 20) + 1)).errno(),
                    "O_DIRECT sizes stay aligned");
        }
    }
}
