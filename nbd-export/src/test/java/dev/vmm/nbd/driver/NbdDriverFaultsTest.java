package dev.vmm.nbd.driver;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.testing.Tools;
import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.server.NbdServerComponent;
import io.netty.util.internal.PlatformDependent;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code driver=nbd} when the server misbehaves: nbdkit's error and delay filters, nbdkit killed
 * and restarted under load (reconnect-delay 5 and 0), a fake server that sends garbage, and a
 * move of the node between IOThreads under load. The load is a client of vmm's NBD re-export of
 * the node that writes blocks and reads every one back.
 */
@Timeout(180)
class NbdDriverFaultsTest {
    static final long SIZE = 16L << 20;

    @TempDir Path tmp;
    Daemon daemon;
    Path vmmSock;
    final List<AutoCloseable> closeLater = new ArrayList<>();

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        daemon.addIOThread("iot0");
        daemon.addIOThread("iot1");
        vmmSock = tmp.resolve("vmm.sock");
        NbdServerComponent.configure(daemon, KeyValueParser.parse("--nbd-server", "addr.type=unix,addr.path=" + vmmSock, null)).start();
    }

    @AfterEach
    void stop() throws Exception {
        daemon.shutdown(false);
        for (AutoCloseable c : closeLater) c.close();
    }

    void nbdNode(String name, Path sock, String extra) throws Exception {
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=nbd,node-name=" + name + ",server.type=unix,server.path=" + sock + extra, null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=" + name + ",node-name=" + name + ",writable=on,iothread=iot0", "type"));
    }

    Peer kit(String name, String... args) throws Exception {
        Peer k = Peer.nbdkit(tmp, name, args).start();
        closeLater.add(k);
        return k;
    }

    /** Writes 64 KiB blocks (cookie-stamped) and reads each back until stopped; counts errors and mismatches. */
    static final class Load implements Runnable {
        final Path sock;
        final String export;
        final AtomicBoolean stop = new AtomicBoolean();
        final AtomicLong ops = new AtomicLong();
        final ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();
        final Thread thread;

        Load(Path sock, String export) {
            this.sock = sock;
            this.export = export;
            this.thread = new Thread(this, "load");
            thread.start();
        }

        @Override
        public void run() {
            try (NbdClient c = NbdClient.open(UnixDomainSocketAddress.of(sock), export)) {
                long i = 0;
                while (!stop.get()) {
                    long at = (i * 65536) % SIZE;
                    byte[] b = new byte[65536];
                    Arrays.fill(b, (byte) (i * 7 + 1));
                    try {
                        c.write(at, b);
                        byte[] r = c.read(at, b.length);
                        if (!Arrays.equals(b, r)) errors.add("block at " + at + " reads back different data");
                    } catch (NbdClient.NbdErrorException e) {
                        errors.add("request " + i + ": " + e.getMessage());
                    }
                    ops.incrementAndGet();
                    i++;
                }
            } catch (Exception e) {
                errors.add("load: " + e);
            }
        }

        List<String> finish() throws InterruptedException {
            stop.set(true);
            thread.join(30_000);
            assertTrue(!thread.isAlive(), "the load ended");
            return List.copyOf(errors);
        }

        void waitOps(long more) throws InterruptedException {
            long want = ops.get() + more;
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (ops.get() < want && System.nanoTime() < end && thread.isAlive()) Thread.sleep(5);
            assertTrue(ops.get() >= want, "the load makes progress: " + ops.get() + " " + errors);
        }
    }

    @Test
    void errorFilterFailsRequestsAndHarmsNothingElse() throws Exception {
        Peer bad = kit("bad", "--filter=error", "memory", "size=" + SIZE, "error-rate=30%", "error=EIO");
        Peer good = kit("good", "memory", "size=" + SIZE);
        nbdNode("bad", bad.socket, "");
        nbdNode("good", good.socket, "");
        Load l = new Load(vmmSock, "bad");
        l.waitOps(50);
        List<String> errors = l.finish();
        assertTrue(errors.stream().anyMatch(e -> e.contains("NBD_EIO")), "EIO reported to the client: " + errors);
        assertTrue(errors.stream().noneMatch(e -> e.contains("different data") || e.startsWith("load:")), errors.toString());
        Load g = new Load(vmmSock, "good");
        g.waitOps(50);
        assertEquals(List.of(), g.finish(), "the other node is unharmed");
        assertEquals("nbd", daemon.node("bad").driverName());
    }

    @Test
    void delayFilter() throws Exception {
        Peer slow = kit("slow", "--filter=delay", "memory", "size=" + SIZE, "rdelay=5ms", "wdelay=5ms");
        nbdNode("slow", slow.socket, "");
        Load l = new Load(vmmSock, "slow");
        l.waitOps(40);
        assertEquals(List.of(), l.finish());
    }

    /** reconnect-delay=5: nbdkit (file plugin: the data survives) killed and restarted under load; no request fails. */
    @Test
    void serverRestartWithinReconnectDelayLosesNothing() throws Exception {
        Path img = tmp.resolve("disk.img");
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        Peer k = kit("kit", "file", img.toString());
        nbdNode("n0", k.socket, ",reconnect-delay=5");
        Load l = new Load(vmmSock, "n0");
        l.waitOps(50);
        k.kill();
        Thread.sleep(1000);
        k.start();
        l.waitOps(100);
        assertEquals(List.of(), l.finish());
    }

    /** reconnect-delay=0: requests during the outage fail with EIO; after the restart the node serves again. */
    @Test
    void serverRestartWithoutReconnectDelayFailsThenRecovers() throws Exception {
        Path img = tmp.resolve("disk.img");
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        Peer k = kit("kit", "file", img.toString());
        nbdNode("n0", k.socket, "");
        Load l = new Load(vmmSock, "n0");
        l.waitOps(50);
        k.kill();
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (l.errors.isEmpty() && System.nanoTime() < end) Thread.sleep(5);
        assertTrue(l.errors.stream().anyMatch(e -> e.contains("NBD_EIO")), "EIO while the server is down: " + l.errors);
        k.start();
        end = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (System.nanoTime() < end) {
            int before = l.errors.size();
            long ops = l.ops.get();
            Thread.sleep(300);
            if (l.errors.size() == before && l.ops.get() > ops + 10) break;
        }
        List<String> errors = l.finish();
        assertTrue(errors.stream().allMatch(e -> e.contains("NBD_EIO")), errors.toString());
        Load again = new Load(vmmSock, "n0");
        again.waitOps(50);
        assertEquals(List.of(), again.finish(), "the node serves again once the server is back");
    }

    /**
     * reconnect-delay=1 and a server away for longer: after the delay requests fail with EIO; the
     * node moves to another IOThread while the server is away, and serves again from there once
     * the server is back (the reconnected channel goes to the new home).
     */
    @Test
    void afterTheReconnectDelayRequestsFailUntilTheServerIsBackEvenAfterAMove() throws Exception {
        Path img = tmp.resolve("disk.img");
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        Peer k = kit("kit", "file", img.toString());
        nbdNode("n0", k.socket, ",reconnect-delay=1");
        Load l = new Load(vmmSock, "n0");
        l.waitOps(20);
        k.kill();
        long killed = System.nanoTime();
        long end = killed + TimeUnit.SECONDS.toNanos(10);
        while (l.errors.isEmpty() && System.nanoTime() < end) Thread.sleep(5);
        assertTrue(l.errors.stream().anyMatch(e -> e.contains("NBD_EIO")), "EIO after the delay: " + l.errors);
        assertTrue(System.nanoTime() - killed > TimeUnit.MILLISECONDS.toNanos(900), "no error before reconnect-delay ended");
        List<String> errors = l.finish();
        assertTrue(errors.stream().allMatch(e -> e.contains("NBD_EIO")), errors.toString());
        daemon.moveNode("n0", "iot1").get(20, TimeUnit.SECONDS);
        k.start();
        Load again = null;
        end = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (System.nanoTime() < end) { // the first requests may still fail while the reconnect is on its way
            again = new Load(vmmSock, "n0");
            Thread.sleep(300);
            if (again.errors.isEmpty() && again.ops.get() > 5) break;
            again.finish();
        }
        again.waitOps(50);
        assertEquals(List.of(), again.finish(), "serves again from iot1");
        assertEquals("iot1", daemon.node("n0").home().id());
    }

    @Test
    void badOptionsAreClearErrors() throws Exception {
        String[][] cases = {
            {"driver=nbd,node-name=x", "server.type"},
            {"driver=nbd,node-name=x,server.type=tcp", "server.type"},
            {"driver=nbd,node-name=x,server.type=inet", "server.host"},
            {"driver=nbd,node-name=x,server.type=inet,server.host=127.0.0.1,server.port=99999", "server.port"},
            {"driver=nbd,node-name=x,server.type=unix", "server.path"},
            {"driver=nbd,node-name=x,server.type=unix,server.path=/x,tls-hostname=h", "tls-hostname"},
            {"driver=nbd,node-name=x,server.type=unix,server.path=/x,reconnect-delay=-1", "reconnect-delay"},
            {"driver=nbd,node-name=x,server.type=unix,server.path=/x,tls-creds=nope", "tls-creds"},
            {"driver=nbd,node-name=x,server.type=unix,server.path=/x,frobnicate=1", "frobnicate"},
        };
        for (String[] c : cases) {
            Exception e = assertThrows(Exception.class, () -> daemon.blockdevAdd(KeyValueParser.parse("--blockdev", c[0], null)), c[0]);
            assertTrue(e instanceof dev.vmm.core.options.OptionException, c[0] + ": " + e);
            assertTrue(e.getMessage().contains(c[1]), c[0] + ": " + e.getMessage());
        }
        DaemonException refused = assertThrows(DaemonException.class, () -> daemon.blockdevAdd(KeyValueParser.parse("--blockdev",
                "driver=nbd,node-name=x,server.type=unix,server.path=" + tmp.resolve("nobody.sock"), null)));
        assertTrue(refused.getMessage().startsWith("--blockdev: Failed to connect to 'nbd+unix://?socket="), refused.getMessage());
        assertEquals(List.of(), daemon.nodes().stream().map(BlockNode::name).toList());
    }

    @Test
    void moveUnderLoadLosesNothing() throws Exception {
        Peer k = kit("kit", "memory", "size=" + SIZE);
        nbdNode("n0", k.socket, "");
        Load l = new Load(vmmSock, "n0");
        l.waitOps(20);
        int moves = 0;
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
        while (System.nanoTime() < end) {
            String to = moves++ % 2 == 0 ? "iot1" : "iot0";
            daemon.moveNode("n0", to).get(20, TimeUnit.SECONDS);
            assertEquals(to, daemon.node("n0").home().id());
            Thread.sleep(5);
        }
        l.waitOps(20);
        assertEquals(List.of(), l.finish());
        assertTrue(moves > 10, "moves: " + moves);
    }

    // ---- a fake server ----

    /** A unix-socket server whose connections {@code script} serves, one thread each. */
    Path fake(String name, FakeScript script) throws Exception {
        Path sock = tmp.resolve(name + ".sock");
        ServerSocketChannel ss = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        ss.bind(UnixDomainSocketAddress.of(sock));
        closeLater.add(ss);
        Thread t = new Thread(() -> {
            while (ss.isOpen()) {
                try {
                    SocketChannel c = ss.accept();
                    new Thread(() -> {
                        try (c) {
                            script.serve(new DataInputStream(Channels.newInputStream(c)), new DataOutputStream(Channels.newOutputStream(c)));
                        } catch (Exception ignored) {
                            // the client went away
                        }
                    }).start();
                } catch (Exception e) {
                    return;
                }
            }
        }, "fake-" + name);
        t.setDaemon(true);
        t.start();
        return sock;
    }

    interface FakeScript {
        void serve(DataInputStream in, DataOutputStream out) throws Exception;
    }

    @Test
    void garbageInsteadOfAGreetingIsAClearError() throws Exception {
        Path sock = fake("garbage", (in, out) -> {
            out.write("this is not an NBD server\r\n".getBytes());
            out.flush();
            Thread.sleep(200);
        });
        DaemonException e = assertThrows(DaemonException.class, () -> daemon.blockdevAdd(
                KeyValueParser.parse("--blockdev", "driver=nbd,node-name=g,server.type=unix,server.path=" + sock, null)));
        assertTrue(e.getMessage().contains("Failed to connect to") && e.getMessage().contains("NBDMAGIC"), e.getMessage());
        assertEquals(List.of(), daemon.nodes().stream().map(BlockNode::name).toList());
    }

    /** What a fake server answers to the first request: (out, cookie, offset, length). */
    interface BadReply {
        void write(DataOutputStream out, long cookie, long offset, int length) throws Exception;
    }

    /**
     * Handshakes like a server (structured replies acknowledged when {@code structured}, no meta
     * context), exports 1 MiB, then answers the first request with {@code reply}.
     */
    static FakeScript badReplyServer(boolean structured, BadReply reply) {
        return (in, out) -> {
            out.writeLong(0x4e42444d41474943L); // NBDMAGIC
            out.writeLong(0x49484156454F5054L); // IHAVEOPT
            out.writeShort(3); // FIXED_NEWSTYLE | NO_ZEROES
            out.flush();
            in.readInt();
            while (true) {
                in.readLong();
                int opt = in.readInt();
                byte[] data = new byte[in.readInt()];
                in.readFully(data);
                if (opt == 7) { // NBD_OPT_GO: NBD_INFO_EXPORT (1 MiB, HAS_FLAGS|SEND_FLUSH), then ACK
                    out.writeLong(0x3e889045565a9L);
                    out.writeInt(opt);
                    out.writeInt(3);
                    out.writeInt(12);
                    out.writeShort(0);
                    out.writeLong(1 << 20);
                    out.writeShort(5);
                    out.writeLong(0x3e889045565a9L);
                    out.writeInt(opt);
                    out.writeInt(1);
                    out.writeInt(0);
                    out.flush();
                    break;
                }
                boolean ack = opt == 10 || (opt == 8 && structured); // SET_META_CONTEXT: none selected
                out.writeLong(0x3e889045565a9L);
                out.writeInt(opt);
                out.writeInt(ack ? 1 : 0x80000001); // NBD_REP_ACK or NBD_REP_ERR_UNSUP
                out.writeInt(0);
                out.flush();
            }
            byte[] req = new byte[28];
            in.readFully(req);
            ByteBuffer r = ByteBuffer.wrap(req);
            reply.write(out, r.getLong(8), r.getLong(16), r.getInt(24));
            out.flush();
            Thread.sleep(500);
        };
    }

    /** Reads 4 KiB at 0 on node {@code name} (directly on the driver, on its home) and returns the errno; the buffer has guard bytes after it. */
    int readThrough(String name, FakeScript script) throws Exception {
        Path sock = fake(name, script);
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=nbd,node-name=" + name + ",server.type=unix,server.path=" + sock, null));
        BlockNode n = daemon.node(name);
        assertEquals(1 << 20, n.size());
        ByteBuffer buf = ByteBuffer.allocateDirect(8192);
        for (int i = 4096; i < 8192; i++) buf.put(i, (byte) 0x77);
        long addr = PlatformDependent.directBufferAddress(buf);
        CompletableFuture<Integer> done = new CompletableFuture<>();
        n.home().execute(() -> {
            try {
                n.driver().read(0, addr, 4096, done::complete);
            } catch (Exception e) {
                done.completeExceptionally(e);
            }
        });
        int errno = done.get(10, TimeUnit.SECONDS);
        for (int i = 4096; i < 8192; i++) assertEquals((byte) 0x77, buf.get(i), "byte " + i + " past the request is untouched");
        return errno;
    }

    static void structuredHeader(DataOutputStream out, int flags, int type, long cookie, int length) throws Exception {
        out.writeInt(0x668e33ef);
        out.writeShort(flags);
        out.writeShort(type);
        out.writeLong(cookie);
        out.writeInt(length);
    }

    @Test
    void badRepliesFailTheRequestWithEioAndTouchNoMemoryOutsideIt() throws Exception {
        // a simple reply with a bad magic
        assertEquals(Errno.EIO, readThrough("magic", badReplyServer(false, (out, cookie, off, len) -> {
            out.writeInt(0xdeadbeef);
            out.writeLong(0);
        })));
        // a reply for a cookie that was never sent
        assertEquals(Errno.EIO, readThrough("cookie", badReplyServer(false, (out, cookie, off, len) -> {
            out.writeInt(0x67446698);
            out.writeInt(0);
            out.writeLong(cookie + 1000);
        })));
        // OFFSET_DATA that reaches past the request (the server's data would land after the buffer)
        assertEquals(Errno.EIO, readThrough("outside", badReplyServer(true, (out, cookie, off, len) -> {
            structuredHeader(out, 1, 1, cookie, 8 + 4096);
            out.writeLong(off + 2048);
            out.write(new byte[4096]);
        })));
        // a chunk claiming 4 GiB - 1: refused from its header, not waited for
        assertEquals(Errno.EIO, readThrough("huge", badReplyServer(true, (out, cookie, off, len) -> {
            structuredHeader(out, 1, 1, cookie, -1);
            out.writeLong(off);
        })));
        // DONE after covering half the request
        assertEquals(Errno.EIO, readThrough("short", badReplyServer(true, (out, cookie, off, len) -> {
            structuredHeader(out, 1, 1, cookie, 8 + 2048);
            out.writeLong(off);
            out.write(new byte[2048]);
        })));
        // a structured reply that was not negotiated
        assertEquals(Errno.EIO, readThrough("unasked", badReplyServer(false, (out, cookie, off, len) -> {
            structuredHeader(out, 1, 0, cookie, 0);
        })));
        // an error chunk is an error of the request, not of the protocol: its errno comes through
        assertEquals(Errno.ENOSPC, readThrough("error", badReplyServer(true, (out, cookie, off, len) -> {
            structuredHeader(out, 1, 0x8001, cookie, 6 + 3);
            out.writeInt(28);
            out.writeShort(3);
            out.write("bad".getBytes());
        })));
        // and a correct structured answer still works: a hole chunk and a data chunk
        assertEquals(0, readThrough("good", badReplyServer(true, (out, cookie, off, len) -> {
            structuredHeader(out, 0, 2, cookie, 12);
            out.writeLong(off);
            out.writeInt(2048);
            structuredHeader(out, 1, 1, cookie, 8 + 2048);
            out.writeLong(off + 2048);
            out.write(new byte[2048]);
        })));
    }

    @Test
    void aBadReplyFailsTheRequestWithEioAndTheDaemonLives() throws Exception {
        Path sock = fake("badreply", badReplyServer(false, (out, cookie, off, len) -> {
            out.writeInt(0xdeadbeef);
            out.writeLong(0);
        }));
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=nbd,node-name=b,server.type=unix,server.path=" + sock, null));
        BlockNode n = daemon.node("b");
        assertEquals(1 << 20, n.size());
        ByteBuffer buf = ByteBuffer.allocateDirect(4096);
        long addr = PlatformDependent.directBufferAddress(buf);
        CompletableFuture<Integer> done = new CompletableFuture<>();
        n.home().execute(() -> {
            try {
                n.driver().read(0, addr, 4096, done::complete);
            } catch (Exception e) {
                done.completeExceptionally(e);
            }
        });
        assertEquals(Errno.EIO, done.get(10, TimeUnit.SECONDS));
        assertNotEquals(null, daemon.node("b"));
        // the fake server is gone for good (reconnect-delay=0): the final flush fails, the node goes anyway
        DaemonException e = assertThrows(DaemonException.class, () -> daemon.blockdevDel("b"));
        assertTrue(e.getMessage().contains("removed, but the final flush"), e.getMessage());
        assertEquals(List.of(), daemon.nodes().stream().map(BlockNode::name).toList());
    }
}
