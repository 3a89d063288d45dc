package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.qmp.QmpClient;
import dev.vmm.cli.qmp.ShellSyntax;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Mirror jobs end to end, against vmm and qemu-storage-daemon with the same QMP: a source served
 * over NBD to a writer (python3-libnbd, random writes, zero writes and trims, each applied to a
 * reference file) is mirrored to a local target node with {@code blockdev-mirror}; after
 * {@code BLOCK_JOB_READY}, {@code job-complete} pivots and the writer keeps writing (now into the
 * target); once it stopped, {@code qemu-img compare} says the target equals the reference. The
 * job statuses and events seen must be the same on both servers.
 */
@Timeout(300)
class MirrorTest extends PeerTestBase {
    static final long SIZE = 32 * MiB;

    static Stream<Arguments> serversAndModes() {
        return Server.selected().flatMap(s -> Stream.of(Arguments.of(s, "background"), Arguments.of(s, "write-blocking")));
    }

    /** A QMP monitor connection that keeps every event. */
    static final class Monitor implements AutoCloseable {
        final QmpClient qmp;
        final List<Map<String, Object>> events = new ArrayList<>();

        Monitor(Path socket) throws Exception {
            QmpClient c = null;
            for (int i = 0; i < 200 && c == null; i++) {
                try {
                    c = QmpClient.connect(socket);
                } catch (IOException e) {
                    Thread.sleep(50);
                }
            }
            if (c == null) fail("no QMP monitor on " + socket);
            qmp = c;
            qmp.onEvent(events::add);
        }

        Map<String, Object> run(String command, Object... kv) throws IOException {
            Map<String, Object> args = new LinkedHashMap<>();
            for (int i = 0; i < kv.length; i += 2) args.put((String) kv[i], kv[i + 1]);
            return qmp.execute(new ShellSyntax.Request(command, args));
        }

        Object ok(String command, Object... kv) throws IOException {
            Map<String, Object> r = run(command, kv);
            if (r.containsKey("error")) fail(command + " failed: " + r.get("error"));
            return r.get("return");
        }

        String error(String command, Object... kv) throws IOException {
            Map<String, Object> r = run(command, kv);
            if (!r.containsKey("error")) fail(command + " succeeded, want an error: " + r);
            return (String) ((Map<?, ?>) r.get("error")).get("desc");
        }

        /** Polls (query-jobs keeps events flowing) until an event named {@code name} arrived. */
        Map<String, Object> waitEvent(String name, long timeoutMs) throws Exception {
            long end = System.currentTimeMillis() + timeoutMs;
            while (System.currentTimeMillis() < end) {
                for (Map<String, Object> e : events) if (e.get("event").equals(name)) return e;
                ok("query-jobs");
                Thread.sleep(50);
            }
            fail("no " + name + " event after " + timeoutMs + " ms; events: " + events);
            return null;
        }

        /** The job statuses in the order of their JOB_STATUS_CHANGE events, with the block job events between them. */
        List<String> story() {
            List<String> out = new ArrayList<>();
            for (Map<String, Object> e : events) {
                String n = (String) e.get("event");
                if (n.equals("JOB_STATUS_CHANGE")) out.add((String) ((Map<?, ?>) e.get("data")).get("status"));
                else if (n.startsWith("BLOCK_JOB_")) out.add(n);
            }
            return out;
        }

        @Override
        public void close() throws IOException {
            qmp.close();
        }
    }

    /** The writer: python3-libnbd, sequential random requests mirrored into {@code reference}. */
    final class Writer {
        final Process p;
        final Path stop;

        Writer(String uri, Path reference, long seed) throws IOException {
            Path script = tmp.resolve("nbd_writer.py");
            if (!Files.exists(script)) {
                try (InputStream in = MirrorTest.class.getResourceAsStream("/mirror/nbd_writer.py")) {
                    Files.copy(in, script);
                }
            }
            stop = tmp.resolve("stop-" + seed);
            p = background(new ProcessBuilder(Peers.python(), script.toString(), uri, reference.toString(), stop.toString(),
                    String.valueOf(seed), "128").redirectError(tmp.resolve("writer-" + seed + ".err").toFile()).start());
        }

        /** Stops the writer; returns how many requests it made (it must have made some). */
        long stop() throws Exception {
            Files.createFile(stop);
            String out = new String(p.getInputStream().readAllBytes()).strip();
            int rc = p.waitFor();
            if (rc != 0) fail("writer failed (" + rc + "): " + Files.readString(tmp.resolve(stop.getFileName().toString().replace("stop", "writer") + ".err")));
            long n = Long.parseLong(out);
            assertTrue(n > 0, "the writer wrote nothing");
            return n;
        }
    }

    /** Source image of random bytes, an empty target, the reference copy; a server with its monitor. */
    private record Setup(VmmProcess server, Monitor mon, String uri, Path source, Path target, Path reference) {}

    private Setup setup(Server server, String targetExtra, String... extra) throws Exception {
        Path dir = socketDir();
        Path src = tmp.resolve("src.img");
        Path tgt = tmp.resolve("tgt.img");
        Path ref = tmp.resolve("ref.img");
        Images.sparse(src, SIZE);
        for (long off = 0; off < SIZE; off += 4 * MiB) Images.fill(src, off + 12345, (int) MiB, off);
        Images.sparse(tgt, SIZE);
        Files.copy(src, ref, StandardCopyOption.REPLACE_EXISTING);
        Path mon = dir.resolve("m.sock");
        Path nbd = dir.resolve("n.sock");
        List<String> args = new ArrayList<>(List.of(extra));
        args.addAll(List.of(
                "--chardev", "socket,id=m0,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m0",
                "--blockdev", "driver=file,node-name=src,filename=" + src,
                "--blockdev", "driver=file,node-name=tgt,filename=" + tgt + targetExtra,
                "--nbd-server", Net.unixServer(nbd),
                "--export", "type=nbd,id=e0,node-name=src,name=src,writable=on"));
        VmmProcess p = serve(server, args);
        Monitor m = closeLater(new Monitor(mon));
        return new Setup(p, m, Net.unixUri(nbd, "src"), src, tgt, ref);
    }

    private static void compare(Path image, Path reference) {
        Run.cmd(Peers.require("qemu-img"), "compare", "-f", "raw", "-F", "raw", image.toString(), reference.toString()).expect(0);
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("serversAndModes")
    void mirrorUnderWritesConvergesAndPivots(Server server, String copyMode) throws Exception {
        Setup s = setup(server, "");
        Writer w = new Writer(s.uri(), s.reference(), 1);
        Thread.sleep(300);
        s.mon().ok("blockdev-mirror", "job-id", "j0", "device", "src", "target", "tgt", "sync", "full", "copy-mode", copyMode);
        Map<String, Object> ready = s.mon().waitEvent("BLOCK_JOB_READY", 60_000);
        Map<?, ?> data = (Map<?, ?>) ready.get("data");
        assertEquals("j0", data.get("device"));
        assertEquals("mirror", data.get("type"));
        List<?> jobs = (List<?>) s.mon().ok("query-block-jobs");
        Map<?, ?> info = (Map<?, ?>) jobs.get(0);
        assertEquals(true, info.get("ready"), info.toString());
        assertEquals("ok", info.get("io-status"));
        Thread.sleep(500); // the writer keeps dirtying while ready
        s.mon().ok("job-complete", "id", "j0");
        s.mon().waitEvent("BLOCK_JOB_COMPLETED", 60_000);
        Thread.sleep(500); // and now writes into the target
        w.stop();
        assertEquals(List.of(), s.mon().ok("query-jobs"));
        assertEquals(List.of("created", "running", "ready", "BLOCK_JOB_READY", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"),
                s.mon().story());
        compare(s.target(), s.reference());
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void cancelInReadyLeavesTargetInSyncAndUsersOnSource(Server server) throws Exception {
        Setup s = setup(server, "");
        Writer w = new Writer(s.uri(), s.reference(), 2);
        s.mon().ok("blockdev-mirror", "job-id", "j1", "device", "src", "target", "tgt", "sync", "full");
        s.mon().waitEvent("BLOCK_JOB_READY", 60_000);
        Thread.sleep(800); // the writer (a python start) writes while the job is ready
        w.stop();
        Path atCancel = tmp.resolve("at-cancel.img");
        Files.copy(s.reference(), atCancel);
        s.mon().ok("block-job-cancel", "device", "j1");
        s.mon().waitEvent("BLOCK_JOB_COMPLETED", 60_000); // QEMU: a cancel in the ready state completes
        assertEquals(List.of("created", "running", "ready", "BLOCK_JOB_READY", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"),
                s.mon().story());
        // The users stay on the source: new writes land there, the target keeps the state at the cancel.
        Writer after = new Writer(s.uri(), s.reference(), 3);
        Thread.sleep(800);
        after.stop();
        s.mon().ok("blockdev-del", "node-name", "tgt");
        compare(s.target(), atCancel);
        s.mon().ok("block-export-del", "id", "e0");
        s.mon().waitEvent("BLOCK_EXPORT_DELETED", 10_000);
        s.mon().ok("blockdev-del", "node-name", "src");
        compare(s.source(), s.reference());
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void forcedCancelAndRefusals(Server server) throws Exception {
        Path small = Images.sparse(tmp.resolve("small.img"), 4 * MiB);
        Path small2 = Images.sparse(tmp.resolve("small2.img"), 4 * MiB);
        Setup s = setup(server, "", "--blockdev", "driver=file,node-name=small,filename=" + small,
                "--blockdev", "driver=file,node-name=small2,filename=" + small2);
        Monitor m = s.mon();
        // A target of another size: the job starts, then fails (QEMU checks it when the job runs).
        m.ok("blockdev-mirror", "job-id", "j0", "device", "src", "target", "small", "sync", "full");
        Map<String, Object> done = m.waitEvent("BLOCK_JOB_COMPLETED", 30_000);
        assertEquals("Source and target image have different sizes", ((Map<?, ?>) done.get("data")).get("error"));
        assertEquals(List.of("created", "running", "aborting", "BLOCK_JOB_COMPLETED", "concluded", "null"), m.story());
        m.events.clear();
        assertEquals("Cannot find device='nope' nor node-name='nope'", m.error("blockdev-mirror", "job-id", "x", "device", "nope", "target", "tgt", "sync", "full"));
        assertEquals("Can't mirror node into itself", m.error("blockdev-mirror", "job-id", "x", "device", "src", "target", "src", "sync", "full"));
        assertEquals("Parameter 'granularity' expects a power of 2",
                m.error("blockdev-mirror", "job-id", "x", "device", "src", "target", "tgt", "sync", "full", "granularity", 1000));
        assertEquals("Job not found", m.error("job-pause", "id", "nope"));
        assertEquals("Block job 'nope' not found", m.error("block-job-pause", "device", "nope"));
        // slow: 64 KiB/s, so it is still running when cancelled
        m.ok("blockdev-mirror", "job-id", "j2", "device", "src", "target", "tgt", "sync", "full", "speed", 65536);
        assertEquals("Need a root block node", m.error("blockdev-mirror", "job-id", "j3", "device", "src", "target", "tgt", "sync", "full"));
        assertEquals("Job ID 'j2' already in use", m.error("blockdev-mirror", "job-id", "j2", "device", "small", "target", "small2", "sync", "full"));
        m.ok("job-pause", "id", "j2");
        assertEquals("Job is already paused", m.error("job-pause", "id", "j2"));
        // QEMU pauses at the job's next pause point: the status follows soon after the command
        String status = null;
        for (int i = 0; i < 200 && !"paused".equals(status); i++, Thread.sleep(50)) {
            status = (String) ((Map<?, ?>) ((List<?>) m.ok("query-jobs")).get(0)).get("status");
        }
        assertEquals("paused", status);
        assertEquals(true, ((Map<?, ?>) ((List<?>) m.ok("query-block-jobs")).get(0)).get("paused"));
        m.ok("job-resume", "id", "j2");
        assertEquals("Job 'j2' in state 'running' cannot accept command verb 'complete'", m.error("job-complete", "id", "j2"));
        m.ok("job-cancel", "id", "j2");
        m.waitEvent("BLOCK_JOB_CANCELLED", 30_000);
        assertEquals(List.of("created", "running", "paused", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"), m.story());
        assertEquals(List.of(), m.ok("query-block-jobs"));
        // the nodes are free again
        m.ok("blockdev-del", "node-name", "tgt");
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void syncTopCopiesOnlyTheTopLayer(Server server) throws Exception {
        String qemuImg = Peers.require("qemu-img");
        Path raw = tmp.resolve("base.raw");
        Images.sparse(raw, SIZE);
        for (long off = 0; off < SIZE; off += MiB) Images.fill(raw, off, (int) MiB, off + 99);
        Path base = tmp.resolve("base.qcow2");
        Path top = tmp.resolve("top.qcow2");
        Path tgt = tmp.resolve("tgt.qcow2");
        Path ref = tmp.resolve("ref.raw");
        Run.cmd(qemuImg, "convert", "-f", "raw", "-O", "qcow2", raw.toString(), base.toString()).expect(0);
        Run.cmd(qemuImg, "create", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString()).expect(0);
        Run.cmd(Peers.require("qemu-io"), "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", "-c", "write -z 8M 1M", top.toString()).expect(0);
        Run.cmd(qemuImg, "create", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", tgt.toString()).expect(0);
        Run.cmd(qemuImg, "convert", "-f", "qcow2", "-O", "raw", top.toString(), ref.toString()).expect(0);
        Path dir = socketDir();
        Path mon = dir.resolve("m.sock");
        Path nbd = dir.resolve("n.sock");
        serve(server, List.of(
                "--chardev", "socket,id=m0,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m0",
                "--blockdev", "driver=qcow2,node-name=src,file.driver=file,file.filename=" + top,
                "--blockdev", "driver=qcow2,node-name=tgt,file.driver=file,file.filename=" + tgt,
                "--nbd-server", Net.unixServer(nbd),
                "--export", "type=nbd,id=e0,node-name=src,name=src,writable=on"));
        Monitor m = closeLater(new Monitor(mon));
        // 1: no writes; cancel in ready, close the target, look at what it allocates itself.
        m.ok("blockdev-mirror", "job-id", "top0", "device", "src", "target", "tgt", "sync", "top");
        m.waitEvent("BLOCK_JOB_READY", 60_000);
        m.ok("block-job-cancel", "device", "top0");
        m.waitEvent("BLOCK_JOB_COMPLETED", 60_000);
        m.ok("blockdev-del", "node-name", "tgt");
        String map = Run.cmd(qemuImg, "map", "--output=json", "-U", "-f", "qcow2", tgt.toString()).expect(0).stdout();
        long fromTarget = 0;
        for (Object o : (List<?>) dev.vmm.core.json.Json.parse(map)) {
            Map<?, ?> e = (Map<?, ?>) o;
            if (((Number) e.get("depth")).intValue() == 0) fromTarget += ((Number) e.get("length")).longValue();
        }
        // The top layer allocates 3 MiB (2 MiB of data, 1 MiB of zeros); the base's 32 MiB stay in the base.
        assertTrue(fromTarget <= 3 * MiB && fromTarget >= 2 * MiB, "the target's own layer maps " + fromTarget + " bytes: " + map);
        Run.cmd(qemuImg, "compare", "-U", "-f", "qcow2", "-F", "raw", tgt.toString(), ref.toString()).expect(0);
        // 2: again under writes, with the pivot.
        m.ok("blockdev-add", "driver", "qcow2", "node-name", "tgt", "file", Map.of("driver", "file", "filename", tgt.toString()));
        m.events.clear();
        Writer w = new Writer(Net.unixUri(nbd, "src"), ref, 4);
        m.ok("blockdev-mirror", "job-id", "top1", "device", "src", "target", "tgt", "sync", "top", "copy-mode", "write-blocking");
        m.waitEvent("BLOCK_JOB_READY", 60_000);
        Thread.sleep(300);
        m.ok("job-complete", "id", "top1");
        m.waitEvent("BLOCK_JOB_COMPLETED", 60_000);
        Thread.sleep(300);
        w.stop();
        m.ok("block-export-del", "id", "e0");
        m.waitEvent("BLOCK_EXPORT_DELETED", 10_000);
        m.ok("blockdev-del", "node-name", "src");
        m.ok("blockdev-del", "node-name", "tgt");
        Run.cmd(qemuImg, "compare", "-U", "-f", "qcow2", "-F", "raw", tgt.toString(), ref.toString()).expect(0);
    }

    /** vmm only: qemu-storage-daemon does not move a node that an export uses. */
    @org.junit.jupiter.api.Test
    void movesOfTheSourceDuringTheJobUnderWrites() throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue(Server.primary() == Server.VMM, "vmm moves nodes with their users");
        Setup s = setup(Server.VMM, "", "--object", "iothread,id=iot1", "--object", "iothread,id=iot2");
        Monitor m = s.mon();
        Writer w = new Writer(s.uri(), s.reference(), 5);
        Thread.sleep(500);
        m.ok("blockdev-mirror", "job-id", "mv", "device", "src", "target", "tgt", "sync", "full", "speed", 8 * MiB, "buf-size", MiB);
        for (String to : List.of("iot1", "iot2", "main", "iot1")) {
            m.ok("x-blockdev-set-iothread", "node-name", "src", "iothread", to);
            Thread.sleep(150);
        }
        m.ok("block-job-set-speed", "device", "mv", "speed", 0);
        m.waitEvent("BLOCK_JOB_READY", 60_000);
        m.ok("x-blockdev-set-iothread", "node-name", "tgt", "iothread", "iot2"); // asked on the target: both go
        Thread.sleep(300);
        m.ok("job-complete", "id", "mv");
        m.waitEvent("BLOCK_JOB_COMPLETED", 60_000);
        m.ok("x-blockdev-set-iothread", "node-name", "src", "iothread", "iot1"); // after the pivot: still tied
        Thread.sleep(300);
        w.stop();
        long moves = m.events.stream().filter(e -> e.get("event").equals("VMM_NODE_MOVED")).count();
        assertEquals(6, moves, m.events.toString());
        assertTrue(m.story().containsAll(List.of("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED")), m.story().toString());
        for (Object n : (List<?>) m.ok("query-named-block-nodes")) {
            Map<?, ?> node = (Map<?, ?>) n;
            if (node.get("node-name").equals("tgt")) assertEquals("iot1", String.valueOf(node.get("iothread")), node.toString());
        }
        compare(s.target(), s.reference());
    }

    /** The target is a driver=nbd node: a qemu-nbd export of the target image (the storage-migration shape). */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void mirrorToAnNbdTarget(Server server) throws Exception {
        Path dir = socketDir();
        Path remote = dir.resolve("remote.sock");
        Path tgtImage = Images.sparse(tmp.resolve("remote.img"), SIZE);
        background(new ProcessBuilder(Peers.require("qemu-nbd"), "-f", "raw", "-k", remote.toString(), "-x", "remote", "-t",
                tgtImage.toString()).redirectErrorStream(true).redirectOutput(tmp.resolve("qemu-nbd.log").toFile()).start());
        for (int i = 0; i < 200 && !Files.exists(remote); i++) Thread.sleep(25);
        Setup s = setup(server, "");
        s.mon().ok("blockdev-add", "driver", "nbd", "node-name", "rtgt", "export", "remote",
                "server", Map.of("type", "unix", "path", remote.toString()));
        Writer w = new Writer(s.uri(), s.reference(), 6);
        Thread.sleep(500);
        s.mon().ok("blockdev-mirror", "job-id", "mig", "device", "src", "target", "rtgt", "sync", "full", "copy-mode", "write-blocking");
        s.mon().waitEvent("BLOCK_JOB_READY", 60_000);
        Thread.sleep(300);
        s.mon().ok("job-complete", "id", "mig");
        s.mon().waitEvent("BLOCK_JOB_COMPLETED", 60_000);
        Thread.sleep(300);
        w.stop();
        s.mon().ok("block-export-del", "id", "e0");
        s.mon().waitEvent("BLOCK_EXPORT_DELETED", 10_000);
        s.mon().ok("blockdev-del", "node-name", "src");
        s.mon().ok("blockdev-del", "node-name", "rtgt"); // flushes and disconnects
        compare(tgtImage, s.reference());
    }
}
