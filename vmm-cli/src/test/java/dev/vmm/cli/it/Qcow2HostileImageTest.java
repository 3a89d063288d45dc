package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.qmp.QmpClient;
import dev.vmm.cli.qmp.ShellSyntax;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Hostile qcow2 images: crafted headers and metadata, and a bounded byte-flip fuzz. Each image is
 * either refused with an error that names the problem, or served (its reads and writes may fail);
 * the daemon never crashes, never hangs, and keeps serving a healthy image next to it.
 *
 * <p>The crafted cases run against both servers (QEMU's messages are where the expected words
 * come from); the fuzz runs against vmm only ({@link Server#primary}): QEMU is allowed to differ.
 * Knobs: {@code -Dvmm.qcow2.fuzz.seeds=N} (default 50), {@code -Dvmm.qcow2.fuzz.seed=S},
 * {@code -Dvmm.qcow2.hostile.all=true} (every crafted case also at start-up, a server start each).
 */
@Timeout(300)
class Qcow2HostileImageTest extends PeerTestBase {

    /**
     * One crafted image. {@code refuse}: every server must refuse it (QEMU does; it would be wrong
     * to serve it); otherwise serving it is allowed too. {@code words}: what a refusal must mention.
     */
    record Crafted(String name, Path image, boolean refuse, Pattern words) {}

    private static Pattern words(String regex) {
        return Pattern.compile(regex, Pattern.CASE_INSENSITIVE);
    }

    /** A small real image: 4 MiB, 64 KiB clusters, data in the first 256 KiB and at 1 MiB. */
    static Path goodImage(Path file) {
        Qcow2Peers.create(file, "", 4 * MiB);
        Qcow2Peers.io("qcow2", file.toString(), List.of("write -P 0x11 0 256k", "write -P 0x22 1M 64k"));
        return file;
    }

    /** Copies {@code good} to {@code name}.qcow2 with big-endian values patched in. */
    private static Path patch(Path good, Path dir, String name, long... offsetSizeValue) throws IOException {
        byte[] b = Files.readAllBytes(good);
        ByteBuffer bb = ByteBuffer.wrap(b);
        for (int i = 0; i < offsetSizeValue.length; i += 3) {
            int off = (int) offsetSizeValue[i];
            switch ((int) offsetSizeValue[i + 1]) {
                case 4 -> bb.putInt(off, (int) offsetSizeValue[i + 2]);
                case 8 -> bb.putLong(off, offsetSizeValue[i + 2]);
                default -> throw new IllegalArgumentException("size");
            }
        }
        Path out = dir.resolve(name + ".qcow2");
        Files.write(out, b);
        return out;
    }

    /** The crafted cases (header field offsets from docs/interop/qcow2.txt). */
    static List<Crafted> crafted(Path dir) throws IOException {
        Path good = goodImage(dir.resolve("good.qcow2"));
        ByteBuffer h = ByteBuffer.wrap(Files.readAllBytes(good));
        long l1 = h.getLong(40);
        long l2 = h.getLong((int) l1) & 0x00fffffffffffe00L;
        long copied = 1L << 63; // QCOW_OFLAG_COPIED
        List<Crafted> c = new ArrayList<>();
        c.add(new Crafted("l1-past-eof", patch(good, dir, "l1-past-eof", 40, 8, 1L << 40), false, words("L1")));
        c.add(new Crafted("l1-size-huge", patch(good, dir, "l1-size-huge", 36, 4, 0x7fffffff), true, words("L1")));
        c.add(new Crafted("refcount-table-0", patch(good, dir, "refcount-table-0", 48, 8, 0), false, words("refcount|reference count")));
        c.add(new Crafted("l2-into-header", patch(good, dir, "l2-into-header", l2, 8, copied | 0x200), false, words("L2|offset|corrupt|align")));
        c.add(new Crafted("l2-onto-l1", patch(good, dir, "l2-onto-l1", l2, 8, copied | l1), false, words("L2|L1|overlap|corrupt|metadata")));
        c.add(new Crafted("unknown-incompatible", patch(good, dir, "unknown-incompatible", 72, 8, 1L << 40), true, words("incompatible|feature")));
        c.add(new Crafted("corrupt-bit-rw", patch(good, dir, "corrupt-bit-rw", 72, 8, 2), true, words("corrupt")));
        c.add(new Crafted("crypt-aes", patch(good, dir, "crypt-aes", 32, 4, 1), true, words("encrypt|cipher|AES")));
        c.add(new Crafted("cluster-bits-30", patch(good, dir, "cluster-bits-30", 20, 4, 30), true, words("cluster")));
        c.add(new Crafted("cluster-bits-8", patch(good, dir, "cluster-bits-8", 20, 4, 8), true, words("cluster")));
        c.add(new Crafted("version-4", patch(good, dir, "version-4", 4, 4, 4), true, words("version")));
        c.add(new Crafted("refcount-order-7", patch(good, dir, "refcount-order-7", 96, 4, 7), true, words("refcount|reference count")));
        c.add(new Crafted("size-huge", patch(good, dir, "size-huge", 24, 8, 1L << 62), true, words("big|large|size")));
        c.add(new Crafted("header-length-huge", patch(good, dir, "header-length-huge", 100, 4, 0x100000), true, words("header")));
        c.add(new Crafted("backing-past-eof", patch(good, dir, "backing-past-eof", 8, 8, 1L << 40, 16, 4, 100), true, words("backing")));
        c.add(new Crafted("snapshots-huge", patch(good, dir, "snapshots-huge", 60, 4, 0x7fffffff, 64, 8, l2 + 0x10000), false,
                words("snapshot")));
        Path luks = dir.resolve("luks.qcow2");
        Qcow2Peers.img("create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=123456",
                "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=100", luks.toString(), "4M");
        c.add(new Crafted("luks", luks, true, words("encrypt|cipher|LUKS|secret")));
        Path ext = dir.resolve("external-data.qcow2");
        Qcow2Peers.img("create", "-q", "-f", "qcow2", "-o", "data_file=" + dir.resolve("external-data.raw"), ext.toString(), "4M");
        c.add(new Crafted("external-data", ext, false, words("data.file|external")));
        return c;
    }

    /** The cases {@link #craftedImagesAreRefusedAtStartOrServedSafely} runs without {@code -Dvmm.qcow2.hostile.all=true}. */
    private static final java.util.Set<String> AT_START = java.util.Set.of("l1-size-huge", "unknown-incompatible", "corrupt-bit-rw",
            "luks", "refcount-order-7", "external-data", "l2-into-header");

    /** What happened to one image: refused (with the message) or served (with what its I/O did). */
    private record Outcome(boolean refused, String message) {}

    /** Reads the whole export and writes twice: any result is allowed except a hang (Run fails on a timeout). */
    private String exercise(String uri) throws IOException {
        Path out = tmp.resolve("exercise.raw");
        Run.Result r = Run.cmd(Qcow2Peers.qemuImg(), "convert", "-f", "raw", "-O", "raw", uri, out.toString()).timeoutSeconds(60).expectAny();
        Files.deleteIfExists(out);
        Run.Result w = Run.cmd(Qcow2Peers.qemuIo(), "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "write -P 0x5b 1M 4k",
                "-c", "read 0 4M", "-c", "flush", uri).timeoutSeconds(60).expectAny();
        return "read exit " + r.exit() + ", write exit " + w.exit() + firstLine(r.stderr() + w.stdout().replaceAll("(?m)^(wrote|read|[0-9.]+ [KM]iB).*\n", ""));
    }

    private static String tail(String s, int lines) {
        List<String> l = s.lines().toList();
        return String.join("\n", l.subList(Math.max(0, l.size() - lines), l.size()));
    }

    private static String firstLine(String s) {
        String t = s.strip();
        return t.isEmpty() ? "" : ": " + t.lines().findFirst().orElse("");
    }

    /** A refusal's message must be short, name the problem, and carry no Java stack trace. */
    private static void judgeRefusal(Crafted c, String message, List<String> wrong) {
        if (message.contains("\tat ") || message.contains("Exception in thread") || message.contains("Caused by")) {
            wrong.add(c.name() + ": a stack trace instead of a message:\n" + message);
        } else if (!c.words().matcher(message).find()) {
            wrong.add(c.name() + ": the message does not name the problem (" + c.words() + "): " + message.strip());
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void craftedImagesAreRefusedAtStartOrServedSafely(Server server) throws Exception {
        // A server start per case is slow for a JVM: by default a few cases cover the start-up
        // path (refusals of several kinds and one served image); the QMP test below runs them all.
        boolean all = Boolean.getBoolean("vmm.qcow2.hostile.all");
        List<Crafted> cases = crafted(tmp).stream().filter(c -> all || AT_START.contains(c.name())).toList();
        Path sock = socketDir().resolve("nbd.sock");
        List<String> wrong = new ArrayList<>();
        Map<String, Outcome> outcomes = new LinkedHashMap<>();
        for (Crafted c : cases) {
            List<String> args = new ArrayList<>(List.of("--nbd-server", Net.unixServer(sock)));
            args.addAll(Qcow2Peers.qcow2Blockdev("d0", c.image(), ""));
            args.addAll(Qcow2Peers.nbdExport("d0", true, ""));
            VmmProcess p = serveOrExit(server, args);
            if (!p.isAlive() && p.pidFromFile() <= 0) {
                String msg = p.stderr();
                outcomes.put(c.name(), new Outcome(true, msg.strip()));
                if (p.exitCode() == 0) wrong.add(c.name() + ": refused with exit code 0");
                if (p.exitCode() > 128 || p.exitCode() < 0) wrong.add(c.name() + ": the server crashed (exit " + p.exitCode() + "):\n" + msg);
                judgeRefusal(c, msg, wrong);
                continue;
            }
            if (c.refuse()) wrong.add(c.name() + ": served, but QEMU refuses this image and so must every server");
            String io = exercise(Net.unixUri(sock, "d0"));
            outcomes.put(c.name(), new Outcome(false, io));
            if (!p.isAlive()) {
                wrong.add(c.name() + ": the server died serving it (exit " + p.exitCode() + "):\n" + p.stderr());
            } else {
                int code = p.stop();
                if (code != 0) wrong.add(c.name() + ": exit code " + code + " after SIGTERM:\n" + p.stderr());
            }
        }
        outcomes.forEach((n, o) -> System.out.printf("[qcow2] %s %s: %s %s%n", server, n, o.refused() ? "refused:" : "served,", o.message()));
        assertTrue(wrong.isEmpty(), String.join("\n", wrong));
    }

    /** A QMP monitor and a healthy qcow2 export; the hostile images come and go through QMP. */
    private record Daemon(VmmProcess process, QmpClient qmp, Path nbd, Path healthy, String healthySha) {}

    private Daemon daemonWithHealthyExport(Server server) throws IOException {
        Path dir = socketDir();
        Path mon = dir.resolve("qmp.sock");
        Path nbd = dir.resolve("nbd.sock");
        Path healthy = goodImage(tmp.resolve("healthy.qcow2"));
        String sha = Images.sha256(Qcow2Peers.toRaw("qcow2", healthy.toString(), tmp.resolve("healthy.raw")));
        List<String> args = new ArrayList<>(List.of("--chardev", "socket,id=m,path=" + mon + ",server=on,wait=off",
                "--monitor", "chardev=m", "--nbd-server", Net.unixServer(nbd)));
        args.addAll(Qcow2Peers.qcow2Blockdev("healthy", healthy, "read-only=on"));
        args.addAll(Qcow2Peers.nbdExport("healthy", false, ""));
        VmmProcess p = serve(server, args);
        for (int i = 0; i < 200 && !Files.exists(mon); i++) VmmProcess.sleep(25);
        return new Daemon(p, closeLater(QmpClient.connect(mon)), nbd, healthy, sha);
    }

    private static Map<String, Object> qmp(Daemon d, String command, Map<String, Object> arguments) throws IOException {
        try {
            return d.qmp().execute(new ShellSyntax.Request(command, arguments));
        } catch (IOException e) {
            d.process().assertAlive();
            throw e;
        }
    }

    private static String error(Map<String, Object> reply) {
        if (!reply.containsKey("error")) return null;
        Object e = reply.get("error");
        return e instanceof Map<?, ?> m ? String.valueOf(m.get("desc")) : String.valueOf(e);
    }

    /** The daemon still answers QMP and still serves the healthy image, byte for byte. */
    private void assertHealthy(Daemon d, String after) throws IOException {
        d.process().assertAlive();
        Map<String, Object> r = qmp(d, "query-named-block-nodes", Map.of());
        assertTrue(r.containsKey("return") && String.valueOf(r.get("return")).contains("healthy"), after + ": query-named-block-nodes: " + r);
        Path out = tmp.resolve("healthy.check.raw");
        Qcow2Peers.toRaw("raw", Net.unixUri(d.nbd(), "healthy"), out);
        assertEquals(d.healthySha(), Images.sha256(out), after + ": the healthy export reads differently");
        Files.delete(out);
    }

    /**
     * blockdev-add of {@code image} (a qcow2 node over a nested file node); if accepted, exports
     * it, exercises it, and removes it again. Returns the refusal message, or null if served.
     */
    private String addServeRemove(Daemon d, String node, String label, Path image, boolean writable, List<String> log) throws IOException {
        Map<String, Object> file = new LinkedHashMap<>();
        file.put("driver", "file");
        file.put("filename", image.toString());
        Map<String, Object> add = new LinkedHashMap<>();
        add.put("driver", "qcow2");
        add.put("node-name", node);
        add.put("read-only", !writable);
        add.put("file", file);
        String err = error(qmp(d, "blockdev-add", add));
        if (err != null) return err;
        Map<String, Object> exp = new LinkedHashMap<>();
        exp.put("type", "nbd");
        exp.put("id", "e-" + node);
        exp.put("node-name", node);
        exp.put("writable", writable);
        String expErr = error(qmp(d, "block-export-add", exp));
        if (expErr == null) {
            log.add(node + " " + label + ": served, " + exercise(Net.unixUri(d.nbd(), node)));
            // The clients have exited, but the server may not have seen their sockets close yet:
            // block-export-del (mode=safe) refuses an export in use, so ask again for a while.
            String delErr = null;
            for (int i = 0; i < 200; i++) {
                delErr = error(qmp(d, "block-export-del", Map.of("id", "e-" + node)));
                if (delErr == null || !delErr.contains("in use")) break;
                VmmProcess.sleep(25);
            }
            if (delErr != null) log.add(node + ": block-export-del: " + delErr);
            waitForExportGone(d, "e-" + node);
        } else {
            log.add(node + ": blockdev-add accepted, block-export-add refused: " + expErr);
        }
        String bdErr = error(qmp(d, "blockdev-del", Map.of("node-name", node)));
        if (bdErr != null) fail(node + ": blockdev-del refused: " + bdErr);
        return null;
    }

    /** block-export-del returns before the export is gone (clients may still be connected). */
    private static void waitForExportGone(Daemon d, String id) throws IOException {
        for (int i = 0; i < 200; i++) {
            Map<String, Object> r = qmp(d, "query-block-exports", Map.of());
            if (!String.valueOf(r.get("return")).contains(id)) return;
            VmmProcess.sleep(25);
        }
        fail("export " + id + " still listed 5 s after block-export-del");
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void craftedImagesThroughQmpLeaveTheDaemonServing(Server server) throws Exception {
        List<Crafted> cases = crafted(tmp);
        Daemon d = daemonWithHealthyExport(server);
        List<String> wrong = new ArrayList<>();
        List<String> log = new ArrayList<>();
        int n = 0;
        for (Crafted c : cases) {
            String node = "h" + n++;
            String err = addServeRemove(d, node, c.name(), c.image(), true, log);
            if (err != null) {
                log.add(node + " " + c.name() + ": refused: " + err);
                judgeRefusal(c, err, wrong);
            } else if (c.refuse()) {
                wrong.add(c.name() + ": blockdev-add accepted it, but QEMU refuses this image and so must every server");
            }
            assertHealthy(d, c.name());
        }
        log.forEach(l -> System.out.println("[qcow2] " + server + " qmp " + l));
        assertTrue(wrong.isEmpty(), String.join("\n", wrong));
        assertEquals(0, d.process().stop(), d.process().stderr());
    }

    /**
     * Byte flips in the metadata of a small real image (header, refcount table and block, L1,
     * L2: the first clusters), each added through QMP to one daemon: refused or served, never a
     * dead or hung daemon, and the healthy export unharmed.
     */
    @Test
    void byteFlipFuzzIntoOneDaemon() throws Exception {
        Server server = Server.primary();
        int seeds = Integer.getInteger("vmm.qcow2.fuzz.seeds", 50);
        long seed0 = Long.getLong("vmm.qcow2.fuzz.seed", System.nanoTime());
        System.out.printf("[qcow2] %s fuzz: %d images from seed %d (-Dvmm.qcow2.fuzz.seed=%d to repeat)%n", server, seeds, seed0, seed0);
        Path good = goodImage(tmp.resolve("fuzz-good.qcow2"));
        byte[] orig = Files.readAllBytes(good);
        int metadataEnd = (int) Math.min(orig.length, 0x50000); // header, refcount table + block, L1, L2 of this layout
        Daemon d = daemonWithHealthyExport(server);
        int refused = 0;
        int served = 0;
        List<String> log = new ArrayList<>();
        for (int i = 0; i < seeds; i++) {
            long seed = seed0 + i;
            Random rnd = new Random(seed);
            byte[] b = orig.clone();
            int flips = 1 + rnd.nextInt(8);
            for (int f = 0; f < flips; f++) {
                // half of the flips in the header (the densest metadata), the rest anywhere in it
                int at = rnd.nextBoolean() ? rnd.nextInt(112) : rnd.nextInt(metadataEnd);
                b[at] ^= (byte) (1 << rnd.nextInt(8));
            }
            Path img = tmp.resolve("fuzz.qcow2");
            Files.write(img, b);
            String err;
            try {
                err = addServeRemove(d, "z" + i, "seed " + seed, img, rnd.nextBoolean(), log);
            } catch (AssertionError | IOException e) {
                Path keep = tmp.resolve("fuzz-seed-" + seed + ".qcow2");
                Files.copy(img, keep, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                throw new AssertionError("fuzz seed " + seed + " (-Dvmm.qcow2.fuzz.seed=" + seed + " -Dvmm.qcow2.fuzz.seeds=1): " + e.getMessage()
                        + "\nlast step: " + (log.isEmpty() ? "-" : log.get(log.size() - 1))
                        + "\n--- server stderr (tail) ---\n" + tail(d.process().stderr(), 30), e);
            }
            if (err != null) {
                refused++;
                if (err.contains("\tat ") || err.contains("Exception")) fail("fuzz seed " + seed + ": a stack trace as the error: " + err);
            } else {
                served++;
            }
            try {
                assertHealthy(d, "fuzz seed " + seed);
            } catch (AssertionError e) {
                throw new AssertionError(e.getMessage() + "\n--- server stderr (tail) ---\n" + tail(d.process().stderr(), 30), e);
            }
        }
        System.out.printf("[qcow2] %s fuzz: %d refused, %d served%n", server, refused, served);
        assertEquals(0, d.process().stop(), d.process().stderr());
    }
}
