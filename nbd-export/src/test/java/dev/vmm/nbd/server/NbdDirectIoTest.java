package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.client.NbdClient;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * An O_DIRECT image (cache.direct=on) served over NBD: READ data and WRITE payloads sit in
 * buffers aligned for O_DIRECT (a payload right behind a 28-byte request header is not), so no
 * request takes the driver's synchronous bounce path, and the data is right.
 */
class NbdDirectIoTest {
    @TempDir Path tmp;

    @Test
    void readsAndWritesOfAnODirectImageAreNotBounced() throws Exception {
        IOThread main = IOThread.start("main");
        IOThread iot = IOThread.start("iot-direct");
        Path image = tmp.resolve("d.img");
        try (var f = new java.io.RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(8 << 20);
        }
        RawFileDriver driver = RawFileDriver.open(image, false, true);
        NbdServer server = new NbdServer(main, new NbdServer.Config(new InetSocketAddress("127.0.0.1", 0), 0, 10, null));
        try {
            server.addExport(new NbdExport("e0", "d", null, new BlockNode("d", driver, iot), true));
            server.start();
            byte[] big = new byte[1 << 20];
            new Random(3).nextBytes(big);
            byte[] small = Arrays.copyOf(big, 4096);
            try (NbdClient c = NbdClient.open(server.boundAddress(), "d")) {
                c.write(1 << 20, big);
                for (int i = 0; i < 16; i++) c.write(4L << 20 | (long) i * 4096, small);
                assertArrayEquals(big, c.read(1 << 20, big.length));
                for (int i = 0; i < 16; i++) assertArrayEquals(small, c.read(4L << 20 | (long) i * 4096, 4096));
                c.disconnect();
            }
            byte[] file = Files.readAllBytes(image);
            assertArrayEquals(big, Arrays.copyOfRange(file, 1 << 20, 2 << 20));
            assertEquals(0, (long) iot.call(driver::bouncedRequests),
                    "O_DIRECT requests bounced (memory alignment " + driver.memoryAlignment() + ")");
        } finally {
            server.stop(5000);
            iot.call(() -> { driver.close(); return null; });
            iot.shutdown(5000);
            main.shutdown(5000);
        }
    }
}
