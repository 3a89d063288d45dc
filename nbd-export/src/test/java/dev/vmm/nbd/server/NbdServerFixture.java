package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.*;
import static dev.vmm.nbd.protocol.NbdCmdFlags.*;
import static dev.vmm.nbd.protocol.NbdRep.*;
import static dev.vmm.nbd.protocol.NbdReplyType.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.client.NbdClient.Chunk;
import dev.vmm.nbd.client.NbdClient.OptionReply;
import dev.vmm.nbd.client.NbdClient.Reply;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdInfo;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdTransmissionFlags;
import dev.vmm.nbd.testing.NbdTestClient;
import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** An in-process NBD server on a 64 MiB image (first MiB random data, the rest a hole). */
abstract class NbdServerFixture {
    static final int SIZE = 64 << 20;

    @TempDir Path tmp;
    IOThread main;
    IOThread iot;
    NbdServer server;
    Path image;
    RawFileDriver driver;
    RawFileDriver roDriver;

    @BeforeEach
    void start() throws Exception {
        start(maxConnections(), handshakeSeconds());
    }

    int maxConnections() { return 0; }

    int handshakeSeconds() { return 10; }

    /** TLS credentials the server requires, or null (the default: no TLS). */
    dev.vmm.core.tls.TlsCredentials tls() throws Exception { return null; }

    void start(int maxConnections, int handshakeSeconds) throws Exception {
        main = IOThread.start("main");
        iot = IOThread.start("iot-test");
        image = tmp.resolve("disk.img");
        try (var f = new java.io.RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(SIZE);
            byte[] data = new byte[1 << 20];
            new Random(1).nextBytes(data);
            f.seek(0);
            f.write(data); // first MiB data, the rest a hole
        }
        driver = RawFileDriver.open(image, false, false);
        roDriver = RawFileDriver.open(image, true, false);
        BlockNode node = new BlockNode("disk0", driver, iot);
        BlockNode roNode = new BlockNode("ro", roDriver, iot);
        server = new NbdServer(main, new NbdServer.Config(new InetSocketAddress("127.0.0.1", 0), maxConnections, handshakeSeconds, tls()));
        server.addExport(new NbdExport("e0", "disk0", "the disk", node, true));
        server.addExport(new NbdExport("e1", "ro", null, roNode, false));
        server.start();
    }

    @AfterEach
    void stop() {
        server.stop(5000);
        iot.submit(() -> { driver.close(); roDriver.close(); return null; }).join();
        iot.shutdown(5000);
        main.shutdown(5000);
    }

    NbdTestClient client() throws IOException {
        return new NbdTestClient((InetSocketAddress) server.boundAddress()).handshake();
    }

    byte[] fileBytes(long offset, int len) throws IOException {
        byte[] all = Files.readAllBytes(image);
        byte[] out = new byte[len];
        System.arraycopy(all, (int) offset, out, 0, len);
        return out;
    }

    static byte[] random(int len, long seed) {
        byte[] b = new byte[len];
        new Random(seed).nextBytes(b);
        return b;
    }

}
