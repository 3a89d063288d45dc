package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.it.Images;
import dev.vmm.cli.it.VmmProcess;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code kill -9} of our backend under a guest that writes versioned blocks: nothing the guest
 * saw acknowledged is lost, and the guest never sees an error.
 *
 * <p>Two writers in the guest rewrite their {@value #PER_WRITER} blocks pass after pass, each
 * block with {@code dd oflag=direct conv=fsync} (an O_DIRECT write, then a FLUSH), and print
 * {@code VMMACK block version} on the console once dd returned. The host SIGKILLs the backend
 * {@value #KILLS} times at random moments; each time, with the backend dead (the image cannot
 * change), it takes the console as it is and checks the image file: every block holds a
 * version at least the one acknowledged, and at most one pass ahead. Then it starts the
 * backend again; QEMU reconnects ({@code reconnect=1}), the backend resubmits what was in
 * flight (INFLIGHT_SHMFD), and the guest goes on. At the end every block must hold the last
 * version, the guest must have seen no I/O error, and every write must have been acknowledged.
 *
 * <p>Block layout (the guest builds it with busybox {@code printf}): 8 sectors of 512 bytes,
 * each {@code "VMMG b=B v=V"} padded with spaces to 511 bytes and a newline; so a block from
 * the wrong place, a stale version or a torn write is seen at once.
 *
 * <p>As with the NBD checker, a killed process cannot lose what reached the page cache: this
 * proves the backend completes no request before its {@code pwritev}/{@code fdatasync}
 * returned, and that resubmission after a restart loses nothing. qemu-storage-daemon has no
 * in-flight tracking, so this runs against ours only.
 */
@Timeout(240)
class GuestKillDurabilityTest {
    static final int WRITERS = 2;
    static final int PER_WRITER = 24;
    static final int KILLS = 3;
    /** Passes over each writer's blocks; the guest is far from done when the last kill comes. */
    static final int PASSES = Integer.getInteger("vmm.guest.durability.passes", 12);
    static final int BLOCK = 4096;
    private static final Pattern ACK = Pattern.compile("VMMACK (\\d+) (\\d+)\\r?\\n");

    @TempDir
    Path dir;
    final List<VmmProcess> backends = new ArrayList<>();
    /** The guest's QEMU runs on another thread: a failed assertion must not leave it running. */
    GuestLauncher guestLauncher;

    @AfterEach
    void stop() {
        if (guestLauncher != null) guestLauncher.destroy();
        backends.forEach(VmmProcess::close);
    }

    @Test
    void acknowledgedGuestWritesSurviveBackendKills() throws Exception {
        GuestKernel kernel = TestGuests.kernel();
        Path image = Images.sparse(dir.resolve("disk.img"), 16 * Images.MiB);
        Path socket = dir.resolve("vhost.sock");
        var export = VhostUserBlkServer.Export.writable(image, socket);
        backends.add(VmmProcess.start(dir, "gkill-0", export.args()));

        Path initrd = Initramfs.build(kernel, workload(), dir.resolve("initrd.gz"));
        Path console = dir.resolve("console.log");
        GuestLauncher launcher = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(socket).reconnect(true)
                .consoleLog(console).timeout(Duration.ofSeconds(200));
        guestLauncher = launcher;
        CompletableFuture<GuestRun> guest = CompletableFuture.supplyAsync(() -> {
            try {
                return launcher.run();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });

        long seed = Long.getLong("vmm.durability.seed", System.nanoTime());
        Random rnd = new Random(seed);
        long t0 = System.nanoTime();
        int checkedAcks = 0;
        int acksAtLastKill = 0;
        for (int kill = 1; kill <= KILLS; kill++) {
            // enough fresh acknowledgements since the last restart that the guest is mid-run again
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(90);
            int wanted = acksAtLastKill + 8 + rnd.nextInt(40);
            while (acks(read(console)).size() < wanted) {
                if (System.nanoTime() > deadline || guest.isDone()) {
                    fail("kill " + kill + ": the guest is not writing\n" + tail(console) + "\n" + logs());
                }
                Thread.sleep(20);
            }
            Thread.sleep(rnd.nextInt(400));
            VmmProcess victim = backends.get(backends.size() - 1);
            victim.kill();
            // The backend is dead, so the image holds still: whatever the console shows now was
            // acknowledged before the kill and must be in the file.
            List<long[]> acks = acks(read(console));
            assertTrue(acks.size() < WRITERS * PER_WRITER * PASSES,
                    "kill " + kill + " came after the guest finished writing; raise -Dvmm.guest.durability.passes");
            List<String> problems = check(image, acks, false);
            assertEquals(List.of(), problems, "after kill " + kill + " (seed " + seed + ")\n" + logs());
            checkedAcks += acks.size();
            acksAtLastKill = acks.size();
            System.out.printf("[durability] guest kill %d: %d acknowledged writes on the console, all in the image%n", kill, acks.size());
            backends.add(VmmProcess.start(dir, "gkill-" + kill, export.args()));
        }

        GuestRun run = guest.get(180, TimeUnit.SECONDS);
        String why = run.describe() + "\n" + logs();
        assertTrue(run.succeeded(), why);
        assertNull(run.result("error"), why);
        assertTrue(!run.console().contains("VMMFAIL"), "the guest saw a failed write\n" + why);
        assertEquals("0", run.result("ioerrors"), why);
        List<long[]> acks = acks(run.console());
        assertEquals(WRITERS * PER_WRITER * PASSES, acks.size(), "every write acknowledged once\n" + why);
        assertEquals(List.of(), check(image, acks, true), why);
        for (int k = 1; k <= KILLS; k++) {
            assertTrue(backends.get(k).stderr().contains("front-end connected"), "QEMU did not reconnect to backend " + k + "\n" + why);
        }
        int resubmitted = 0;
        for (VmmProcess b : backends) {
            Matcher m = Pattern.compile("resubmitted (\\d+) request").matcher(b.stderr());
            while (m.find()) resubmitted += Integer.parseInt(m.group(1));
        }
        System.out.printf("[durability] guest kill -9: %d kills, %d guest writes (O_DIRECT + fsync), %d acknowledgements checked at the kills, "
                + "%d requests resubmitted after restarts, %d blocks verified at the end, no I/O error, %d ms (seed %d)%n", KILLS, acks.size(),
                checkedAcks, resubmitted, WRITERS * PER_WRITER, (System.nanoTime() - t0) / 1_000_000, seed);
        assertEquals(0, backends.get(backends.size() - 1).stop());
    }

    /** The checker can fail: a lost, a stale, a torn and a misplaced block are each reported. */
    @Test
    void checkerCatchesLostStaleTornAndMisplacedBlocks() {
        Path image = Images.sparse(dir.resolve("check.img"), 16 * Images.MiB);
        List<long[]> acks = new ArrayList<>();
        for (int b = 0; b < WRITERS * PER_WRITER; b++) {
            acks.add(new long[] {b, 3});
            Images.write(image, (long) b * BLOCK, expected(b, 3));
        }
        assertEquals(List.of(), check(image, acks, true));
        Images.write(image, 1L * BLOCK, new byte[BLOCK]); // lost
        Images.write(image, 2L * BLOCK, expected(2, 2)); // stale
        byte[] torn = expected(3, 4);
        System.arraycopy(expected(3, 3), 0, torn, 2048, 2048);
        Images.write(image, 3L * BLOCK, torn); // half of version 4, half of version 3
        Images.write(image, 4L * BLOCK, expected(5, 3)); // misplaced
        List<String> problems = check(image, acks, false);
        assertEquals(4, problems.size(), String.join("\n", problems));
        for (int b = 1; b <= 4; b++) {
            int block = b;
            assertTrue(problems.stream().anyMatch(p -> p.startsWith("block " + block + " ") || p.startsWith("block " + block + ":")), problems.toString());
        }
    }

    /** busybox sh: the writers, then the count of kernel I/O errors. */
    static String workload() {
        return String.join("\n",
                "w() {",
                "  f=$1; v=1",
                "  while [ $v -le " + PASSES + " ]; do",
                "    b=$f",
                "    while [ $b -lt $((f + " + PER_WRITER + ")) ]; do",
                "      h=\"VMMG b=$b v=$v\"",
                "      printf '%-511s\\n' \"$h\" \"$h\" \"$h\" \"$h\" \"$h\" \"$h\" \"$h\" \"$h\" > /tmp/blk$f",
                "      if dd if=/tmp/blk$f of=/dev/vda bs=" + BLOCK + " seek=$b count=1 oflag=direct conv=fsync,notrunc 2>/tmp/err$f; then",
                "        echo \"VMMACK $b $v\"",
                "      else",
                "        echo \"VMMFAIL $b $v $(cat /tmp/err$f)\"",
                "      fi",
                "      b=$((b + 1))",
                "    done",
                "    v=$((v + 1))",
                "  done",
                "}",
                "vmmtest started 1",
                "for i in $(seq 0 " + (WRITERS - 1) + "); do w $((i * " + PER_WRITER + ")) & done",
                "wait",
                "vmmtest written 1",
                "dmesg | grep -ci 'I/O error' | sed 's/^/VMMTEST:ioerrors=/'",
                "");
    }

    /** The block the guest writes for version {@code v} of block {@code b}. */
    static byte[] expected(long b, long v) {
        String sector = String.format("%-511s\n", "VMMG b=" + b + " v=" + v);
        return sector.repeat(BLOCK / 512).getBytes(StandardCharsets.US_ASCII);
    }

    /**
     * Checks the image against the acknowledgements: each block holds a version at least its
     * highest acknowledged one and at most one more (one write per block in flight), or, with
     * {@code exact}, exactly the highest acknowledged one.
     */
    static List<String> check(Path image, List<long[]> acks, boolean exact) {
        long[] acked = new long[WRITERS * PER_WRITER];
        for (long[] a : acks) acked[(int) a[0]] = Math.max(acked[(int) a[0]], a[1]);
        List<String> problems = new ArrayList<>();
        for (int b = 0; b < acked.length; b++) {
            byte[] got = Images.read(image, (long) b * BLOCK, BLOCK);
            long v = versionOf(got, b);
            if (v == -1) {
                problems.add("block " + b + ": neither zeros nor a whole version of this block (acknowledged " + acked[b] + "): "
                        + new String(got, 0, 40, StandardCharsets.US_ASCII).strip());
            } else if (v < acked[b]) {
                problems.add("block " + b + " holds version " + v + " but version " + acked[b] + " was acknowledged (lost write)");
            } else if (exact ? v != acked[b] : v > acked[b] + 1) {
                problems.add("block " + b + " holds version " + v + " but version " + acked[b] + " is the last acknowledged");
            }
        }
        return problems;
    }

    /** The version block {@code b} holds: 0 for zeros, -1 if it is anything but a whole version of block {@code b}. */
    static long versionOf(byte[] got, int b) {
        boolean zero = true;
        for (byte x : got) zero &= x == 0;
        if (zero) return 0;
        Matcher m = Pattern.compile("VMMG b=(\\d+) v=(\\d+) ").matcher(new String(got, 0, 64, StandardCharsets.US_ASCII));
        if (!m.lookingAt() || Long.parseLong(m.group(1)) != b) return -1;
        long v = Long.parseLong(m.group(2));
        return java.util.Arrays.equals(got, expected(b, v)) ? v : -1;
    }

    /** Every {@code VMMACK block version} on the console, as {block, version}. */
    static List<long[]> acks(String console) {
        List<long[]> out = new ArrayList<>();
        Matcher m = ACK.matcher(console);
        while (m.find()) out.add(new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2))});
        return out;
    }

    private String logs() {
        StringBuilder s = new StringBuilder();
        for (int i = 0; i < backends.size(); i++) s.append("--- backend ").append(i).append(" ---\n").append(backends.get(i).stderr());
        return s.toString();
    }

    private static String tail(Path console) {
        String s = read(console);
        return s.substring(Math.max(0, s.length() - 3000));
    }

    private static String read(Path p) {
        try {
            return Files.exists(p) ? Files.readString(p, StandardCharsets.ISO_8859_1) : "";
        } catch (java.io.IOException e) {
            return "";
        }
    }
}
