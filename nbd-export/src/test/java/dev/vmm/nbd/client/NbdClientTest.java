package dev.vmm.nbd.client;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdHandshakeFlags;
import dev.vmm.nbd.protocol.NbdInfo;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdRep;
import dev.vmm.nbd.protocol.NbdTransmissionFlags;
import dev.vmm.nbd.server.NbdExport;
import dev.vmm.nbd.server.NbdServer;
import io.netty.channel.unix.DomainSocketAddress;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link NbdClient} against the in-process {@link NbdServer} on TCP and on a unix socket,
 * pipelined from two threads, and against a scripted server that breaks the protocol: every
 * misbehaviour must be an IOException saying what was wrong.
 */
@Timeout(60)
class NbdClientTest {
    static final int SIZE = 4 << 20;

    @TempDir Path tmp;
    IOThread main;
    IOThread iot;
    RawFileDriver driver;
    NbdServer tcp;
    NbdServer unix;

    @BeforeEach
    void start() throws Exception {
        main = IOThread.start("main");
        iot = IOThread.start("iot-test");
        Path image = tmp.resolve("disk.img");
        try (var f = new java.io.RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        driver = RawFileDriver.open(image, false, false);
        BlockNode node = new BlockNode("disk0", driver, iot);
        tcp = new NbdServer(main, new NbdServer.Config(new InetSocketAddress("127.0.0.1", 0), 0, 10));
        tcp.addExport(new NbdExport("e0", "disk0", null, node, true));
        tcp.start();
        unix = new NbdServer(main, new NbdServer.Config(new DomainSocketAddress(tmp.resolve("nbd.sock").toString()), 0, 10));
        unix.addExport(new NbdExport("e1", "disk0", null, node, true));
        unix.start();
    }

    @AfterEach
    void stop() {
        tcp.stop(5000);
        unix.stop(5000);
        iot.submit(() -> { driver.close(); return null; }).join();
        iot.shutdown(5000);
        main.shutdown(5000);
    }

    @Test
    void writesReadsAndFlushesOverTcpAndUnix() throws Exception {
        byte[] data = new byte[8192];
        new java.util.Random(1).nextBytes(data);
        try (NbdClient c = NbdClient.open(tcp.boundAddress(), "disk0")) {
            assertEquals(SIZE, c.size());
            assertNotEquals(0, c.transmissionFlags() & NbdTransmissionFlags.NBD_FLAG_SEND_FLUSH);
            c.write(4096, data);
            c.flush();
            assertArrayEquals(data, c.read(4096, data.length));
        }
        try (NbdClient c = NbdClient.open(UnixDomainSocketAddress.of(tmp.resolve("nbd.sock")), "disk0")) {
            assertEquals(SIZE, c.size());
            assertArrayEquals(data, c.read(4096, data.length), "written over TCP, read over the unix socket");
            NbdClient.NbdErrorException e = assertThrows(NbdClient.NbdErrorException.class, () -> c.read(SIZE, 512));
            assertEquals(NbdError.NBD_EINVAL, e.error);
            assertTrue(e.getMessage().contains("NBD_CMD_READ"), e.getMessage());
            assertArrayEquals(data, c.read(4096, data.length), "an error reply leaves the connection usable");
        }
    }

    @Test
    void anUnknownExportIsAnIOExceptionNamingIt() {
        IOException e = assertThrows(IOException.class, () -> NbdClient.open(tcp.boundAddress(), "nope"));
        assertTrue(e.getMessage().contains("'nope'") && e.getMessage().contains("NBD_REP_ERR_UNKNOWN"), e.getMessage());
    }

    /** The documented split: one thread sends with its own cookies, another reads the replies. */
    @Test
    void oneThreadSendsWhileAnotherReadsReplies() throws Exception {
        int n = 256;
        Map<Long, Integer> inFlight = new ConcurrentHashMap<>();
        try (NbdClient c = NbdClient.open(tcp.boundAddress(), "disk0")) {
            CompletableFuture<Integer> replies = CompletableFuture.supplyAsync(() -> {
                int ok = 0;
                try {
                    for (int i = 0; i < n; i++) {
                        NbdClient.Reply r = c.readReply(0);
                        assertNotNull(inFlight.remove(r.cookie()), "reply for cookie " + r.cookie());
                        if (r.error() == 0) ok++;
                    }
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
                return ok;
            });
            for (int i = 0; i < n; i++) {
                long cookie = 1000 + i;
                inFlight.put(cookie, i);
                c.writeRequest(0, NbdCmd.NBD_CMD_WRITE, cookie, i * 4096L, 4096, block(i));
                if (i % 7 == 0) c.flushOutput();
            }
            c.flushOutput();
            assertEquals(n, replies.get(30, TimeUnit.SECONDS));
            assertTrue(inFlight.isEmpty());
            for (int i = 0; i < n; i += 37) assertArrayEquals(block(i), c.read(i * 4096L, 4096));
        }
    }

    private static byte[] block(int i) {
        byte[] b = new byte[4096];
        Arrays.fill(b, (byte) (i + 1));
        return b;
    }

    // ---- a server that breaks the protocol ----

    @Test
    void aBadGreetingIsAProtocolException() throws Exception {
        byte[] greeting = ByteBuffer.allocate(18).putLong(0x1234).putLong(NbdMagic.IHAVEOPT).putShort((short) 3).array();
        try (ScriptedServer s = new ScriptedServer(greeting, false, out -> {})) {
            IOException e = assertThrows(IOException.class, () -> NbdClient.open(s.address(), "disk0"));
            assertInstanceOf(NbdClient.ProtocolException.class, e.getCause());
            assertTrue(e.getMessage().contains("bad NBDMAGIC"), e.getMessage());
        }
    }

    @Test
    void aServerHangingUpInTheHandshakeSaysSo() throws Exception {
        try (ScriptedServer s = new ScriptedServer(Arrays.copyOf(ScriptedServer.GREETING, 8), false, out -> {})) {
            IOException e = assertThrows(IOException.class, () -> NbdClient.open(s.address(), "disk0"));
            assertEquals("NBD handshake for export 'disk0' failed: the server closed the connection", e.getMessage());
        }
    }

    @Test
    void aBadReplyMagicIsAProtocolException() throws Exception {
        try (ScriptedServer s = new ScriptedServer(ScriptedServer.GREETING, true, out -> out.writeInt(0xdeadbeef).writeInt(0).writeLong(1));
                NbdClient c = NbdClient.open(s.address(), "disk0")) {
            IOException e = assertThrows(NbdClient.ProtocolException.class, c::flush);
            assertTrue(e.getMessage().contains("bad reply magic NBD_MAGIC_UNKNOWN(0xdeadbeef)"), e.getMessage());
        }
    }

    @Test
    void aReplyForAnotherCookieIsAProtocolException() throws Exception {
        try (ScriptedServer s = new ScriptedServer(ScriptedServer.GREETING, true, out -> simpleReply(out, 77, 0));
                NbdClient c = NbdClient.open(s.address(), "disk0")) {
            IOException e = assertThrows(NbdClient.ProtocolException.class, c::flush);
            assertTrue(e.getMessage().contains("reply cookie 77 to NBD_CMD_FLUSH with cookie 1"), e.getMessage());
        }
    }

    @Test
    void aStructuredReplyThatWasNotNegotiatedIsAProtocolException() throws Exception {
        try (ScriptedServer s = new ScriptedServer(ScriptedServer.GREETING, true, out -> out.writeInt(NbdMagic.NBD_STRUCTURED_REPLY_MAGIC).writeInt(1 << 16).writeLong(1).writeInt(0));
                NbdClient c = NbdClient.open(s.address(), "disk0")) {
            assertThrows(NbdClient.ProtocolException.class, c::flush);
        }
    }

    @Test
    void aReplyCutShortIsAnIOExceptionButNotAnEndOfStream() throws Exception {
        try (ScriptedServer s = new ScriptedServer(ScriptedServer.GREETING, true, out -> out.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(0));
                NbdClient c = NbdClient.open(s.address(), "disk0")) {
            IOException e = assertThrows(IOException.class, () -> c.read(0, 512));
            assertFalse(e instanceof EOFException, "a torn reply is not a clean end: " + e);
            assertTrue(e.getMessage().contains("in the middle of a reply"), e.getMessage());
        }
    }

    @Test
    void readDataCutShortIsAnIOException() throws Exception {
        try (ScriptedServer s = new ScriptedServer(ScriptedServer.GREETING, true, out -> { simpleReply(out, 1, 0); out.write(new byte[100]); });
                NbdClient c = NbdClient.open(s.address(), "disk0")) {
            IOException e = assertThrows(IOException.class, () -> c.read(0, 512));
            assertTrue(e.getMessage().contains("in the middle of a reply"), e.getMessage());
        }
    }

    @Test
    void theServerHangingUpBetweenRepliesIsAnEndOfStream() throws Exception {
        try (ScriptedServer s = new ScriptedServer(ScriptedServer.GREETING, true, out -> {});
                NbdClient c = NbdClient.open(s.address(), "disk0")) {
            assertThrows(EOFException.class, c::flush);
        }
    }

    private static void simpleReply(Out out, long cookie, int error) throws IOException {
        out.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(error).writeLong(cookie);
    }

    /** The reply bytes a scripted server sends. */
    interface Script {
        void reply(Out out) throws IOException;
    }

    /** Chained big-endian writes. */
    record Out(DataOutputStream d) {
        Out writeInt(int v) throws IOException { d.writeInt(v); return this; }
        Out writeLong(long v) throws IOException { d.writeLong(v); return this; }
        Out write(byte[] b) throws IOException { d.write(b); return this; }
    }

    /**
     * One connection on a loopback port: the greeting (hanging up if it is short), an ACK to NBD_OPT_GO (with
     * NBD_INFO_EXPORT), then for the first request the scripted reply bytes, then a hang-up.
     * Its thread only; the test thread reads {@link #address}.
     */
    static final class ScriptedServer implements AutoCloseable {
        final ServerSocket listener = new ServerSocket(0, 1, InetAddress.getLoopbackAddress());
        final Thread thread;
        static final byte[] GREETING = ByteBuffer.allocate(18).putLong(NbdMagic.NBDMAGIC).putLong(NbdMagic.IHAVEOPT)
                .putShort((short) (NbdHandshakeFlags.NBD_FLAG_FIXED_NEWSTYLE | NbdHandshakeFlags.NBD_FLAG_NO_ZEROES)).array();

        ScriptedServer(byte[] greeting, boolean go, Script script) throws IOException {
            thread = new Thread(() -> {
                try (Socket s = listener.accept()) {
                    DataInputStream in = new DataInputStream(s.getInputStream());
                    DataOutputStream out = new DataOutputStream(s.getOutputStream());
                    out.write(greeting);
                    out.flush();
                    if (greeting.length < 18) return; // hangs up inside the greeting
                    in.readInt(); // client flags
                    if (!go) return;
                    in.readLong(); // IHAVEOPT
                    int option = in.readInt();
                    in.skipNBytes(in.readInt());
                    optionReply(out, option, NbdRep.NBD_REP_INFO, ByteBuffer.allocate(12)
                            .putShort((short) NbdInfo.NBD_INFO_EXPORT).putLong(SIZE).putShort((short) 1).array());
                    optionReply(out, option, NbdRep.NBD_REP_ACK, new byte[0]);
                    in.skipNBytes(28); // the first request (no payload in these tests)
                    script.reply(new Out(out));
                    out.flush();
                    s.shutdownOutput();
                    in.skipNBytes(Long.MAX_VALUE); // until the client hangs up
                } catch (IOException e) {
                    // the client hung up
                }
            }, "nbd-scripted-server");
            thread.setDaemon(true);
            thread.start();
        }

        private static void optionReply(DataOutputStream out, int option, int type, byte[] data) throws IOException {
            out.writeLong(NbdMagic.NBD_REP_MAGIC);
            out.writeInt(option);
            out.writeInt(type);
            out.writeInt(data.length);
            out.write(data);
            out.flush();
        }

        SocketAddress address() {
            return listener.getLocalSocketAddress();
        }

        @Override
        public void close() throws Exception {
            listener.close();
            thread.join(5000);
        }
    }
}
