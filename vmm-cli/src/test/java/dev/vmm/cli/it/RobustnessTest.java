package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Malformed handshakes, framing violations and abrupt disconnects while a good client keeps
 * doing verified I/O: only the bad connection may suffer.
 */
@Timeout(180)
class RobustnessTest extends PeerTestBase {

    @Test
    void badClientsDoNotDisturbAGoodClientNorTheServer() throws Exception {
        Disk d = serveDisk(Images.sparse(tmp.resolve("disk.img"), 64 * MiB), true);
        Path stop = tmp.resolve("stop");
        Path goodOut = tmp.resolve("good.out");
        Path goodErr = tmp.resolve("good.err");
        Process good = background(new ProcessBuilder(python("nbd_checks.py", "goodclient", "uri=" + d.uri(),
                "stop=" + stop, "seconds=90")).redirectOutput(goodOut.toFile()).redirectError(goodErr.toFile()).start());
        long deadline = System.currentTimeMillis() + 20_000;
        while (!Files.readString(goodOut).contains("started")) {
            if (!good.isAlive() || System.currentTimeMillis() > deadline) {
                fail("good client did not start\n" + Files.readString(goodErr));
            }
            VmmProcess.sleep(20);
        }
        int port = d.port();
        Random rnd = new Random(1);

        // 1. garbage instead of the handshake, without reading the greeting
        try (RawNbd c = new RawNbd(port)) {
            byte[] junk = new byte[4096];
            rnd.nextBytes(junk);
            c.out.write(junk);
            c.out.flush();
            assertTrue(c.closedByServer(), "server kept a connection that sent garbage");
        } catch (IOException e) {
            // the server may reset while we are still writing: fine
        }
        // 2. garbage after the greeting
        try (RawNbd c = new RawNbd(port)) {
            c.readGreeting();
            byte[] junk = new byte[64];
            rnd.nextBytes(junk);
            c.out.write(junk);
            c.out.flush();
            assertTrue(c.closedByServer(), "server kept a connection with bad client flags/option magic");
        } catch (IOException e) {
            // reset while writing: fine
        }
        // 3. truncated option header, then close
        try (RawNbd c = new RawNbd(port)) {
            c.readGreeting();
            c.out.writeInt(RawNbd.NBD_FLAG_C_FIXED_NEWSTYLE | RawNbd.NBD_FLAG_C_NO_ZEROES);
            c.out.writeLong(RawNbd.IHAVEOPT);
            c.out.writeShort(0);
            c.out.flush();
        }
        // 4. huge option length, then close (the server must not allocate it)
        try (RawNbd c = new RawNbd(port)) {
            c.readGreeting();
            c.out.writeInt(RawNbd.NBD_FLAG_C_FIXED_NEWSTYLE | RawNbd.NBD_FLAG_C_NO_ZEROES);
            c.out.writeLong(RawNbd.IHAVEOPT);
            c.out.writeInt(3); // NBD_OPT_LIST
            c.out.writeInt(0x7fffffff);
            c.out.write(new byte[1000]);
            c.out.flush();
        }
        // 5. bad request magic after a correct handshake: the server drops that client
        try (RawNbd c = new RawNbd(port)) {
            assertEquals(64 * MiB, c.handshake("disk0"));
            c.request(0x12345678, 0, 0, 1, 0, 4096);
            assertTrue(c.closedByServer(), "server kept a connection after a bad request magic");
        }
        // 6. abrupt disconnect in the middle of a WRITE payload
        for (int i = 0; i < 5; i++) {
            try (RawNbd c = new RawNbd(port)) {
                c.handshake("disk0");
                c.request(RawNbd.NBD_REQUEST_MAGIC, 0, RawNbd.NBD_CMD_WRITE, 7, i * MiB, (int) MiB);
                c.out.write(new byte[1000 + i * 10_000]);
                c.out.flush();
            }
        }
        // 7. many connections that complete the handshake and vanish
        List<RawNbd> many = new ArrayList<>();
        try {
            for (int i = 0; i < 32; i++) {
                RawNbd c = new RawNbd(port);
                many.add(c);
                c.handshake("disk0");
            }
        } finally {
            many.forEach(RawNbd::close);
        }

        d.server().assertAlive();
        Files.writeString(stop, "stop");
        if (!good.waitFor(60, TimeUnit.SECONDS)) {
            fail("good client did not finish\n" + Files.readString(goodErr));
        }
        assertEquals(0, good.exitValue(), "good client failed:\n" + Files.readString(goodErr) + Files.readString(goodOut));
        assertTrue(Files.readString(goodOut).contains("ok goodclient"), Files.readString(goodOut));

        Run.cmd(Peers.require("nbdinfo"), "--size", d.uri()).expect(0);
        d.server().assertAlive();
        assertEquals(0, d.server().stop(), "exit code after SIGTERM");
    }
}
