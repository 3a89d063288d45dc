package dev.vmm.virtio.blk;

import static dev.vmm.vhostuser.message.VhostUserRequest.*;
import static dev.vmm.virtio.blk.VirtioBlk.*;
import static org.junit.jupiter.api.Assertions.*;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcMemory;
import dev.vmm.core.linux.LibcPoll;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.vhostuser.frontend.BlkWorkload;
import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend;
import dev.vmm.vhostuser.message.Inflight;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.VhostUserHeader;
import dev.vmm.vhostuser.message.VhostUserProtocolFeature;
import dev.vmm.vhostuser.message.VringAddr;
import dev.vmm.vhostuser.message.VringState;
import dev.vmm.vhostuser.inflight.InflightPackedQueue;
import dev.vmm.vhostuser.inflight.InflightQueue;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.PackedRing;
import dev.vmm.virtio.queue.driver.PackedQueueDriver;
import dev.vmm.virtio.queue.driver.SplitQueueDriver;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Hostile vhost-user front-ends against a live device: a Daemon with an IOThread serves
 * vub-fuzz (disk0, writable, 2 queues) and vub-other (disk1), and one peer after another
 * connects to vub-fuzz and sends random and mutated-valid message sequences WITH fds (memfds of
 * random sizes, sealed memfds, eventfds, /dev/null, a directory; too few, too many), memory
 * tables with overlapping, huge or beyond-the-file regions, ring addresses outside every region,
 * bad ring indexes, requests before SET_MEM_TABLE, GET_VRING_BASE at odd times, random NEED_REPLY
 * flags; a third of the peers also set up a ring whose descriptors are mutated chains (random
 * addresses, lengths, flags, next indexes, loops, indirect tables, avail index jumps) and kick it.
 * A quarter negotiate INFLIGHT_SHMFD with an in-flight area of their own, run well-formed I/O on a
 * split or packed ring and rewrite random bytes of the area while the device works: no store of
 * the device may land outside the area (the file goes on past it, filled with a canary checked
 * after the ring stopped).
 *
 * <p>Meanwhile a well-behaved front-end runs a verified random-write workload on vub-other. What
 * must hold afterwards: no exception reached an event loop or a thread's top (stderr is scanned
 * for stack traces and Netty's loop-exception lines), every request with a reply body got a
 * reply or a closed connection, the process's fds, memfd mappings and threads are back to their
 * baseline, the other disk verified every write, and a fresh front-end can use the fuzzed device.
 *
 * <p>{@code -Dvmm.vhostfuzz.seconds=N} (default 10) sets the fuzzing time,
 * {@code -Dvmm.vhostfuzz.seed=S} replays a run (the seed is printed).
 */
@Timeout(180)
class VhostUserDeviceFuzzTest {
    static final long SIZE = 64L << 20;
    static final long FUZZ_NS = TimeUnit.SECONDS.toNanos(Long.getLong("vmm.vhostfuzz.seconds", 10));
    static final long GPA = 1L << 32;

    // memfd seals (linux/fcntl.h), for sealed guest-RAM files
    static final int F_ADD_SEALS = 1033;
    static final int F_SEAL_SEAL = 0x1, F_SEAL_SHRINK = 0x2, F_SEAL_GROW = 0x4, F_SEAL_WRITE = 0x8, F_SEAL_FUTURE_WRITE = 0x10;

    @TempDir Path tmp;
    Daemon daemon;
    String fuzzSock;
    String otherSock;
    PrintStream originalErr;
    final ByteArrayOutputStream errCopy = new ByteArrayOutputStream();

    @BeforeEach
    void start() throws Exception {
        // Tee stderr (slf4j-simple and Netty's logger write there) to find escaped exceptions.
        originalErr = System.err;
        System.setErr(new PrintStream(new Tee(originalErr, errCopy), true));
        fuzzSock = tmp.resolve("fuzz.sock").toString();
        otherSock = tmp.resolve("other.sock").toString();
        daemon = VhostUserBlkDeviceTest.twoDisks(tmp);
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub-fuzz", "disk0", fuzzSock, true, 2));
        daemon.exportAdd(VhostUserBlkDeviceTest.export("vub-other", "disk1", otherSock, true, 1));
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
        System.setErr(originalErr);
    }

    /** Copies everything written to stderr into a buffer as well. */
    static final class Tee extends OutputStream {
        final OutputStream a;
        final ByteArrayOutputStream b;
        Tee(OutputStream a, ByteArrayOutputStream b) { this.a = a; this.b = b; }
        @Override public void write(int x) throws IOException { a.write(x); synchronized (b) { b.write(x); } }
        @Override public void write(byte[] x, int off, int len) throws IOException { a.write(x, off, len); synchronized (b) { b.write(x, off, len); } }
        @Override public void flush() throws IOException { a.flush(); }
    }

    // ---------------------------------------------------------------- process accounting

    static Map<String, Integer> openFds() throws IOException {
        Map<String, Integer> m = new TreeMap<>();
        try (Stream<Path> s = Files.list(Path.of("/proc/self/fd"))) {
            for (Path p : s.collect(Collectors.toList())) {
                String target;
                try {
                    target = Files.readSymbolicLink(p).toString();
                } catch (IOException gone) {
                    continue; // the listing's own fd, closed by now
                }
                target = target.replaceAll("\\d+", "N");
                m.merge(target, 1, Integer::sum);
            }
        }
        return m;
    }

    /** Targets with more fds in {@code b} than in {@code a}, and how many more. */
    static Map<String, Integer> grown(Map<String, Integer> a, Map<String, Integer> b) {
        Map<String, Integer> d = new TreeMap<>(b);
        a.forEach((k, v) -> d.merge(k, -v, Integer::sum));
        d.values().removeIf(v -> v <= 0);
        return d;
    }

    static int count(Map<String, Integer> m) { return m.values().stream().mapToInt(Integer::intValue).sum(); }

    static List<String> memfdMappings() throws IOException {
        return Files.readAllLines(Path.of("/proc/self/maps")).stream().filter(l -> l.contains("/memfd:")).collect(Collectors.toList());
    }

    static Set<String> threads() {
        return Thread.getAllStackTraces().keySet().stream().filter(Thread::isAlive).map(Thread::getName)
                .map(n -> n.replaceAll("\\d+", "N")).collect(Collectors.toCollection(TreeSet::new));
    }

    static int threadCount() {
        return (int) Thread.getAllStackTraces().keySet().stream().filter(Thread::isAlive).count();
    }

    // ---------------------------------------------------------------- the test

    @Test
    void hostilePeersLeaveNoTraceAndOtherDisksKeepServing() throws Exception {
        long seed = Long.getLong("vmm.vhostfuzz.seed", System.nanoTime());
        System.out.println("[vhost-user fuzz] seed " + seed + " (-Dvmm.vhostfuzz.seed=" + seed + ")");
        Random r = new Random(seed);
        Stats st = new Stats();

        VirtioBlkFrontend other = VirtioBlkFrontend.connect(otherSock, VhostUserBlkDeviceTest.settings(1));
        // Warm-up: one case of each kind, so lazily started threads and classes exist before the baseline.
        for (int kind = 0; kind < 4; kind++) runCase(new Random(kind), kind, st);
        assertGoodFrontendWorks(fuzzSock, 1);
        Map<String, Integer> fds0 = openFds();
        int maps0 = memfdMappings().size();
        Set<String> threads0 = threads();
        int threadCount0 = threadCount();

        ExecutorService ex = Executors.newSingleThreadExecutor(t -> new Thread(t, "other-disk-workload"));
        long t0 = System.nanoTime();
        Future<BlkWorkload.Result> work = ex.submit(new BlkWorkload(other.queue(0), new BlkWorkload.Spec(
                BlkWorkload.Pattern.RANDWRITE, 4096, 4, 1L << 20, 16L << 20, FUZZ_NS, 0, 2000, seed))::run);
        while (System.nanoTime() - t0 < FUZZ_NS) {
            runCase(r, r.nextInt(4), st);
            st.cases++;
        }
        long fuzzNs = System.nanoTime() - t0;
        BlkWorkload.Result w = work.get(60, TimeUnit.SECONDS);
        ex.shutdown();
        assertTrue(ex.awaitTermination(10, TimeUnit.SECONDS));

        System.out.printf("[vhost-user fuzz] %d cases (%.0f/s), %d messages, %d fds sent, %d rings started, %d kicks, %d used entries, %d replies,"
                        + " %d closed by the device, %d refused; %d tracked rings (%d packed), %d area rewrites;"
                        + " other disk: %d verified writes of %d I/Os, %d errors%n",
                st.cases, st.cases * 1e9 / fuzzNs, st.messages, st.fdsSent, st.ringsStarted, st.kicks, st.usedEntries, st.replies, st.closedByDevice, st.refused,
                st.trackedRings, st.trackedPacked, st.areaRewrites, w.verified, w.ios, w.errors);

        // The other disk served verified I/O throughout.
        assertTrue(w.ios > 100, "the other disk kept serving: " + w.ios + " I/Os");
        assertEquals(0, w.errors, "other disk errors");
        assertTrue(w.verified > 0);
        assertEquals(0, w.verifyFailures, w.firstVerifyFailure);
        assertEquals(0, st.missingReplies, "requests with a reply body that got neither a reply nor a close: " + st.firstMissing);

        // Everything the peers made the device hold is released once they are gone. Something of
        // the JVM's may end meanwhile (an idle GlobalEventExecutor thread): only growth counts.
        assertGoodFrontendWorks(fuzzSock, 2);
        Map<String, Integer> fds1 = settle(() -> openFds(), m -> grown(fds0, m).isEmpty());
        assertEquals(Map.of(), grown(fds0, fds1), "open fds that grew (by target: how many more)");
        int maps1 = settle(() -> memfdMappings().size(), n -> n <= maps0);
        assertTrue(maps1 <= maps0, "memfd mappings back to baseline " + maps0 + ": " + memfdMappings());
        int threadCount1 = settle(VhostUserDeviceFuzzTest::threadCount, n -> n <= threadCount0);
        Set<String> newThreads = new TreeSet<>(threads());
        newThreads.removeAll(threads0);
        assertEquals(Set.of(), newThreads, "threads that were not there before");
        assertTrue(threadCount1 <= threadCount0, "live threads " + threadCount1 + ", before " + threadCount0);
        assertNoEscapedExceptions();
        other.close();
        System.out.printf("[vhost-user fuzz] process before/after: %d/%d fds, %d/%d memfd mappings, %d/%d threads%n",
                count(fds0), count(fds1), maps0, maps1, threadCount0, threadCount1);
    }

    void assertNoEscapedExceptions() {
        String log;
        synchronized (errCopy) { log = errCopy.toString(); }
        List<String> bad = new ArrayList<>();
        String[] lines = log.split("\n");
        for (int i = 0; i < lines.length; i++) {
            String l = lines[i];
            if (l.startsWith("\tat ") || l.contains("Exception in thread") || l.contains("Unexpected exception")
                    || l.contains("A task raised an exception") || l.contains("unexpected error") || l.contains("internal error")
                    || l.contains("handler failed") || l.contains("LEAK:")) {
                bad.add(i > 0 && lines[i].startsWith("\tat ") ? lines[i - 1] + " / " + l : l);
                if (bad.size() > 20) break;
            }
        }
        assertTrue(bad.isEmpty(), "exceptions escaped or were logged as unexpected:\n" + String.join("\n", bad));
    }

    interface IoSupplier<T> { T get() throws IOException; }

    /** Polls {@code s} until {@code ok} or 5 s passed (disconnects are processed asynchronously); returns the last value. */
    static <T> T settle(IoSupplier<T> s, java.util.function.Predicate<T> ok) throws Exception {
        long end = System.nanoTime() + 5_000_000_000L;
        T v = s.get();
        while (!ok.test(v) && System.nanoTime() < end) {
            Thread.sleep(20);
            v = s.get();
        }
        return v;
    }

    /** A fresh, well-behaved front-end reads back what it wrote on the fuzzed device. */
    void assertGoodFrontendWorks(String sock, long seed) throws Exception {
        VirtioBlkFrontend fe = null;
        IOException last = null;
        for (int i = 0; i < 50 && fe == null; i++) { // the last peer's disconnect may still be in progress
            try {
                fe = VirtioBlkFrontend.connect(sock, VhostUserBlkDeviceTest.settings(2));
            } catch (IOException e) {
                last = e;
                Thread.sleep(20);
            }
        }
        if (fe == null) throw last;
        try {
            for (int q = 0; q < 2; q++) {
                byte[] d = VhostUserBlkDeviceTest.random(8192, seed * 7 + q);
                long off = (20L << 20) + q * 65536L;
                assertEquals(VIRTIO_BLK_S_OK, fe.queue(q).write(off, d).status());
                assertArrayEquals(d, fe.queue(q).read(off, d.length).data());
            }
        } finally {
            fe.close();
        }
    }

    // ---------------------------------------------------------------- peers

    static final class Stats {
        long cases, messages, fdsSent, kicks, replies, closedByDevice, refused, missingReplies, ringsStarted, usedEntries;
        long trackedRings, trackedPacked, areaRewrites;
        String firstMissing;
    }

    /** One hostile front-end: its connection, the fds it made (its own copies), and its shared memory. */
    final class Peer implements AutoCloseable {
        final Random r;
        final Stats st;
        final VhostUserFrontendConnection c;
        final List<Integer> fds = new ArrayList<>();
        final Memory pfd = new Memory(LibcPoll.POLLFD_SIZEOF);
        final Memory scratch = new Memory(8);
        final LibcSocket.MsgBuffer bigTx = new LibcSocket.MsgBuffer(VhostUserHeader.SIZE + VhostUserHeader.MAX_PAYLOAD_SIZE + 64, 32);
        /** Our mapping of the memory we shared with SET_MEM_TABLE (0: none); our address is the uva. */
        long memBase;
        long memSize;
        int memFd = -1;
        /** False once we sent bytes that do not frame as messages: no reply can be expected after that. */
        boolean framed = true;
        boolean closed;
        boolean replyAck;
        long features;
        int kickFd = -1;
        /** Kind 3: the ring's driver double (its own guest memory) and our mapping of the in-flight file. */
        SplitQueueDriver splitDriver;
        PackedQueueDriver packedDriver;
        long areaBase;
        long areaMapSize;

        Peer(Random r, Stats st) throws IOException {
            this.r = r;
            this.st = st;
            this.c = VhostUserFrontendConnection.connect(fuzzSock, 5000);
        }

        int track(int fd) { fds.add(fd); return fd; }

        int memfd(long size, int seals) throws IOException {
            int fd;
            try {
                fd = LibcMemory.memfd_create("vhostfuzz", LibcMemory.MFD_CLOEXEC | LibcMemory.MFD_ALLOW_SEALING);
            } catch (LastErrorException e) {
                throw new IOException("memfd_create: errno " + e.getErrorCode());
            }
            track(fd);
            LibcMemory.truncate(fd, size);
            if (seals != 0) LibcSocket.fcntl(fd, F_ADD_SEALS, seals);
            return fd;
        }

        int eventfd() { return track(LibcSocket.eventfd()); }

        /** A random fd a front-end might send: mostly memfds and eventfds, sometimes odd ones. */
        int randomFd() throws IOException {
            switch (r.nextInt(10)) {
                case 0, 1, 2: return memfd(pick(0L, 4096L, 65536L, 1L << 20, (1L << 20) + 123, 4096L * (1 + r.nextInt(256))), 0);
                case 3: return memfd(65536, pick(F_SEAL_WRITE, F_SEAL_FUTURE_WRITE, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL));
                case 4, 5, 6: return eventfd();
                case 7: return track(LibC.open("/dev/null", LibC.O_RDWR | LibC.O_CLOEXEC));
                case 8: return track(LibC.open(tmp.toString(), LibC.O_RDONLY | LibC.O_CLOEXEC));
                default: return memfdMemoryFdOrNew();
            }
        }

        int memfdMemoryFdOrNew() throws IOException { return memFd >= 0 ? memFd : memfd(1L << 20, 0); }

        int[] randomFds(int n) throws IOException {
            int[] a = new int[n];
            for (int i = 0; i < n; i++) a[i] = randomFd();
            return a;
        }

        @SafeVarargs
        final <T> T pick(T... xs) { return xs[r.nextInt(xs.length)]; }

        int pickInt(int... xs) { return xs[r.nextInt(xs.length)]; }

        long pickLong(long... xs) { return xs[r.nextInt(xs.length)]; }

        // ---- sending and receiving ----

        void send(int req, int flags, byte[] payload, int[] fds) throws IOException {
            ByteBuffer b = ByteBuffer.allocate(VhostUserHeader.SIZE + payload.length).order(VhostUserHeader.ORDER);
            b.putInt(req).putInt(flags).putInt(payload.length).put(payload);
            boolean wellFramed = (flags & VhostUserHeader.VERSION_MASK) == VhostUserHeader.VERSION
                    && payload.length <= VhostUserHeader.MAX_PAYLOAD_SIZE;
            rawSend(b.array(), fds);
            if (!wellFramed) framed = false;
            boolean replyExpected = framed && (flags & VhostUserHeader.REPLY) == 0 && hasReply(req);
            drain(replyExpected ? req : -1);
        }

        void rawSend(byte[] bytes, int[] fds) throws IOException {
            if (closed) throw new IOException("closed");
            st.messages++;
            st.fdsSent += fds.length;
            try {
                if (fds.length <= 8) {
                    c.sendRaw(bytes, fds);
                } else { // the front-end's buffer takes 8; the kernel takes up to 253 (SCM_MAX_FD)
                    bigTx.dataPointer().write(0, bytes, 0, bytes.length);
                    if (bigTx.send(c.fd(), 0, bytes.length, fds, fds.length, LibcSocket.MSG_NOSIGNAL) != bytes.length) {
                        throw new IOException("short send");
                    }
                }
            } catch (LastErrorException e) {
                deviceClosed();
                throw new IOException("sendmsg: errno " + e.getErrorCode());
            } catch (IOException e) {
                deviceClosed();
                throw e;
            }
        }

        void deviceClosed() {
            if (!closed) st.closedByDevice++;
            closed = true;
        }

        boolean readable(int timeoutMs) {
            pfd.setInt(0, c.fd());
            pfd.setShort(4, LibcPoll.POLLIN);
            pfd.setShort(6, (short) 0);
            try {
                return LibcPoll.poll(Pointer.nativeValue(pfd), 1, timeoutMs) == 1;
            } catch (LastErrorException e) {
                return false;
            }
        }

        /**
         * Reads whatever the device sent; with {@code expect} >= 0 waits (up to 5 s) for a reply
         * to that request or the end of the stream, and counts it as missing otherwise.
         */
        void drain(int expect) throws IOException {
            boolean got = expect < 0;
            long end = System.nanoTime() + 5_000_000_000L;
            while (!closed) {
                int wait = got ? 0 : (int) Math.max(1, (end - System.nanoTime()) / 1_000_000);
                if (!got && System.nanoTime() > end) break;
                if (!readable(wait)) {
                    if (got) return;
                    continue;
                }
                VhostUserFrontendConnection.Reply rep;
                try {
                    rep = c.receive();
                } catch (IOException e) {
                    deviceClosed(); // EOF (or garbage): the device dropped us
                    return;
                }
                st.replies++;
                for (int f : rep.fds()) {
                    // GET_INFLIGHT_FD hands out an fd; a peer may send it back later
                    track(f);
                }
                if (rep.header().request() == expect) got = true;
            }
            if (!got && !closed) {
                st.missingReplies++;
                if (st.firstMissing == null) st.firstMissing = name(expect);
                throw new IOException("no reply to " + name(expect));
            }
        }

        // ---- message generators ----

        byte[] u64(long v) { return ByteBuffer.allocate(8).order(VhostUserHeader.ORDER).putLong(v).array(); }

        byte[] state(int index, int num) {
            ByteBuffer b = ByteBuffer.allocate(VringState.SIZE).order(VhostUserHeader.ORDER);
            new VringState(index, num).encode(b);
            return b.array();
        }

        int ringIndex() { return pickInt(0, 0, 1, 1, 2, -1, 255, 0x100, r.nextInt()); }

        /** Addresses that hit our memory, its edges, nothing, or overflow. */
        long address(long len) {
            long base = memBase != 0 ? memBase : 0x7f00_0000_0000L;
            long size = memBase != 0 ? memSize : 1L << 20;
            return switch (r.nextInt(9)) {
                case 0, 1, 2 -> base + (r.nextLong() & (size - 1) & ~15L);
                case 3 -> base + size - Math.max(1, len / 2);
                case 4 -> base - 8;
                case 5 -> base + size;
                case 6 -> GPA + (r.nextLong() & ((1L << 20) - 1));
                case 7 -> pickLong(0, -1L, Long.MAX_VALUE, Long.MIN_VALUE, 0xFFFF_FFFF_FFFF_F000L);
                default -> r.nextLong();
            };
        }

        MemoryRegion region() {
            if (r.nextInt(3) == 0) { // plausible: fits a 1 MiB memfd, maybe overlapping what is mapped
                return new MemoryRegion(pickLong(GPA, GPA + (1L << 20), GPA + (2L << 20), 0), pickLong(4096, 1L << 20),
                        pickLong(0x7f00_0000_0000L, 0x7f00_0010_0000L, memBase != 0 ? memBase : 0x7f00_0020_0000L), pickLong(0, 0, 4096));
            }
            long size = pickLong(4096, 65536, 1L << 20, (1L << 20) + 4096, 1L << 47, 1L << 62, 0, -4096, memSize == 0 ? 4096 : memSize);
            long gpa = pickLong(GPA, GPA, 0, GPA + 4096, GPA - 4096, 0xFFFF_FFFF_FFFF_F000L, Long.MAX_VALUE - 4095, r.nextLong() & ~4095L);
            long uva = pickLong(memBase != 0 ? memBase : 0x7f00_0000_0000L, 0x7f00_0000_1000L, 0, -1L, r.nextLong());
            long off = pickLong(0, 0, 4096, 123, 1L << 20, 1L << 40, -4096, r.nextLong() & 0xFFFFF);
            return new MemoryRegion(gpa, size, uva, off);
        }

        /** A request and payload shaped like a valid one with random fields, plus fds. */
        void randomMessage() throws IOException {
            int req = r.nextInt(20) == 0 ? pickInt(0, 44, 1000, -1, r.nextInt()) : 1 + r.nextInt(MAX_KNOWN);
            byte[] p;
            int[] fds = new int[0];
            switch (req) {
                case VHOST_USER_SET_FEATURES -> p = u64(r.nextBoolean() ? features() : r.nextLong());
                case VHOST_USER_SET_PROTOCOL_FEATURES -> p = u64(r.nextBoolean() ? protocolFeatures() : r.nextLong());
                case VHOST_USER_SET_MEM_TABLE -> {
                    int n = r.nextInt(10) == 0 ? pickInt(0, 9, 509) : 1 + r.nextInt(4);
                    ByteBuffer b = ByteBuffer.allocate(8 + 32 * Math.min(n, 100)).order(VhostUserHeader.ORDER);
                    b.putInt(n).putInt(0);
                    for (int i = 0; i < Math.min(n, 100); i++) region().encode(b);
                    p = b.array();
                    fds = randomFds(Math.max(0, Math.min(8, n + pickInt(0, 0, 0, -1, 1, 3))));
                }
                case VHOST_USER_ADD_MEM_REG, VHOST_USER_REM_MEM_REG -> {
                    ByteBuffer b = ByteBuffer.allocate(MemoryRegion.SINGLE_SIZE).order(VhostUserHeader.ORDER);
                    region().encodeSingle(b);
                    p = b.array();
                    fds = randomFds(pickInt(1, 1, 1, 0, 2));
                }
                case VHOST_USER_SET_VRING_NUM -> p = state(ringIndex(), pickInt(1, 2, 3, 8, 128, 256, 32768, 65536, 0, -1, r.nextInt()));
                case VHOST_USER_SET_VRING_BASE -> p = state(ringIndex(), pickInt(0, 1, 0xFFFF, 0x8000_8000, r.nextInt()));
                case VHOST_USER_GET_VRING_BASE, VHOST_USER_SET_VRING_ENABLE -> p = state(ringIndex(), pickInt(0, 1, 2, -1));
                case VHOST_USER_SET_VRING_ADDR -> {
                    ByteBuffer b = ByteBuffer.allocate(VringAddr.SIZE).order(VhostUserHeader.ORDER);
                    new VringAddr(ringIndex(), pickInt(0, 0, 1, r.nextInt()), address(4096), address(2048), address(1024), r.nextLong()).encode(b);
                    p = b.array();
                }
                case VHOST_USER_SET_VRING_KICK, VHOST_USER_SET_VRING_CALL, VHOST_USER_SET_VRING_ERR -> {
                    boolean nofd = r.nextInt(6) == 0;
                    p = u64((ringIndex() & 0xFFL) | (nofd ? 0x100 : 0) | (r.nextInt(10) == 0 ? r.nextLong() & ~0x1FFL : 0));
                    int n = nofd ? pickInt(0, 0, 1) : pickInt(1, 1, 1, 1, 0, 2);
                    fds = new int[n];
                    for (int i = 0; i < n; i++) fds[i] = r.nextInt(4) == 0 ? randomFd() : eventfd();
                }
                case VHOST_USER_GET_CONFIG, VHOST_USER_SET_CONFIG -> {
                    int size = pickInt(0, 1, 8, 60, 256, 257, r.nextInt(300));
                    ByteBuffer b = ByteBuffer.allocate(12 + size).order(VhostUserHeader.ORDER);
                    b.putInt(pickInt(0, 32, 59, 60, 255, -1, r.nextInt(300))).putInt(r.nextInt(20) == 0 ? r.nextInt() : size).putInt(pickInt(0, 1, r.nextInt()));
                    byte[] d = new byte[size];
                    r.nextBytes(d);
                    b.put(d);
                    p = b.array();
                }
                case VHOST_USER_GET_INFLIGHT_FD, VHOST_USER_SET_INFLIGHT_FD -> {
                    ByteBuffer b = ByteBuffer.allocate(Inflight.SIZE).order(VhostUserHeader.ORDER);
                    new Inflight(pickLong(0, 4096, 1L << 20, 1L << 50, -1L), pickLong(0, 0, 4096, -1L), pickInt(1, 2, 3, 0, -1),
                            pickInt(1, 128, 256, 32768, 65536, 0, -1)).encode(b);
                    p = b.array();
                    if (req == VHOST_USER_SET_INFLIGHT_FD) fds = randomFds(pickInt(1, 1, 1, 0, 2));
                }
                case VHOST_USER_SET_LOG_BASE, VHOST_USER_SET_LOG_FD, VHOST_USER_SET_BACKEND_REQ_FD, VHOST_USER_SET_DEVICE_STATE_FD -> {
                    p = new byte[pickInt(0, 8, 16, 24)];
                    r.nextBytes(p);
                    fds = randomFds(pickInt(0, 1, 1, 2));
                }
                default -> {
                    int ps = VHOST_USER_GET_FEATURES <= req && req <= MAX_KNOWN ? payloadSize(req) : -1;
                    p = new byte[ps >= 0 && r.nextInt(4) != 0 ? ps : r.nextInt(64)];
                    r.nextBytes(p);
                    if (r.nextInt(8) == 0) fds = randomFds(1 + r.nextInt(3));
                }
            }
            int flags = VhostUserHeader.VERSION | (r.nextBoolean() ? VhostUserHeader.NEED_REPLY : 0);
            switch (r.nextInt(40)) {
                case 0 -> flags = r.nextInt();                                   // any flags at all
                case 1 -> flags |= VhostUserHeader.REPLY;                       // a "reply" from the front-end
                case 2 -> p = java.util.Arrays.copyOf(p, Math.max(0, p.length + pickInt(-1, 1, -8, 8)));
                case 3 -> fds = randomFds(9 + r.nextInt(8));                    // more fds than any message may carry
                default -> { }
            }
            send(req, flags, p, fds);
        }

        long features() {
            long offered = VirtioBlkFrontend.WANTED_FEATURES | (1L << VIRTIO_F_RING_PACKED)
                    | (1L << VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES);
            return offered & (r.nextBoolean() ? -1L : r.nextLong());
        }

        long protocolFeatures() {
            return (VirtioBlkFrontend.WANTED_PROTOCOL_FEATURES | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.INFLIGHT_SHMFD))
                    & (r.nextBoolean() ? -1L : r.nextLong());
        }

        // ---- a plausible set-up, then a hostile ring ----

        void negotiate() throws IOException {
            long offered = c.getFeatures();
            long pf = c.getProtocolFeatures() & protocolFeatures();
            c.setProtocolFeatures(pf);
            replyAck = (pf & VhostUserProtocolFeature.mask(VhostUserProtocolFeature.REPLY_ACK)) != 0;
            c.setOwner();
            features = offered & features() | (1L << VIRTIO_F_VERSION_1);
            c.setFeatures(features & offered);
            st.messages += 5;
        }

        void shareMemory() throws IOException {
            memSize = pickLong(256 << 10, 1 << 20, 2 << 20);
            memFd = memfd(memSize, r.nextInt(4) == 0 ? F_SEAL_SHRINK | F_SEAL_GROW : 0);
            memBase = LibcMemory.mapShared(memFd, memSize, 0, true);
            c.setMemTable(List.of(new MemoryRegion(GPA, memSize, memBase, 0)), new int[] {memFd});
            st.messages++;
            st.fdsSent++;
        }

        /**
         * Ring 0 or 1 laid out at the start of our memory, filled with mutated chains, kicked a
         * few times, with random control messages in between.
         */
        void hostileRing() throws IOException {
            int q = r.nextInt(2);
            int num = 1 << (2 + r.nextInt(7));
            long desc = memBase, avail = memBase + 16L * num, used = (avail + 6 + 2L * num + 4095) & ~4095L;
            long data = (used + 6 + 8L * num + 4095) & ~4095L;
            c.setVringNum(q, num);
            c.setVringBase(q, r.nextInt(8) == 0 ? r.nextInt(0x10000) : 0);
            c.setVringAddr(new VringAddr(q, 0, desc, used, avail, 0));
            c.setVringErr(q, eventfd());
            c.setVringCall(q, eventfd());
            kickFd = eventfd();
            c.setVringKick(q, kickFd);
            c.setVringEnable(q, true);
            st.messages += 7;
            st.fdsSent += 3;
            st.ringsStarted++;
            int availIdx = 0;
            int rounds = 1 + r.nextInt(4);
            for (int round = 0; round < rounds && !closed; round++) {
                int chains = 1 + r.nextInt(Math.min(num, 16));
                for (int k = 0; k < chains; k++) {
                    int head = r.nextInt(num);
                    writeChain(desc, num, head, data);
                    RawMemory.putLe16(avail + 4 + 2L * (availIdx % num), r.nextInt(12) == 0 ? r.nextInt(0x10000) : head);
                    availIdx++;
                }
                RawMemory.putLe16(avail, r.nextInt(4) == 0 ? 1 : 0);                         // NO_INTERRUPT or not
                RawMemory.putLe16(avail + 4 + 2L * num, r.nextInt(0x10000));                   // used_event
                int published = switch (r.nextInt(12)) {
                    case 0 -> availIdx + num + 1 + r.nextInt(100);                              // index jump
                    case 1 -> r.nextInt(0x10000);
                    default -> availIdx;
                };
                RawMemory.putLe16Release(avail + 2, published);
                kick();
                if (r.nextInt(3) == 0) randomMessage();
                if (r.nextInt(8) == 0) {
                    c.getVringBase(q); // stop the ring at an odd time
                    st.messages++;
                }
            }
            st.usedEntries += RawMemory.getLe16Acquire(used + 2); // what the device completed (wraps at 64k: a rough count)
        }

        // ---- a tracked ring whose in-flight area the peer rewrites under the device ----

        /** Past the area: beyond any entry a 16-bit index can name (desc(0xFFFF) + 32 of a packed region). */
        static final long AREA_GUARD = 32L * 0x10000 + 4096;
        static final int CANARY = 0xA5;

        /**
         * INFLIGHT_SHMFD with an area in a file of ours that goes on {@link #AREA_GUARD} bytes
         * past it (filled with {@link #CANARY}), well-formed reads and writes on ring 0 (split or
         * packed), and random bytes of the area rewritten while the device takes and completes
         * them. After the ring stopped (GET_VRING_BASE), the canary must be intact.
         */
        void inflightRing() throws IOException {
            long offered = c.getFeatures();
            long pf = c.getProtocolFeatures() & (VhostUserProtocolFeature.mask(VhostUserProtocolFeature.CONFIG)
                    | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.INFLIGHT_SHMFD));
            c.setProtocolFeatures(pf);
            c.setOwner();
            boolean packed = (offered & 1L << VIRTIO_F_RING_PACKED) != 0 && r.nextBoolean();
            features = 1L << VIRTIO_F_VERSION_1 | (packed ? 1L << VIRTIO_F_RING_PACKED : 0)
                    | 1L << VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES;
            c.setFeatures(features & offered);
            st.messages += 5;
            int num = 1 << (2 + r.nextInt(5));
            long memSize = 1L << 20;
            long driverFeatures = 1L << VIRTIO_F_VERSION_1 | (packed ? 1L << VIRTIO_F_RING_PACKED : 0);
            int driverFd;
            long driverUva;
            try {
                if (packed) {
                    packedDriver = new PackedQueueDriver(num, memSize, GPA, driverFeatures);
                    driverFd = packedDriver.fd();
                    driverUva = packedDriver.userAddress();
                } else {
                    splitDriver = new SplitQueueDriver(num, memSize, GPA, driverFeatures);
                    driverFd = splitDriver.fd();
                    driverUva = splitDriver.userAddress();
                }
            } catch (LibcMemory.ErrnoException e) {
                throw new IllegalStateException(e);
            }
            long area = packed ? InflightPackedQueue.regionSize(num) : InflightQueue.regionSize(num);
            areaMapSize = (area + AREA_GUARD + 4095) & ~4095L;
            int areaFd = memfd(areaMapSize, 0);
            areaBase = LibcMemory.mapShared(areaFd, areaMapSize, 0, true);
            RawMemory.fill(areaBase + area, areaMapSize - area, CANARY);
            c.setInflightFd(new Inflight(areaMapSize, 0, 1, num), areaFd);
            c.setMemTable(List.of(new MemoryRegion(GPA, memSize, driverUva, 0)), new int[] {driverFd});
            c.setVringNum(0, num);
            c.setVringBase(0, packed ? PackedRing.INITIAL_BASE : 0);
            c.setVringAddr(packed
                    ? new VringAddr(0, 0, packedDriver.descUserAddr(), packedDriver.deviceEventUserAddr(), packedDriver.driverEventUserAddr(), 0)
                    : new VringAddr(0, 0, splitDriver.descUserAddr(), splitDriver.usedUserAddr(), splitDriver.availUserAddr(), 0));
            c.setVringErr(0, eventfd());
            c.setVringCall(0, eventfd());
            kickFd = eventfd();
            c.setVringKick(0, kickFd);
            c.setVringEnable(0, true);
            st.messages += 10;
            st.fdsSent += 5;
            st.ringsStarted++;
            st.trackedRings++;
            if (packed) st.trackedPacked++;
            // Buffers for up to 4 requests at once (header, one block, status), reused every round.
            int slots = Math.min(4, num / 3);
            long[][] bufs = new long[slots][];
            for (int i = 0; i < slots; i++) {
                bufs[i] = packed ? new long[] {packedDriver.alloc(16), packedDriver.alloc(4096), packedDriver.alloc(1)}
                        : new long[] {splitDriver.alloc(16), splitDriver.alloc(4096), splitDriver.alloc(1)};
            }
            int[] ids = new int[num];
            int[] lens = new int[num];
            try {
                int rounds = 2 + r.nextInt(8);
                for (int round = 0; round < rounds && !closed; round++) {
                    int outstanding = 0;
                    int submit = 1 + r.nextInt(slots);
                    for (int i = 0; i < submit; i++) {
                        long[] b = bufs[i];
                        boolean write = r.nextBoolean();
                        long h = packed ? packedDriver.host(b[0], 16) : splitDriver.host(b[0], 16);
                        RawMemory.putLe32(h, write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN);
                        RawMemory.putLe32(h + 4, 0);
                        RawMemory.putLe64(h + 8, (40L << 11) + 8L * r.nextInt(1024)); // 20 MiB on: apart from assertGoodFrontendWorks
                        long[] gpa = b;
                        int[] len = {16, 4096, 1};
                        int id = packed ? packedDriver.submit(gpa, len, write ? 2 : 1, 3) : splitDriver.submit(gpa, len, write ? 2 : 1, 3);
                        if (id < 0) break; // no room: the device stopped taking
                        outstanding++;
                    }
                    kick();
                    long end = System.nanoTime() + 50_000_000L;
                    while (outstanding > 0 && System.nanoTime() < end) {
                        rewriteArea(area);
                        outstanding -= packed ? packedDriver.pollUsed(ids, lens) : splitDriver.pollUsed(ids, lens);
                    }
                    if (outstanding > 0) break; // the device stopped the ring (its right): keep the buffers out of reach
                }
            } finally {
                try {
                    c.getVringBase(0); // the ring stops: no store of the device's after the reply
                    st.messages++;
                } catch (IOException e) {
                    deviceClosed();
                    try {
                        Thread.sleep(100); // the device stops its rings as it drops us
                    } catch (InterruptedException ie) {
                        Thread.currentThread().interrupt();
                    }
                }
                for (long i = area; i < areaMapSize; i++) {
                    if (RawMemory.getByte(areaBase + i) != CANARY) {
                        fail("the device stored " + (i - area) + " bytes past the in-flight area of a " + (packed ? "packed" : "split")
                                + " ring of " + num + " (" + area + " bytes)");
                    }
                }
            }
        }

        /** What a hostile front-end may write into its in-flight area at any time. */
        void rewriteArea(long area) {
            st.areaRewrites++;
            switch (r.nextInt(4)) {
                case 0 -> RawMemory.fill(areaBase, area, 0xFF);                                  // every index 0xFFFF
                case 1 -> { for (int k = 0; k < 16; k++) RawMemory.putByte(areaBase + r.nextInt((int) area), r.nextInt(256)); }
                case 2 -> { for (int k = 0; k < 16; k++) RawMemory.putLe16(areaBase + (r.nextInt((int) area) & ~1), r.nextInt(0x10000)); }
                default -> { for (long i = 0; i < area; i++) RawMemory.putByte(areaBase + i, r.nextInt(256)); }
            }
        }

        void kick() {
            try {
                LibcSocket.eventfdWrite(kickFd, 1, Pointer.nativeValue(scratch));
                st.kicks++;
            } catch (LastErrorException ignored) {
                // never: our own eventfd
            }
            try {
                Thread.sleep(r.nextInt(3));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }

        /** A header, data, status chain starting at {@code head}, with at most a few mutations. */
        void writeChain(long desc, int num, int head, long data) {
            long dataGpa = GPA + (data - memBase);
            long room = memSize - (data - memBase);
            int type = pickInt(VIRTIO_BLK_T_IN, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH,
                    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, r.nextInt());
            long hdr = dataGpa + (r.nextLong() & (room / 2 - 1) & ~15L);
            long buf = dataGpa + (r.nextLong() & (room / 2 - 1) & ~511L);
            long status = dataGpa + room - 1 - r.nextInt(64);
            int len = 512 * (1 + r.nextInt(16));
            long sector = r.nextInt(8) == 0 ? r.nextLong() : r.nextInt((int) (SIZE >> 9));
            if (hdr + 16 <= GPA + memSize) {
                RawMemory.putLe32(memBase + (hdr - GPA), type);
                RawMemory.putLe64(memBase + (hdr - GPA) + 8, sector);
            }
            int d1 = (head + 1) % num, d2 = (head + 2) % num;
            boolean in = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
            long[] addr = {hdr, buf, status};
            long[] lens = {16, len, 1};
            int[] flags = {1, 1 | (in ? 2 : 0), 2};
            int[] next = {d1, d2, 0};
            int mutations = r.nextInt(3) == 0 ? 0 : 1 + r.nextInt(2);
            for (int m = 0; m < mutations; m++) {
                int i = r.nextInt(3);
                switch (r.nextInt(8)) {
                    case 0 -> addr[i] = address(lens[i]) - memBase + GPA;            // random, edge or outside
                    case 1 -> addr[i] = r.nextLong();
                    case 2 -> lens[i] = pickLong(0, 0xFFFF_FFFFL, 0x8000_0000L, 3, memSize);
                    case 3 -> flags[i] ^= 1 << r.nextInt(3);                           // NEXT, WRITE, INDIRECT
                    case 4 -> next[i] = r.nextInt(8) == 0 ? r.nextInt(0x10000) : r.nextInt(num);
                    case 5 -> { next[2] = head; flags[2] |= 1; }                        // a loop
                    case 6 -> { flags[0] = 4; addr[0] = buf; lens[0] = 16L * pickInt(1, 3, 16, 0, 4097); } // indirect table of junk
                    default -> flags[i] = r.nextInt(0x10000);
                }
            }
            int[] at = {head, d1, d2};
            for (int i = 0; i < 3; i++) {
                long d = desc + 16L * at[i];
                RawMemory.putLe64(d, addr[i]);
                RawMemory.putLe32(d + 8, (int) lens[i]);
                RawMemory.putLe16(d + 12, flags[i]);
                RawMemory.putLe16(d + 14, next[i]);
            }
        }

        @Override
        public void close() {
            c.close();
            if (memBase != 0) {
                try {
                    LibcMemory.unmap(memBase, memSize);
                } catch (IOException e) {
                    throw new IllegalStateException(e);
                }
            }
            if (areaBase != 0) {
                try {
                    LibcMemory.unmap(areaBase, areaMapSize);
                } catch (IOException e) {
                    throw new IllegalStateException(e);
                }
            }
            if (splitDriver != null) splitDriver.close();
            if (packedDriver != null) packedDriver.close();
            for (int fd : fds) LibcSocket.closeQuietly(fd);
            pfd.close();
            scratch.close();
            bigTx.close();
        }
    }

    /**
     * One peer. Kinds: 0 random messages from the first byte (requests before SET_MEM_TABLE),
     * 1 a plausible negotiation and memory table then random messages, 2 the same plus a
     * hostile ring that is kicked, 3 a tracked ring whose in-flight area is rewritten under it
     * then random messages.
     */
    void runCase(Random r, int kind, Stats st) throws Exception {
        Peer p;
        try {
            p = new Peer(r, st);
        } catch (IOException e) {
            st.refused++;
            Thread.sleep(5);
            return;
        }
        try (p) {
            if (kind == 1 || kind == 2) {
                p.negotiate();
                p.shareMemory();
            }
            if (kind == 2) p.hostileRing();
            if (kind == 3) p.inflightRing();
            int n = kind == 0 ? 1 + r.nextInt(16) : r.nextInt(8);
            for (int i = 0; i < n && !p.closed; i++) p.randomMessage();
            p.drain(-1);
        } catch (IOException e) {
            // the device closed the connection or NACKed a set-up step: that is its right
            if (!p.closed && e instanceof VhostUserFrontendConnection.VhostUserNackException == false
                    && !e.getMessage().startsWith("no reply")) {
                p.deviceClosed();
            }
        }
    }
}
