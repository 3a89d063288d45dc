package dev.vmm.cli;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.Options;
import dev.vmm.vhostuser.frontend.BlkStamp;
import java.io.PrintWriter;
import java.io.RandomAccessFile;
import java.io.StringWriter;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

/** {@code vmm bench}: help, stamp-image, and vhost-user runs against our export in-process (exit codes, the read check). */
@Timeout(120)
class BenchCommandTest {
    static final long SIZE = 16L << 20;

    @TempDir Path tmp;
    Daemon daemon;

    record Run(int code, String out, String err) {}

    static Run run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        CommandLine cl = Main.commandLine();
        cl.setOut(new PrintWriter(out, true));
        cl.setErr(new PrintWriter(err, true));
        int code = cl.execute(args);
        return new Run(code, out.toString(), err.toString());
    }

    @AfterEach
    void stop() {
        if (daemon != null) daemon.shutdown(false);
    }

    /** Our vhost-user-blk export of {@code image} on iot0 (in this JVM); returns its socket. */
    String serve(Path image) throws Exception {
        String sock = tmp.resolve("vub0.sock").toString();
        daemon = Daemon.start();
        daemon.objectAdd(Options.of("--object", Map.of("qom-type", "iothread", "id", "iot0")));
        daemon.blockdevAdd(Options.of("--blockdev", Map.of("driver", "file", "node-name", "disk0", "filename", image.toString())));
        daemon.exportAdd(dev.vmm.core.testing.TestExports.vhostUserBlk("vub0", "disk0", sock, true, 1));
        return sock;
    }

    Path randomImage() throws Exception {
        Path p = tmp.resolve("disk.img");
        byte[] b = new byte[(int) SIZE];
        new java.util.Random(3).nextBytes(b);
        Files.write(p, b);
        return p;
    }

    @Test
    void benchHelpWorks() {
        for (String[] args : new String[][] {{"bench", "--help"}, {"bench", "-h"}, {"bench"}}) {
            Run r = run(args);
            assertEquals(0, r.code(), String.join(" ", args) + ": " + r.err());
            assertTrue(r.out().contains("vhost-user") && r.out().contains("stamp-image"), r.out());
        }
    }

    @Test
    void vhostUserHelpSaysWhatIsCheckedAndWhatItCosts() {
        Run r = run("bench", "vhost-user", "--help");
        assertEquals(0, r.code(), r.err());
        String help = r.out().replaceAll("\\s+", " ");
        for (String s : new String[] {"--flush-every", "--[no-]read-check", "--prefill", "NOT A RESULT", "exit code is 3",
                "8 stores and 8 loads", "stamp-image", "not counted in IOPS"}) {
            assertTrue(help.contains(s), "help mentions '" + s + "': " + help);
        }
    }

    @Test
    void flushEveryNeedsAWritePattern() {
        Run r = run("bench", "vhost-user", "--socket", "/nonexistent", "--rw", "randread", "--flush-every", "1");
        assertNotEquals(0, r.code());
    }

    @Test
    void stampImageWritesEverySectorsStampAndAllocatesEveryByte() throws Exception {
        Path p = tmp.resolve("s.img");
        Run r = run("bench", "stamp-image", "--size", "3M", "--seed", "9", p.toString());
        assertEquals(0, r.code(), r.err());
        assertEquals(3L << 20, Files.size(p));
        ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(p));
        for (int off = 0; off < (3 << 20); off += 512) assertTrue(BlkStamp.tagMatches(b, off, off), "sector at " + off);
        Process stat = new ProcessBuilder("stat", "-c", "%b %B", p.toString()).start();
        String[] blocks = new String(stat.getInputStream().readAllBytes()).trim().split(" ");
        assertEquals(0, stat.waitFor());
        assertTrue(Long.parseLong(blocks[0]) * Long.parseLong(blocks[1]) >= 3L << 20, "not sparse: " + String.join(" ", blocks));
        // in place, size kept
        assertEquals(0, run("bench", "stamp-image", p.toString()).code());
        assertEquals(3L << 20, Files.size(p));
    }

    @Test
    void readsAreCheckedAndAWrongReadMakesTheRunNotAResult() throws Exception {
        Path image = randomImage();
        String sock = serve(image);
        String[] base = {"bench", "vhost-user", "--socket", sock, "--runtime", "0.3", "--ramp", "0", "--iodepth", "8", "--memory", "64M"};

        Run r = run(concat(base, "--rw", "randread"));
        assertEquals(1, r.code(), "an unstamped disk stops a checked read run: " + r.out() + r.err());
        assertTrue(r.err().contains("the disk is not stamped") && r.err().contains("--prefill"), r.err());

        r = run(concat(base, "--rw", "randread", "--no-read-check"));
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("NOT checked"), r.out());

        r = run(concat(base, "--rw", "randread", "--prefill", "--json"));
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("\"valid\":true") && r.out().contains("\"wrong_reads\":0") && r.out().contains("\"read_check\":true"), r.out());

        r = run(concat(base, "--rw", "randwrite", "--flush-every", "2"));
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().contains("flushes") && r.out().contains("failed requests 0") && r.out().contains("0 wrong"), r.out());

        // behind the server's back: the first MiB loses its stamps
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.write(new byte[1 << 20], 0, 1 << 20);
        }
        r = run(concat(base, "--rw", "randread", "--size", "4M"));   // probe reads block 0: stopped early
        assertEquals(1, r.code(), r.err());
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {     // the probe's blocks stamped again
            ByteBuffer s = ByteBuffer.allocate(4096);
            BlkStamp.stamp(s, 0, 0);
            f.write(s.array());
        }
        r = run(concat(base, "--rw", "randread", "--size", "4M"));
        assertEquals(BenchCommand.EXIT_NOT_A_RESULT, r.code(), r.out() + r.err());
        assertTrue(r.err().contains("NOT A RESULT") && r.err().contains("returned wrong data"), r.err());
        assertTrue(r.out().matches("(?s).*read check: [0-9,]+ reads checked, [1-9][0-9]* wrong.*"), r.out());
    }

    static String[] concat(String[] a, String... b) {
        String[] r = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, r, a.length, b.length);
        return r;
    }
}
