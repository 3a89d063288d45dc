package dev.vmm.core.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.aio.AioMode;
import dev.vmm.core.aio.IoEngines;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code --blockdev ...,aio=}: QEMU's key, its cache.direct rule, and the engine a node gets. */
class BlockdevAioTest {
    @TempDir
    Path dir;
    Daemon daemon;
    Path img;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        img = dir.resolve("d.img");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
    }

    @AfterEach
    void stop() {
        daemon.shutdown();
    }

    BlockNode add(String name, String extra) throws Exception {
        return daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=" + name + ",filename=" + img + extra, null));
    }

    @Test
    void nativeNeedsCacheDirectAsInQemu() {
        OptionException e = assertThrows(OptionException.class, () -> add("n", ",aio=native"));
        assertTrue(e.getMessage().contains("aio=native was specified, but it requires cache.direct=on, which was not specified."),
                e.getMessage());
    }

    @Test
    void eachModeGetsItsEngine() throws Exception {
        RawFileDriver threads = (RawFileDriver) add("t", ",aio=threads").driver();
        assertEquals(AioMode.THREADS, threads.engine().mode());
        RawFileDriver uring = (RawFileDriver) add("u", ",aio=io_uring").driver();
        RawFileDriver nat = (RawFileDriver) add("n", ",aio=native,cache.direct=on").driver();
        AioMode expected = IoEngines.uringUnavailable() == null ? AioMode.IO_URING : AioMode.THREADS;
        assertEquals(expected, uring.engine().mode());
        assertEquals(expected, nat.engine().mode());
        assertEquals(AioMode.NATIVE, nat.aio());
    }

    @Test
    void unknownModeIsRefusedByName() {
        OptionException e = assertThrows(OptionException.class, () -> add("x", ",aio=posix"));
        assertTrue(e.getMessage().contains("'aio'") || e.getMessage().contains("aio"), e.getMessage());
    }
}
