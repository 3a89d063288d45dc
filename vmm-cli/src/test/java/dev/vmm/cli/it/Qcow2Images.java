package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The qcow2 images of the interoperability suites, all made by qemu-img and qemu-io: both
 * versions, cluster sizes from 512 B to 2 MiB, extended L2, compression, a backing chain three
 * deep over a raw base, internal snapshots. Each is served under its name as a qcow2 node.
 *
 * <p>Stateless; any test thread.
 */
final class Qcow2Images {
    /** One image to serve: {@code blockdev} are its --blockdev arguments (the last one is the node {@code name}). */
    record Served(String name, Path image, List<String> blockdev) {}

    private Qcow2Images() {}

    /**
     * qemu-io commands that leave a mix of data (random and patterned, cluster-aligned and not,
     * crossing cluster boundaries), zero clusters (with and without unmap) and discarded ranges
     * in an image of {@code size}; {@code data} holds random bytes for {@code write -s}.
     */
    static List<String> mixedWrites(long size, Path data, int variant) {
        long k = 1024;
        long step = size / 8;
        List<String> c = new ArrayList<>();
        c.add("write -s " + data + " 0 " + (192 * k));                     // from the start, several clusters
        c.add("write -P 0x" + Integer.toHexString(0x30 + variant) + " " + (step + 512) + " " + (3 * k)); // unaligned, small
        c.add("write -s " + data + " " + (2 * step - 40 * k) + " " + (100 * k)); // across cluster boundaries
        c.add("write -P 0x5c " + (3 * step) + " " + (64 * k));
        c.add("write -z " + (3 * step + 16 * k) + " " + (8 * k));           // zeros inside data
        c.add("write -z " + (4 * step) + " " + (256 * k));                  // zero clusters, allocation kept
        c.add("write -z -u " + (5 * step) + " " + (128 * k));               // zero clusters, unmapped
        c.add("write -s " + data + " " + (6 * step) + " " + (512 * k));
        c.add("discard " + (6 * step + 128 * k) + " " + (128 * k));         // a hole in data
        c.add("write -P 0xee " + (size - 4 * k) + " " + (4 * k));            // the last bytes
        return c;
    }

    /** Makes every image in {@code dir} and returns them in serving order. */
    static List<Served> build(Path dir) {
        Path data = Qcow2Peers.dataFile(dir.resolve("data.bin"), 77, (int) MiB);
        Map<String, String> plain = new LinkedHashMap<>();
        plain.put("v2-4k", "compat=0.10,cluster_size=4k");
        plain.put("v2-64k", "compat=0.10");
        plain.put("v3-512", "cluster_size=512");
        plain.put("v3-4k", "cluster_size=4k");
        plain.put("v3-64k", "");
        plain.put("v3-2m", "cluster_size=2M");
        plain.put("xl2-64k", "extended_l2=on");
        plain.put("xl2-2m", "extended_l2=on,cluster_size=2M");
        plain.put("rc1-64k", "refcount_bits=1");
        plain.put("rc64-64k", "refcount_bits=64");
        plain.put("lazy-64k", "lazy_refcounts=on");
        plain.put("prealloc-64k", "preallocation=metadata");
        List<Served> out = new ArrayList<>();
        int variant = 0;
        for (Map.Entry<String, String> e : plain.entrySet()) {
            long size = e.getKey().endsWith("2m") ? 32 * MiB : 8 * MiB;
            Path img = Qcow2Peers.create(dir.resolve(e.getKey() + ".qcow2"), e.getValue(), size);
            Qcow2Peers.io("qcow2", img.toString(), mixedWrites(size, data, variant++));
            out.add(served(e.getKey(), img));
        }

        // compressed: qemu-img convert -c of patchy random data, then some plain writes on top
        Path src = Qcow2Peers.patchyRaw(dir.resolve("compress-src.raw"), 8 * MiB, 5);
        Path comp = dir.resolve("compressed.qcow2");
        Qcow2Peers.img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", src.toString(), comp.toString());
        Qcow2Peers.io("qcow2", comp.toString(), List.of("write -P 0x77 " + (MiB + 1000) + " 5000"));
        out.add(served("compressed", comp));

        // a chain three deep over a raw base: each layer writes something else, with other cluster sizes
        out.addAll(chain(dir, data));

        // internal snapshots, written after each
        Path snap = Qcow2Peers.create(dir.resolve("snapshots.qcow2"), "", 8 * MiB);
        Qcow2Peers.io("qcow2", snap.toString(), List.of("write -s " + data + " 0 1M", "write -P 0x41 3M 1M"));
        Qcow2Peers.img("snapshot", "-c", "s1", snap.toString());
        Qcow2Peers.io("qcow2", snap.toString(), List.of("write -P 0x42 32k 64k", "write -P 0x43 3M 4k", "discard 3584k 512k", "write -P 0x44 6M 100k"));
        Qcow2Peers.img("snapshot", "-c", "s2", snap.toString());
        Qcow2Peers.io("qcow2", snap.toString(), List.of("write -z 0 64k", "write -P 0x45 6M 4k"));
        out.add(served("snapshots", snap));

        // a snapshot as the last thing written: the snapshot table ends at the end of the file,
        // which is then not a multiple of the cluster size
        Path snapEof = Qcow2Peers.create(dir.resolve("snapshot-at-eof.qcow2"), "", 8 * MiB);
        Qcow2Peers.io("qcow2", snapEof.toString(), List.of("write -s " + data + " 0 1M", "write -P 0x46 5M 300k"));
        Qcow2Peers.img("snapshot", "-c", "only", snapEof.toString());
        out.add(served("snapshot-at-eof", snapEof));
        return out;
    }

    /** base.raw &lt;- chain1 (64k) &lt;- chain2 (4k) &lt;- chain3 (64k, extended L2); served top-down from the headers, and by explicit nodes. */
    static List<Served> chain(Path dir, Path data) {
        long size = 8 * MiB;
        Path base = Qcow2Peers.patchyRaw(dir.resolve("base.raw"), size, 11);
        Path c1 = Qcow2Peers.createOver(dir.resolve("chain1.qcow2"), "", base, "raw");
        Qcow2Peers.io("qcow2", c1.toString(), List.of("write -P 0x61 0 300k", "write -s " + data + " 2M 1M", "write -z 4M 128k"));
        Path c2 = Qcow2Peers.createOver(dir.resolve("chain2.qcow2"), "cluster_size=4k", c1, "qcow2");
        Qcow2Peers.io("qcow2", c2.toString(), List.of("write -P 0x62 100k 300k", "write -z -u 2304k 64k", "discard 5M 256k",
                "write -P 0x63 7M 12k"));
        Path c3 = Qcow2Peers.createOver(dir.resolve("chain3.qcow2"), "extended_l2=on", c2, "qcow2");
        Qcow2Peers.io("qcow2", c3.toString(), List.of("write -P 0x64 1000 2000", "write -P 0x65 70k 6k", "write -z 2200k 4k",
                "write -s " + data + " 6M 33k"));
        List<Served> out = new ArrayList<>();
        out.add(served("chain3", c3));
        // The same chain with every layer a node of its own, joined by backing= (QSD's explicit form).
        out.add(new Served("chain3x", c3, List.of(
                "--blockdev", "driver=file,node-name=cx-base,filename=" + base + ",read-only=on",
                "--blockdev", "driver=qcow2,node-name=cx-1,read-only=on,file.driver=file,file.filename=" + c1 + ",backing=cx-base",
                "--blockdev", "driver=qcow2,node-name=cx-2,read-only=on,file.driver=file,file.filename=" + c2 + ",backing=cx-1",
                "--blockdev", "driver=qcow2,node-name=chain3x,read-only=on,file.driver=file,file.filename=" + c3 + ",backing=cx-2")));
        return out;
    }

    /** {@code image} as a read-only qcow2 node {@code name} over a file node (backing from the header). */
    static Served served(String name, Path image) {
        return new Served(name, image, List.of(
                "--blockdev", "driver=file,node-name=" + name + "-file,filename=" + image + ",read-only=on",
                "--blockdev", "driver=qcow2,node-name=" + name + ",file=" + name + "-file,read-only=on"));
    }
}
