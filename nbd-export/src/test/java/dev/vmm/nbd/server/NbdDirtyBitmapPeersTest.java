package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.json.Json;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.testing.QsdPeer;
import dev.vmm.core.testing.Tools;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code qemu:dirty-bitmap:NAME} side by side with qemu-storage-daemon 7.2: the same qcow2
 * images, with persistent bitmaps made by {@code qemu-img bitmap} and dirtied by {@code qemu-io}
 * writes, exported by vmm and by QSD with {@code bitmaps.N=}; {@code nbdinfo --map}, {@code
 * nbdinfo --json}'s context list, {@code qemu-img map} over NBD with {@code x-dirty-bitmap} and
 * python3-libnbd's raw {@code block_status} (REQ_ONE, several contexts at once, odd ranges) must
 * print the same bytes from both. Then QSD's errors: not found, busy, inconsistent, enabled
 * bitmap of a writable node on a read-only export, bad option type.
 */
class NbdDirtyBitmapPeersTest {
    @TempDir Path dir;
    Daemon daemon;
    Path vmmSock;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        vmmSock = dir.resolve("vmm.sock");
        NbdServerComponent.configure(daemon, KeyValueParser.parse("--nbd-server", "addr.type=unix,addr.path=" + vmmSock, null)).start();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    static String run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        p.getOutputStream().close();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "timed out: " + String.join(" ", cmd));
        assertEquals(0, p.exitValue(), String.join(" ", cmd) + ":\n" + out);
        return out;
    }

    static String img() { return Tools.require("qemu-img", "qemu-utils"); }

    /** qemu-io writes ("OFFSET LENGTH" each) into a qcow2 image: enabled persistent bitmaps record them. */
    static void write(Path image, String... writes) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(Tools.require("qemu-io", "qemu-utils"), "-f", "qcow2"));
        for (String w : writes) cmd.addAll(List.of("-c", "write -q " + w));
        cmd.add(image.toString());
        run(cmd.toArray(String[]::new));
    }

    /**
     * A 64 MiB + 1536 B image (not a multiple of any granularity) with bitmaps of granularity
     * 512 B, 4 KiB, 64 KiB and 1 MiB, dirtied by odd writes (the last reaching the end), plus a
     * bitmap disabled after the first writes (it keeps their bits only).
     */
    Path image() throws Exception {
        Path p = dir.resolve("a.qcow2");
        run(img(), "create", "-q", "-f", "qcow2", p.toString(), String.valueOf((64L << 20) + 1536));
        run(img(), "bitmap", "--add", "-g", "512", p.toString(), "g512");
        run(img(), "bitmap", "--add", "-g", "4096", p.toString(), "g4k");
        run(img(), "bitmap", "--add", "-g", "65536", p.toString(), "g64k");
        run(img(), "bitmap", "--add", "-g", "1M", p.toString(), "g1m");
        run(img(), "bitmap", "--add", "-g", "65536", p.toString(), "off");
        write(p, "0 1", "4095 2", "1M 100k", "7000k 3k");
        run(img(), "bitmap", "--disable", p.toString(), "off");
        write(p, "20M 1536", "33M 2M", String.valueOf(64L << 20) + " 1536", "50000k 512");
        return p;
    }

    static final String[] BITMAPS = {"g512", "g4k", "g64k", "g1m", "off"};

    static String exportBitmaps() {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < BITMAPS.length; i++) sb.append(",bitmaps.").append(i).append('=').append(BITMAPS[i]);
        return sb.toString();
    }

    /** Each peer's output of the same client commands, vmm first. */
    record Outputs(List<String> vmm, List<String> qsd) {}

    interface Client {
        List<String> run(Path sock, String export) throws Exception;
    }

    /** Exports {@code image} read-only (its overlay chain opened read-only too) from both peers as "x" and runs {@code client} on each. */
    Outputs both(Path image, String bitmaps, Client client) throws Exception {
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + image, null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=q,name=x" + bitmaps, "type"));
        List<String> ours = client.run(vmmSock, "x");
        List<String> theirs;
        try (QsdPeer qsd = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + image + ",read-only=on",
                "--blockdev", "qcow2,node-name=q,file=f,read-only=on", "--export", "type=nbd,id=e,node-name=q,name=x" + bitmaps)) {
            theirs = client.run(qsd.nbdSocket(), "x");
        }
        return new Outputs(ours, theirs);
    }

    static String uri(Path sock, String export) {
        return "nbd+unix:///" + export + "?socket=" + sock;
    }

    static void assertSame(Outputs o) {
        assertEquals(o.qsd().size(), o.vmm().size());
        for (int i = 0; i < o.qsd().size(); i++) assertEquals(o.qsd().get(i), o.vmm().get(i), "output " + i + " differs from qemu-storage-daemon's");
    }

    @Test
    void nbdinfoMapsEqualQsds() throws Exception {
        String nbdinfo = Tools.require("nbdinfo", "libnbd-bin");
        Outputs o = both(image(), exportBitmaps(), (sock, e) -> {
            List<String> out = new ArrayList<>();
            for (String b : BITMAPS) out.add(run(nbdinfo, "--map=qemu:dirty-bitmap:" + b, uri(sock, e)));
            out.add(run(nbdinfo, "--map=qemu:dirty-bitmap:g4k", "--totals", uri(sock, e)));
            return out;
        });
        assertSame(o);
        assertTrue(o.vmm().get(0).contains("dirty"), o.vmm().get(0));
        assertTrue(o.vmm().get(4).contains("dirty"), "the disabled bitmap keeps its bits: " + o.vmm().get(4));
    }

    @Test
    @SuppressWarnings("unchecked")
    void contextListsEqualQsds() throws Exception {
        String nbdinfo = Tools.require("nbdinfo", "libnbd-bin");
        Outputs o = both(image(), exportBitmaps() + ",allocation-depth=on", (sock, e) -> {
            Map<String, Object> info = (Map<String, Object>) Json.parse(run(nbdinfo, "--json", uri(sock, e)));
            Map<String, Object> export = (Map<String, Object>) ((List<Object>) info.get("exports")).get(0);
            return List.of(Json.write(export.get("contexts")), run(nbdinfo, "--list", "--content", uri(sock, "")).lines()
                    .filter(l -> l.contains(":")).filter(l -> l.contains("base:") || l.contains("qemu:")).toList().toString());
        });
        assertSame(o);
        assertTrue(o.vmm().get(0).contains("qemu:dirty-bitmap:g64k"), o.vmm().get(0));
    }

    @Test
    void qemuImgMapWithXDirtyBitmapEqualsQsds() throws Exception {
        Outputs o = both(image(), exportBitmaps(), (sock, e) -> {
            List<String> out = new ArrayList<>();
            for (String b : new String[] {"g512", "g1m", "off"}) {
                out.add(run(img(), "map", "--output=json", "--image-opts",
                        "driver=nbd,server.type=unix,server.path=" + sock + ",export=" + e + ",x-dirty-bitmap=qemu:dirty-bitmap:" + b));
            }
            return out;
        });
        assertSame(o);
    }

    /** Raw block_status through python3-libnbd: every chunk, unmerged, for odd ranges, with and without REQ_ONE. */
    static final String LIBNBD_SCRIPT = String.join("\n",
            "import nbd, sys",
            "h = nbd.NBD()",
            "for c in sys.argv[2:]: h.add_meta_context(c)",
            "h.connect_uri(sys.argv[1])",
            "size = h.get_size()",
            "out = []",
            "def cb(ctx, off, entries, err):",
            "    out.append('%s %d %s' % (ctx, off, list(entries)))",
            "    return 0",
            "for off, ln in [(0, size), (1, 5000), (4095, 2), (20 << 20, 1 << 20), (size - 3000, 3000), (33 << 20, 1), ((33 << 20) - 1, 2)]:",
            "    if off + ln > size: continue",
            "    for flags in [0, nbd.CMD_FLAG_REQ_ONE]:",
            "        out.append('-- %d %d %d' % (off, ln, flags))",
            "        h.block_status(ln, off, cb, flags)",
            "print('\\n'.join(out))",
            "");

    static String python(String... args) throws Exception {
        // Debian's python3: python3-libnbd installs its module there, not for other interpreters on PATH
        if (!Files.isExecutable(Path.of("/usr/bin/python3"))) Tools.missing("/usr/bin/python3", "python3");
        List<String> cmd = new ArrayList<>(List.of("/usr/bin/python3", "-c", LIBNBD_SCRIPT));
        cmd.addAll(List.of(args));
        try {
            return run(cmd.toArray(String[]::new));
        } catch (AssertionError e) {
            if (e.getMessage().contains("No module named 'nbd'")) Tools.missing("python3 module nbd", "python3-libnbd");
            throw e;
        }
    }

    @Test
    void libnbdBlockStatusEqualsQsdsWithReqOneAndSeveralContexts() throws Exception {
        Outputs o = both(image(), exportBitmaps(), (sock, e) -> List.of(
                python(uri(sock, e), "qemu:dirty-bitmap:g512", "qemu:dirty-bitmap:g1m", "qemu:dirty-bitmap:off", "qemu:dirty-bitmap:g4k"),
                python(uri(sock, e), "qemu:dirty-bitmap:g64k")));
        assertSame(o);
        assertTrue(o.vmm().get(0).contains("qemu:dirty-bitmap:g1m 0 ["), o.vmm().get(0));
    }

    @Test
    void fragmentedBitmapSplitsWhereQsdsDoes() throws Exception {
        // 3000 dirty runs of 512 B: more descriptors than base:allocation's 2048 per chunk
        Path p = dir.resolve("frag.qcow2");
        run(img(), "create", "-q", "-f", "qcow2", p.toString(), "8M");
        run(img(), "bitmap", "--add", "-g", "512", p.toString(), "frag");
        Path script = dir.resolve("writes");
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 3000; i++) sb.append("write -q ").append(i * 2048).append(" 512\n");
        Files.writeString(script, sb);
        Process io = new ProcessBuilder(Tools.require("qemu-io", "qemu-utils"), "-f", "qcow2", p.toString())
                .redirectInput(script.toFile()).redirectErrorStream(true).start();
        io.getInputStream().readAllBytes();
        assertEquals(0, io.waitFor());
        Outputs o = both(p, ",bitmaps.0=frag", (sock, e) -> List.of(python(uri(sock, e), "qemu:dirty-bitmap:frag")));
        assertSame(o);
    }

    @Test
    void overlayExportsABitmapOfItsBackingNode() throws Exception {
        Path base = dir.resolve("base.qcow2");
        run(img(), "create", "-q", "-f", "qcow2", base.toString(), "32M");
        run(img(), "bitmap", "--add", "-g", "4096", base.toString(), "inbase");
        write(base, "1M 64k", "30M 5k");
        Path overlay = dir.resolve("overlay.qcow2");
        run(img(), "create", "-q", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", overlay.toString(), "48M");
        String nbdinfo = Tools.require("nbdinfo", "libnbd-bin");
        Outputs o = both(overlay, ",bitmaps.0=inbase", (sock, e) -> List.of(
                run(nbdinfo, "--map=qemu:dirty-bitmap:inbase", uri(sock, e)), python(uri(sock, e), "qemu:dirty-bitmap:inbase")));
        assertSame(o);
        assertTrue(o.vmm().get(0).contains("dirty"), o.vmm().get(0));
    }

    /** Asks the same block_status questions 40 times; every round must answer as the first. */
    static final String LIBNBD_LOOP = String.join("\n",
            "import nbd, sys",
            "h = nbd.NBD()",
            "for c in sys.argv[2:]: h.add_meta_context(c)",
            "h.connect_uri(sys.argv[1])",
            "size = h.get_size()",
            "first = None",
            "for rnd in range(40):",
            "    out = []",
            "    def cb(ctx, off, entries, err):",
            "        out.append('%s %d %s' % (ctx, off, list(entries)))",
            "        return 0",
            "    for off, ln in [(0, size), (4095, 2), (33 << 20, 1 << 20)]:",
            "        for flags in [0, nbd.CMD_FLAG_REQ_ONE]:",
            "            h.block_status(ln, off, cb, flags)",
            "    if first is None: first = out",
            "    assert out == first, 'round %d differs' % rnd",
            "print('\\n'.join(first))",
            "");

    @Test
    void blockStatusFollowsTheNodeAcrossIOThreadMoves() throws Exception {
        daemon.addIOThread("iot0");
        daemon.addIOThread("iot1");
        Path p = image();
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + p, null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=q,name=x,iothread=iot0" + exportBitmaps(), "type"));
        python(uri(vmmSock, "x"), "qemu:dirty-bitmap:g4k"); // python3-libnbd is there
        Process client = new ProcessBuilder("/usr/bin/python3", "-c", LIBNBD_LOOP, uri(vmmSock, "x"), "qemu:dirty-bitmap:g4k", "qemu:dirty-bitmap:off")
                .redirectErrorStream(true).start();
        int moves = 0;
        while (client.isAlive() && moves < 400) {
            daemon.moveNode("q", moves % 2 == 0 ? "iot1" : "iot0").get(10, TimeUnit.SECONDS);
            moves++;
        }
        String out = new String(client.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(client.waitFor(60, TimeUnit.SECONDS));
        assertEquals(0, client.exitValue(), out);
        assertTrue(moves >= 2, "moves while the client asked: " + moves);
        // and the answers were right: those of a client on a node that stays put
        Process still = new ProcessBuilder("/usr/bin/python3", "-c", LIBNBD_LOOP.replace("range(40)", "range(1)"), uri(vmmSock, "x"),
                "qemu:dirty-bitmap:g4k", "qemu:dirty-bitmap:off").redirectErrorStream(true).start();
        String once = new String(still.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, still.waitFor());
        assertEquals(once, out);
        assertTrue(out.contains("qemu:dirty-bitmap:off 0 ["), out);
    }

    // ---- errors, in QSD's words ----

    /** QSD's error for {@code --export ...,EXTRA} on a fresh copy of {@code image} opened writable unless {@code ro}. */
    String qsdError(Path image, boolean ro, String extra) throws Exception {
        String roOpt = ro ? ",read-only=on" : "";
        String export = "type=nbd,id=e,node-name=q" + extra;
        Process p = new ProcessBuilder(Tools.require("qemu-storage-daemon", "qemu-system-common"),
                "--blockdev", "driver=file,node-name=f,filename=" + image + roOpt, "--blockdev", "driver=qcow2,node-name=q,file=f" + roOpt,
                "--nbd-server", "addr.type=unix,addr.path=" + dir.resolve("qsd-err.sock"),
                "--export", export).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).strip();
        assertTrue(p.waitFor(20, TimeUnit.SECONDS));
        assertEquals(1, p.exitValue(), out);
        String prefix = "qemu-storage-daemon: --export " + export + ": ";
        assertTrue(out.startsWith(prefix), out);
        return out.substring(prefix.length());
    }

    String vmmError(String extra) {
        Exception e = assertThrows(Exception.class, () ->
                daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=q" + extra, "type")));
        return e instanceof OptionException oe ? oe.detail() : e.getMessage();
    }

    @Test
    void refusalsSayWhatQsdSays() throws Exception {
        Path p = dir.resolve("e.qcow2");
        run(img(), "create", "-q", "-f", "qcow2", p.toString(), "16M");
        run(img(), "bitmap", "--add", p.toString(), "on");
        Path copy = dir.resolve("copy.qcow2");
        Files.copy(p, copy);
        // not found, and the bad type of a plain bitmaps=NAME (read-only: QSD's failed start leaves the image as it was)
        assertEquals("Bitmap 'nope' is not found", qsdError(copy, true, ",bitmaps.0=nope"));
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + p, null));
        assertEquals("Bitmap 'nope' is not found", vmmError(",bitmaps.0=nope"));
        assertEquals(qsdError(copy, true, ",bitmaps=on"), vmmError(",bitmaps=on"));
        // busy: a second export of the same bitmap, until the first is removed
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e1,node-name=q,name=one,bitmaps.0=on", "type"));
        DirtyBitmap on = daemon.node("q").dirtyBitmaps().get(0);
        assertTrue(on.busy());
        assertEquals("Bitmap 'on' is currently in use by another operation and cannot be used", vmmError(",name=two,bitmaps.0=on"));
        daemon.exportDel("e1", true);
        assertFalse(on.busy(), "released at export removal");
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e2,node-name=q,name=two,bitmaps.0=on,bitmaps.1=on", "type"));
        daemon.exportDel("e2", true);
        assertFalse(on.busy());
    }

    @Test
    void inconsistentAndEnabledOnWritableNodeAreRefusedAsByQsd() throws Exception {
        Path p = dir.resolve("i.qcow2");
        run(img(), "create", "-q", "-f", "qcow2", p.toString(), "16M");
        run(img(), "bitmap", "--add", p.toString(), "crashed");
        // a bitmap left in_use by a daemon killed while it had the image open writable
        new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + p, "--blockdev", "qcow2,node-name=q,file=f").kill();
        assertEquals("Bitmap 'crashed' is inconsistent and cannot be used", qsdError(p, true, ",bitmaps.0=crashed"));
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + p, null));
        assertEquals("Bitmap 'crashed' is inconsistent and cannot be used", vmmError(",bitmaps.0=crashed"));

        // an enabled bitmap of a writable node: QSD refuses it for a read-only export
        Path w = dir.resolve("w.qcow2");
        run(img(), "create", "-q", "-f", "qcow2", w.toString(), "16M");
        run(img(), "bitmap", "--add", w.toString(), "live");
        assertEquals("Enabled bitmap 'live' incompatible with readonly export", qsdError(w, false, ",bitmaps.0=live"));
        try (var f = new java.io.RandomAccessFile(dir.resolve("w.raw").toFile(), "rw")) {
            f.setLength(16 << 20);
        }
        BlockNode raw = daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=wf,filename=" + dir.resolve("w.raw"), null));
        raw.addDirtyBitmap(new DirtyBitmap("live", raw.size(), 65536)); // recording, as block-dirty-bitmap-add makes it
        Exception e = assertThrows(Exception.class, () ->
                daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=wf,bitmaps.0=live", "type")));
        assertEquals("Enabled bitmap 'live' incompatible with readonly export", ((OptionException) e).detail());
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=wf,writable=on,bitmaps.0=live", "type"));
    }
}
