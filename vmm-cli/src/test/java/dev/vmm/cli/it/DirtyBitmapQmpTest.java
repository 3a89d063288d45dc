package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.json.Json;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Dirty bitmaps end to end, vmm beside qemu-storage-daemon 7.2 with the same command line, the
 * same QMP requests and the same NBD writes (python3-libnbd, seeded: writes, zero writes, trims):
 * every reply (errors word for word), {@code query-named-block-nodes}' {@code dirty-bitmaps} and
 * every bitmap's {@code x-debug-block-dirty-bitmap-sha256} must be equal, the latter also to a
 * reference bitmap built from the ranges the writer logged. And vmm alone: bitmaps keep recording
 * while their node moves between IOThreads under an NBD writer.
 */
@Timeout(300)
class DirtyBitmapQmpTest extends PeerTestBase {
    static final long SIZE = 64 * MiB;

    /** One server with its images, monitor and NBD socket. */
    record Side(Server server, MirrorTest.Monitor mon, Path nbd, Path dir) {
        String uri(String export) { return Net.unixUri(nbd, export); }
    }

    /** The images every side gets a copy of; made once. */
    private Path templates() throws Exception {
        Path t = tmp.resolve("templates");
        if (Files.isDirectory(t)) return t;
        Files.createDirectories(t);
        String img = Peers.require("qemu-img");
        Run.cmd(img, "create", "-q", "-f", "raw", t.resolve("r.raw").toString(), String.valueOf(SIZE)).expect(0);
        Run.cmd(img, "create", "-q", "-f", "qcow2", t.resolve("q.qcow2").toString(), String.valueOf(SIZE)).expect(0);
        Run.cmd(img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", t.resolve("q5.qcow2").toString(), String.valueOf(SIZE)).expect(0);
        Run.cmd(img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", t.resolve("q2.qcow2").toString(), String.valueOf(SIZE)).expect(0);
        Run.cmd(img, "create", "-q", "-f", "qcow2", t.resolve("ro.qcow2").toString(), String.valueOf(SIZE)).expect(0);
        Run.cmd(img, "bitmap", "--add", t.resolve("ro.qcow2").toString(), "b1").expect(0);
        // a bitmap left in_use: the image of a daemon killed while it had it open read-write
        Run.cmd(img, "create", "-q", "-f", "qcow2", t.resolve("inc.qcow2").toString(), String.valueOf(SIZE)).expect(0);
        Run.cmd(img, "bitmap", "--add", t.resolve("inc.qcow2").toString(), "b1").expect(0);
        VmmProcess killed = VmmProcess.start(tmp, "inuse", List.of("--blockdev", "driver=file,node-name=f,filename=" + t.resolve("inc.qcow2"),
                "--blockdev", "driver=qcow2,node-name=i,file=f"), true);
        killed.kill();
        String info = Run.cmd(img, "info", "-U", t.resolve("inc.qcow2").toString()).expect(0).stdout();
        assertTrue(info.contains("in-use"), info);
        return t;
    }

    private Side start(Server server, String... extra) throws Exception {
        Path t = templates();
        Path dir = tmp.resolve(server.toString());
        Files.createDirectories(dir);
        for (String f : List.of("r.raw", "q.qcow2", "q5.qcow2", "q2.qcow2", "ro.qcow2", "inc.qcow2")) Files.copy(t.resolve(f), dir.resolve(f));
        Path sockets = socketDir();
        Path mon = sockets.resolve("m.sock");
        Path nbd = sockets.resolve("n.sock");
        List<String> args = new ArrayList<>(List.of(extra));
        args.addAll(List.of(
                "--chardev", "socket,id=m0,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m0",
                "--blockdev", "driver=file,node-name=rf,filename=" + dir.resolve("r.raw"),
                "--blockdev", "driver=raw,node-name=r,file=rf,discard=unmap",
                "--blockdev", "driver=file,node-name=qf,filename=" + dir.resolve("q.qcow2"),
                "--blockdev", "driver=qcow2,node-name=q,file=qf,discard=unmap",
                "--blockdev", "driver=file,node-name=q5f,filename=" + dir.resolve("q5.qcow2"),
                "--blockdev", "driver=qcow2,node-name=q5,file=q5f",
                "--blockdev", "driver=file,node-name=q2f,filename=" + dir.resolve("q2.qcow2"),
                "--blockdev", "driver=qcow2,node-name=q2,file=q2f",
                "--blockdev", "driver=file,node-name=rof,filename=" + dir.resolve("ro.qcow2") + ",read-only=on",
                "--blockdev", "driver=qcow2,node-name=ro,file=rof,read-only=on",
                "--blockdev", "driver=file,node-name=if,filename=" + dir.resolve("inc.qcow2"),
                "--blockdev", "driver=qcow2,node-name=i,file=if",
                "--nbd-server", Net.unixServer(nbd),
                "--export", "type=nbd,id=eq,node-name=q,name=q,writable=on",
                "--export", "type=nbd,id=er,node-name=r,name=r,writable=on"));
        serve(server, args);
        return new Side(server, closeLater(new MirrorTest.Monitor(mon)), nbd, dir);
    }

    static Map<String, Object> args(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    /** Sends the same request to both sides; the replies (return or error) must be equal. */
    static Object same(Side a, Side b, String command, Object... kv) throws Exception {
        Map<String, Object> ra;
        Map<String, Object> rb;
        try {
            ra = a.mon().run(command, kv);
        } catch (java.io.IOException e) {
            throw new AssertionError(a.server() + ": " + command + " " + Json.write(args(kv)), e);
        }
        try {
            rb = b.mon().run(command, kv);
        } catch (java.io.IOException e) {
            throw new AssertionError(b.server() + ": " + command + " " + Json.write(args(kv)), e);
        }
        ra.remove("id");
        rb.remove("id");
        assertEquals(Json.write(rb), Json.write(ra), command + " " + Json.write(args(kv)) + " (left: " + b.server() + ", right: " + a.server() + ")");
        return ra;
    }

    /** {@code query-named-block-nodes}' dirty-bitmaps by node name. */
    static Map<String, Object> bitmaps(Side s) throws Exception {
        Map<String, Object> out = new java.util.TreeMap<>();
        for (Object o : (List<?>) s.mon().ok("query-named-block-nodes", "flat", true)) {
            Map<?, ?> n = (Map<?, ?>) o;
            if (n.containsKey("dirty-bitmaps")) out.put((String) n.get("node-name"), n.get("dirty-bitmaps"));
        }
        return out;
    }

    static String sha(Side s, String node, String name) throws Exception {
        return (String) ((Map<?, ?>) s.mon().ok("x-debug-block-dirty-bitmap-sha256", "node", node, "name", name)).get("sha256");
    }

    /** Runs the seeded writer to completion; returns the ranges it logged. */
    private List<long[]> write(Side s, String export, long seed, int count) throws Exception {
        Path log = s.dir().resolve("ranges-" + export + "-" + seed + ".log");
        Run.Result r = Run.cmd(python("bitmap_writer.py", s.uri(export), log.toString(), s.dir().resolve("no-stop").toString(),
                String.valueOf(seed), String.valueOf(count))).expect(0);
        assertEquals(String.valueOf(count), r.stdout().strip(), r.describe());
        return ranges(log);
    }

    static List<long[]> ranges(Path log) throws Exception {
        List<long[]> out = new ArrayList<>();
        for (String line : Files.readAllLines(log)) {
            String[] f = line.trim().split(" ");
            if (f.length == 2) out.add(new long[] {Long.parseLong(f[0]), Long.parseLong(f[1])});
        }
        return out;
    }

    /** The sha256 of a bitmap of {@code granularity} with exactly {@code ranges} dirty. */
    static String reference(long granularity, List<long[]> ranges) {
        DirtyBitmap b = new DirtyBitmap("ref", SIZE, granularity);
        for (long[] r : ranges) b.set(r[0], r[1]);
        return b.sha256();
    }

    @Test
    void repliesAndErrorsEqualQsds() throws Exception {
        Side v = start(Server.VMM);
        Side q = start(Server.QSD);
        String longName = "x".repeat(1024);
        Object[][] requests = {
            {"block-dirty-bitmap-add", "node", "r", "name", "a"},
            {"block-dirty-bitmap-add", "node", "q", "name", "a"},
            {"block-dirty-bitmap-add", "node", "q5", "name", "a"},
            {"block-dirty-bitmap-add", "node", "q2", "name", "a"},
            {"block-dirty-bitmap-add", "node", "rf", "name", "a"},
            {"block-dirty-bitmap-add", "node", "nope", "name", "a"},
            {"block-dirty-bitmap-add", "node", "q", "name", "a"},
            {"block-dirty-bitmap-add", "node", "q", "name", ""},
            {"block-dirty-bitmap-add", "node", "nope", "name", ""},
            {"block-dirty-bitmap-add", "node", "q", "name", longName},
            {"block-dirty-bitmap-add", "node", "q", "name", "g", "granularity", 1000},
            {"block-dirty-bitmap-add", "node", "q", "name", "g", "granularity", 256},
            {"block-dirty-bitmap-add", "node", "q", "name", "g", "granularity", 0},
            {"block-dirty-bitmap-add", "node", "q", "name", "g", "granularity", 4294967296L},
            {"block-dirty-bitmap-add", "node", "q", "name", "g", "granularity", -512},
            {"block-dirty-bitmap-add", "node", "q", "name", "g", "granularity", 4294967295L},
            {"block-dirty-bitmap-add", "node", "q", "name", "big", "granularity", 2147483648L},
            {"block-dirty-bitmap-add", "node", "r", "name", "p", "persistent", true},
            {"block-dirty-bitmap-add", "node", "rf", "name", "p", "persistent", true},
            {"block-dirty-bitmap-add", "node", "ro", "name", "np"},
            {"block-dirty-bitmap-add", "node", "q", "name", "off", "disabled", true},
            {"block-dirty-bitmap-add", "node", "q", "name", "x", "extra", 1},
            {"block-dirty-bitmap-add", "node", "q"},
            {"block-dirty-bitmap-remove", "node", "q", "name", "zz"},
            {"block-dirty-bitmap-remove", "node", "nope", "name", "zz"},
            {"block-dirty-bitmap-clear", "node", "q", "name", "zz"},
            {"block-dirty-bitmap-enable", "node", "q", "name", "zz"},
            {"block-dirty-bitmap-disable", "node", "q", "name", "zz"},
            {"block-dirty-bitmap-clear", "node", "ro", "name", "np"},
            {"block-dirty-bitmap-enable", "node", "ro", "name", "np"},
            // a persistent bitmap of a read-only image is readonly; an in_use one inconsistent
            {"block-dirty-bitmap-clear", "node", "ro", "name", "b1"},
            {"block-dirty-bitmap-enable", "node", "ro", "name", "b1"},
            {"block-dirty-bitmap-disable", "node", "ro", "name", "b1"},
            {"block-dirty-bitmap-remove", "node", "ro", "name", "b1"},
            {"block-dirty-bitmap-merge", "node", "ro", "target", "b1", "bitmaps", List.of("np")},
            {"block-dirty-bitmap-merge", "node", "ro", "target", "np", "bitmaps", List.of("b1")},
            {"block-dirty-bitmap-merge", "node", "ro", "target", "b1", "bitmaps", List.of("zz")},
            {"block-dirty-bitmap-clear", "node", "i", "name", "b1"},
            {"block-dirty-bitmap-enable", "node", "i", "name", "b1"},
            {"block-dirty-bitmap-disable", "node", "i", "name", "b1"},
            {"block-dirty-bitmap-add", "node", "i", "name", "n"},
            {"block-dirty-bitmap-merge", "node", "i", "target", "b1", "bitmaps", List.of("n")},
            {"block-dirty-bitmap-merge", "node", "i", "target", "n", "bitmaps", List.of("b1")},
            {"x-debug-block-dirty-bitmap-sha256", "node", "i", "name", "b1"},
            {"block-dirty-bitmap-add", "node", "i", "name", "b1"},
            {"block-dirty-bitmap-remove", "node", "i", "name", "b1"},
            {"block-dirty-bitmap-merge", "node", "q", "target", "zz", "bitmaps", List.of("a")},
            {"block-dirty-bitmap-merge", "node", "q", "target", "a", "bitmaps", List.of("zz")},
            {"block-dirty-bitmap-merge", "node", "q", "target", "a", "bitmaps", List.of(args("node", "r", "name", "a"))},
            {"block-dirty-bitmap-merge", "node", "q", "target", "a", "bitmaps", List.of(args("node", "nope", "name", "a"))},
            {"block-dirty-bitmap-merge", "node", "q", "target", "a", "bitmaps", List.of(args("node", "q5", "name", "a"), "off", "big")},
            {"block-dirty-bitmap-merge", "node", "q", "target", "a", "bitmaps", List.of(args("node", "q5"))},
            {"block-dirty-bitmap-merge", "node", "q", "target", "a", "bitmaps", List.of(args("node", "ro", "name", "b1"))},
            {"x-debug-block-dirty-bitmap-sha256", "node", "q", "name", "a"},
            {"x-debug-block-dirty-bitmap-sha256", "node", "q", "name", "zz"},
            {"x-debug-block-dirty-bitmap-sha256", "node", "nope", "name", "zz"},
            {"x-debug-block-dirty-bitmap-sha256", "node", "q", "name", "big"},
            {"block-dirty-bitmap-remove", "node", "q", "name", "big"},
            {"block-dirty-bitmap-disable", "node", "q", "name", "a"},
            {"block-dirty-bitmap-enable", "node", "q", "name", "off"},
            {"block-dirty-bitmap-clear", "node", "q", "name", "off"},
        };
        for (Object[] r : requests) same(v, q, (String) r[0], java.util.Arrays.copyOfRange(r, 1, r.length));
        assertEquals(bitmaps(q), bitmaps(v));
    }

    @Test
    void transactionsAreAtomicAsQsds() throws Exception {
        Side v = start(Server.VMM);
        Side q = start(Server.QSD);
        same(v, q, "block-dirty-bitmap-add", "node", "r", "name", "n");
        same(v, q, "block-dirty-bitmap-add", "node", "r", "name", "keep", "granularity", 4096);
        List<long[]> written = write(v, "r", 11, 50);
        write(q, "r", 11, 50);
        String keep = sha(v, "r", "keep");
        assertEquals(reference(4096, written), keep);
        assertEquals(sha(q, "r", "keep"), keep);
        Object[][] transactions = {
            {},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t1"), "abort", args()},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t1"), "block-dirty-bitmap-add", args("node", "r", "name", "n")},
            {"block-dirty-bitmap-clear", args("node", "r", "name", "keep"), "block-dirty-bitmap-disable", args("node", "r", "name", "n"),
                "block-dirty-bitmap-add", args("node", "r", "name", "t9"), "block-dirty-bitmap-add", args("node", "r", "name", "n")},
            {"block-dirty-bitmap-merge", args("node", "r", "target", "n", "bitmaps", List.of("keep")), "abort", args()},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t1")},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t2"), "block-dirty-bitmap-remove", args("node", "r", "name", "t2")},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t3"), "block-dirty-bitmap-clear", args("node", "r", "name", "t3")},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t4"), "block-dirty-bitmap-merge",
                args("node", "r", "target", "t4", "bitmaps", List.of("keep")), "block-dirty-bitmap-disable", args("node", "r", "name", "t4")},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t6"), "block-dirty-bitmap-add", args("node", "r", "name", "t6")},
            {"block-dirty-bitmap-remove", args("node", "r", "name", "t1"), "block-dirty-bitmap-remove", args("node", "r", "name", "t1")},
            {"block-dirty-bitmap-disable", args("node", "r", "name", "t1"), "abort", args()},
            {"block-dirty-bitmap-remove", args("node", "r", "name", "t3"), "block-dirty-bitmap-clear", args("node", "i", "name", "b1")},
            {"block-dirty-bitmap-add", args("node", "r", "name", "t7"), "block-dirty-bitmap-add", args("node", "r", "name", "t7x", "bad", 1)},
        };
        for (Object[] t : transactions) {
            List<Object> actions = new ArrayList<>();
            for (int i = 0; i < t.length; i += 2) actions.add(args("type", t[i], "data", t[i + 1]));
            same(v, q, "transaction", "actions", actions);
        }
        same(v, q, "transaction", "actions", List.of(args("type", "abort")));
        same(v, q, "transaction", "actions", List.of(args("data", args())));
        same(v, q, "transaction", "actions", List.of(args("type", "bogus", "data", args())));
        same(v, q, "transaction", "actions", List.of(args("type", "block-dirty-bitmap-add", "data", args("node", "r", "name", "g1"))),
                "properties", args("completion-mode", "grouped"));
        same(v, q, "transaction", "actions", List.of(args("type", "block-dirty-bitmap-add", "data", args("node", "r", "name", "g1"))),
                "properties", args("completion-mode", "individual"));
        assertEquals(bitmaps(q), bitmaps(v));
        // vmm only: QSD 7.2 segfaults when an enable or disable fails inside a transaction (its
        // abort runs on the failed action too, with no bitmap); we answer and undo the others
        assertEquals("Dirty bitmap 'zz' not found", v.mon().error("transaction", "actions", List.of(
                args("type", "block-dirty-bitmap-disable", "data", args("node", "r", "name", "n")),
                args("type", "block-dirty-bitmap-enable", "data", args("node", "r", "name", "zz")))));
        assertEquals(bitmaps(q), bitmaps(v), "the disable was undone");
        // the failed transactions changed no bit: keep still holds the writer's ranges
        assertEquals(keep, sha(v, "r", "keep"));
        assertEquals(sha(q, "r", "t4"), sha(v, "r", "t4"));
        assertEquals(reference(64 << 10, written), sha(v, "r", "t4"), "merged from keep at another granularity");
    }

    @Test
    void bitsEqualQsdsAfterTheSameNbdWrites() throws Exception {
        Side v = start(Server.VMM);
        Side q = start(Server.QSD);
        List<Side> both = List.of(v, q);
        for (Side s : both) {
            s.mon().ok("block-dirty-bitmap-add", "node", "q", "name", "g64");
            s.mon().ok("block-dirty-bitmap-add", "node", "q", "name", "g512", "granularity", 512);
            s.mon().ok("block-dirty-bitmap-add", "node", "q", "name", "g1m", "granularity", MiB);
            s.mon().ok("block-dirty-bitmap-add", "node", "q", "name", "off", "disabled", true);
            s.mon().ok("block-dirty-bitmap-add", "node", "r", "name", "a");
            s.mon().ok("block-dirty-bitmap-add", "node", "r", "name", "fine", "granularity", 4096);
            s.mon().ok("block-dirty-bitmap-add", "node", "qf", "name", "file");
        }
        List<long[]> q1 = null;
        List<long[]> r1 = null;
        for (Side s : both) {
            q1 = write(s, "q", 1, 150);
            r1 = write(s, "r", 2, 150);
        }
        assertEquals(reference(512, q1), sha(v, "q", "g512"), "every write on q marked at 512 B");
        assertEquals(reference(4096, r1), sha(v, "r", "fine"));
        List<long[]> q2 = null;
        List<long[]> q4 = null;
        for (Side s : both) {
            s.mon().ok("block-dirty-bitmap-disable", "node", "q", "name", "g64");
            s.mon().ok("block-dirty-bitmap-enable", "node", "q", "name", "off");
            q2 = write(s, "q", 3, 80);
            s.mon().ok("block-dirty-bitmap-clear", "node", "q", "name", "g512");
            s.mon().ok("block-dirty-bitmap-merge", "node", "q", "target", "g1m", "bitmaps", List.of("g64", args("node", "r", "name", "a")));
            s.mon().ok("transaction", "actions", List.of(args("type", "block-dirty-bitmap-add", "data", args("node", "q", "name", "t2")),
                    args("type", "block-dirty-bitmap-disable", "data", args("node", "q", "name", "g512"))));
            q4 = write(s, "q", 4, 80);
            write(s, "r", 5, 50);
        }
        List<long[]> q2q4 = new ArrayList<>(q2);
        q2q4.addAll(q4);
        assertEquals(reference(64 << 10, q2q4), sha(v, "q", "off"), "enabled from the second run on");
        assertEquals(reference(64 << 10, q1), sha(v, "q", "g64"), "disabled after the first run");
        // the qcow2 node's file child: both mark what the format writes there, but the two qcow2
        // drivers lay out clusters and metadata differently, so only the format nodes compare
        Map<String, Object> theirs = bitmaps(q);
        Map<String, Object> ours = bitmaps(v);
        theirs.remove("qf");
        Object file = ours.remove("qf");
        assertEquals(theirs, ours);
        for (String[] b : new String[][] {{"q", "g64"}, {"q", "g512"}, {"q", "g1m"}, {"q", "off"}, {"q", "t2"}, {"r", "a"}, {"r", "fine"}}) {
            assertEquals(sha(q, b[0], b[1]), sha(v, b[0], b[1]), b[0] + "/" + b[1]);
        }
        // the file child got the format's writes (data and metadata) past its size when the bitmap was made
        assertTrue(((Number) ((Map<?, ?>) ((List<?>) file).get(0)).get("count")).longValue() > 16 * MiB, file.toString());
    }

    /** vmm only: qemu-storage-daemon does not move a node that an export uses. */
    @Test
    void bitmapsRecordWhileTheNodeMovesUnderAWriter() throws Exception {
        Side v = start(Server.VMM, "--object", "iothread,id=io1", "--object", "iothread,id=io2");
        v.mon().ok("block-dirty-bitmap-add", "node", "r", "name", "m", "granularity", 4096);
        v.mon().ok("block-dirty-bitmap-add", "node", "r", "name", "c");
        Path log = v.dir().resolve("move.log");
        Path stop = v.dir().resolve("stop");
        Process w = background(new ProcessBuilder(python("bitmap_writer.py", v.uri("r"), log.toString(), stop.toString(), "7", "0"))
                .redirectError(v.dir().resolve("writer.err").toFile()).start());
        Thread.sleep(500);
        for (String to : List.of("io1", "io2", "main", "io1", "io2")) {
            v.mon().ok("x-blockdev-set-iothread", "node-name", "r", "iothread", to);
            Thread.sleep(150);
        }
        Files.createFile(stop);
        String out = new String(w.getInputStream().readAllBytes()).strip();
        if (w.waitFor() != 0) fail("writer failed: " + Files.readString(v.dir().resolve("writer.err")));
        List<long[]> ranges = ranges(log);
        assertEquals(out, String.valueOf(ranges.size()));
        assertTrue(ranges.size() > 10, "the writer wrote only " + ranges.size() + " requests");
        assertEquals(reference(4096, ranges), sha(v, "r", "m"));
        assertEquals(reference(64 << 10, ranges), sha(v, "r", "c"));
        long moves = v.mon().events.stream().filter(e -> e.get("event").equals("VMM_NODE_MOVED")).count();
        assertEquals(5, moves, v.mon().events.toString());
    }

    /**
     * vmm only (the same drained sections as a move): bitmap commands and transactions on a node
     * under an NBD writer while a mirror job's filter sits in front of it. Nothing hangs, the
     * bitmap saw every write, and after a cancel in the ready state the target equals the source.
     */
    @Test
    void bitmapCommandsDuringAMirrorUnderWrites() throws Exception {
        Path tgt = tmp.resolve("tgt.img");
        Run.cmd(Peers.require("qemu-img"), "create", "-q", "-f", "raw", tgt.toString(), String.valueOf(SIZE)).expect(0);
        Side v = start(Server.VMM, "--blockdev", "driver=file,node-name=tgt,filename=" + tgt);
        v.mon().ok("block-dirty-bitmap-add", "node", "r", "name", "m", "granularity", 4096);
        Path log = v.dir().resolve("mirror.log");
        Path stop = v.dir().resolve("stop-mirror");
        Process w = background(new ProcessBuilder(python("bitmap_writer.py", v.uri("r"), log.toString(), stop.toString(), "9", "0"))
                .redirectError(v.dir().resolve("writer-mirror.err").toFile()).start());
        Thread.sleep(300);
        v.mon().ok("blockdev-mirror", "job-id", "j", "device", "r", "target", "tgt", "sync", "full");
        for (int i = 0; i < 10; i++) {
            String x = "x" + i;
            v.mon().ok("transaction", "actions", List.of(args("type", "block-dirty-bitmap-add", "data", args("node", "r", "name", x)),
                    args("type", "block-dirty-bitmap-merge", "data", args("node", "r", "target", x, "bitmaps", List.of("m")))));
            v.mon().ok("block-dirty-bitmap-clear", "node", "r", "name", x);
            v.mon().ok("block-dirty-bitmap-disable", "node", "r", "name", x);
            v.mon().ok("block-dirty-bitmap-remove", "node", "r", "name", x);
            Thread.sleep(30);
        }
        v.mon().waitEvent("BLOCK_JOB_READY", 60_000);
        Files.createFile(stop);
        String out = new String(w.getInputStream().readAllBytes()).strip();
        if (w.waitFor() != 0) fail("writer failed: " + Files.readString(v.dir().resolve("writer-mirror.err")));
        v.mon().ok("block-job-cancel", "device", "j");
        v.mon().waitEvent("BLOCK_JOB_COMPLETED", 60_000);
        List<long[]> ranges = ranges(log);
        assertEquals(out, String.valueOf(ranges.size()));
        assertEquals(reference(4096, ranges), sha(v, "r", "m"));
        Run.cmd(Peers.require("qemu-img"), "compare", "-U", "-f", "raw", "-F", "raw", v.dir().resolve("r.raw").toString(), tgt.toString()).expect(0);
    }
}
