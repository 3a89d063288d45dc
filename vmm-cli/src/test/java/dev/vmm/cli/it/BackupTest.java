package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.it.MirrorTest.Monitor;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Backup jobs and fleecing end to end, against vmm and qemu-storage-daemon with the same QMP.
 * The source (pattern A) is served over NBD to a writer (python3-libnbd: random writes, zero
 * writes and trims, each applied to a reference file); a {@code blockdev-backup} starts before
 * the writer, with a low speed so that the writer overwrites regions the job has not copied yet.
 * The target (or, for fleecing, the export of a qcow2 overlay over the source read with nbdcopy)
 * must equal A, the source must equal the reference (A+B), and the job's events are QEMU's.
 */
@Timeout(300)
class BackupTest extends PeerTestBase {
    static final long SIZE = 16 * MiB;

    /** The writer: python3-libnbd, sequential random requests mirrored into {@code reference}. */
    final class Writer {
        final Process p;
        final Path stop;
        final Path err;

        Writer(String uri, Path reference, long seed) throws IOException {
            Path script = tmp.resolve("nbd_writer.py");
            if (!Files.exists(script)) {
                try (InputStream in = BackupTest.class.getResourceAsStream("/mirror/nbd_writer.py")) {
                    Files.copy(in, script);
                }
            }
            stop = tmp.resolve("stop-" + seed);
            err = tmp.resolve("writer-" + seed + ".err");
            p = background(new ProcessBuilder(Peers.python(), script.toString(), uri, reference.toString(), stop.toString(),
                    String.valueOf(seed), "128").redirectError(err.toFile()).start());
        }

        long stop() throws Exception {
            Files.createFile(stop);
            String out = new String(p.getInputStream().readAllBytes()).strip();
            int rc = p.waitFor();
            if (rc != 0) fail("writer failed (" + rc + "): " + Files.readString(err));
            long n = Long.parseLong(out);
            assertTrue(n > 0, "the writer wrote nothing");
            return n;
        }
    }

    /** Pattern A in the source, the point-in-time copy (A) and the writer's reference (A, then A+B). */
    private record Setup(VmmProcess server, Monitor mon, Path sockets, String uri, Path source, Path pointInTime, Path reference) {}

    private Setup setup(Server server, List<String> more, String... extra) throws Exception {
        return setup(server, "src", more, extra);
    }

    /** As above, the writer's export {@code src} serving node {@code exported}, added after {@code more}. */
    private Setup setup(Server server, String exported, List<String> more, String... extra) throws Exception {
        Path dir = socketDir();
        Path src = tmp.resolve("src.img");
        Images.sparse(src, SIZE);
        for (long off = 0; off < SIZE; off += 2 * MiB) Images.fill(src, off + 4321, (int) MiB, off + 1);
        Path a = tmp.resolve("a.img");
        Path ref = tmp.resolve("ref.img");
        Files.copy(src, a, StandardCopyOption.REPLACE_EXISTING);
        Files.copy(src, ref, StandardCopyOption.REPLACE_EXISTING);
        Path mon = dir.resolve("m.sock");
        Path nbd = dir.resolve("n.sock");
        List<String> args = new ArrayList<>(List.of(extra));
        args.addAll(List.of(
                "--chardev", "socket,id=m0,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m0",
                "--blockdev", "driver=file,node-name=src,filename=" + src,
                "--nbd-server", Net.unixServer(nbd)));
        args.addAll(more);
        args.addAll(List.of("--export", "type=nbd,id=e0,node-name=" + exported + ",name=src,writable=on"));
        VmmProcess p = serve(server, args);
        Monitor m = closeLater(new Monitor(mon));
        return new Setup(p, m, dir, Net.unixUri(nbd, "src"), src, a, ref);
    }

    /**
     * The monitor's story without the paused/running pairs that qemu-storage-daemon reports when
     * a drained section pauses a job (an NBD client connecting); vmm's moves do not pause jobs.
     */
    private static List<String> story(Monitor m) {
        List<String> out = new ArrayList<>(m.story());
        for (int i = 1; i + 1 < out.size(); ) {
            if (out.get(i).equals("paused") && out.get(i + 1).equals("running")) {
                out.remove(i);
                out.remove(i);
            } else {
                i++;
            }
        }
        return out;
    }

    private static void compare(String fmt, Path image, Path reference) {
        Run.cmd(Peers.require("qemu-img"), "compare", "-U", "-f", fmt, "-F", "raw", image.toString(), reference.toString()).expect(0);
    }

    /** sync=full: the target is the source at the job's start although the writer overwrote it meanwhile. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void fullBackupUnderWritesIsThePointInTime(Server server) throws Exception {
        Path tgt = Images.sparse(tmp.resolve("tgt.img"), SIZE);
        Setup s = setup(server, List.of("--blockdev", "driver=file,node-name=tgt,filename=" + tgt));
        s.mon().ok("blockdev-backup", "job-id", "b0", "device", "src", "target", "tgt", "sync", "full", "speed", 4 * MiB);
        Writer w = new Writer(s.uri(), s.reference(), 1);
        Map<String, Object> done = s.mon().waitEvent("BLOCK_JOB_COMPLETED", 120_000);
        w.stop();
        Map<?, ?> data = (Map<?, ?>) done.get("data");
        assertEquals("backup", data.get("type"));
        assertEquals("b0", data.get("device"));
        assertEquals(null, data.get("error"), data.toString());
        assertEquals(((Number) data.get("len")).longValue(), ((Number) data.get("offset")).longValue(), data.toString());
        assertEquals(List.of("created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null"), story(s.mon()));
        compare("raw", tgt, s.pointInTime());
        compare("raw", s.source(), s.reference());
        // the writer did change the source while the job ran
        assertEquals(1, Run.cmd(Peers.require("qemu-img"), "compare", "-U", "-f", "raw", "-F", "raw", s.source().toString(),
                s.pointInTime().toString()).expectAny().exit());
    }

    /**
     * sync=none into a qcow2 overlay whose backing is the source, exported read-only: the fleecing
     * export shows the source at the job's start while the writer writes; cancel ends it.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void fleecingExportShowsThePointInTime(Server server) throws Exception {
        Path fl = tmp.resolve("fleece.qcow2");
        Run.cmd(Peers.require("qemu-img"), "create", "-q", "-f", "qcow2", fl.toString(), String.valueOf(SIZE)).expect(0);
        Setup s = setup(server, List.of(
                "--blockdev", "driver=qcow2,node-name=fl,backing=src,file.driver=file,file.filename=" + fl,
                "--export", "type=nbd,id=e1,node-name=fl,name=fl"));
        s.mon().ok("blockdev-backup", "job-id", "f0", "device", "src", "target", "fl", "sync", "none");
        Writer w = new Writer(s.uri(), s.reference(), 2);
        Thread.sleep(1500);
        Path out = tmp.resolve("fleeced.img");
        Run.cmd(Peers.require("nbdcopy"), Net.unixUri(s.sockets().resolve("n.sock"), "fl"), out.toString()).expect(0);
        w.stop();
        compare("raw", out, s.pointInTime());
        compare("raw", s.source(), s.reference());
        List<?> jobs = (List<?>) s.mon().ok("query-block-jobs");
        Map<?, ?> info = (Map<?, ?>) jobs.get(0);
        assertEquals("backup", info.get("type"));
        assertEquals("running", info.get("status"));
        assertEquals(false, info.get("ready"));
        s.mon().ok("block-job-cancel", "device", "f0");
        s.mon().waitEvent("BLOCK_JOB_CANCELLED", 30_000);
        assertEquals(List.of("created", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"), story(s.mon()));
        assertEquals(List.of(), s.mon().ok("query-jobs"));
    }

    /**
     * QEMU 7.2's job-less fleecing: a copy-before-write node over the source with a raw target,
     * a snapshot-access node over it exported read-only. The writer writes through an export of
     * the copy-before-write node (in QEMU only writes through the filter are copied); the
     * snapshot export reads the source at the filter's creation; blockdev-del takes it all down.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void copyBeforeWriteAndSnapshotAccessShowThePointInTime(Server server) throws Exception {
        Path tgt = Images.sparse(tmp.resolve("tgt.img"), SIZE);
        Setup s = setup(server, "cbw", List.of(
                "--blockdev", "driver=file,node-name=tgt,filename=" + tgt,
                "--blockdev", "driver=copy-before-write,node-name=cbw,file=src,target=tgt",
                "--blockdev", "driver=snapshot-access,node-name=acc,file=cbw",
                "--export", "type=nbd,id=e1,node-name=acc,name=acc"));
        Writer w = new Writer(s.uri(), s.reference(), 6);
        Thread.sleep(1500);
        Path out = tmp.resolve("snap.img");
        Run.cmd(Peers.require("nbdcopy"), Net.unixUri(s.sockets().resolve("n.sock"), "acc"), out.toString()).expect(0);
        w.stop();
        compare("raw", out, s.pointInTime());
        compare("raw", s.source(), s.reference());
        s.mon().ok("block-export-del", "id", "e1");
        s.mon().waitEvent("BLOCK_EXPORT_DELETED", 10_000);
        s.mon().ok("blockdev-del", "node-name", "acc");
        s.mon().ok("block-export-del", "id", "e0");
        for (int i = 0; i < 100; i++) {
            if (s.mon().events.stream().filter(e -> e.get("event").equals("BLOCK_EXPORT_DELETED")).count() == 2) break;
            Thread.sleep(50);
        }
        s.mon().ok("blockdev-del", "node-name", "cbw");
        s.mon().ok("blockdev-del", "node-name", "tgt");
    }

    /**
     * vmm's choice (docs/backup.md): a copy-before-write node's copy step is in front of every
     * user of its file node, so writes through the source's own export are copied too.
     */
    @org.junit.jupiter.api.Test
    void copyBeforeWriteCoversEveryUserOfItsFile() throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue(Server.primary() == Server.VMM, "QEMU copies only writes through the filter");
        Path tgt = Images.sparse(tmp.resolve("tgt.img"), SIZE);
        Setup s = setup(Server.VMM, List.of(
                "--blockdev", "driver=file,node-name=tgt,filename=" + tgt,
                "--blockdev", "driver=copy-before-write,node-name=cbw,file=src,target=tgt",
                "--blockdev", "driver=snapshot-access,node-name=acc,file=cbw",
                "--export", "type=nbd,id=e1,node-name=acc,name=acc"),
                "--object", "iothread,id=iot1");
        Writer w = new Writer(s.uri(), s.reference(), 7);
        Thread.sleep(800);
        s.mon().ok("x-blockdev-set-iothread", "node-name", "src", "iothread", "iot1"); // the whole fleecing graph moves
        Thread.sleep(500);
        Path out = tmp.resolve("snap.img");
        Run.cmd(Peers.require("nbdcopy"), Net.unixUri(s.sockets().resolve("n.sock"), "acc"), out.toString()).expect(0);
        w.stop();
        compare("raw", out, s.pointInTime());
        compare("raw", s.source(), s.reference());
    }

    /**
     * The flow: a transaction adds bitmap b0 and starts a full backup at one instant; the
     * writer writes during it; then an incremental backup (sync=incremental, bitmap b0) into a
     * qcow2 overlay whose backing file is the full backup, with the writer writing again: the
     * overlay read through its backing equals the source at the incremental's start, and b0 holds
     * only the writes made since (bitmap-mode on-success).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void fullThenIncrementalUnderWrites(Server server) throws Exception {
        String qemuImg = Peers.require("qemu-img");
        Path full = Images.sparse(tmp.resolve("full.img"), SIZE);
        Setup s = setup(server, List.of("--blockdev", "driver=file,node-name=full,filename=" + full));
        Monitor m = s.mon();
        m.ok("transaction", "actions", List.of(
                Map.of("type", "block-dirty-bitmap-add", "data", Map.of("node", "src", "name", "b0")),
                Map.of("type", "blockdev-backup", "data", Map.of("job-id", "f0", "device", "src", "target", "full", "sync", "full",
                        "speed", 4 * MiB))));
        Writer w1 = new Writer(s.uri(), s.reference(), 8);
        m.waitEvent("BLOCK_JOB_COMPLETED", 120_000);
        w1.stop();
        compare("raw", full, s.pointInTime());
        m.ok("blockdev-del", "node-name", "full");
        Path r1 = tmp.resolve("r1.img");
        Files.copy(s.source(), r1, StandardCopyOption.REPLACE_EXISTING);
        Path inc = tmp.resolve("inc.qcow2");
        Run.cmd(qemuImg, "create", "-q", "-f", "qcow2", "-b", full.toString(), "-F", "raw", inc.toString()).expect(0);
        m.ok("blockdev-add", "driver", "qcow2", "node-name", "inc", "file", Map.of("driver", "file", "filename", inc.toString()));
        m.events.clear();
        m.ok("blockdev-backup", "job-id", "i0", "device", "src", "target", "inc", "sync", "incremental", "bitmap", "b0",
                "speed", 2 * MiB);
        Writer w2 = new Writer(s.uri(), s.reference(), 9);
        Map<?, ?> done = (Map<?, ?>) m.waitEvent("BLOCK_JOB_COMPLETED", 120_000).get("data");
        w2.stop();
        assertEquals(null, done.get("error"), done.toString());
        Map<?, ?> b0 = null;
        for (Object n : (List<?>) m.ok("query-named-block-nodes")) {
            Map<?, ?> node = (Map<?, ?>) n;
            if (!node.get("node-name").equals("src")) continue;
            for (Object b : (List<?>) node.get("dirty-bitmaps")) if ("b0".equals(((Map<?, ?>) b).get("name"))) b0 = (Map<?, ?>) b;
        }
        assertTrue(b0 != null, "b0 is listed");
        assertEquals(false, b0.get("busy"), b0.toString());
        assertTrue(((Number) b0.get("count")).longValue() > 0, "b0 holds the writes made during the incremental backup: " + b0);
        m.ok("blockdev-del", "node-name", "inc");
        Run.cmd(qemuImg, "compare", "-U", "-f", "qcow2", "-F", "raw", inc.toString(), r1.toString()).expect(0);
        compare("raw", s.source(), s.reference());
    }

    /**
     * The backup tools' flow (Proxmox, virtnbdbackup): bitmap b0 recorded the writes since the last
     * backup (pattern A); one transaction starts fleecing and swaps b0 for a fresh b1; the fleecing
     * export publishes qemu:dirty-bitmap:b0 while the writer keeps writing. A then the extents b0
     * reports, read from the fleecing export, give the source at the fleecing instant.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void fleecingExportWithADirtyBitmapGivesAnIncrementalBackup(Server server) throws Exception {
        Path fl = tmp.resolve("fleece.qcow2");
        Run.cmd(Peers.require("qemu-img"), "create", "-q", "-f", "qcow2", fl.toString(), String.valueOf(SIZE)).expect(0);
        Setup s = setup(server, List.of("--blockdev", "driver=qcow2,node-name=fl,backing=src,file.driver=file,file.filename=" + fl));
        Monitor m = s.mon();
        m.ok("block-dirty-bitmap-add", "node", "src", "name", "b0", "granularity", 65536);
        Writer w0 = new Writer(s.uri(), s.reference(), 10);
        Thread.sleep(200);
        w0.stop();
        Path r = tmp.resolve("r.img");
        Files.copy(s.source(), r, StandardCopyOption.REPLACE_EXISTING);
        m.ok("transaction", "actions", List.of(
                Map.of("type", "blockdev-backup", "data", Map.of("job-id", "f0", "device", "src", "target", "fl", "sync", "none")),
                Map.of("type", "block-dirty-bitmap-disable", "data", Map.of("node", "src", "name", "b0")),
                Map.of("type", "block-dirty-bitmap-add", "data", Map.of("node", "src", "name", "b1"))));
        m.ok("block-export-add", "type", "nbd", "id", "e1", "node-name", "fl", "name", "fl", "bitmaps", List.of("b0"));
        Writer w1 = new Writer(s.uri(), s.reference(), 11);
        Thread.sleep(500);
        String flUri = Net.unixUri(s.sockets().resolve("n.sock"), "fl");
        List<long[]> dirty = dev.vmm.core.testing.QsdPeer.nbdMapSet(flUri, "qemu:dirty-bitmap:b0");
        Path fleeced = tmp.resolve("fleeced.img");
        Run.cmd(Peers.require("nbdcopy"), flUri, fleeced.toString()).expect(0);
        w1.stop();
        assertTrue(!dirty.isEmpty(), "b0 reports the writes made before the fleecing");
        Path restored = tmp.resolve("restored.img");
        Files.copy(s.pointInTime(), restored, StandardCopyOption.REPLACE_EXISTING);
        long bytes = 0;
        for (long[] e : dirty) {
            Images.write(restored, e[0], Images.read(fleeced, e[0], (int) e[1]));
            bytes += e[1];
        }
        assertTrue(bytes < SIZE, "b0 does not report the whole disk: " + dev.vmm.core.testing.QsdPeer.show(dirty));
        compare("raw", fleeced, r);
        compare("raw", restored, r);
        compare("raw", s.source(), s.reference());
        m.ok("block-export-del", "id", "e1");
        m.ok("block-job-cancel", "device", "f0");
        m.waitEvent("BLOCK_JOB_CANCELLED", 30_000);
    }

    /** A cancelled sync=full job ends with BLOCK_JOB_CANCELLED and the source keeps serving. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void cancelOfAFullBackup(Server server) throws Exception {
        Path tgt = Images.sparse(tmp.resolve("tgt.img"), SIZE);
        Setup s = setup(server, List.of("--blockdev", "driver=file,node-name=tgt,filename=" + tgt));
        // no writer yet: its copies before write would finish the job at once
        s.mon().ok("blockdev-backup", "job-id", "c0", "device", "src", "target", "tgt", "sync", "full", "speed", MiB);
        Thread.sleep(700);
        s.mon().ok("block-job-cancel", "device", "c0");
        Map<String, Object> ev = s.mon().waitEvent("BLOCK_JOB_CANCELLED", 30_000);
        Writer w = new Writer(s.uri(), s.reference(), 3);
        Thread.sleep(300);
        w.stop();
        Map<?, ?> data = (Map<?, ?>) ev.get("data");
        assertTrue(((Number) data.get("offset")).longValue() < SIZE, data.toString());
        assertEquals(List.of("created", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null"), story(s.mon()));
        compare("raw", s.source(), s.reference());
    }

    /** A target that fails writes (nbdkit's error filter) with on-target-error=report: the job fails, the source is intact. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void targetErrorWithReportFailsTheJob(Server server) throws Exception {
        Path dir = socketDir();
        Path bad = dir.resolve("bad.sock");
        background(new ProcessBuilder(Peers.require("nbdkit"), "--foreground", "--exit-with-parent", "-U", bad.toString(),
                "--filter=error", "memory", String.valueOf(SIZE), "error-pwrite=EIO", "error-pwrite-rate=100%",
                "error-zero=EIO", "error-zero-rate=100%").redirectErrorStream(true).redirectOutput(tmp.resolve("nbdkit.log").toFile()).start());
        for (int i = 0; i < 100 && !Files.exists(bad); i++) Thread.sleep(50);
        Setup s = setup(server, List.of("--blockdev", "driver=nbd,node-name=tgt,server.type=unix,server.path=" + bad));
        s.mon().ok("blockdev-backup", "job-id", "e0", "device", "src", "target", "tgt", "sync", "full", "on-target-error", "report");
        Map<String, Object> done = s.mon().waitEvent("BLOCK_JOB_COMPLETED", 30_000);
        Map<?, ?> data = (Map<?, ?>) done.get("data");
        assertEquals("Input/output error", data.get("error"), data.toString());
        List<String> story = story(s.mon());
        assertTrue(story.contains("BLOCK_JOB_ERROR"), story.toString());
        assertEquals(List.of("aborting", "BLOCK_JOB_COMPLETED", "concluded", "null"), story.subList(story.size() - 4, story.size()));
        Writer w = new Writer(s.uri(), s.reference(), 4);
        Thread.sleep(300);
        w.stop();
        compare("raw", s.source(), s.reference());
    }

    /**
     * sync=bitmap (bitmap-mode=never) from a persistent bitmap made with qemu-img and qemu-io: only
     * the clusters the bitmap marks are copied.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void bitmapBackupCopiesTheDirtyClustersOnly(Server server) throws Exception {
        String qemuImg = Peers.require("qemu-img");
        Path src = tmp.resolve("src.qcow2");
        Run.cmd(qemuImg, "create", "-q", "-f", "qcow2", src.toString(), String.valueOf(SIZE)).expect(0);
        Run.cmd(Peers.require("qemu-io"), "-f", "qcow2", "-c", "write -P 0xa 0 " + SIZE, src.toString()).expect(0);
        Run.cmd(qemuImg, "bitmap", "--add", "--enable", src.toString(), "b0").expect(0);
        Run.cmd(Peers.require("qemu-io"), "-f", "qcow2", "-c", "write -P 0xb 1M 64k", "-c", "write -P 0xc 5000k 200k",
                src.toString()).expect(0);
        Path tgt = Images.sparse(tmp.resolve("tgt.img"), SIZE);
        Path dir = socketDir();
        Path mon = dir.resolve("m.sock");
        serve(server, List.of("--chardev", "socket,id=m0,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m0",
                "--blockdev", "driver=qcow2,node-name=src,read-only=on,file.driver=file,file.filename=" + src,
                "--blockdev", "driver=file,node-name=tgt,filename=" + tgt));
        Monitor m = closeLater(new Monitor(mon));
        assertTrue(m.error("blockdev-backup", "job-id", "x", "device", "src", "target", "tgt", "sync", "incremental", "bitmap", "b0")
                .contains("readonly"));
        m.ok("blockdev-backup", "job-id", "i0", "device", "src", "target", "tgt", "sync", "bitmap", "bitmap", "b0", "bitmap-mode", "never");
        Map<?, ?> data = (Map<?, ?>) m.waitEvent("BLOCK_JOB_COMPLETED", 30_000).get("data");
        assertEquals(null, data.get("error"), data.toString());
        // expected: the dirty 64 KiB clusters of the source, zeros elsewhere
        Path raw = tmp.resolve("src.raw");
        Run.cmd(qemuImg, "convert", "-U", "-f", "qcow2", "-O", "raw", src.toString(), raw.toString()).expect(0);
        Path want = Images.sparse(tmp.resolve("want.img"), SIZE);
        long c = 64 * 1024;
        for (long[] r : new long[][] {{MiB, c}, {5000 * 1024 / c * c, (5000 * 1024 + 200 * 1024 + c - 1) / c * c - 5000 * 1024 / c * c}}) {
            Images.write(want, r[0], Images.read(raw, r[0], (int) r[1]));
        }
        compare("raw", tgt, want);
    }

    /** sync=top: only what the source's top layer allocates reaches the target. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void topBackupCopiesTheTopLayerOnly(Server server) throws Exception {
        String qemuImg = Peers.require("qemu-img");
        Path base = Images.sparse(tmp.resolve("base.img"), SIZE);
        for (long off = 0; off < SIZE; off += 2 * MiB) Images.fill(base, off, (int) MiB, off + 9);
        Path top = tmp.resolve("top.qcow2");
        Run.cmd(qemuImg, "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "raw", top.toString()).expect(0);
        Run.cmd(Peers.require("qemu-io"), "-f", "qcow2", "-c", "write -P 0x5 1M 128k", "-c", "write -P 0x6 6M 64k", "-c",
                "write -z 8M 64k", top.toString()).expect(0);
        Path tgt = Images.sparse(tmp.resolve("tgt.img"), SIZE);
        Path dir = socketDir();
        Path mon = dir.resolve("m.sock");
        serve(server, List.of("--chardev", "socket,id=m0,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m0",
                "--blockdev", "driver=qcow2,node-name=src,file.driver=file,file.filename=" + top,
                "--blockdev", "driver=file,node-name=tgt,filename=" + tgt));
        Monitor m = closeLater(new Monitor(mon));
        m.ok("blockdev-backup", "job-id", "t0", "device", "src", "target", "tgt", "sync", "top");
        Map<?, ?> data = (Map<?, ?>) m.waitEvent("BLOCK_JOB_COMPLETED", 30_000).get("data");
        assertEquals(null, data.get("error"), data.toString());
        Path want = Images.sparse(tmp.resolve("want.img"), SIZE);
        byte[] five = new byte[128 * 1024];
        java.util.Arrays.fill(five, (byte) 5);
        Images.write(want, MiB, five);
        byte[] six = new byte[64 * 1024];
        java.util.Arrays.fill(six, (byte) 6);
        Images.write(want, 6 * MiB, six);
        compare("raw", tgt, want);
    }

    /** vmm only (QSD does not move a node an export uses): moves of the source during a backup under writes. */
    @org.junit.jupiter.api.Test
    void movesOfTheSourceDuringABackupUnderWrites() throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue(Server.primary() == Server.VMM, "vmm moves nodes with their users");
        Path tgt = Images.sparse(tmp.resolve("tgt.img"), SIZE);
        Setup s = setup(Server.VMM, List.of("--blockdev", "driver=file,node-name=tgt,filename=" + tgt),
                "--object", "iothread,id=iot1", "--object", "iothread,id=iot2");
        Monitor m = s.mon();
        m.ok("blockdev-backup", "job-id", "mv", "device", "src", "target", "tgt", "sync", "full", "speed", 4 * MiB);
        Writer w = new Writer(s.uri(), s.reference(), 5);
        for (String to : List.of("iot1", "iot2", "main", "iot1")) {
            m.ok("x-blockdev-set-iothread", "node-name", "src", "iothread", to);
            Thread.sleep(50);
        }
        m.waitEvent("BLOCK_JOB_COMPLETED", 60_000);
        w.stop();
        List<String> names = m.events.stream().map(e -> (String) e.get("event")).toList();
        assertTrue(names.indexOf("VMM_NODE_MOVED") < names.indexOf("BLOCK_JOB_COMPLETED"), names.toString());
        long moves = m.events.stream().filter(e -> e.get("event").equals("VMM_NODE_MOVED")).count();
        assertEquals(4, moves, m.events.toString());
        compare("raw", tgt, s.pointInTime());
        compare("raw", s.source(), s.reference());
    }
}
