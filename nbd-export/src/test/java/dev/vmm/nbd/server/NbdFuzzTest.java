package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.testing.NbdTestClient;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.ByteBufAllocator;
import io.netty.util.ResourceLeakDetector;
import io.netty.util.ResourceLeakDetectorFactory;
import io.netty.util.internal.PlatformDependent;
import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CopyOnWriteArrayList;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Issue 5, "bad input never crashes, hangs or leaks": random and mutated-valid byte streams for
 * both protocol phases, each on its own connection, for a bounded time. Afterwards every
 * connection is gone, the server holds no more direct memory than before, its threads still run
 * tasks, and a well-behaved client is served. The number of cases run is printed.
 *
 * <p>Leak accounting: the whole run tracks every ByteBuf (ResourceLeakDetector PARANOID) with
 * detectors that record what they report, and fails if any buffer was garbage-collected
 * without being released. The detectors come from a ResourceLeakDetectorFactory installed
 * before Netty creates its ByteBuf detector (a static final in AbstractByteBuf); when an
 * earlier test class in this JVM already created it, a LeakListener on that detector records
 * instead.
 */
@Timeout(120)
class NbdFuzzTest extends NbdServerFixture {
    static final long SECONDS = 8;

    /** Leaks reported by any detector: "type: records". */
    static final List<String> LEAKS = new CopyOnWriteArrayList<>();
    static final ResourceLeakDetector.Level PREVIOUS_LEVEL = ResourceLeakDetector.getLevel();

    static {
        ResourceLeakDetector.setLevel(ResourceLeakDetector.Level.PARANOID);
        ResourceLeakDetectorFactory.setResourceLeakDetectorFactory(new RecordingFactory());
    }

    /** Makes detectors that record each leak report (and still log it). */
    static final class RecordingFactory extends ResourceLeakDetectorFactory {
        @Override
        @SuppressWarnings("deprecation")
        public <T> ResourceLeakDetector<T> newResourceLeakDetector(Class<T> resource, int samplingInterval, long maxActive) {
            return new RecordingDetector<>(resource, samplingInterval);
        }
    }

    static final class RecordingDetector<T> extends ResourceLeakDetector<T> {
        RecordingDetector(Class<?> resource, int samplingInterval) { super(resource, samplingInterval); }

        @Override
        protected boolean needReport() { return true; }

        @Override
        protected void reportTracedLeak(String resourceType, String records) {
            LEAKS.add(resourceType + ": " + records);
            super.reportTracedLeak(resourceType, records);
        }

        @Override
        protected void reportUntracedLeak(String resourceType) {
            LEAKS.add(resourceType + ": (untraced)");
            super.reportUntracedLeak(resourceType);
        }
    }

    /** The ByteBuf detector records, whoever made it. */
    static void ensureByteBufLeaksAreRecorded() throws ReflectiveOperationException {
        java.lang.reflect.Field f = Class.forName("io.netty.buffer.AbstractByteBuf").getDeclaredField("leakDetector");
        f.setAccessible(true);
        ResourceLeakDetector<?> d = (ResourceLeakDetector<?>) f.get(null);
        if (!(d instanceof RecordingDetector)) {
            d.setLeakListener((type, records) -> LEAKS.add(type + ": " + (records.isEmpty() ? "(untraced)" : records)));
        }
    }

    /**
     * Lets the detectors see every buffer that became garbage: a GC enqueues the trackers of
     * unreleased buffers, and the next tracked allocation polls that queue and reports.
     */
    static void collectAndPollLeaks() throws InterruptedException {
        for (int i = 0; i < 10; i++) {
            System.gc();
            byte[][] churn = new byte[64][];
            for (int j = 0; j < churn.length; j++) churn[j] = new byte[64 << 10];
            Thread.sleep(50); // the Reference Handler thread enqueues asynchronously
            for (int j = 0; j < 8; j++) {
                ByteBuf b = ByteBufAllocator.DEFAULT.directBuffer(64);
                b.release();
                ByteBuf h = ByteBufAllocator.DEFAULT.heapBuffer(64);
                h.release();
            }
        }
    }

    @AfterAll
    static void restoreLevel() {
        ResourceLeakDetector.setLevel(PREVIOUS_LEVEL);
    }

    @Test
    void randomAndMutatedStreamsLeaveNothingBehind() throws Exception {
        InetSocketAddress addr = (InetSocketAddress) server.boundAddress();
        ensureByteBufLeaksAreRecorded();
        Random r = new Random(20261130);
        long baseline = PlatformDependent.usedDirectMemory();
        long end = System.nanoTime() + SECONDS * 1_000_000_000L;
        int cases = 0;
        int[] kinds = new int[4];
        while (System.nanoTime() < end) {
            int kind = r.nextInt(4);
            byte[] bytes = switch (kind) {
                case 0 -> random(r, r.nextInt(256));
                case 1 -> mutate(r, validHandshake(r));
                case 2 -> concat(validHandshake(r), mutate(r, requests(r)));
                default -> concat(validHandshake(r), requests(r)); // valid, but random flags/offsets/lengths
            };
            if (kind != 0 && r.nextInt(4) == 0) bytes = java.util.Arrays.copyOf(bytes, r.nextInt(bytes.length + 1)); // truncated
            feed(addr, bytes);
            kinds[kind]++;
            cases++;
        }
        System.out.printf("[fuzz] %d cases in %d s (random %d, mutated handshake %d, mutated requests %d, random requests %d)%n",
                cases, SECONDS, kinds[0], kinds[1], kinds[2], kinds[3]);
        assertTrue(cases > 1000, "cases run: " + cases);

        long deadline = System.nanoTime() + 10_000_000_000L;
        while (server.connectionCount() > 0 && System.nanoTime() < deadline) Thread.sleep(20);
        assertEquals(0, server.connectionCount(), "every fuzz connection was released");
        assertEquals("alive", iot.call(() -> "alive"), "the IOThread still runs tasks");
        assertEquals("alive", main.call(() -> "alive"), "the main loop still runs tasks");
        long held = PlatformDependent.usedDirectMemory() - baseline;
        assertTrue(held < 32L << 20, "direct memory still held after " + cases + " cases: " + held);
        try (NbdTestClient c = new NbdTestClient(addr).handshake()) {
            c.structuredReplies();
            c.go("disk0");
            assertArrayEquals(fileBytes(0, 4096), c.read(0, 4096, 0));
        }
        collectAndPollLeaks();
        assertTrue(LEAKS.isEmpty(), LEAKS.size() + " ByteBuf leak(s) reported (PARANOID) after " + cases + " cases:\n"
                + String.join("\n", LEAKS.subList(0, Math.min(3, LEAKS.size()))));
        System.out.printf("[fuzz] leak detector PARANOID: no leak reported%n");
    }

    /** Sends the bytes, reads whatever comes back for a moment, then closes abruptly. */
    private static void feed(InetSocketAddress addr, byte[] bytes) {
        try (Socket s = new Socket()) {
            s.connect(addr, 2000);
            s.setSoTimeout(2);
            s.setSoLinger(true, 0); // RST on close: an abrupt disconnect
            try {
                s.getOutputStream().write(bytes);
                s.getOutputStream().flush();
            } catch (IOException closedByServer) {
                return;
            }
            InputStream in = s.getInputStream();
            byte[] sink = new byte[65536];
            long until = System.nanoTime() + 10_000_000L;
            while (System.nanoTime() < until) {
                try {
                    if (in.read(sink) < 0) return;
                } catch (java.net.SocketTimeoutException quiet) {
                    return;
                }
            }
        } catch (IOException e) {
            // refused or reset: fine, the server decides
        }
    }

    private static byte[] random(Random r, int n) {
        byte[] b = new byte[n];
        r.nextBytes(b);
        return b;
    }

    private static byte[] concat(byte[] a, byte[] b) {
        byte[] c = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, c, a.length, b.length);
        return c;
    }

    /** Flips bits, overwrites bytes with edge values, inserts and deletes. */
    private static byte[] mutate(Random r, byte[] in) {
        byte[] b = in.clone();
        int n = 1 + r.nextInt(6);
        for (int i = 0; i < n && b.length > 0; i++) {
            int at = r.nextInt(b.length);
            switch (r.nextInt(4)) {
                case 0 -> b[at] ^= (byte) (1 << r.nextInt(8));
                case 1 -> b[at] = (byte) new int[] {0, 0xff, 0x7f, 0x80}[r.nextInt(4)];
                case 2 -> b = concat(java.util.Arrays.copyOf(b, at), concat(random(r, 1 + r.nextInt(8)), java.util.Arrays.copyOfRange(b, at, b.length)));
                default -> b = concat(java.util.Arrays.copyOf(b, at), java.util.Arrays.copyOfRange(b, Math.min(b.length, at + 1 + r.nextInt(8)), b.length));
            }
        }
        return b;
    }

    /** Client flags and a few options ending in GO (or EXPORT_NAME) for an export, sometimes with extended headers. */
    private static byte[] validHandshake(Random r) {
        try {
            ByteArrayOutputStream bo = new ByteArrayOutputStream();
            DataOutputStream d = new DataOutputStream(bo);
            d.writeInt(3); // FIXED_NEWSTYLE | NO_ZEROES
            int pre = r.nextInt(4);
            for (int i = 0; i < pre; i++) option(d, new int[] {NbdOpt.NBD_OPT_LIST, NbdOpt.NBD_OPT_STRUCTURED_REPLY,
                    NbdOpt.NBD_OPT_EXTENDED_HEADERS, NbdOpt.NBD_OPT_STARTTLS, 42}[r.nextInt(5)], new byte[0]);
            String name = r.nextBoolean() ? "disk0" : "ro";
            if (r.nextInt(5) == 0) {
                option(d, NbdOpt.NBD_OPT_EXPORT_NAME, name.getBytes());
            } else {
                option(d, NbdOpt.NBD_OPT_GO, NbdTestClient.infoRequest(name, 0, 1, 2, 3));
            }
            return bo.toByteArray();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    private static void option(DataOutputStream d, int opt, byte[] data) throws IOException {
        d.writeLong(NbdMagic.IHAVEOPT);
        d.writeInt(opt);
        d.writeInt(data.length);
        d.write(data);
    }

    /** A few compact requests with random types, flags, offsets and lengths (payloads kept small). */
    private static byte[] requests(Random r) {
        try {
            ByteArrayOutputStream bo = new ByteArrayOutputStream();
            DataOutputStream d = new DataOutputStream(bo);
            int n = 1 + r.nextInt(8);
            for (int i = 0; i < n; i++) {
                int type = r.nextInt(10); // NBD_CMD_READ .. RESIZE and beyond
                long offset = r.nextBoolean() ? r.nextInt(SIZE) : r.nextLong();
                int length = r.nextBoolean() ? r.nextInt(65536) : r.nextInt();
                d.writeInt(NbdMagic.NBD_REQUEST_MAGIC);
                d.writeShort(r.nextInt(4) == 0 ? r.nextInt(1 << 16) : 0);
                d.writeShort(type);
                d.writeLong(r.nextLong());
                d.writeLong(offset);
                d.writeInt(length);
                if (type == NbdCmd.NBD_CMD_WRITE) d.write(random(r, Math.min(Math.max(length, 0), 8192))); // often short: the server waits
            }
            return bo.toByteArray();
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }
}
