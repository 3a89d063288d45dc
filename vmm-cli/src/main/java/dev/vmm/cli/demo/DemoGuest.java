package dev.vmm.cli.demo;

import dev.vmm.cli.guest.GuestCache;
import dev.vmm.cli.guest.GuestException;
import dev.vmm.cli.guest.GuestKernel;
import dev.vmm.cli.guest.GuestLauncher;
import dev.vmm.cli.guest.GuestRun;
import dev.vmm.cli.guest.HostTools;
import dev.vmm.cli.guest.Initramfs;
import dev.vmm.cli.qmp.QmpClient;
import dev.vmm.cli.qmp.ShellSyntax;
import dev.vmm.core.qmp.CoreCommands;
import dev.vmm.nbd.client.NbdClient;
import java.io.IOException;
import java.net.UnixDomainSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

/**
 * The guest half of {@code vmm demo}: boots the minimal guest of {@code vmm guest} on the demo's
 * vhost-user-blk export and proves that one disk serves both worlds from one IOThread, and keeps
 * doing so across a handoff:
 *
 * <ol>
 * <li>the guest writes pattern A (1 MiB) through /dev/vda with O_DIRECT;</li>
 * <li>the host reads it back over NBD (in-process client) and compares it byte for byte;</li>
 * <li>the host moves the disk to {@value Demo#IOT1} through QMP while the guest polls the disk
 *     for a go signal (so the guest's requests are in flight across the move);</li>
 * <li>the host writes the go signal over NBD; the guest sees it, re-reads A, writes pattern B;
 *     the host reads B back over NBD.</li>
 * </ol>
 *
 * <p>Thread contract: {@link #run} blocks the demo's main thread; it polls {@code stopped}
 * (Ctrl-C) while it waits and then kills QEMU.
 */
public final class DemoGuest {
    /** Steps {@link #run} prints. */
    public static final int STEPS = 5;

    static final int MIB = 1 << 20;
    /** Layout on the disk (MiB-aligned, inside the smallest image the demo accepts). */
    static final long GO_OFFSET = 1L * MIB;
    static final long A_OFFSET = 2L * MIB;
    static final long B_OFFSET = 3L * MIB;
    /** The smallest image that holds the layout. */
    public static final long MIN_SIZE = 4L * MIB;
    static final String GO = "VMMGO1";

    static final String LINE_A = line("vmm demo: pattern A, written by the guest through virtio-blk");
    static final String LINE_B = line("vmm demo: pattern B, written after the move to iot1");

    private static final long BOOT_TIMEOUT_MS = 240_000;
    private static final long FINISH_TIMEOUT_MS = 120_000;

    private final Demo demo;
    private final Steps steps;
    private final BooleanSupplier stopped;
    private final Path console;
    private Process qemu;

    public DemoGuest(Demo demo, Steps steps, BooleanSupplier stopped) {
        this.demo = demo;
        this.steps = steps;
        this.stopped = stopped;
        this.console = demo.image().resolveSibling("guest-console.log");
    }

    /** A 64-byte line ({@code yes} adds the newline), so 1 MiB holds exactly 16384 of them. */
    private static String line(String text) {
        StringBuilder sb = new StringBuilder(text).append(' ');
        while (sb.length() < 63) sb.append('.');
        return sb.substring(0, 63);
    }

    /** 1 MiB of {@code line} + newline, as {@code yes LINE | head -c 1M} writes it. */
    static byte[] pattern(String line) {
        byte[] one = (line + "\n").getBytes(StandardCharsets.US_ASCII);
        byte[] out = new byte[MIB];
        for (int i = 0; i < MIB; i += one.length) System.arraycopy(one, 0, out, i, one.length);
        return out;
    }

    /** The guest's script (busybox sh, sourced by the initramfs' /init with {@code vmmtest} defined). */
    static String workload() {
        return String.join("\n",
                "yes '" + LINE_A + "' | head -c " + MIB + " > /tmp/a",
                "yes '" + LINE_B + "' | head -c " + MIB + " > /tmp/b",
                "dd if=/tmp/a of=/dev/vda bs=" + MIB + " seek=" + A_OFFSET / MIB + " count=1 oflag=direct conv=notrunc 2>/tmp/err"
                        + " || vmmtest error \"writing pattern A: $(tail -n 1 /tmp/err)\"",
                "vmmtest written-a ok",
                // Poll the go sector with O_DIRECT reads: the host moves the disk meanwhile.
                "i=0; m=",
                "while [ $i -lt 2400 ]; do",
                "  m=$(dd if=/dev/vda bs=512 skip=" + GO_OFFSET / 512 + " count=1 iflag=direct 2>/dev/null | head -c " + GO.length() + ")",
                "  [ \"$m\" = " + GO + " ] && break",
                "  sleep 0.05; i=$((i + 1))",
                "done",
                "[ \"$m\" = " + GO + " ] || vmmtest error 'no go signal from the host'",
                "vmmtest polls $i",
                "dd if=/dev/vda bs=" + MIB + " skip=" + A_OFFSET / MIB + " count=1 iflag=direct 2>/dev/null | cmp -s - /tmp/a"
                        + " && vmmtest reread-a ok || vmmtest error 'pattern A reads back differently after the move'",
                "dd if=/tmp/b of=/dev/vda bs=" + MIB + " seek=" + B_OFFSET / MIB + " count=1 oflag=direct conv=notrunc 2>/tmp/err"
                        + " || vmmtest error \"writing pattern B: $(tail -n 1 /tmp/err)\"",
                "vmmtest written-b ok",
                "");
    }

    /** Runs the five steps; false when one failed (it printed why) or Ctrl-C came. QEMU is gone when it returns. */
    public boolean run() {
        try {
            return steps();
        } finally {
            if (qemu != null && qemu.isAlive()) {
                qemu.destroyForcibly();
                try {
                    qemu.waitFor(10, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        }
    }

    private boolean steps() {
        // 1. kernel and initramfs
        Steps.Step s = steps.begin("guest kernel and initramfs");
        GuestKernel kernel;
        Path initrd;
        try {
            kernel = GuestKernel.debian(s);
            initrd = Initramfs.build(kernel, workload(), demo.image().resolveSibling("guest-initrd.gz"));
        } catch (GuestException e) {
            s.fail(e.getMessage());
            return false;
        }
        String home = System.getProperty("user.home");
        String cache = GuestCache.root().toString();
        s.ok(kernel.packageName() + ", cached in " + (cache.startsWith(home + "/") ? "~" + cache.substring(home.length()) : cache));

        // 2. boot, write A
        s = steps.begin("boot the guest (QEMU, TCG) and write 1 MiB through /dev/vda (O_DIRECT)");
        // A reused image still holds the last run's patterns and go signal: wipe them first, or
        // the read-back would prove nothing and the guest would not wait for the move.
        try (NbdClient nbd = openNbd()) {
            nbd.write(GO_OFFSET, new byte[(int) (MIN_SIZE - GO_OFFSET)]);
            nbd.flush();
        } catch (IOException e) {
            return fail(s, "NBD: " + e.getMessage());
        }
        try {
            qemu = GuestLauncher.of(kernel.vmlinuz(), initrd).socket(demo.vhostSocket()).memory("256M")
                    .consoleLog(console).start();
        } catch (GuestException e) {
            s.fail(e.getMessage());
            return false;
        }
        String why = awaitResult("written-a", BOOT_TIMEOUT_MS);
        if (why != null) return fail(s, why);
        s.ok("console: " + Demo.display(console));

        // 3. read A back over NBD
        s = steps.begin("read the same MiB back over NBD (" + Demo.display(demo.nbdSocket()) + ")");
        why = compareOverNbd(A_OFFSET, pattern(LINE_A));
        if (why != null) return fail(s, why);
        s.ok("identical to what the guest wrote");

        // 4. move while the guest keeps polling the disk
        s = steps.begin("move " + Demo.NODE + " from " + Demo.IOT0 + " to " + Demo.IOT1 + " through QMP, guest attached");
        long[] pauseNs = {-1};
        try (QmpClient qmp = QmpClient.connect(demo.qmpSocket())) {
            qmp.onEvent(e -> {
                if (CoreCommands.NODE_MOVED.equals(e.get("event")) && e.get("data") instanceof Map<?, ?> d
                        && d.get("pause-ns") instanceof Number n) {
                    pauseNs[0] = n.longValue();
                }
            });
            Map<String, Object> reply = qmp.execute(new ShellSyntax.Request("x-blockdev-set-iothread",
                    Map.of("node-name", Demo.NODE, "iothread", Demo.IOT1)));
            if (reply.containsKey("error")) return fail(s, "x-blockdev-set-iothread: " + reply.get("error"));
        } catch (IOException e) {
            return fail(s, "QMP: " + e.getMessage());
        }
        s.ok(pauseNs[0] < 0 ? "moved" : String.format(java.util.Locale.ROOT, "paused %.3f ms (event %s)",
                pauseNs[0] / 1e6, CoreCommands.NODE_MOVED));

        // 5. go signal; guest re-reads A and writes B through iot1; host reads B
        s = steps.begin("guest re-reads and writes again through " + Demo.IOT1 + "; NBD reads it back");
        try (NbdClient nbd = openNbd()) {
            byte[] go = new byte[512];
            System.arraycopy(GO.getBytes(StandardCharsets.US_ASCII), 0, go, 0, GO.length());
            nbd.write(GO_OFFSET, go);
            nbd.flush();
        } catch (IOException e) {
            return fail(s, "NBD: " + e.getMessage());
        }
        why = awaitExit(FINISH_TIMEOUT_MS);
        if (why != null) return fail(s, why);
        why = compareOverNbd(B_OFFSET, pattern(LINE_B));
        if (why != null) return fail(s, why);
        s.ok("both patterns intact, guest powered off");
        return true;
    }

    private boolean fail(Steps.Step s, String why) {
        if (stopped.getAsBoolean()) { // Ctrl-C also reaches QEMU (same process group): whatever broke, it was that
            s.interrupted();
            return false;
        }
        s.fail(why);
        String tail = tail(12);
        if (!tail.isEmpty()) {
            steps.note("      --- guest console (" + Demo.display(console) + "), last lines ---");
            for (String l : tail.split("\n")) steps.note("      | " + l);
        }
        return false;
    }

    /** The demo's export over its unix socket, in transmission; closing it says NBD_CMD_DISC. */
    private NbdClient openNbd() throws IOException {
        return NbdClient.open(UnixDomainSocketAddress.of(demo.nbdSocket()), Demo.NODE);
    }

    /** Null when the NBD read at {@code offset} equals {@code expected}, else why not. */
    private String compareOverNbd(long offset, byte[] expected) {
        try (NbdClient nbd = openNbd()) {
            byte[] got = nbd.read(offset, expected.length);
            int at = Arrays.mismatch(got, expected);
            return at < 0 ? null : "byte " + (offset + at) + " differs: read 0x" + Integer.toHexString(got[at] & 0xff)
                    + ", the guest wrote 0x" + Integer.toHexString(expected[at] & 0xff);
        } catch (IOException e) {
            return "NBD: " + e.getMessage();
        }
    }

    /** Waits until the guest reports {@code key}; null on success, else why it did not. */
    private String awaitResult(String key, long timeoutMs) {
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (true) {
            if (stopped.getAsBoolean()) return "interrupted";
            Map<String, String> r = GuestRun.parseResults(read());
            if (r.containsKey("error")) return "the guest reports: " + r.get("error");
            if (r.containsKey(key)) return null;
            if (!qemu.isAlive()) return "QEMU exited with code " + qemu.exitValue() + " before the guest got there";
            if (System.currentTimeMillis() > deadline) return "no sign of the guest after " + timeoutMs / 1000 + " s";
            sleep(50);
        }
    }

    /** Waits for QEMU to exit after the guest's workload; null when the guest reported success. */
    private String awaitExit(long timeoutMs) {
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (qemu.isAlive()) {
            if (stopped.getAsBoolean()) return "interrupted";
            if (System.currentTimeMillis() > deadline) return "the guest did not finish within " + timeoutMs / 1000 + " s";
            sleep(50);
        }
        Map<String, String> r = GuestRun.parseResults(read());
        if (r.containsKey("error")) return "the guest reports: " + r.get("error");
        if (!"ok".equals(r.get("reread-a")) || !"ok".equals(r.get("written-b"))) return "the guest did not finish its work";
        if (!"0".equals(r.get("exit")) || qemu.exitValue() != 0) {
            return "the guest's workload exited with " + r.get("exit") + ", QEMU with " + qemu.exitValue();
        }
        return null;
    }

    private String read() {
        try {
            return Files.exists(console) ? Files.readString(console, StandardCharsets.ISO_8859_1) : "";
        } catch (IOException e) {
            return "";
        }
    }

    private String tail(int lines) {
        List<String> all = read().lines().filter(l -> !l.isBlank()).toList();
        return String.join("\n", all.subList(Math.max(0, all.size() - lines), all.size()));
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** What the guest part lacks on this host, and the one command that installs it. */
    public record Missing(String what, String install) { }

    /** Null when the guest can run here, else what is missing and the {@code apt-get install} line (with sudo when not root). */
    public static Missing missingTools() {
        List<String> what = new java.util.ArrayList<>();
        List<String> pkgs = new java.util.ArrayList<>();
        if (HostTools.find(HostTools.QEMU) == null) {
            what.add("QEMU (" + HostTools.QEMU + ")");
            pkgs.add(HostTools.debianPackage(HostTools.QEMU));
        }
        try {
            HostTools.staticBusybox();
        } catch (GuestException e) {
            what.add("a static busybox (" + HostTools.STATIC_BUSYBOX + ")");
            pkgs.add("busybox-static");
        }
        if (pkgs.isEmpty()) return null;
        boolean root = "root".equals(System.getProperty("user.name"));
        return new Missing(String.join(" and ", what), (root ? "" : "sudo ") + "apt-get install " + String.join(" ", pkgs));
    }
}
