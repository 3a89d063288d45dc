package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdHandshakeFlags;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdRep;
import dev.vmm.nbd.testing.NbdTestClient;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * SIGTERM while clients are connected: an NBD client over a unix socket with a deep pipeline
 * of WRITEs in flight, an idle vhost-user front-end and a QMP client. The server must answer
 * the requests it took (every reply whole: the stream ends at a reply boundary), exit 0 (its
 * final flush succeeded), leave every acknowledged write in the image, and remove the NBD,
 * vhost-user and QMP sockets and the pidfile.
 *
 * <p>Against qemu-storage-daemon 7.2 ({@code -Dvmm.it.server=qsd}) this is skipped: with these
 * clients connected it did not exit within 20 s of SIGTERM.
 */
@Timeout(120)
class SigtermShutdownTest extends PeerTestBase {
    static final int WRITES = 256;
    static final int WRITE_SIZE = 64 * 1024;

    @Test
    void sigtermFinishesInFlightWritesAndRemovesSocketsAndPidfile() throws Exception {
        Peers.beyondQsd("qemu-storage-daemon 7.2 does not exit within 20 s of SIGTERM with these clients connected");
        Path image = Images.sparse(tmp.resolve("disk.img"), (long) WRITES * WRITE_SIZE);
        Path sockets = socketDir();
        Path nbd = sockets.resolve("nbd.sock");
        Path vhost = sockets.resolve("vhost.sock");
        Path qmp = sockets.resolve("qmp.sock");
        VmmProcess server = serve(
                "--blockdev", "driver=file,node-name=disk0,filename=" + image,
                "--object", "iothread,id=iot0",
                "--nbd-server", Net.unixServer(nbd),
                "--export", "type=nbd,id=nbd0,node-name=disk0,writable=on,iothread=iot0",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",writable=on,iothread=iot0",
                "--chardev", "socket,id=mon0,path=" + qmp + ",server=on,wait=off",
                "--monitor", "chardev=mon0");
        for (Path p : List.of(nbd, vhost, qmp, server.pidfile())) assertTrue(Files.exists(p), p + " missing while serving");

        try (SocketChannel monitor = SocketChannel.open(UnixDomainSocketAddress.of(qmp));
                SocketChannel frontEnd = SocketChannel.open(UnixDomainSocketAddress.of(vhost));
                SocketChannel nbdChannel = SocketChannel.open(UnixDomainSocketAddress.of(nbd))) {
            // QMP: greeting, then capabilities negotiation; the client stays connected.
            var qin = new java.io.BufferedReader(new java.io.InputStreamReader(Channels.newInputStream(monitor), StandardCharsets.UTF_8));
            assertTrue(qin.readLine().contains("QMP"), "QMP greeting");
            monitor.write(ByteBuffer.wrap("{\"execute\":\"qmp_capabilities\"}\n".getBytes(StandardCharsets.UTF_8)));
            assertTrue(qin.readLine().contains("return"), "qmp_capabilities");

            DataInputStream in = new DataInputStream(new BufferedInputStream(inputOf(nbdChannel)));
            DataOutputStream out = new DataOutputStream(new BufferedOutputStream(outputOf(nbdChannel), 1 << 20));
            handshake(in, out, "disk0");

            Set<Long> acked = ConcurrentHashMap.newKeySet();
            List<String> errors = new java.util.concurrent.CopyOnWriteArrayList<>();
            CountDownLatch firstReply = new CountDownLatch(1);
            Thread reader = new Thread(() -> {
                try {
                    while (true) {
                        int magic;
                        try {
                            magic = in.readInt();
                        } catch (EOFException e) {
                            return; // closed at a reply boundary: fine
                        } catch (java.net.SocketException e) {
                            // ECONNRESET: the server closed with requests of ours still unread in
                            // its socket (those it did not take). A unix socket delivers every
                            // queued reply before the error, so this is a reply boundary too.
                            if (String.valueOf(e.getMessage()).contains("reset")) return;
                            throw e;
                        }
                        int error = in.readInt(); // EOF from here on is a torn reply
                        long cookie = in.readLong();
                        if (magic != NbdMagic.NBD_SIMPLE_REPLY_MAGIC) errors.add("bad reply magic " + Integer.toHexString(magic));
                        if (error != 0) errors.add("write " + cookie + " failed with NBD error " + error);
                        else acked.add(cookie);
                        firstReply.countDown();
                    }
                } catch (IOException e) {
                    errors.add("reply stream broken: " + e);
                }
            }, "sigterm-nbd-reader");
            reader.start();
            Thread writer = new Thread(() -> {
                try {
                    for (int i = 0; i < WRITES; i++) {
                        out.writeInt(NbdMagic.NBD_REQUEST_MAGIC);
                        out.writeShort(0);
                        out.writeShort(NbdCmd.NBD_CMD_WRITE);
                        out.writeLong(i);
                        out.writeLong((long) i * WRITE_SIZE);
                        out.writeInt(WRITE_SIZE);
                        out.write(Images.data(i, WRITE_SIZE));
                    }
                    out.flush();
                } catch (IOException e) {
                    // the server stopped reading: expected once it is shutting down
                }
            }, "sigterm-nbd-writer");
            writer.start();
            assertTrue(firstReply.await(30, TimeUnit.SECONDS), "no reply to the pipelined writes: " + errors);
            int repliedBeforeSigterm = acked.size();
            assertEquals(0, server.stop(), "exit code after SIGTERM with clients connected\n" + server.stderr());
            reader.join(10_000);
            writer.join(10_000);
            assertFalse(reader.isAlive(), "the server did not close the NBD connection");
            assertEquals(List.of(), errors);
            assertTrue(repliedBeforeSigterm < WRITES, "no write was in flight at SIGTERM; the test proves little");
            for (long i : acked) {
                assertArrayEquals(Images.data(i, WRITE_SIZE), Images.read(image, i * WRITE_SIZE, WRITE_SIZE),
                        "acknowledged write " + i + " is not in the image");
            }
            System.out.printf("[durability] SIGTERM with %d pipelined 64 KiB writes: %d replied before SIGTERM, %d in all, every one in the image%n",
                    WRITES, repliedBeforeSigterm, acked.size());
        }
        for (Path p : List.of(nbd, vhost, qmp, server.pidfile())) assertFalse(Files.exists(p), p + " left behind after SIGTERM");
    }

    /**
     * Streams over a blocking channel that one thread may read while another writes. (JDK 17's
     * {@code Channels.newInputStream}/{@code newOutputStream} both take the channel's blocking
     * lock, so a blocked read stalls every write.)
     */
    private static InputStream inputOf(SocketChannel ch) {
        return new InputStream() {
            @Override
            public int read() throws IOException {
                byte[] one = new byte[1];
                return read(one, 0, 1) < 0 ? -1 : one[0] & 0xff;
            }

            @Override
            public int read(byte[] b, int off, int len) throws IOException {
                return ch.read(ByteBuffer.wrap(b, off, len));
            }
        };
    }

    private static OutputStream outputOf(SocketChannel ch) {
        return new OutputStream() {
            @Override
            public void write(int b) throws IOException {
                write(new byte[] {(byte) b}, 0, 1);
            }

            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                ByteBuffer buf = ByteBuffer.wrap(b, off, len);
                while (buf.hasRemaining()) ch.write(buf);
            }
        };
    }

    /** Fixed newstyle handshake with NBD_OPT_GO; simple replies from then on. */
    private static void handshake(DataInputStream in, DataOutputStream out, String export) throws IOException {
        assertEquals(NbdMagic.NBDMAGIC, in.readLong());
        assertEquals(NbdMagic.IHAVEOPT, in.readLong());
        in.readUnsignedShort();
        out.writeInt(NbdHandshakeFlags.NBD_FLAG_C_FIXED_NEWSTYLE | NbdHandshakeFlags.NBD_FLAG_C_NO_ZEROES);
        byte[] go = NbdTestClient.infoRequest(export);
        out.writeLong(NbdMagic.IHAVEOPT);
        out.writeInt(NbdOpt.NBD_OPT_GO);
        out.writeInt(go.length);
        out.write(go);
        out.flush();
        while (true) {
            assertEquals(NbdMagic.NBD_REP_MAGIC, in.readLong());
            in.readInt();
            int type = in.readInt();
            in.skipNBytes(in.readInt());
            if (type == NbdRep.NBD_REP_ACK) return;
            assertFalse(NbdRep.isError(type), "NBD_OPT_GO refused: " + type);
        }
    }
}
