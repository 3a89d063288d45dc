package dev.vmm.vhostuser.connection;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.linux.LibcSocket;
import dev.vmm.iothread.IOThread;
import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.VhostUserException;
import dev.vmm.vhostuser.message.VhostUserHeader;
import dev.vmm.vhostuser.message.VhostUserProtocolFeature;
import dev.vmm.vhostuser.message.VringAddr;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** Listener + connection + dispatcher on an IOThread, driven by the Java front-end over a real socket. */
class VhostUserLoopbackTest {
    static final long FEATURES = (1L << 32) | (1L << VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES);
    static final long PROTOCOL = VhostUserProtocolFeature.mask(VhostUserProtocolFeature.MQ)
            | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.REPLY_ACK)
            | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.CONFIG);

    /** Records calls; takes ownership of fds and closes them (checking they are open first). */
    static final class StubHandler implements VhostUserBackendHandler {
        final List<String> calls = new CopyOnWriteArrayList<>();
        final AtomicInteger disconnects = new AtomicInteger();
        final AtomicInteger badFds = new AtomicInteger();

        private void own(int fd) {
            if (fd < 0) return;
            if (!LibcSocket.isOpen(fd)) badFds.incrementAndGet();
            LibcSocket.close(fd);   // throws on a double close
        }

        @Override public long getFeatures() { calls.add("getFeatures"); return FEATURES; }
        @Override public void setFeatures(long f) { calls.add("setFeatures " + Long.toHexString(f)); }
        @Override public long getProtocolFeatures() { calls.add("getProtocolFeatures"); return PROTOCOL; }
        @Override public void setProtocolFeatures(long f) { calls.add("setProtocolFeatures " + Long.toHexString(f)); }
        @Override public void setOwner() { calls.add("setOwner"); }
        @Override public void setMemTable(List<MemoryRegion> regions, int[] fds) {
            calls.add("setMemTable " + regions.size());
            for (int fd : fds) own(fd);
        }
        @Override public long getQueueNum() { calls.add("getQueueNum"); return 4; }
        @Override public void setVringNum(int index, int num) throws VhostUserException {
            calls.add("setVringNum " + index + " " + num);
            if (index >= 4) throw VhostUserException.replyError(8, "no such queue " + index);
        }
        @Override public void setVringAddr(VringAddr a) { calls.add("setVringAddr " + a.index()); }
        @Override public void setVringBase(int index, int base) { calls.add("setVringBase " + index + " " + base); }
        @Override public int getVringBase(int index) { calls.add("getVringBase " + index); return 77; }
        @Override public void setVringKick(int index, int fd) { calls.add("setVringKick " + index + (fd < 0 ? " nofd" : "")); own(fd); }
        @Override public void setVringCall(int index, int fd) { calls.add("setVringCall " + index); own(fd); }
        @Override public void setVringErr(int index, int fd) { calls.add("setVringErr " + index); own(fd); }
        @Override public void setVringEnable(int index, boolean e) { calls.add("setVringEnable " + index + " " + e); }
        @Override public byte[] getConfig(int offset, int size, int flags) {
            calls.add("getConfig " + offset + " " + size);
            byte[] b = new byte[size];
            for (int i = 0; i < size; i++) b[i] = (byte) (offset + i);
            return b;
        }
        @Override public void disconnected() { disconnects.incrementAndGet(); }
    }

    IOThread io;
    Path dir;
    String path;
    StubHandler stub;

    @BeforeEach
    void setUp() throws IOException {
        io = IOThread.start("vu-test");
        dir = Files.createTempDirectory("vu");
        path = dir.resolve("vhost.sock").toString();
        stub = new StubHandler();
    }

    @AfterEach
    void tearDown() throws IOException {
        io.shutdown(5000);
        try (var s = Files.list(dir)) { s.forEach(p -> p.toFile().delete()); }
        Files.deleteIfExists(dir);
    }

    /** Open fds and what they point to, without the JVM's own: jars (opened on the first class loaded from each) and libffi's trampoline file. */
    static java.util.Map<String, String> fdTargets() {
        java.util.Map<String, String> m = new java.util.TreeMap<>();
        String[] l = new File("/proc/self/fd").list();
        if (l == null) return m;
        for (String fd : l) {
            try {
                String t = Files.readSymbolicLink(Path.of("/proc/self/fd", fd)).toString();
                // libffi (JNA's callbacks) maps its trampolines through a deleted temp file, kept open for good
                if (!t.endsWith(".jar") && !t.matches("/tmp/ffi\\w+ \\(deleted\\)")) m.put(fd, t);
            } catch (java.io.IOException e) {
                // closed meanwhile (the listing's own fd, or another thread's)
            }
        }
        return m;
    }

    /** No more open fds than {@code before}, allowing 2 s for closes that run on an event loop; names the new ones if not. */
    static void assertNoFdLeak(java.util.Map<String, String> before) throws InterruptedException {
        long end = System.nanoTime() + 2_000_000_000L;
        java.util.Map<String, String> now = fdTargets();
        while (now.size() > before.size() && System.nanoTime() < end) {
            Thread.sleep(20);
            now = fdTargets();
        }
        java.util.Map<String, String> added = new java.util.TreeMap<>(now);
        added.entrySet().removeIf(e -> e.getValue().equals(before.get(e.getKey())));
        // more open fds is a leak; other tests' threads may close some meanwhile
        assertTrue(now.size() <= before.size(), "fd leak: new fds " + added);
    }

    static void waitFor(java.util.function.BooleanSupplier c) throws InterruptedException {
        long end = System.nanoTime() + 5_000_000_000L;
        while (!c.getAsBoolean()) {
            if (System.nanoTime() > end) fail("timed out");
            Thread.sleep(5);
        }
    }

    static int memfd(long size) throws IOException {
        int fd = dev.vmm.core.linux.LibcMemory.memfdCreate("vu-test");
        dev.vmm.core.linux.LibcMemory.truncate(fd, size);
        return fd;
    }

    @Test
    void negotiationMemTableKickConfigAndReplyAck() throws Exception {
        java.util.Map<String, String> before = fdTargets();
        try (VhostUserListener l = VhostUserListener.open(path, io.loop(), stub)) {
            assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(Path.of(path))));
            try (VhostUserFrontendConnection fe = VhostUserFrontendConnection.connect(path, 5000)) {
                assertEquals(FEATURES, fe.getFeatures());
                assertEquals(PROTOCOL, fe.getProtocolFeatures());
                fe.setProtocolFeatures(PROTOCOL);          // REPLY_ACK on from here: every call below waits for its ack
                fe.setOwner();
                assertEquals(4, fe.getQueueNum());
                fe.setFeatures(FEATURES);
                int mem = memfd(1 << 20);
                fe.setMemTable(List.of(new MemoryRegion(0, 1 << 20, 0x7f0000000000L, 0)), new int[] {mem});
                LibcSocket.close(mem);
                fe.setVringNum(0, 256);
                fe.setVringAddr(new VringAddr(0, 0, 0x1000, 0x3000, 0x2000, 0));
                fe.setVringBase(0, 0);
                int kick = LibcSocket.eventfd();
                fe.setVringKick(0, kick);
                LibcSocket.close(kick);
                fe.setVringCall(0, -1);
                fe.setVringEnable(0, true);
                assertArrayEquals(new byte[] {4, 5, 6}, fe.getConfig(4, 3, 0));
                assertEquals(77, fe.getVringBase(0));
                // a failing request is NACKed and the connection goes on
                var nack = assertThrows(VhostUserFrontendConnection.VhostUserNackException.class, () -> fe.setVringNum(9, 256));
                assertEquals(1, nack.code());
                // unknown request with NEED_REPLY: error ack, connection still usable
                fe.send(200, true, new byte[0]);
                var r = fe.receiveReply(200);
                assertEquals(1, ByteBuffer.wrap(r.payload()).order(VhostUserHeader.ORDER).getLong());
                // wrong size with NEED_REPLY: error ack from the decoder layer
                fe.send(8, true, new byte[4]);
                assertEquals(1, ByteBuffer.wrap(fe.receiveReply(8).payload()).order(VhostUserHeader.ORDER).getLong());
                // an fd on a request that takes none: closed, error ack
                int stray = LibcSocket.eventfd();
                fe.send(3, true, new byte[0], stray);
                LibcSocket.close(stray);
                assertEquals(1, ByteBuffer.wrap(fe.receiveReply(3).payload()).order(VhostUserHeader.ORDER).getLong());
                assertEquals(4, fe.getQueueNum());
            }
            waitFor(() -> stub.disconnects.get() == 1);
            assertEquals(0, stub.badFds.get());
            assertTrue(stub.calls.containsAll(List.of("getFeatures", "setProtocolFeatures 209", "setOwner", "setMemTable 1",
                    "setVringKick 0", "setVringCall 0", "getConfig 4 3", "getVringBase 0", "setVringEnable 0 true")), stub.calls.toString());
            assertEquals(1, stub.calls.stream().filter("setOwner"::equals).count(), "a request with a stray fd must not reach the handler");
        }
        assertFalse(new File(path).exists());
        assertNoFdLeak(before);
    }

    @Test
    void reconnectAndSecondFrontendRefused() throws Exception {
        java.util.Map<String, String> before = fdTargets();
        try (VhostUserListener l = VhostUserListener.open(path, io.loop(), stub)) {
            VhostUserFrontendConnection a = VhostUserFrontendConnection.connect(path, 5000);
            assertEquals(FEATURES, a.getFeatures());
            try (VhostUserFrontendConnection b = VhostUserFrontendConnection.connect(path, 5000)) {
                assertThrows(IOException.class, b::getFeatures);   // closed by the back-end
            }
            assertEquals(FEATURES, a.getFeatures());                // the first is unaffected
            assertEquals(1, io.call(l::refused));
            a.close();
            waitFor(() -> stub.disconnects.get() == 1);
            try (VhostUserFrontendConnection c = VhostUserFrontendConnection.connect(path, 5000)) {
                assertEquals(FEATURES, c.getFeatures());
            }
            waitFor(() -> stub.disconnects.get() == 2);
            assertEquals(2, io.call(l::accepted));
        }
        assertNoFdLeak(before);
    }

    @Test
    void protocolViolationClosesOnlyThatConnection() throws Exception {
        try (VhostUserListener l = VhostUserListener.open(path, io.loop(), stub)) {
            try (VhostUserFrontendConnection a = VhostUserFrontendConnection.connect(path, 5000)) {
                ByteBuffer b = ByteBuffer.allocate(12).order(VhostUserHeader.ORDER);
                new VhostUserHeader(1, 1, 100_000).encode(b);
                a.sendRaw(b.array());
                assertThrows(IOException.class, a::getFeatures);
            }
            waitFor(() -> stub.disconnects.get() == 1);
            try (VhostUserFrontendConnection c = VhostUserFrontendConnection.connect(path, 5000)) {
                assertEquals(FEATURES, c.getFeatures());
            }
        }
    }

    @Test
    void partialWritesAreReassembled() throws Exception {
        try (VhostUserListener l = VhostUserListener.open(path, io.loop(), stub);
             VhostUserFrontendConnection a = VhostUserFrontendConnection.connect(path, 5000)) {
            ByteBuffer b = ByteBuffer.allocate(20).order(VhostUserHeader.ORDER);
            new VhostUserHeader(2, 1, 8).encode(b);
            b.putLong(0x1234);
            byte[] m = b.array();
            for (int i = 0; i < m.length; i++) {
                a.sendRaw(new byte[] {m[i]});
                Thread.sleep(2);
            }
            assertEquals(FEATURES, a.getFeatures());
            assertTrue(stub.calls.contains("setFeatures 1234"));
        }
    }

    @Test
    void socketFuzzKeepsServingAndLeaksNothing() throws Exception {
        java.util.Map<String, String> before = fdTargets();
        Random rnd = new Random(7);
        int cases = 0;
        try (VhostUserListener l = VhostUserListener.open(path, io.loop(), stub)) {
            for (int round = 0; round < 20; round++) {
                try (VhostUserFrontendConnection a = VhostUserFrontendConnection.connect(path, 2000)) {
                    for (int i = 0; i < 100; i++, cases++) {
                        int req = rnd.nextInt(48);
                        int size = rnd.nextInt(10) == 0 ? rnd.nextInt(300) : new int[] {0, 8, 40, 24}[rnd.nextInt(4)];
                        ByteBuffer b = ByteBuffer.allocate(12 + size).order(VhostUserHeader.ORDER);
                        new VhostUserHeader(req, 1, size).encode(b);
                        byte[] p = new byte[size];
                        rnd.nextBytes(p);
                        b.put(p);
                        int[] fds = new int[rnd.nextInt(3)];
                        for (int k = 0; k < fds.length; k++) fds[k] = LibcSocket.eventfd();
                        try {
                            a.sendRaw(b.array(), fds);
                        } catch (IOException e) {
                            break;   // the back-end closed us: fine
                        } finally {
                            for (int f : fds) LibcSocket.close(f);
                        }
                    }
                }
            }
            waitFor(() -> io.loop().submit(() -> l.active() == null).syncUninterruptibly().getNow());
            try (VhostUserFrontendConnection c = VhostUserFrontendConnection.connect(path, 5000)) {
                // replies of the fuzz went to closed sockets; this one is clean
                assertEquals(FEATURES, c.getFeatures());
            }
        }
        assertNoFdLeak(before);
        assertTrue(cases > 100);
    }

    @Test
    void staleSocketReplacedRegularFileRefused() throws Exception {
        // a socket file nobody listens on (a crashed daemon's)
        int s = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_STREAM | LibcSocket.SOCK_CLOEXEC, 0);
        com.sun.jna.Memory addr = LibcSocket.sockaddrUn(path);
        LibcSocket.bind(s, com.sun.jna.Pointer.nativeValue(addr), LibcSocket.SOCKADDR_UN_SIZEOF);
        java.lang.ref.Reference.reachabilityFence(addr);
        LibcSocket.close(s);
        assertTrue(new File(path).exists());
        try (VhostUserListener l = VhostUserListener.open(path, io.loop(), stub);
             VhostUserFrontendConnection a = VhostUserFrontendConnection.connect(path, 5000)) {
            assertEquals(FEATURES, a.getFeatures());
            // a live socket is not stolen
            IOException e = assertThrows(IOException.class, () -> VhostUserListener.open(path, io.loop(), stub));
            assertTrue(e.getMessage().contains("in use"), e.getMessage());
        }
        String file = dir.resolve("regular").toString();
        Files.writeString(Path.of(file), "data");
        IOException e = assertThrows(IOException.class, () -> VhostUserListener.open(file, io.loop(), stub));
        assertTrue(e.getMessage().contains("not a socket"), e.getMessage());
        assertEquals("data", Files.readString(Path.of(file)));
    }
}
