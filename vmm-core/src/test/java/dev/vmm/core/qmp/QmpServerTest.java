package dev.vmm.core.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.json.Json;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.RandomAccessFile;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** The monitor against an in-process daemon on temp images (qmp-spec.rst and QEMU's messages). */
@Timeout(60)
class QmpServerTest {
    @TempDir
    Path dir;

    Daemon daemon;
    QmpServer server;
    Path socket;
    final CountDownLatch quit = new CountDownLatch(1);
    /** Pause the fake mover reports; the real handoff is Daemon.moveNode's. */
    static final long PAUSE_NS = 12345;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        QmpCommands commands = new QmpCommands();
        CoreCommands.register(commands, daemon, (node, target) -> {
            try {
                BlockNode n = daemon.node(node);
                dev.vmm.iothread.IOThread t = daemon.iothread(target);
                if (n.home() == t) return CompletableFuture.completedFuture(0L);
                CompletableFuture<Long> f = new CompletableFuture<>();
                // Completes later, on another thread, like the real handoff.
                t.execute(() -> {
                    n.setHome(t);
                    f.complete(PAUSE_NS);
                });
                return f;
            } catch (DaemonException e) {
                return CompletableFuture.failedFuture(e);
            }
        }, quit::countDown);
        server = new QmpServer(daemon.mainLoop(), commands, QmpServer.Version.DEFAULT);
        daemon.putComponent(QmpServer.class, server);
        socket = dir.resolve("qmp.sock");
        server.listen(socket);
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    /** A line-oriented test client. */
    static final class Client implements AutoCloseable {
        final SocketChannel ch;
        final BufferedReader in;
        final OutputStream out;

        Client(Path socket) throws IOException {
            ch = SocketChannel.open(UnixDomainSocketAddress.of(socket));
            in = new BufferedReader(new InputStreamReader(Channels.newInputStream(ch), StandardCharsets.UTF_8));
            out = Channels.newOutputStream(ch);
        }

        void sendRaw(String text) throws IOException {
            out.write(text.getBytes(StandardCharsets.UTF_8));
            out.flush();
        }

        final java.util.ArrayDeque<Map<String, Object>> events = new java.util.ArrayDeque<>();

        @SuppressWarnings("unchecked")
        Map<String, Object> readAny() throws Exception {
            String line = in.readLine();
            assertTrue(line != null, "connection closed");
            assertTrue(line.endsWith("}"), line);
            return (Map<String, Object>) Json.parse(line);
        }

        /** The next message that is not an event; events are kept in {@link #events}. */
        Map<String, Object> read() throws Exception {
            while (true) {
                Map<String, Object> m = readAny();
                if (!m.containsKey("event")) return m;
                events.add(m);
            }
        }

        /** The next event (already received or read now). */
        Map<String, Object> event() throws Exception {
            if (!events.isEmpty()) return events.poll();
            Map<String, Object> m = readAny();
            assertTrue(m.containsKey("event"), m.toString());
            return m;
        }

        Map<String, Object> call(String json) throws Exception {
            sendRaw(json + "\n");
            return read();
        }

        @SuppressWarnings("unchecked")
        Object ok(String json) throws Exception {
            Map<String, Object> r = call(json);
            assertTrue(r.containsKey("return"), json + " -> " + r);
            return r.get("return");
        }

        @SuppressWarnings("unchecked")
        String error(String json) throws Exception {
            Map<String, Object> r = call(json);
            assertTrue(r.containsKey("error"), json + " -> " + r);
            Map<String, Object> e = (Map<String, Object>) r.get("error");
            return e.get("class") + ": " + e.get("desc");
        }

        @Override
        public void close() throws IOException { ch.close(); }
    }

    Client negotiated() throws Exception {
        Client c = new Client(socket);
        c.read();
        assertEquals(Map.of(), c.ok("{\"execute\":\"qmp_capabilities\"}"));
        return c;
    }

    Path image(String name, long size) throws IOException {
        Path p = dir.resolve(name);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(size);
        }
        return p;
    }

    static String cmd(String name, String args) {
        return "{\"execute\":\"" + name + "\",\"arguments\":" + args + "}";
    }

    // ---- qmp-spec.rst: greeting and capabilities negotiation ----

    @Test
    @SuppressWarnings("unchecked")
    void greetingThenNegotiationModeThenCommandMode() throws Exception {
        assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(socket)));
        try (Client c = new Client(socket)) {
            Map<String, Object> g = (Map<String, Object>) c.read().get("QMP");
            assertEquals(List.of(), g.get("capabilities"));
            Map<String, Object> v = (Map<String, Object>) g.get("version");
            assertEquals(Map.of("micro", 0L, "minor", 2L, "major", 7L), v.get("qemu"));
            assertEquals("CommandNotFound: Expecting capabilities negotiation with 'qmp_capabilities'",
                    c.error("{\"execute\":\"query-version\"}"));
            assertEquals("GenericError: Capability 'oob' not available",
                    c.error(cmd("qmp_capabilities", "{\"enable\":[\"oob\"]}")));
            Map<String, Object> r = c.call("{\"execute\":\"qmp_capabilities\",\"id\":{\"n\":[1]}}");
            assertEquals(Map.of("return", Map.of(), "id", Map.of("n", List.of(1L))), r);
            assertEquals("CommandNotFound: Capabilities negotiation is already complete, command ignored",
                    c.error("{\"execute\":\"qmp_capabilities\"}"));
            assertEquals("CommandNotFound: The command nope has not been found", c.error("{\"execute\":\"nope\"}"));
            Map<String, Object> ver = (Map<String, Object>) c.ok("{\"execute\":\"query-version\"}");
            assertEquals("vmm", ver.get("package"));
            List<Object> names = (List<Object>) c.ok("{\"execute\":\"query-commands\"}");
            assertTrue(names.contains(Map.of("name", "x-blockdev-set-iothread")), names.toString());
            assertTrue(names.contains(Map.of("name", "qmp_capabilities")), names.toString());
        }
    }

    @Test
    void badInputIsAnsweredAndTheConnectionStays() throws Exception {
        try (Client c = negotiated()) {
            assertTrue(c.error("{bad").startsWith("GenericError: JSON parse error, "));
            assertEquals("GenericError: QMP input must be a JSON object", c.error("[1]"));
            assertEquals("GenericError: QMP input must be a JSON object", c.error("\"x\""));
            assertEquals("GenericError: QMP input member 'foo' is unexpected", c.error("{\"foo\":1}"));
            assertEquals("GenericError: QMP input member 'execute' must be a string", c.error("{\"execute\":1}"));
            assertEquals("GenericError: QMP input lacks member 'execute'", c.error("{\"id\":1}"));
            assertEquals("GenericError: QMP input member 'arguments' must be an object",
                    c.error("{\"execute\":\"query-version\",\"arguments\":[]}"));
            assertEquals("GenericError: Parameter 'x' is unexpected", c.error(cmd("query-version", "{\"x\":1}")));
            Map<String, Object> withId = c.call("{\"execute\":\"nope\",\"id\":7}");
            assertEquals(7L, withId.get("id"));
            assertEquals(Map.of("qemu", Map.of("micro", 0L, "minor", 2L, "major", 7L), "package", "vmm"),
                    c.ok("{\"execute\":\"query-version\"}"));
        }
    }

    @Test
    void aHugeLineGetsOneErrorAndIsNotBuffered() throws Exception {
        try (Client c = negotiated()) {
            c.sendRaw("{\"execute\":\"" + "x".repeat(3 << 20) + "\"}\n");
            String e = c.error("{\"execute\":\"query-version\"}"); // the reply to the huge line comes first
            assertTrue(e.contains("longer than 1048576 bytes"), e);
            Map<String, Object> r = c.read();
            assertTrue(r.containsKey("return"), r.toString());
        }
    }

    // ---- commands ----

    @Test
    @SuppressWarnings("unchecked")
    void iothreadsAddQueryDelete() throws Exception {
        try (Client c = negotiated()) {
            c.ok(cmd("object-add", "{\"qom-type\":\"iothread\",\"id\":\"iot0\",\"poll-max-ns\":32768}"));
            assertEquals("GenericError: Invalid parameter type for 'poll-max-ns', expected: integer",
                    c.error(cmd("object-add", "{\"qom-type\":\"iothread\",\"id\":\"iot1\",\"poll-max-ns\":\"x\"}")));
            assertEquals("GenericError: Parameter 'qom-type' does not accept value 'memory-backend-ram'",
                    c.error(cmd("object-add", "{\"qom-type\":\"memory-backend-ram\",\"id\":\"m\"}")));
            assertEquals("GenericError: Parameter 'id' is missing", c.error(cmd("object-add", "{\"qom-type\":\"iothread\"}")));
            assertEquals("GenericError: an object with id 'iot0' exists already",
                    c.error(cmd("object-add", "{\"qom-type\":\"iothread\",\"id\":\"iot0\"}")));
            List<Object> its = (List<Object>) c.ok("{\"execute\":\"query-iothreads\"}");
            assertEquals(1, its.size());
            Map<String, Object> it = (Map<String, Object>) its.get(0);
            assertEquals("iot0", it.get("id"));
            long tid = (Long) it.get("thread-id");
            assertTrue(Files.exists(Path.of("/proc/self/task/" + tid)), "thread-id " + tid + " is a thread of this process");
            assertEquals(List.of(), it.get("nodes"));

            c.ok(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d0\",\"filename\":\"" + image("a.img", 1 << 20) + "\"}"));
            c.ok(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\",\"iothread\":\"iot0\"}"));
            it = (Map<String, Object>) ((List<Object>) c.ok("{\"execute\":\"query-iothreads\"}")).get(0);
            assertEquals(List.of("d0"), it.get("nodes"));
            assertEquals("GenericError: IOThread 'iot0' still homes block node d0; move it elsewhere first (x-blockdev-set-iothread)",
                    c.error(cmd("object-del", "{\"id\":\"iot0\"}")));
            c.ok(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\",\"iothread\":null}")); // null: the main loop
            c.ok(cmd("object-del", "{\"id\":\"iot0\"}"));
            assertEquals("GenericError: object 'iot0' not found", c.error(cmd("object-del", "{\"id\":\"iot0\"}")));
            assertEquals(List.of(), c.ok("{\"execute\":\"query-iothreads\"}"));
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void setIothreadRepliesAfterTheMoveAndEmitsVmmNodeMoved() throws Exception {
        daemon.addIOThread("iot1");
        try (Client c = negotiated()) {
            c.ok(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d0\",\"filename\":\"" + image("a.img", 1 << 20) + "\"}"));
            assertEquals(Map.of(), c.ok(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\",\"iothread\":\"iot1\",\"force\":true}")));
            assertEquals("iot1", daemon.node("d0").home().id(), "the reply comes after the move");
            Map<String, Object> ev = c.event();
            assertEquals("VMM_NODE_MOVED", ev.get("event"));
            assertEquals(Map.of("node-name", "d0", "from", "main", "to", "iot1", "pause-ns", PAUSE_NS), ev.get("data"));
            Map<String, Object> ts = (Map<String, Object>) ev.get("timestamp");
            long s = (Long) ts.get("seconds");
            assertTrue(Math.abs(s - System.currentTimeMillis() / 1000) < 60, ts.toString());
            assertTrue((Long) ts.get("microseconds") < 1_000_000, ts.toString());
            // Same thread: a no-op, no event.
            c.ok(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\",\"iothread\":\"iot1\"}"));
            assertTrue(c.events.isEmpty(), c.events.toString());
            assertEquals("GenericError: IOThread 'iot9' does not exist",
                    c.error(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\",\"iothread\":\"iot9\"}")));
            assertEquals("GenericError: block node 'nope' does not exist",
                    c.error(cmd("x-blockdev-set-iothread", "{\"node-name\":\"nope\",\"iothread\":\"iot1\"}")));
            assertEquals("GenericError: Invalid parameter type for 'force', expected: boolean",
                    c.error(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\",\"iothread\":\"iot1\",\"force\":\"maybe\"}")));
            assertEquals("GenericError: Parameter 'iothread' is missing",
                    c.error(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\"}")));
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void blockdevAddQueryDelete() throws Exception {
        Path img = image("a.img", 3 << 20);
        try (Client c = negotiated()) {
            c.ok(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d0\",\"filename\":\"" + img + "\",\"read-only\":true}"));
            assertEquals("GenericError: Duplicate nodes with node-name='d0'",
                    c.error(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d0\",\"filename\":\"" + img + "\"}")));
            assertEquals("GenericError: Parameter 'filename' is missing",
                    c.error(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d1\"}")));
            assertEquals("GenericError: Parameter 'driver' does not accept value 'vmdk'",
                    c.error(cmd("blockdev-add", "{\"driver\":\"vmdk\",\"node-name\":\"d1\",\"file\":\"d0\"}")));
            assertEquals("GenericError: Invalid parameter type for 'read-only', expected: boolean",
                    c.error(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d1\",\"filename\":\"" + img + "\",\"read-only\":1}")));
            String missing = c.error(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d1\",\"filename\":\"" + dir.resolve("none.img") + "\"}"));
            assertTrue(missing.startsWith("GenericError: cannot open image") && missing.contains("none.img"), missing);
            List<Object> nodes = (List<Object>) c.ok("{\"execute\":\"query-named-block-nodes\",\"arguments\":{\"flat\":true}}");
            assertEquals(1, nodes.size());
            Map<String, Object> n = (Map<String, Object>) nodes.get(0);
            assertEquals("d0", n.get("node-name"));
            assertEquals("file", n.get("drv"));
            assertEquals(true, n.get("ro"));
            assertEquals("main", n.get("iothread"));
            assertEquals(img.toString(), n.get("file"));
            assertEquals((long) (3 << 20), ((Map<String, Object>) n.get("image")).get("virtual-size"));
            List<Object> stats = (List<Object>) c.ok(cmd("query-blockstats", "{\"query-nodes\":true}"));
            Map<String, Object> st = (Map<String, Object>) stats.get(0);
            assertEquals("d0", st.get("node-name"));
            assertEquals(0L, ((Map<String, Object>) st.get("stats")).get("rd_operations"));
            Map<String, Object> lat = (Map<String, Object>) ((Map<String, Object>) st.get("stats")).get("x-latency");
            assertEquals(0L, lat.get("count"));
            assertTrue(lat.containsKey("p99-ns") && lat.containsKey("p99.9-ns"), lat.toString());
            assertEquals("GenericError: Failed to find node with node-name='zz'", c.error(cmd("blockdev-del", "{\"node-name\":\"zz\"}")));
            c.ok(cmd("blockdev-del", "{\"node-name\":\"d0\"}"));
            assertEquals(List.of(), c.ok("{\"execute\":\"query-named-block-nodes\"}"));
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void aRawNodeOverAnInlineFileAsQemuShowsIt() throws Exception {
        Path img = image("g.img", 1 << 20);
        try (Client c = negotiated()) {
            c.ok(cmd("blockdev-add", "{\"driver\":\"raw\",\"node-name\":\"r0\",\"offset\":4096,\"size\":8192,"
                    + "\"file\":{\"driver\":\"file\",\"filename\":\"" + img + "\"}}"));
            assertEquals("GenericError: Cannot find device='nope' nor node-name='nope'",
                    c.error(cmd("blockdev-add", "{\"driver\":\"raw\",\"node-name\":\"r1\",\"file\":\"nope\"}")));
            List<Object> nodes = (List<Object>) c.ok("{\"execute\":\"query-named-block-nodes\"}");
            assertEquals(2, nodes.size());
            Map<String, Object> file = (Map<String, Object>) nodes.get(0);
            Map<String, Object> raw = (Map<String, Object>) nodes.get(1);
            assertTrue(((String) file.get("node-name")).startsWith("#block"), file.toString());
            assertEquals("file", file.get("drv"));
            assertEquals("raw", raw.get("drv"));
            // QSD 7.2 names a windowed raw node by its JSON description
            String json = "json:{\"offset\": 4096, \"driver\": \"raw\", \"size\": 8192, \"file\": {\"driver\": \"file\", \"filename\": \"" + img + "\"}}";
            assertEquals(json, raw.get("file"));
            Map<String, Object> image = (Map<String, Object>) raw.get("image");
            assertEquals(8192L, image.get("virtual-size"));
            assertTrue(image.get("actual-size") instanceof Long l && l >= 0 && l <= 2 << 20, image.toString()); // st_blocks of the file
            assertEquals("raw", image.get("format"));
            assertEquals(0L, raw.get("backing_file_depth"));
            assertEquals("GenericError: Block device " + file.get("node-name") + " is in use",
                    c.error(cmd("blockdev-del", "{\"node-name\":\"" + file.get("node-name") + "\"}")));
            c.ok(cmd("blockdev-del", "{\"node-name\":\"r0\"}"));
            assertEquals(List.of(), c.ok("{\"execute\":\"query-named-block-nodes\"}"), "the inline file went with its parent");
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    void exportsAddQueryDeleteWithTheirEvent() throws Exception {
        try (Client a = negotiated(); Client b = negotiated(); Client unnegotiated = new Client(socket)) {
            unnegotiated.read();
            a.ok(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d0\",\"filename\":\"" + image("a.img", 1 << 20) + "\"}"));
            a.ok(cmd("block-export-add", "{\"type\":\"test\",\"id\":\"e0\",\"node-name\":\"d0\",\"writable\":true}"));
            assertEquals("GenericError: an export with id 'e0' exists already",
                    a.error(cmd("block-export-add", "{\"type\":\"test\",\"id\":\"e0\",\"node-name\":\"d0\"}")));
            assertEquals("GenericError: Parameter 'type' does not accept value 'iscsi'",
                    a.error(cmd("block-export-add", "{\"type\":\"iscsi\",\"id\":\"e1\",\"node-name\":\"d0\"}")));
            assertEquals("GenericError: Parameter 'bogus' is unexpected",
                    a.error(cmd("block-export-add", "{\"type\":\"test\",\"id\":\"e1\",\"node-name\":\"d0\",\"bogus\":1}")));
            assertEquals(List.of(Map.of("type", "test", "id", "e0", "node-name", "d0", "shutting-down", false)),
                    b.ok("{\"execute\":\"query-block-exports\"}"));
            assertEquals("GenericError: Node d0 is in use", a.error(cmd("blockdev-del", "{\"node-name\":\"d0\"}")));
            TestExportDriver.users = 2;
            assertEquals("GenericError: export 'e0' still in use by 2 clients; use mode=hard to disconnect them",
                    a.error(cmd("block-export-del", "{\"id\":\"e0\"}")));
            assertEquals("GenericError: Parameter 'mode' does not accept value 'soft'",
                    a.error(cmd("block-export-del", "{\"id\":\"e0\",\"mode\":\"soft\"}")));
            a.ok(cmd("block-export-del", "{\"id\":\"e0\",\"mode\":\"hard\"}"));
            TestExportDriver.users = 0;
            assertEquals("GenericError: Export 'e0' is not found", a.error(cmd("block-export-del", "{\"id\":\"e0\"}")));
            // Both negotiated monitors get the event, with the same timestamp.
            Map<String, Object> ea = a.event();
            Map<String, Object> eb = b.event();
            assertEquals("BLOCK_EXPORT_DELETED", ea.get("event"));
            assertEquals(Map.of("id", "e0"), ea.get("data"));
            assertEquals(ea, eb);
            assertTrue(TestExportDriver.closed.contains("e0"));
            // The monitor still in negotiation mode got none: its next line is the reply.
            assertTrue(unnegotiated.call("{\"execute\":\"qmp_capabilities\"}").containsKey("return"));
            assertTrue(unnegotiated.events.isEmpty());
            a.ok(cmd("blockdev-del", "{\"node-name\":\"d0\"}"));
        }
    }

    /**
     * Regression: a stuck IOThread hung the metrics scrape and query-blockstats for good (each
     * waited without bound for the histogram copy on the node's home thread).
     */
    @Test
    @SuppressWarnings("unchecked")
    void aStuckIOThreadDoesNotHangQueryBlockstatsOrAScrape() throws Exception {
        dev.vmm.iothread.IOThread iot1 = daemon.addIOThread("iot1");
        CountDownLatch release = new CountDownLatch(1);
        try (Client c = negotiated()) {
            c.ok(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d0\",\"filename\":\"" + image("a.img", 1 << 20) + "\"}"));
            c.ok(cmd("block-export-add", "{\"type\":\"test\",\"id\":\"e0\",\"node-name\":\"d0\"}"));
            c.ok(cmd("x-blockdev-set-iothread", "{\"node-name\":\"d0\",\"iothread\":\"iot1\"}"));
            iot1.execute(() -> {
                try {
                    release.await(30, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            });
            for (int round = 0; round < 2; round++) { // the second finds iot1 known stuck and does not wait
                long t0 = System.nanoTime();
                Map<String, Object> st = (Map<String, Object>) ((Map<String, Object>) ((List<Object>) c.ok(cmd("query-blockstats", "{}"))).get(0)).get("stats");
                Map<String, Object> ex = (Map<String, Object>) ((List<Object>) c.ok("{\"execute\":\"x-query-export-stats\"}")).get(0);
                String scrape = dev.vmm.core.metrics.PrometheusText.render(daemon);
                long ms = (System.nanoTime() - t0) / 1_000_000;
                assertTrue(ms < dev.vmm.core.stats.LatencyCopies.WAIT_MS + 3000, "round " + round + " took " + ms + " ms"); // a hang would be 30 s
                assertEquals(0L, st.get("rd_operations"));
                assertFalse(st.containsKey("x-latency"), "no latency from a stuck IOThread: " + st);
                assertFalse(ex.containsKey("x-latency"), ex.toString());
                assertTrue(scrape.contains("vmm_node_read_operations_total{node=\"d0\"} 0"), scrape);
                assertFalse(scrape.contains("vmm_node_request_latency_seconds_count{node=\"d0\"}"), scrape);
                assertFalse(scrape.contains("vmm_export_request_latency_seconds_count{export=\"e0\"}"), scrape);
            }
            release.countDown();
            // Once it has run the copies queued meanwhile, it is waited for again.
            long deadline = System.nanoTime() + 10_000_000_000L;
            Map<String, Object> st;
            do {
                st = (Map<String, Object>) ((Map<String, Object>) ((List<Object>) c.ok(cmd("query-blockstats", "{}"))).get(0)).get("stats");
            } while (!st.containsKey("x-latency") && System.nanoTime() < deadline);
            assertEquals(0L, ((Map<String, Object>) st.get("x-latency")).get("count"));
            assertTrue(dev.vmm.core.metrics.PrometheusText.render(daemon).contains("vmm_export_request_latency_seconds_count{export=\"e0\"} 0"));
        } finally {
            release.countDown();
        }
    }

    @Test
    void commandsOfOneMonitorRunInOrderWhileAnotherMonitorIsServed() throws Exception {
        daemon.addIOThread("iot1");
        try (Client a = negotiated(); Client b = negotiated()) {
            a.ok(cmd("blockdev-add", "{\"driver\":\"file\",\"node-name\":\"d0\",\"filename\":\"" + image("a.img", 1 << 20) + "\"}"));
            // Pipelined: three requests in one write; the replies come in order, ids echoed.
            a.sendRaw("{\"execute\":\"x-blockdev-set-iothread\",\"arguments\":{\"node-name\":\"d0\",\"iothread\":\"iot1\"},\"id\":1}"
                    + "{\"execute\":\"query-named-block-nodes\",\"id\":2}{\"execute\":\"nope\",\"id\":3}\n");
            assertTrue(b.ok("{\"execute\":\"query-version\"}") instanceof Map);
            assertEquals(1L, a.read().get("id"));
            Map<String, Object> r2 = a.read();
            assertEquals(2L, r2.get("id"));
            assertTrue(Json.write(r2).contains("\"iothread\":\"iot1\""), r2.toString());
            assertEquals(3L, a.read().get("id"));
        }
    }

    @Test
    void quitRepliesThenStartsTheShutdown() throws Exception {
        try (Client c = negotiated()) {
            assertEquals("GenericError: Parameter 'now' is unexpected", c.error(cmd("quit", "{\"now\":true}")));
            assertFalse(quit.await(0, TimeUnit.MILLISECONDS));
            assertEquals(Map.of(), c.ok("{\"execute\":\"quit\"}"));
            assertTrue(quit.await(10, TimeUnit.SECONDS));
        }
        daemon.shutdown(false);
        assertFalse(Files.exists(socket), "the socket is removed at shutdown");
    }
}
