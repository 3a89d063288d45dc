package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import dev.vmm.cli.it.Net;
import dev.vmm.cli.it.Peers;
import dev.vmm.cli.it.Run;
import dev.vmm.cli.it.VmmProcess;
import dev.vmm.core.json.Json;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Full and incremental backups of a live guest's disk with the shipped {@code examples/backup.sh}
 * (QEMU 7.2's fleecing flow: a transaction of dirty-bitmap actions and {@code blockdev-backup
 * sync=none} into a scratch qcow2 node, a read-only NBD export of it with {@code bitmaps=},
 * nbdcopy for the full backup, the extents {@code nbdinfo --map=qemu:dirty-bitmap:b0} reports
 * for the incremental one), then a restore of the chain with qemu-img.
 *
 * <p>The guest writes all along a deterministic sequence: write {@code i} goes to 4 KiB block
 * {@code k(i) = i * 7919 mod 4096} (the first 16 MiB of a 64 MiB qcow2 disk) with O_DIRECT and
 * holds the text {@code vmmblk k i}, zero padded. So any copy of the disk says which writes it
 * holds. Checks: the restored image equals, byte for byte, the whole point-in-time export read
 * at the incremental backup's instant (the reference); the reference and the full backup are
 * each a prefix state of the sequence (some S: every block holds its last write with seq <= S,
 * none newer); the live disk moved on afterwards; the incremental image holds clusters only
 * inside the extents the bitmap reported, and those are fewer bytes than the disk.
 *
 * <p>Runs against qemu-storage-daemon 7.2 (the reference) and vmm, the same script and
 * options (persistent bitmaps in a transaction with blockdev-backup). {@code
 * -Dvmm.test.backup.args="--transient --no-transaction"} passes extra options to the script's
 * full and incremental steps against vmm (see examples/backup.sh), to narrow down a failure.
 */
class GuestBackupTest {
    static final long DISK_SIZE = 64 * Images.MiB;
    static final int BLOCK = 4096;
    static final int BLOCKS = 4096; // the first 16 MiB
    static final int STRIDE = 7919; // odd: i -> i * STRIDE mod BLOCKS is a permutation
    static final long INVERSE = java.math.BigInteger.valueOf(STRIDE).modInverse(java.math.BigInteger.valueOf(BLOCKS)).longValue();
    static final Pattern PROGRESS = Pattern.compile(Pattern.quote(Initramfs.RESULT_PREFIX) + "n=(\\d+)");

    @TempDir
    Path dir;

    VmmProcess daemon;
    Path sock;

    @AfterEach
    void stop() throws Exception {
        if (daemon != null) daemon.close();
        if (sock != null) {
            try (var s = Files.list(sock)) {
                for (Path p : s.toList()) Files.deleteIfExists(p);
            }
            Files.deleteIfExists(sock);
        }
    }

    static String workload() {
        return String.join("\n",
                "i=0",
                "vmmtest writing 1",
                "while true; do",
                "  k=$(( (i * " + STRIDE + ") % " + BLOCKS + " ))",
                "  printf 'vmmblk %d %d\\n' $k $i > /tmp/b",
                "  dd if=/tmp/b of=/dev/vda bs=" + BLOCK + " seek=$k count=1 conv=sync,notrunc oflag=direct 2>/tmp/err"
                        + " || { vmmtest error \"write $i $(cat /tmp/err)\"; break; }",
                "  i=$((i + 1))",
                "  [ $((i % 8)) -eq 0 ] && vmmtest n $i",
                "done",
                "");
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"qsd", "vmm"})
    void fullAndIncrementalBackupOfALiveGuestRestoreToThePointInTime(String server) throws Exception {
        boolean qsd = server.equals("qsd");
        Peers.require("qemu-storage-daemon");
        Peers.require("qemu-img");
        Peers.require("qemu-nbd");
        Peers.require("nbdinfo");
        Peers.require("nbdcopy");
        Peers.require("nbdsh");
        Peers.python(); // a python3 with libnbd's module (the script finds it the same way)
        GuestKernel kernel = TestGuests.kernel();
        sock = Net.shortSocketDir();
        Path disk = dir.resolve("disk.qcow2");
        Run.cmd(Peers.require("qemu-img"), "create", "-q", "-f", "qcow2", disk.toString(), Long.toString(DISK_SIZE)).expect(0);
        Path vhost = sock.resolve("vhost.sock");
        Path qmp = sock.resolve("qmp.sock");
        // QSD 7.2 aborts when an NBD client leaves an export whose node is on an IOThread
        // (docs/guest-testing.md), so its disk stays in the main context.
        daemon = VmmProcess.start(dir, server, List.of(
                "--object", "iothread,id=iot0",
                "--blockdev", "driver=file,node-name=disk0-file,filename=" + disk,
                "--blockdev", "driver=qcow2,node-name=disk0,file=disk0-file",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=unix,addr.path=" + vhost + ",writable=on"
                        + (qsd ? "" : ",iothread=iot0"),
                "--chardev", "socket,id=m0,path=" + qmp + ",server=on,wait=off", "--monitor", "chardev=m0"), qsd);

        Path console = dir.resolve("console.log");
        Path initrd = Initramfs.build(kernel, workload(), dir.resolve("initrd.gz"));
        GuestLauncher launcher = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(vhost).consoleLog(console)
                .timeout(Duration.ofSeconds(600));
        CompletableFuture<GuestRun> guest = CompletableFuture.supplyAsync(() -> {
            try {
                return launcher.run();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        Path backups = dir.resolve("backups");
        Path reference = dir.resolve("reference.raw");
        Run.Result full;
        Run.Result inc;
        int atFull;
        int atInc;
        try {
            waitForProgress(console, 32, guest);
            atFull = progress(console);
            full = script(extra(qsd, "full", "--qmp", qmp.toString(), "--dir", backups.toString(), "--node", "disk0"));
            assertEquals(0, full.exit(), full.describe() + "\n--- daemon ---\n" + daemon.stderr());
            waitForProgress(console, progress(console) + 64, guest);
            atInc = progress(console);
            inc = script(extra(qsd, "incremental", "--qmp", qmp.toString(), "--dir", backups.toString(), "--node", "disk0",
                    "--reference", reference.toString()));
            assertEquals(0, inc.exit(), inc.describe() + "\n--- daemon ---\n" + daemon.stderr());
            waitForProgress(console, progress(console) + 64, guest);
            assertTrue(!guest.isDone(), "the guest ended: " + (guest.isDone() ? guest.get().describe() : ""));
        } finally {
            launcher.destroy();
        }
        String text = Files.readString(console, StandardCharsets.ISO_8859_1);
        assertNull(GuestRun.parseResults(text).get("error"), "the guest saw a failed write:\n" + text);
        daemon.assertAlive();
        assertEquals(0, daemon.stop(), daemon.stderr());
        System.out.printf("[guest] backup on %s: guest writes at full %d, at incremental %d, at the end %d%n",
                server, atFull, atInc, progress(console));

        Run.Result restore = script("restore", "--dir", backups.toString(), "--output", dir.resolve("restored.raw").toString());
        assertEquals(0, restore.exit(), restore.describe());
        String why = full.describe() + "\n" + inc.describe();

        // 1. restored == the whole point-in-time export at the incremental instant
        assertEquals(DISK_SIZE, Files.size(reference), why);
        assertEquals(-1L, Files.mismatch(dir.resolve("restored.raw"), reference), "restored image differs from the reference: " + why);

        // 2. the reference and the full backup are prefix states of the guest's sequence, in order
        long sRef = prefixState(reference, "reference");
        Path fullRaw = convert(backups.resolve("full.qcow2"), dir.resolve("full.raw"));
        long sFull = prefixState(fullRaw, "full backup");
        Path endRaw = convert(disk, dir.resolve("end.raw"));
        long sEnd = prefixState(endRaw, "disk at the end");
        assertTrue(sFull >= 0 && sFull < sRef && sRef < sEnd, "full " + sFull + ", incremental " + sRef + ", end " + sEnd);
        // 3. the live disk moved on after the incremental instant
        assertNotEquals(-1L, Files.mismatch(endRaw, reference), "the disk did not change after the backup");

        // 4. the incremental copied only what the bitmap reported, and less than the disk
        List<long[]> dirty = new ArrayList<>();
        long dirtyBytes = 0;
        for (Object o : (List<?>) Json.parse(Files.readString(backups.resolve("inc1.map.json")))) {
            Map<?, ?> e = (Map<?, ?>) o;
            if ((((Number) e.get("type")).longValue() & 1) != 0) {
                long off = ((Number) e.get("offset")).longValue();
                long len = ((Number) e.get("length")).longValue();
                dirty.add(new long[] {off, off + len});
                dirtyBytes += len;
            }
        }
        assertTrue(dirtyBytes > 0 && dirtyBytes < DISK_SIZE, "dirty bytes " + dirtyBytes + ": " + why);
        assertTrue(inc.stdout().contains("copied " + dirtyBytes + " bytes in dirty extents"), why);
        Run.Result map = Run.cmd(Peers.require("qemu-img"), "map", "--output=json", backups.resolve("inc1.qcow2").toString()).expect(0);
        long allocated = 0;
        for (Object o : (List<?>) Json.parse(map.stdout())) {
            Map<?, ?> e = (Map<?, ?>) o;
            if (((Number) e.get("depth")).longValue() != 0 || !Boolean.TRUE.equals(e.get("data"))) continue;
            long off = ((Number) e.get("start")).longValue();
            long end = off + ((Number) e.get("length")).longValue();
            allocated += end - off;
            assertTrue(covered(dirty, off, end),
                    "inc1.qcow2 holds [" + off + ", " + end + ") outside the dirty extents: " + why);
        }
        assertTrue(allocated > 0, "inc1.qcow2 holds nothing: " + map.stdout());
        // every block the guest wrote between the two instants is in a dirty extent
        for (long i = sFull + 1; i <= sRef; i++) {
            long off = block(i) * BLOCK;
            assertTrue(covered(dirty, off, off + BLOCK), "write " + i + " (block " + block(i) + ") is not in the bitmap: " + why);
        }
        System.out.printf("[guest] backup on %s: writes in full <= %d, in incremental <= %d, at the end <= %d; "
                + "bitmap reported %d bytes dirty, inc1.qcow2 holds %d bytes%n", server, sFull, sRef, sEnd, dirtyBytes, allocated);
    }

    /** {@code args} plus, against vmm, the options in {@code -Dvmm.test.backup.args}. */
    private static String[] extra(boolean qsd, String... args) {
        String more = System.getProperty("vmm.test.backup.args", "").strip();
        if (qsd || more.isEmpty()) return args;
        List<String> all = new ArrayList<>(Arrays.asList(args));
        all.addAll(Arrays.asList(more.split("\\s+")));
        return all.toArray(String[]::new);
    }

    /** Runs one step of examples/backup.sh, with this build's {@code vmm qmp} as the QMP client. */
    private Run.Result script(String... args) {
        List<String> cmd = new ArrayList<>(List.of("bash", repoRoot().resolve("examples/backup.sh").toString()));
        cmd.addAll(Arrays.asList(args));
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        return Run.cmd(cmd).env("VMM_CMD", java + " -cp " + System.getProperty("java.class.path") + " dev.vmm.cli.Main")
                .timeoutSeconds(300).expectAny();
    }

    private static Path convert(Path qcow2, Path raw) {
        Run.cmd(Peers.require("qemu-img"), "convert", "-O", "raw", qcow2.toString(), raw.toString()).expect(0);
        return raw;
    }

    static long block(long seq) {
        return seq * STRIDE % BLOCKS;
    }

    /**
     * The S for which {@code image} holds exactly the guest's writes 0..S (each block its last
     * write with seq <= S, blocks never written by then zero, nothing after the first 16 MiB);
     * -1 for an image with no write. Fails the test when there is no such S.
     */
    static long prefixState(Path image, String what) throws Exception {
        byte[] all = Files.readAllBytes(image);
        long s = -1;
        long[] seqOf = new long[BLOCKS];
        for (int k = 0; k < BLOCKS; k++) {
            seqOf[k] = parse(all, k, what);
            s = Math.max(s, seqOf[k]);
        }
        for (int k = 0; k < BLOCKS; k++) {
            // the writes to block k are i0, i0 + BLOCKS, ...: i0 = k * STRIDE^-1 mod BLOCKS
            long i0 = k * INVERSE % BLOCKS;
            long expected = s < i0 ? -1 : i0 + (s - i0) / BLOCKS * BLOCKS;
            assertEquals(expected, seqOf[k], what + ": block " + k + " is not the state after write " + s);
        }
        for (int off = BLOCKS * BLOCK; off < all.length; off++) {
            if (all[off] != 0) throw new AssertionError(what + ": byte " + off + " beyond the guest's blocks is not zero");
        }
        return s;
    }

    private static final Pattern BLOCK_TEXT = Pattern.compile("vmmblk (\\d+) (\\d+)\n");

    /** The seq that block k holds (-1: zero), checking its text and zero padding. */
    private static long parse(byte[] all, int k, String what) {
        int off = k * BLOCK;
        int end = off;
        while (end < off + BLOCK && all[end] != 0) end++;
        for (int i = end; i < off + BLOCK; i++) {
            if (all[i] != 0) throw new AssertionError(what + ": block " + k + " is not one write (bytes after its text)");
        }
        if (end == off) return -1;
        String text = new String(all, off, end - off, StandardCharsets.US_ASCII);
        Matcher m = BLOCK_TEXT.matcher(text);
        if (!m.matches() || Integer.parseInt(m.group(1)) != k) throw new AssertionError(what + ": block " + k + " holds '" + text + "'");
        return Long.parseLong(m.group(2));
    }

    /** Whether the union of the extents covers [off, end). */
    static boolean covered(List<long[]> extents, long off, long end) {
        long at = off;
        boolean moved = true;
        while (at < end && moved) {
            moved = false;
            for (long[] e : extents) {
                if (e[0] <= at && at < e[1]) {
                    at = e[1];
                    moved = true;
                }
            }
        }
        return at >= end;
    }

    static Path repoRoot() {
        return Path.of(System.getenv().getOrDefault("VMM_ROOT", "..")).toAbsolutePath().normalize();
    }

    static int progress(Path console) throws Exception {
        String text = Files.exists(console) ? Files.readString(console, StandardCharsets.ISO_8859_1) : "";
        int n = 0;
        for (Matcher m = PROGRESS.matcher(text); m.find(); ) n = Math.max(n, Integer.parseInt(m.group(1)));
        return n;
    }

    private static void waitForProgress(Path console, int writes, CompletableFuture<GuestRun> guest) throws Exception {
        long deadline = System.nanoTime() + Duration.ofSeconds(180).toNanos();
        while (System.nanoTime() < deadline) {
            if (progress(console) >= writes) return;
            if (guest.isDone()) throw new AssertionError("the guest ended early: " + guest.get().describe());
            Thread.sleep(100);
        }
        throw new AssertionError("the guest did not reach " + writes + " writes: "
                + (Files.exists(console) ? Files.readString(console, StandardCharsets.ISO_8859_1) : "no console"));
    }
}
