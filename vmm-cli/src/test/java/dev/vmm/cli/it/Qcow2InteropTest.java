package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * qcow2 images made by qemu-img (see {@link Qcow2Images}: v2 and v3, clusters of 512 B to 2 MiB,
 * extended L2, compressed clusters, a backing chain three deep, internal snapshots) served over
 * NBD by one daemon: every export reads back (qemu-img convert, nbdcopy) exactly what
 * {@code qemu-img convert -O raw} of the file gives, and {@code qemu-img compare} agrees. Block
 * status (base:allocation through nbdinfo and qemu-img map; qemu:allocation-depth) never claims
 * zeros or holes over data, and is the same as {@code qemu-img map} of the file: three tests, so
 * that a wrong answer and a missing hint are told apart.
 *
 * <p>Parameterized over the {@link Server}: what passes on qemu-storage-daemon and fails on vmm
 * is vmm's fault.
 */
@Timeout(300)
class Qcow2InteropTest extends PeerTestBase {

    /** The socket, the images being served on it, and why the others were refused. */
    private record Serving(Path sock, List<Qcow2Images.Served> images, List<String> refused) {}

    private List<String> args(Path sock, List<Qcow2Images.Served> images, String exportExtra) {
        List<String> args = new ArrayList<>(List.of("--nbd-server", Net.unixServer(sock)));
        for (Qcow2Images.Served s : images) {
            args.addAll(s.blockdev());
            args.addAll(Qcow2Peers.nbdExport(s.name(), false, exportExtra));
        }
        return args;
    }

    /**
     * Serves every image read-only on one unix socket. If the server refuses to start, each image
     * is tried alone so that one refused image does not hide what the others do: the refused
     * ones are listed (and fail the test), the rest are served.
     */
    private Serving serveAll(Server server, List<Qcow2Images.Served> images, String exportExtra) {
        Path sock = socketDir().resolve("nbd.sock");
        Map<String, String> known = REFUSED.get(server);
        if (known == null) {
            VmmProcess p = serveOrExit(server, args(sock, images, exportExtra));
            if (p.isAlive()) {
                REFUSED.put(server, Map.of());
                return new Serving(sock, images, List.of());
            }
            known = new java.util.LinkedHashMap<>();
            for (Qcow2Images.Served s : images) {
                Path alone = socketDir().resolve("nbd.sock");
                VmmProcess one = serveOrExit(server, args(alone, List.of(s), exportExtra));
                if (one.isAlive()) {
                    one.stop();
                } else {
                    known.put(s.name(), s.name() + ": refused to serve it (exit " + one.exitCode() + "): " + one.stderr().strip());
                }
            }
            REFUSED.put(server, known);
        }
        Map<String, String> refused = known;
        List<Qcow2Images.Served> ok = images.stream().filter(s -> !refused.containsKey(s.name())).toList();
        if (!ok.isEmpty()) serve(server, args(sock, ok, exportExtra));
        return new Serving(sock, ok, List.copyOf(refused.values()));
    }

    /** Per server, the images it refused to serve (learned once per run: each try is a server start). */
    private static final Map<Server, Map<String, String>> REFUSED = new java.util.concurrent.ConcurrentHashMap<>();

    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void everyImageReadsBackAsQemuImgSeesIt(Server server) throws Exception {
        List<Qcow2Images.Served> images = Qcow2Images.build(tmp);
        Serving serving = serveAll(server, images, "");
        Path sock = serving.sock();
        String nbdcopy = Peers.require("nbdcopy");
        List<String> wrong = new ArrayList<>(serving.refused());
        for (Qcow2Images.Served s : serving.images()) {
            String uri = Net.unixUri(sock, s.name());
            Path want = Qcow2Peers.toRaw("qcow2", s.image().toString(), tmp.resolve(s.name() + ".want.raw"));
            Path got = Qcow2Peers.toRaw("raw", uri, tmp.resolve(s.name() + ".got.raw"));
            if (Files.size(got) != Files.size(want)) {
                wrong.add(s.name() + ": size " + Files.size(got) + ", want " + Files.size(want));
            } else if (!Images.sha256(got).equals(Images.sha256(want))) {
                wrong.add(s.name() + ": " + firstDifference(got, want));
            } else {
                Qcow2Peers.compareIdentical(uri, s.image());
                // nbdcopy: several connections if the export allows, and block status to skip holes
                Path copied = tmp.resolve(s.name() + ".nbdcopy.raw");
                Run.cmd(nbdcopy, uri, copied.toString()).timeoutSeconds(120).expect(0);
                if (!Images.sha256(copied).equals(Images.sha256(want))) wrong.add(s.name() + " via nbdcopy: " + firstDifference(copied, want));
                Files.delete(copied);
            }
            Files.delete(got);
            Files.delete(want);
        }
        assertEquals(List.of(), wrong, "exports that read differently from qemu-img convert of the file");
    }

    /** What the file says (qemu-img map) and what the server says, per image. */
    private record Answers(String image, List<Extent> fileStatus, List<Extent> qemuImgOverNbd, List<Extent> nbdinfoMap,
                           List<Extent> fileDepth, List<Extent> nbdinfoDepth, String refused) {}

    /** Serves every image with allocation-depth=on and asks the file and the server. */
    private List<Answers> answers(Server server) {
        List<Qcow2Images.Served> images = Qcow2Images.build(tmp);
        Serving serving = serveAll(server, images, "allocation-depth=on");
        Path sock = serving.sock();
        String nbdinfo = Peers.require("nbdinfo");
        List<Answers> out = new ArrayList<>();
        java.util.Set<Long> statuses = new java.util.TreeSet<>();
        java.util.Set<Long> depths = new java.util.TreeSet<>();
        for (Qcow2Images.Served s : serving.images()) {
            String uri = Net.unixUri(sock, s.name());
            List<Map<String, Object>> fileMap = Qcow2Peers.map("qcow2", s.image().toString());
            List<Extent> want = Extent.merge(fileMap.stream().map(Extent::status).toList());
            List<Extent> viaQemuImg = Extent.merge(Qcow2Peers.map("raw", uri).stream().map(Extent::status).toList());
            List<Extent> viaNbdinfo = Extent.merge(Extent.parseNbdinfo(Run.cmd(nbdinfo, "--map", uri).expect(0).stdout(), true));
            // qemu:allocation-depth: 0 unallocated, 1 this image, n the (n-1)-th backing file
            List<Extent> wantDepth = Extent.merge(fileMap.stream().map(Extent::depth).toList());
            List<Extent> viaDepth = Extent.merge(Extent.parseNbdinfo(
                    Run.cmd(nbdinfo, "--map=qemu:allocation-depth", uri).expect(0).stdout(), false));
            out.add(new Answers(s.name(), want, viaQemuImg, viaNbdinfo, wantDepth, viaDepth, null));
            want.forEach(e -> statuses.add(e.value()));
            wantDepth.forEach(e -> depths.add(e.value()));
        }
        for (String r : serving.refused()) out.add(new Answers(r.substring(0, r.indexOf(':')), null, null, null, null, null, r));
        if (!serving.refused().isEmpty()) return out; // the coverage below needs every image
        // The images are meant to cover these, or the comparisons prove little.
        assertEquals(java.util.Set.of(0L, 2L, 3L), statuses, "NBD_STATE values in the files (0 data, 2 data reading as zeros, 3 hole)");
        assertEquals(java.util.Set.of(0L, 1L, 2L, 3L, 4L), depths, "allocation depths in the files");
        return out;
    }

    /**
     * Correctness of base:allocation: the server never claims NBD_STATE_ZERO where the file's
     * bytes are not known zeros, nor NBD_STATE_HOLE where the chain allocates data. (Leaving a
     * hint out is allowed here; {@link #baseAllocationSameAsQemu} asks for QEMU's exact answer.)
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void baseAllocationNeverClaimsZerosOrHolesOverData(Server server) {
        List<String> wrong = new ArrayList<>();
        for (Answers a : answers(server)) {
            if (a.refused() != null) {
                wrong.add(a.refused());
                continue;
            }
            if (!Extent.agree(a.qemuImgOverNbd(), a.fileStatus(), Extent::noStrongerClaim)) {
                wrong.add(a.image() + " qemu-img map over NBD:\n" + Extent.diff(a.qemuImgOverNbd(), a.fileStatus()));
            }
            if (!Extent.agree(a.nbdinfoMap(), a.fileStatus(), Extent::noStrongerClaim)) {
                wrong.add(a.image() + " nbdinfo --map:\n" + Extent.diff(a.nbdinfoMap(), a.fileStatus()));
            }
        }
        assertTrue(wrong.isEmpty(), "base:allocation claims zeros or a hole where the file has data (value = ZERO 2 | HOLE 1):\n"
                + String.join("\n", wrong));
    }

    /**
     * Parity of base:allocation with qemu-storage-daemon: the same NBD_STATE_HOLE and
     * NBD_STATE_ZERO at every byte as {@code qemu-img map} of the file (QEMU reports zero clusters
     * as hole+zero, and allocated clusters over a hole of the file as data+zero).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void baseAllocationSameAsQemu(Server server) {
        List<String> wrong = new ArrayList<>();
        for (Answers a : answers(server)) {
            if (a.refused() != null) {
                wrong.add(a.refused());
                continue;
            }
            if (!a.qemuImgOverNbd().equals(a.fileStatus())) {
                wrong.add(a.image() + " qemu-img map over NBD:\n" + Extent.diff(a.qemuImgOverNbd(), a.fileStatus()));
            }
            if (!a.nbdinfoMap().equals(a.fileStatus())) {
                wrong.add(a.image() + " nbdinfo --map:\n" + Extent.diff(a.nbdinfoMap(), a.fileStatus()));
            }
        }
        assertTrue(wrong.isEmpty(), "base:allocation differs from QEMU's (value = ZERO 2 | HOLE 1):\n" + String.join("\n", wrong));
    }

    /** qemu:allocation-depth: the same layer at every byte as {@code qemu-img map} of the file says. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("dev.vmm.cli.it.Server#selected")
    void allocationDepthSameAsQemu(Server server) {
        List<String> wrong = new ArrayList<>();
        for (Answers a : answers(server)) {
            if (a.refused() != null) {
                wrong.add(a.refused());
                continue;
            }
            if (!a.nbdinfoDepth().equals(a.fileDepth())) {
                wrong.add(a.image() + " nbdinfo --map=qemu:allocation-depth:\n" + Extent.diff(a.nbdinfoDepth(), a.fileDepth()));
            }
        }
        assertTrue(wrong.isEmpty(), "qemu:allocation-depth differs from qemu-img map of the file:\n" + String.join("\n", wrong));
    }

    /**
     * A run of bytes with one status: for base:allocation {@code value} is (zero ? 2 : 0) |
     * (data ? 0 : 1), i.e. NBD's NBD_STATE_ZERO | NBD_STATE_HOLE; for allocation-depth it is the depth.
     */
    record Extent(long start, long length, long value) {
        static Extent status(Map<String, Object> m) {
            boolean zero = (Boolean) m.get("zero");
            boolean data = (Boolean) m.get("data");
            return new Extent(num(m.get("start")), num(m.get("length")), (zero ? 2 : 0) | (data ? 0 : 1));
        }

        static Extent depth(Map<String, Object> m) {
            boolean present = (Boolean) m.get("present");
            return new Extent(num(m.get("start")), num(m.get("length")), present ? num(m.get("depth")) + 1 : 0);
        }

        private static long num(Object o) {
            return ((Number) o).longValue();
        }

        /** nbdinfo --map lines: {@code start length value description}. */
        static List<Extent> parseNbdinfo(String out, boolean status) {
            List<Extent> l = new ArrayList<>();
            for (String line : out.strip().split("\n")) {
                if (line.isBlank()) continue;
                String[] f = line.strip().split("\\s+");
                l.add(new Extent(Long.parseLong(f[0]), Long.parseLong(f[1]), Long.parseLong(f[2]) & (status ? 3 : ~0L)));
            }
            return l;
        }

        /** True unless {@code got} claims ZERO or HOLE where {@code want} does not. */
        static boolean noStrongerClaim(long got, long want) {
            return (got & ~want) == 0;
        }

        /** A judgement of one byte range: the server's value against the file's. */
        interface Rule {
            boolean ok(long got, long want);
        }

        /** Whether both cover the same bytes and {@code rule} holds at every byte. */
        static boolean agree(List<Extent> got, List<Extent> want, Rule rule) {
            int i = 0;
            int j = 0;
            long pos = 0;
            while (i < got.size() && j < want.size()) {
                Extent g = got.get(i);
                Extent w = want.get(j);
                if (g.start > pos || w.start > pos) return false; // a gap: not the same coverage
                if (!rule.ok(g.value, w.value)) return false;
                long end = Math.min(g.start + g.length, w.start + w.length);
                pos = end;
                if (g.start + g.length == end) i++;
                if (w.start + w.length == end) j++;
            }
            return i == got.size() && j == want.size();
        }

        /** Joins neighbours with the same value (servers may split extents anywhere). */
        static List<Extent> merge(List<Extent> in) {
            List<Extent> out = new ArrayList<>();
            for (Extent e : in) {
                if (e.length == 0) continue;
                Extent last = out.isEmpty() ? null : out.get(out.size() - 1);
                if (last != null && last.value == e.value && last.start + last.length == e.start) {
                    out.set(out.size() - 1, new Extent(last.start, last.length + e.length, last.value));
                } else {
                    out.add(e);
                }
            }
            return out;
        }

        static String diff(List<Extent> got, List<Extent> want) {
            return "  got  " + abbreviate(got) + "\n  want " + abbreviate(want);
        }

        private static String abbreviate(List<Extent> l) {
            List<String> s = l.stream().limit(24).map(e -> e.start + "+" + e.length + "=" + e.value).toList();
            return String.join(" ", s) + (l.size() > 24 ? " ... (" + l.size() + " extents)" : "");
        }
    }

    /** The first differing 4 KiB block of two equally long files, for the failure message. */
    static String firstDifference(Path got, Path want) throws java.io.IOException {
        long size = Files.size(want);
        for (long off = 0; off < size; off += 4096) {
            int n = (int) Math.min(4096, size - off);
            byte[] a = Images.read(got, off, n);
            byte[] b = Images.read(want, off, n);
            for (int i = 0; i < n; i++) {
                if (a[i] != b[i]) {
                    return String.format("first difference at byte %d: got 0x%02x, want 0x%02x", off + i, a[i], b[i]);
                }
            }
        }
        return "no difference?";
    }
}
