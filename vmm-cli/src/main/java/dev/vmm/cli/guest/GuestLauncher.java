package dev.vmm.cli.guest;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.TimeUnit;

/**
 * Runs QEMU with a minimal Linux guest whose only disk is a {@code vhost-user-blk-pci} device on
 * a vhost-user socket: the device backend (ours or qemu-storage-daemon) serves {@code /dev/vda}.
 *
 * <pre>{@code
 * GuestRun run = GuestLauncher.of(kernel.vmlinuz(), initrd)
 *         .socket(sock).smp(2).numQueues(2)
 *         .consoleLog(dir.resolve("console.log")).timeout(Duration.ofSeconds(120))
 *         .run();
 * }</pre>
 *
 * <p>Always TCG: {@code -accel kvm} hangs on the machines this was built on. Guest RAM is a
 * shared memfd, which vhost-user requires. A launcher is a mutable builder, not thread-safe;
 * {@link #run} blocks the calling thread.
 *
 * <p>Thread contract: a builder, used by one thread; {@link #run()} blocks that thread until QEMU
 * exits or the timeout kills it. {@link #destroy()} may be called from any thread (a test's
 * clean-up while {@code run()} blocks another).
 */
public final class GuestLauncher {
    private final Path kernel;
    private final Path initrd;
    private Path socket;
    private String memory = "512M";
    private int smp = 1;
    private int numQueues = 1;
    private boolean reconnect;
    private String append = "console=ttyS0 quiet panic=-1";
    private final List<String> deviceOptions = new ArrayList<>();
    private final List<String> extraArgs = new ArrayList<>();
    private Path consoleLog;
    private Duration timeout = Duration.ofSeconds(120);
    /** The QEMU of the last {@link #start}, for {@link #destroy()} from another thread. */
    private volatile Process process;

    private GuestLauncher(Path kernel, Path initrd) {
        this.kernel = Objects.requireNonNull(kernel, "kernel");
        this.initrd = Objects.requireNonNull(initrd, "initrd");
    }

    /** A launcher for this kernel image and initramfs. */
    public static GuestLauncher of(Path kernel, Path initrd) {
        return new GuestLauncher(kernel, initrd);
    }

    /** The vhost-user socket of the backend (required). */
    public GuestLauncher socket(Path socket) {
        this.socket = socket;
        return this;
    }

    /** Guest RAM in QEMU's syntax ({@code 512M}, {@code 1G}); also the size of the shared memfd. Default 512M. */
    public GuestLauncher memory(String memory) {
        if (!memory.matches("(?i)\\d+[KMGT]?")) throw new GuestException("bad memory size '" + memory + "' (e.g. 512M, 1G)");
        this.memory = memory.toUpperCase(Locale.ROOT);
        return this;
    }

    /** Number of vCPUs. Default 1. */
    public GuestLauncher smp(int smp) {
        if (smp < 1) throw new GuestException("smp must be at least 1");
        this.smp = smp;
        return this;
    }

    /** The device's {@code num-queues}. Default 1. */
    public GuestLauncher numQueues(int numQueues) {
        if (numQueues < 1) throw new GuestException("num-queues must be at least 1");
        this.numQueues = numQueues;
        return this;
    }

    /** Adds {@code reconnect=1} to the chardev: QEMU reconnects after a backend restart. */
    public GuestLauncher reconnect(boolean reconnect) {
        this.reconnect = reconnect;
        return this;
    }

    /** Replaces the kernel command line (default {@code console=ttyS0 quiet panic=-1}). */
    public GuestLauncher append(String append) {
        this.append = append;
        return this;
    }

    /** Extra {@code key=value} options of the vhost-user-blk-pci device, e.g. {@code queue-size=256}. */
    public GuestLauncher deviceOption(String option) {
        deviceOptions.add(option);
        return this;
    }

    /** Extra QEMU arguments, e.g. {@code "-device", "virtio-rng-pci"}. */
    public GuestLauncher qemuArgs(String... args) {
        extraArgs.addAll(List.of(args));
        return this;
    }

    /** Sends the console and QEMU's messages to this file; without it they go to the terminal (inherited IO). */
    public GuestLauncher consoleLog(Path file) {
        this.consoleLog = file;
        return this;
    }

    /** Kill QEMU after this long ({@link Duration#ZERO}: never). Default 120 s. */
    public GuestLauncher timeout(Duration timeout) {
        this.timeout = timeout;
        return this;
    }

    /** The QEMU command line (the program resolved on PATH, or a {@link MissingToolException}). */
    public List<String> command() {
        if (socket == null) throw new GuestException("no vhost-user socket given");
        List<String> c = new ArrayList<>();
        c.add(HostTools.require(HostTools.QEMU).toString());
        c.addAll(List.of("-accel", "tcg", "-m", memory, "-smp", Integer.toString(smp),
                "-nographic", "-no-reboot", "-nic", "none",
                "-kernel", kernel.toString(), "-initrd", initrd.toString(), "-append", append,
                "-object", "memory-backend-memfd,id=mem,size=" + memory + ",share=on",
                "-numa", "node,memdev=mem",
                "-chardev", "socket,id=c0,path=" + qemuEscape(socket.toString()) + (reconnect ? ",reconnect=1" : ""),
                "-device", "vhost-user-blk-pci,chardev=c0,num-queues=" + numQueues
                        + (deviceOptions.isEmpty() ? "" : "," + String.join(",", deviceOptions))));
        c.addAll(extraArgs);
        return c;
    }

    /** Starts QEMU without waiting (the caller owns the process). */
    public Process start() {
        check();
        List<String> cmd = command();
        ProcessBuilder pb = new ProcessBuilder(cmd);
        if (consoleLog == null) {
            pb.inheritIO();
        } else {
            pb.redirectErrorStream(true).redirectOutput(consoleLog.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null")));
        }
        try {
            Process p = dev.vmm.cli.ChildProcesses.register(pb.start()); // killed by a second Ctrl-C as well
            process = p;
            return p;
        } catch (IOException e) {
            throw new GuestException("cannot start " + cmd.get(0) + ": " + e.getMessage(), e);
        }
    }

    /**
     * Kills the QEMU this launcher started last, if it still runs, and waits (up to 10 s) for it
     * to be gone: a test's clean-up after a failed assertion left {@link #run()} blocked.
     */
    public void destroy() {
        Process p = process;
        if (p == null) return;
        p.destroyForcibly();
        try {
            p.waitFor(10, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Runs the guest to its end (or the timeout, which kills QEMU) and reports what it did. */
    public GuestRun run() throws InterruptedException {
        long t0 = System.nanoTime();
        Process p = start();
        Thread killer = new Thread(p::destroyForcibly, "guest-qemu-killer");
        Runtime.getRuntime().addShutdownHook(killer);
        boolean timedOut = false;
        try {
            if (timeout.isZero() || timeout.isNegative()) {
                p.waitFor();
            } else if (!p.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
                timedOut = true;
                p.destroy();
                if (!p.waitFor(5, TimeUnit.SECONDS)) {
                    p.destroyForcibly();
                    p.waitFor(10, TimeUnit.SECONDS);
                }
            }
        } catch (InterruptedException e) {
            p.destroyForcibly();
            throw e;
        } finally {
            try {
                Runtime.getRuntime().removeShutdownHook(killer);
            } catch (IllegalStateException ignored) {
                // shutting down: the hook runs anyway
            }
        }
        Duration elapsed = Duration.ofNanos(System.nanoTime() - t0);
        String console = "";
        if (consoleLog != null) {
            try {
                console = new String(Files.readAllBytes(consoleLog), StandardCharsets.UTF_8);
            } catch (IOException e) {
                console = "(cannot read " + consoleLog + ": " + e.getMessage() + ")";
            }
        }
        Map<String, String> results = GuestRun.parseResults(console);
        return new GuestRun(timedOut ? -1 : p.exitValue(), timedOut, elapsed, consoleLog, console, results);
    }

    private void check() {
        if (!Files.isRegularFile(kernel)) throw new GuestException("kernel " + kernel + " is not a file");
        if (!Files.isRegularFile(initrd)) throw new GuestException("initrd " + initrd + " is not a file");
        if (socket == null) throw new GuestException("no vhost-user socket given");
        if (!reconnect && !Files.exists(socket)) {
            throw new GuestException("no vhost-user socket at " + socket + " (start the backend first)");
        }
    }

    /** QEMU option values escape ',' as ',,'. */
    private static String qemuEscape(String v) {
        return v.replace(",", ",,");
    }
}
