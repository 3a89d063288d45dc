package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.protocol.NbdCmd;
import java.io.EOFException;
import java.io.IOException;
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
                SocketChannel frontEnd = SocketChannel.open(UnixDomainSocketAddress.of(vhost))) {
            // QMP: greeting, then capabilities negotiation; the client stays connected.
            var qin = new java.io.BufferedReader(new java.io.InputStreamReader(Channels.newInputStream(monitor), StandardCharsets.UTF_8));
            assertTrue(qin.readLine().contains("QMP"), "QMP greeting");
            monitor.write(ByteBuffer.wrap("{\"execute\":\"qmp_capabilities\"}\n".getBytes(StandardCharsets.UTF_8)));
            assertTrue(qin.readLine().contains("return"), "qmp_capabilities");

            // simple replies: one thread sends, another reads (NbdClient's documented split)
            NbdClient client = NbdClient.open(UnixDomainSocketAddress.of(nbd), "disk0");

            Set<Long> acked = ConcurrentHashMap.newKeySet();
            List<String> errors = new java.util.concurrent.CopyOnWriteArrayList<>();
            CountDownLatch firstReply = new CountDownLatch(1);
            Thread reader = new Thread(() -> {
                try {
                    while (true) {
                        NbdClient.Reply reply;
                        try {
                            reply = client.readReply(0);
                        } catch (EOFException e) {
                            return; // closed at a reply boundary: fine (a torn reply is another IOException)
                        } catch (java.net.SocketException e) {
                            // ECONNRESET: the server closed with requests of ours still unread in
                            // its socket (those it did not take). A unix socket delivers every
                            // queued reply before the error, so this is a reply boundary too.
                            if (String.valueOf(e.getMessage()).contains("reset")) return;
                            throw e;
                        }
                        if (reply.error() != 0) errors.add("write " + reply.cookie() + " failed with NBD error " + reply.error());
                        else acked.add(reply.cookie());
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
                        client.writeRequest(0, NbdCmd.NBD_CMD_WRITE, i, (long) i * WRITE_SIZE, WRITE_SIZE, Images.data(i, WRITE_SIZE));
                    }
                    client.flushOutput();
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
            client.abort();
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
}
