package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection;
import java.io.DataInputStream;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The operator's view of a real server: {@code vmm top --once} shows the disk, its IOThread and
 * non-zero IOPS while a client reads; {@code --metrics} serves well-formed Prometheus text whose
 * counters rise with I/O; the server's stderr has one INFO line per event (client connected and
 * disconnected with its address, export added and removed, handoff with its pause, a front-end's
 * bad vhost-user message with the wire name) and no stack trace.
 */
@Timeout(180)
class ObservabilityTest extends PeerTestBase {
    /** One sample line of the text format: name, optional labels, value. */
    private static final Pattern SAMPLE = Pattern.compile(
            "([a-zA-Z_:][a-zA-Z0-9_:]*)(\\{([a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\\\\n]|\\\\.)*\")(,[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\\\\n]|\\\\.)*\")*\\})? "
                    + "(-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|[-+]Inf)");
    private static final Pattern TYPE = Pattern.compile("# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary|histogram|untyped)");
    private static final Pattern HELP = Pattern.compile("# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*");

    /** {@code java ... dev.vmm.cli.Main ARGS}. */
    private static List<String> vmm(String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        String flags = System.getProperty("vmm.jvm.flags", "").strip();
        if (!flags.isEmpty() && !flags.startsWith("${")) cmd.addAll(Arrays.asList(flags.split("\\s+")));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), "dev.vmm.cli.Main"));
        cmd.addAll(Arrays.asList(args));
        return cmd;
    }

    @Test
    void topMetricsAndLogsOfALiveServer() throws Exception {
        Assumptions.assumeFalse(Peers.qsd(), "vmm's own views");
        Path dir = socketDir();
        Path mon = dir.resolve("qmp.sock");
        Path vhost = dir.resolve("vhost.sock");
        Path image = Images.sparse(tmp.resolve("disk.img"), 64 * MiB);
        int port = Net.freePort();
        int metricsPort = Net.freePort();
        VmmProcess vmm = serve("--blockdev", "driver=file,node-name=disk0,filename=" + image,
                "--object", "iothread,id=iot0", "--object", "iothread,id=iot1",
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=disk0,writable=on,iothread=iot0",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",iothread=iot0",
                "--qmp", mon.toString(),
                "--metrics", "addr.type=inet,addr.host=127.0.0.1,addr.port=" + metricsPort);
        URI metrics = URI.create("http://127.0.0.1:" + metricsPort + "/metrics");
        Map<String, Double> before = scrape(metrics);
        assertEquals(0.0, before.get("vmm_export_read_operations_total{export=\"exp0\"}"), before.toString());

        // A client reads 4 KiB blocks until told to stop, while top samples.
        AtomicBoolean stop = new AtomicBoolean();
        AtomicLong reads = new AtomicLong();
        int[] clientPort = new int[1];
        Thread reader = new Thread(() -> {
            try (RawNbd c = new RawNbd(port)) {
                clientPort[0] = c.socket.getLocalPort();
                c.handshake("disk0");
                DataInputStream in = c.in;
                byte[] data = new byte[4096];
                for (long h = 1; !stop.get(); h++) {
                    c.request(RawNbd.NBD_REQUEST_MAGIC, 0, 0 /* NBD_CMD_READ */, h, (h % 1024) * 4096, 4096);
                    in.readInt();
                    if (in.readInt() != 0) throw new IllegalStateException("read failed");
                    in.readLong();
                    in.readFully(data);
                    reads.incrementAndGet();
                }
            } catch (Exception e) {
                throw new IllegalStateException(e);
            }
        }, "nbd-reader");
        reader.start();
        try {
            Run.Result top = Run.cmd(vmm("top", "--qmp", mon.toString(), "--once", "--interval", "1")).expect(0);
            String frame = top.stdout();
            assertTrue(frame.contains("iot0") && frame.contains("disk0") && frame.contains("exp0") && frame.contains("vub0"), frame);
            long iops = readIops(frame, "disk0");
            assertTrue(iops > 0, "top shows no read IOPS for disk0 while a client reads\n" + frame);
            assertTrue(readIops(frame, "exp0") > 0, frame);
            assertFalse(frame.contains(dev.vmm.cli.top.TopCommand.CLEAR), "--once must not clear the screen");
        } finally {
            stop.set(true);
            reader.join(10_000);
        }
        assertTrue(reads.get() > 0);
        Map<String, Double> after = scrape(metrics);
        double exportReads = after.get("vmm_export_read_operations_total{export=\"exp0\"}");
        assertEquals((double) reads.get(), exportReads, 1.0, "the export counted every read");
        assertTrue(after.get("vmm_node_read_operations_total{node=\"disk0\"}") >= exportReads);
        assertTrue(after.get("vmm_node_read_bytes_total{node=\"disk0\"}") >= 4096 * exportReads);
        assertTrue(after.get("vmm_iothread_requests_total{iothread=\"iot0\"}") > before.get("vmm_iothread_requests_total{iothread=\"iot0\"}"));
        assertTrue(after.get("vmm_iothread_cpu_seconds_total{iothread=\"iot0\"}") > 0);
        assertTrue(after.get("vmm_node_request_latency_seconds_count{node=\"disk0\"}") >= exportReads);
        assertEquals(exportReads, after.get("vmm_export_request_latency_seconds_count{export=\"exp0\"}"), 1.0,
                "the export's latency summary counts its own requests");
        assertEquals(1.0, after.get("vmm_export_connections_total{export=\"exp0\"}"));

        // A handoff, an export added and removed over QMP.
        Run.cmd(vmm("qmp", "--socket", mon.toString(), "x-blockdev-set-iothread", "node-name=disk0", "iothread=iot1")).expect(0);
        Run.Result h = Run.cmd(vmm("qmp", "--socket", mon.toString(), "x-query-handoffs")).expect(0);
        assertTrue(h.stdout().contains("\"total\":1") && h.stdout().contains("\"from\":\"iot0\",\"to\":\"iot1\""), h.stdout());
        Run.cmd(vmm("qmp", "--socket", mon.toString(), "block-export-add", "type=nbd", "id=exp1", "node-name=disk0", "name=second")).expect(0);
        Run.cmd(vmm("qmp", "--socket", mon.toString(), "block-export-del", "id=exp1")).expect(0);
        Map<String, Double> last = scrape(metrics);
        assertEquals(1.0, last.get("vmm_handoffs_total"));
        assertEquals(1.0, last.get("vmm_node_info{node=\"disk0\",iothread=\"iot1\"}"));
        Run.Result top2 = Run.cmd(vmm("top", "--qmp", mon.toString(), "--once", "--interval", "0.2")).expect(0);
        assertTrue(top2.stdout().contains("HANDOFFS 1 in all") && top2.stdout().contains("iot0 -> iot1"), top2.stdout());

        // A front-end that asks for a ring size the spec forbids.
        try (VhostUserFrontendConnection fe = VhostUserFrontendConnection.connect(vhost.toString(), 5000)) {
            fe.getFeatures();
            fe.setVringNum(0, 3);
            fe.getFeatures(); // a round trip: the bad message was handled
        }
        for (int i = 0; i < 100 && !vmm.stderr().contains("front-end disconnected"); i++) Thread.sleep(50);

        assertEquals(0, vmm.stop(), vmm.stderr());
        String log = vmm.stderr();
        String peer = "127.0.0.1:" + clientPort[0];
        assertEquals(1, count(log, "\\[INFO\\] .*NBD client " + Pattern.quote(peer) + " connected"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*NBD client " + Pattern.quote(peer) + " disconnected from export 'disk0'"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*export exp0 added: nbd, writable, node disk0"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*export exp1 added: nbd"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*export exp1 removed"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*block node disk0 moved from IOThread iot0 to iot1 .*paused \\d+ us"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*vhost-user .*vhost.sock #1 \\(pid=\\d+,uid=\\d+\\): front-end connected"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*vhost-user .*vhost.sock #1 \\(pid=\\d+,uid=\\d+\\): front-end disconnected"), log);
        assertEquals(1, count(log, "\\[WARN\\] .*vhost-user-blk vub0: rejected VHOST_USER_SET_VRING_NUM: queue size 3 is not a power of two"), log);
        assertEquals(1, count(log, "\\[INFO\\] .*metrics served on http://127.0.0.1:" + metricsPort + "/metrics"), log);
        assertFalse(log.contains("\tat ") || log.contains("Exception"), "a stack trace or exception at the default level\n" + log);
    }

    @Test
    void badMetricsOptionsAreOneLineAndExit1() throws Exception {
        Assumptions.assumeFalse(Peers.qsd(), "vmm's option");
        String[][] cases = {
            {"addr.type=inet,addr.host=127.0.0.1,addr.port=x", "'addr.port' must be a number from 0 to 65535, got 'x'"},
            {"addr.type=unix,addr.path=/tmp/m.sock", "'addr.type' must be inet"},
            {"addr.type=inet,addr.host=127.0.0.1", "parameter 'addr.port' is missing"},
            {"addr.type=inet,addr.host=127.0.0.1,addr.port=9,colour=red", "unknown parameter 'colour'"},
        };
        for (String[] c : cases) {
            Run.Result r = VmmProcess.runToExit(List.of("--metrics", c[0]), 30);
            assertEquals(1, r.exit(), r.describe());
            assertTrue(r.stderr().contains("vmm: --metrics: ") && r.stderr().contains(c[1]), r.describe());
            assertFalse(r.stderr().contains("\tat "), r.describe());
        }
        try (ServerSocket taken = new ServerSocket(0, 1, java.net.InetAddress.getByName("127.0.0.1"))) {
            Run.Result r = VmmProcess.runToExit(List.of("--metrics", "addr.type=inet,addr.host=127.0.0.1,addr.port=" + taken.getLocalPort()), 30);
            assertEquals(1, r.exit(), r.describe());
            assertTrue(r.stderr().contains("vmm: --metrics: cannot listen on 127.0.0.1:" + taken.getLocalPort()), r.describe());
            assertFalse(r.stderr().contains("\tat "), r.describe());
        }
    }

    /** The "R IOPS" column of the row named {@code name}, under whichever table header it sits. */
    private static long readIops(String frame, String name) {
        List<String> header = List.of();
        for (String line : frame.split("\n")) {
            String[] f = line.trim().split("\\s+");
            if (line.contains("R IOPS")) header = Arrays.asList(line.replace("R IOPS", "R_IOPS").trim().split("\\s+"));
            else if (f[0].equals(name) && header.contains("R_IOPS")) return Long.parseLong(f[header.indexOf("R_IOPS")].replace(",", ""));
        }
        throw new AssertionError("no row for " + name + " in\n" + frame);
    }

    private static int count(String log, String regex) {
        Matcher m = Pattern.compile(regex).matcher(log);
        int n = 0;
        while (m.find()) n++;
        return n;
    }

    /**
     * GETs the endpoint and checks the text format: every line is a HELP, a TYPE or a sample;
     * each sample belongs to the family of the last TYPE line (or its _sum/_count); no family is
     * declared twice. Returns each series ("name{labels}") with its value.
     */
    private static Map<String, Double> scrape(URI uri) throws Exception {
        HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(uri).GET().build(), HttpResponse.BodyHandlers.ofString());
        assertEquals(200, r.statusCode());
        assertTrue(r.headers().firstValue("Content-Type").orElse("").startsWith("text/plain; version=0.0.4"), r.headers().toString());
        Map<String, Double> out = new HashMap<>();
        Set<String> families = new HashSet<>();
        String family = null;
        String type = null;
        for (String line : r.body().split("\n", -1)) {
            if (line.isEmpty()) continue;
            Matcher t = TYPE.matcher(line);
            if (t.matches()) {
                family = t.group(1);
                type = t.group(2);
                assertTrue(families.add(family), "family declared twice: " + line);
                continue;
            }
            if (HELP.matcher(line).matches()) continue;
            Matcher s = SAMPLE.matcher(line);
            assertTrue(s.matches(), "not a sample line: '" + line + "'");
            String name = s.group(1);
            boolean ok = name.equals(family) || ("summary".equals(type) && (name.equals(family + "_sum") || name.equals(family + "_count")));
            assertTrue(ok, "sample outside its family " + family + ": " + line);
            if ("counter".equals(type)) assertTrue(name.endsWith("_total"), "counter without _total: " + line);
            String series = line.substring(0, line.lastIndexOf(' '));
            assertTrue(out.put(series, Double.parseDouble(s.group(5))) == null, "series twice: " + line);
        }
        return out;
    }
}
