package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** nbdinfo: --list, --map, --can, --is, --size, --json. */
@Timeout(120)
class NbdinfoTest extends PeerTestBase {

    private static String nbdinfo() {
        return Peers.require("nbdinfo");
    }

    /** Runs python code on a JSON document (file argv[1]) that must exit 0. */
    private void checkJson(String json, String pythonAsserts) throws Exception {
        Path f = Files.createTempFile(tmp, "nbdinfo", ".json");
        Files.writeString(f, json);
        Run.cmd(Peers.python(), "-c", "import json,sys\nd=json.load(open(sys.argv[1]))\n" + pythonAsserts, f.toString())
                .expect(0);
    }

    @Test
    void listShowsEveryExportWithNameAndDescription() throws Exception {
        Path a = Images.sparse(tmp.resolve("a.img"), MiB);
        Path b = Images.sparse(tmp.resolve("b.img"), 2 * MiB);
        int port = Net.freePort();
        serve("--blockdev", "driver=file,node-name=n0,filename=" + a,
                "--blockdev", "driver=file,node-name=n1,filename=" + b,
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=e0,node-name=n0,name=alpha,description=first disk",
                "--export", "type=nbd,id=e1,node-name=n1,description=second");
        Run.Result r = Run.cmd(nbdinfo(), "--list", Net.uri(port, "")).expect(0);
        assertTrue(r.stdout().contains("alpha") && r.stdout().contains("first disk"), r.describe());
        assertTrue(r.stdout().contains("n1") && r.stdout().contains("second"), r.describe()); // name defaults to node
        Run.Result j = Run.cmd(nbdinfo(), "--list", "--json", Net.uri(port, "")).expect(0);
        checkJson(j.stdout(), """
                ex = {e['export-name']: e for e in d['exports']}
                assert set(ex) == {'alpha', 'n1'}, ex
                assert ex['alpha']['description'] == 'first disk', ex
                assert ex['n1']['description'] == 'second', ex
                assert ex['alpha']['export-size'] == 1048576, ex
                assert ex['n1']['export-size'] == 2097152, ex
                """);
    }

    record Extent(long offset, long length, int type) {}

    private static List<Extent> map(String uri) {
        Run.Result r = Run.cmd(nbdinfo(), "--map", uri).expect(0);
        List<Extent> out = new ArrayList<>();
        for (String line : r.stdout().split("\n")) {
            String[] f = line.strip().split("\\s+");
            if (f.length >= 3) {
                out.add(new Extent(Long.parseLong(f[0]), Long.parseLong(f[1]), Integer.parseInt(f[2])));
            }
        }
        return out;
    }

    @Test
    void mapShowsDataExactlyWhereWritten() {
        long size = 32 * MiB;
        Path img = Images.sparse(tmp.resolve("disk.img"), size);
        long[][] islands = {{MiB, 64 * 1024}, {8 * MiB, MiB}, {20 * MiB + 4096, 8192}, {size - 4096, 4096}};
        for (long[] is : islands) {
            Images.fill(img, is[0], (int) is[1], is[0]);
        }
        Disk d = serveDisk(img, false);
        List<Extent> ext = map(d.uri());
        long pos = 0;
        for (Extent e : ext) {
            assertEquals(pos, e.offset(), "extents are contiguous: " + ext);
            pos += e.length();
        }
        assertEquals(size, pos, "extents cover the image: " + ext);
        for (Extent e : ext) {
            boolean data = (e.type() & 1) == 0;
            for (long[] is : islands) {
                boolean overlaps = e.offset() < is[0] + is[1] && is[0] < e.offset() + e.length();
                if (overlaps && !data) {
                    fail("written range " + is[0] + "+" + is[1] + " reported as hole: " + e + " in " + ext);
                }
            }
            if (data) {
                // data extents may be rounded to the filesystem's block, never further than 1 MiB off
                boolean nearIsland = false;
                for (long[] is : islands) {
                    nearIsland |= e.offset() >= is[0] - MiB && e.offset() + e.length() <= is[0] + is[1] + MiB;
                }
                assertTrue(nearIsland, "data reported far from any write: " + e + " in " + ext);
            }
        }
    }

    private static int can(String what, String uri) {
        return Run.cmd(nbdinfo(), "--can", what, uri).expectAny().exit();
    }

    @Test
    void writableExportAdvertisesEveryCapability() {
        Disk d = serveDisk(Images.sparse(tmp.resolve("disk.img"), 4 * MiB), true);
        List<String> missing = new ArrayList<>();
        List<String> caps = new ArrayList<>(List.of("connect", "read", "write", "flush", "trim", "zero", "fua", "df",
                "fast-zero", "cache"));
        if (!Peers.qsd()) {
            caps.add("multi-conn"); // QSD 7.2 enables multi-conn on writable exports only with multi-conn=on
        }
        for (String c : caps) {
            int exit = can(c, d.uri());
            if (exit != 0) {
                missing.add(c + " (exit " + exit + ")");
            }
        }
        assertTrue(missing.isEmpty(), "not advertised: " + missing);
        assertEquals(2, Run.cmd(nbdinfo(), "--is", "read-only", d.uri()).expectAny().exit(), "--is read-only on writable");
    }

    @Test
    void readOnlyExportCannotWriteAndIsReadOnly() {
        Disk d = serveDisk(Images.sparse(tmp.resolve("disk.img"), 4 * MiB), false);
        assertEquals(2, can("write", d.uri()), "--can write");
        assertEquals(0, Run.cmd(nbdinfo(), "--is", "read-only", d.uri()).expectAny().exit(), "--is read-only");
        assertEquals(0, can("read", d.uri()), "--can read");
        assertEquals(0, can("multi-conn", d.uri()), "--can multi-conn");
    }

    @Test
    void sizeIsExactAndJsonDescribesTheExport() throws Exception {
        long size = 5 * MiB + 512;
        Path img = Images.sparse(tmp.resolve("disk.img"), size);
        int port = Net.freePort();
        serve("--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=disk0,writable=on,description=the disk");
        String uri = Net.uri(port, "disk0");
        assertEquals(String.valueOf(size), Run.cmd(nbdinfo(), "--size", uri).expect(0).stdout().strip());
        Run.Result j = Run.cmd(nbdinfo(), "--json", uri).expect(0);
        checkJson(j.stdout(), """
                e = d['exports'][0]
                assert e['export-name'] == 'disk0', e
                assert e['export-size'] == %d, e
                assert e['description'] == 'the disk', e
                assert e['is_read_only'] is False, e
                assert e['can_flush'] and e['can_trim'] and e['can_zero'] and e['can_fua'], e
                assert 'base:allocation' in e.get('contexts', []), e
                assert d['protocol'] == 'newstyle-fixed', d
                """.formatted(size));
    }
}
