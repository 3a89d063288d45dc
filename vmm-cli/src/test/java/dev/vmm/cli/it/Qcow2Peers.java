package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.core.json.Json;
import dev.vmm.core.json.JsonException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;

/**
 * qemu-img and qemu-io as the qcow2 reference: making images, reading them back as raw,
 * comparing, checking and mapping them; and the {@code --blockdev} arguments that serve a qcow2
 * image (QSD's syntax, which vmm accepts too).
 *
 * <p>Reads of an image that a server has open pass {@code -U} (QEMU's image locking: QSD holds
 * the lock). Stateless; any test thread.
 */
final class Qcow2Peers {
    private Qcow2Peers() {}

    static String qemuImg() {
        return Peers.require("qemu-img");
    }

    static String qemuIo() {
        return Peers.require("qemu-io");
    }

    /** {@code qemu-img ARGS}, which must exit 0. */
    static Run.Result img(String... args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(qemuImg());
        cmd.addAll(Arrays.asList(args));
        return Run.cmd(cmd).timeoutSeconds(120).expect(0);
    }

    /** {@code qemu-img create -f qcow2 -o OPTIONS file size} ({@code options} may be empty). */
    static Path create(Path file, String options, long size) {
        if (options.isEmpty()) {
            img("create", "-q", "-f", "qcow2", file.toString(), String.valueOf(size));
        } else {
            img("create", "-q", "-f", "qcow2", "-o", options, file.toString(), String.valueOf(size));
        }
        return file;
    }

    /** A qcow2 image over the absolute path {@code backing} of format {@code backingFormat}. */
    static Path createOver(Path file, String options, Path backing, String backingFormat) {
        List<String> cmd = new ArrayList<>(List.of("create", "-q", "-f", "qcow2", "-b", backing.toAbsolutePath().toString(),
                "-F", backingFormat));
        if (!options.isEmpty()) {
            cmd.add("-o");
            cmd.add(options);
        }
        cmd.add(file.toString());
        img(cmd.toArray(new String[0]));
        return file;
    }

    /**
     * Runs qemu-io commands against {@code target} opened as {@code format} with discard=unmap
     * (so a discard does the same directly as through a server whose node has discard=unmap);
     * fails on a non-zero exit or an I/O error message.
     */
    static Run.Result io(String format, String target, List<String> commands) {
        List<String> cmd = new ArrayList<>(List.of(qemuIo(), "-f", format, "-d", "unmap"));
        for (String c : commands) {
            cmd.add("-c");
            cmd.add(c);
        }
        cmd.add(target);
        Run.Result r = Run.cmd(cmd).timeoutSeconds(300).expect(0);
        String all = r.stdout() + r.stderr();
        if (all.contains("failed") || all.contains("error")) fail("qemu-io reported an error\n" + r.describe());
        return r;
    }

    /** {@code qemu-img convert -U -f format -O raw source out}: the guest-visible bytes as a raw file. */
    static Path toRaw(String format, String source, Path out) {
        img("convert", "-U", "-f", format, "-O", "raw", source, out.toString());
        return out;
    }

    /** {@code qemu-img compare -U -f raw -F qcow2 uri image}: must say identical (exit 0). */
    static void compareIdentical(String uri, Path image) {
        Run.Result r = Run.cmd(qemuImg(), "compare", "-U", "-f", "raw", "-F", "qcow2", uri, image.toString())
                .timeoutSeconds(120).expectAny();
        assertEquals(0, r.exit(), "qemu-img compare of the NBD export with the image file\n" + r.describe());
    }

    /** {@code qemu-img check} of an image nobody has open; returns the result (exit 0 clean, 2 corrupt, 3 leaks). */
    static Run.Result check(Path image) {
        return Run.cmd(qemuImg(), "check", "-f", "qcow2", image.toString()).timeoutSeconds(120).expectAny();
    }

    /** {@code qemu-img map --output=json} as a list of extents. */
    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> map(String format, String source) {
        Run.Result r = img("map", "-U", "--output=json", "-f", format, source);
        try {
            return (List<Map<String, Object>>) Json.parse(r.stdout().strip());
        } catch (JsonException e) {
            return fail("qemu-img map printed no JSON\n" + r.describe(), e);
        }
    }

    /** A file of {@code length} seeded random bytes, for {@code qemu-io write -s}. */
    static Path dataFile(Path file, long seed, int length) {
        Images.sparse(file, 0);
        Images.write(file, 0, Images.data(seed, length));
        return file;
    }

    /** A raw file of {@code size} with seeded random data in some 64 KiB-aligned stretches, holes elsewhere. */
    static Path patchyRaw(Path file, long size, long seed) {
        Images.sparse(file, size);
        Random rnd = new Random(seed);
        for (long off = 0; off < size; off += 256 * Images.KiB) {
            int kind = rnd.nextInt(4);
            if (kind == 0) continue; // hole
            int len = (int) Math.min(size - off, (kind == 1 ? 256 : 64 + rnd.nextInt(128)) * Images.KiB);
            Images.fill(file, off, len, rnd.nextLong());
        }
        return file;
    }

    /**
     * The arguments that serve {@code image} as qcow2 node {@code node} over a file node
     * {@code node-file}; {@code extra} (may be empty) is appended to the qcow2 node's options.
     */
    static List<String> qcow2Blockdev(String node, Path image, String extra) {
        return List.of(
                "--blockdev", "driver=file,node-name=" + node + "-file,filename=" + image,
                "--blockdev", "driver=qcow2,node-name=" + node + ",file=" + node + "-file" + (extra.isEmpty() ? "" : "," + extra));
    }

    /** {@code --export type=nbd} of {@code node} under its own name. */
    static List<String> nbdExport(String node, boolean writable, String extra) {
        return List.of("--export", "type=nbd,id=exp-" + node + ",node-name=" + node + (writable ? ",writable=on" : "")
                + (extra.isEmpty() ? "" : "," + extra));
    }
}
