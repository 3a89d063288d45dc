package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The server under test as a child process: {@code java <vmm.jvm.flags> -cp <test classpath>
 * dev.vmm.cli.Main serve ARGS --pidfile F}.
 *
 * <p>With {@code -Dvmm.it.server=qsd} it launches {@code qemu-storage-daemon ARGS --pidfile F}
 * instead: the command lines are the same by design, so the suite can be checked against the
 * reference implementation.
 *
 * <p>stdout and stderr go to {@code target/it-logs/<label>-<n>.out|err}. {@link #start} returns
 * once the pidfile exists (the issue: it is written only when every listener accepts).
 */
public final class VmmProcess implements AutoCloseable {
    static final long START_TIMEOUT_MS = 60_000; // a cold JVM on a loaded 2-core machine took over 20 s once
    static final long STOP_TIMEOUT_MS = 20_000;
    private static final AtomicInteger SEQ = new AtomicInteger();

    private final Process process;
    private final Path pidfile;
    private final Path stdout;
    private final Path stderr;

    private VmmProcess(Process process, Path pidfile, Path stdout, Path stderr) {
        this.process = process;
        this.pidfile = pidfile;
        this.stdout = stdout;
        this.stderr = stderr;
    }

    /** The full command line: the launcher (java or QSD) followed by {@code serveArgs}. */
    public static List<String> commandLine(List<String> serveArgs) {
        return commandLine(serveArgs, Peers.qsd());
    }

    /** The full command line for vmm, or for qemu-storage-daemon when {@code qsd}. */
    public static List<String> commandLine(List<String> serveArgs, boolean qsd) {
        List<String> cmd = new ArrayList<>();
        if (qsd) {
            cmd.add(Peers.require("qemu-storage-daemon"));
        } else {
            cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
            String flags = System.getProperty("vmm.jvm.flags", "").strip();
            if (!flags.isEmpty() && !flags.startsWith("${")) {
                cmd.addAll(Arrays.asList(flags.split("\\s+")));
            }
            // Passed on from the mvn command line: -Dvmm.tls.provider=jdk runs the TLS tests on the JDK provider.
            for (String p : new String[] {"vmm.tls.provider", "io.netty.leakDetection.level"}) {
                if (System.getProperty(p) != null) cmd.add("-D" + p + "=" + System.getProperty(p));
            }
            cmd.add("-cp");
            cmd.add(System.getProperty("java.class.path"));
            cmd.add("dev.vmm.cli.Main");
            cmd.add("serve");
        }
        cmd.addAll(serveArgs);
        return cmd;
    }

    /**
     * Starts the server with {@code args} plus {@code --pidfile dir/<label>.pid} and waits for the
     * pidfile; fails the test with the captured stderr if the process exits first or the pidfile
     * does not appear within 20 s.
     */
    public static VmmProcess start(Path dir, String label, List<String> args) {
        return start(dir, label, args, Peers.qsd());
    }

    /** {@link #start(Path, String, List)} with vmm, or qemu-storage-daemon when {@code qsd}. */
    public static VmmProcess start(Path dir, String label, List<String> args, boolean qsd) {
        return start(dir, label, args, qsd, false);
    }

    /**
     * Like {@link #start(Path, String, List, boolean)}, but an exit before the pidfile is an
     * answer, not a failure: check {@link #isAlive()} and {@link #exitCode()}.
     */
    public static VmmProcess startOrExit(Path dir, String label, List<String> args, boolean qsd) {
        return start(dir, label, args, qsd, true);
    }

    private static VmmProcess start(Path dir, String label, List<String> args, boolean qsd, boolean exitIsAnAnswer) {
        String name = safe(label) + "-" + SEQ.incrementAndGet();
        Path pidfile = dir.resolve(name + ".pid");
        List<String> all = new ArrayList<>(args);
        all.add("--pidfile");
        all.add(pidfile.toString());
        Path logs = logDir();
        Path out = logs.resolve(name + ".out");
        Path err = logs.resolve(name + ".err");
        List<String> cmd = commandLine(all, qsd);
        Process p;
        try {
            Files.writeString(logs.resolve(name + ".cmd"), String.join(" ", cmd) + "\n");
            p = new ProcessBuilder(cmd).redirectOutput(out.toFile()).redirectError(err.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null"))).start();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot start " + cmd, e);
        }
        VmmProcess vmm = new VmmProcess(p, pidfile, out, err);
        long deadline = System.currentTimeMillis() + START_TIMEOUT_MS;
        while (true) {
            if (vmm.pidFromFile() > 0) {
                return vmm;
            }
            if (!p.isAlive() && exitIsAnAnswer) {
                return vmm;
            }
            if (!p.isAlive()) {
                fail("server exited with code " + p.exitValue() + " before writing its pidfile\ncommand: "
                        + String.join(" ", cmd) + "\n--- stderr ---\n" + vmm.stderr() + "\n--- stdout ---\n"
                        + vmm.stdout());
            }
            if (System.currentTimeMillis() > deadline) {
                vmm.kill();
                fail("no pidfile after " + START_TIMEOUT_MS + " ms\ncommand: " + String.join(" ", cmd)
                        + "\n--- stderr ---\n" + vmm.stderr());
            }
            sleep(20);
        }
    }

    /**
     * Runs the server to completion (for command lines that must be rejected): no pidfile is
     * added by this method; waits at most {@code timeoutSeconds}.
     */
    public static Run.Result runToExit(List<String> args, long timeoutSeconds) {
        return runToExit(args, timeoutSeconds, Peers.qsd());
    }

    /** {@link #runToExit(List, long)} with vmm, or qemu-storage-daemon when {@code qsd}. */
    public static Run.Result runToExit(List<String> args, long timeoutSeconds, boolean qsd) {
        return Run.cmd(commandLine(args, qsd)).timeoutSeconds(timeoutSeconds).expectAny();
    }

    public Path pidfile() {
        return pidfile;
    }

    public long pid() {
        return process.pid();
    }

    public boolean isAlive() {
        return process.isAlive();
    }

    /** The exit code of a process that has exited. */
    public int exitCode() {
        return process.exitValue();
    }

    /** The pid written to the pidfile, or -1 if it is missing or not (yet) a number. */
    public long pidFromFile() {
        try {
            String s = Files.readString(pidfile, StandardCharsets.US_ASCII).strip();
            return s.isEmpty() ? -1 : Long.parseLong(s);
        } catch (IOException | NumberFormatException e) {
            return -1;
        }
    }

    public String stderr() {
        return readQuietly(stderr);
    }

    public String stdout() {
        return readQuietly(stdout);
    }

    /**
     * SIGTERM, then waits up to 20 s and returns the exit code; fails the test (after
     * SIGKILL) if the server does not exit in time.
     */
    public int stop() {
        if (!process.isAlive()) {
            return process.exitValue();
        }
        process.destroy(); // SIGTERM on Linux
        try {
            if (!process.waitFor(STOP_TIMEOUT_MS, TimeUnit.MILLISECONDS)) {
                kill();
                fail("server ignored SIGTERM for " + STOP_TIMEOUT_MS + " ms\n--- stderr ---\n" + stderr());
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            kill();
            fail("interrupted while stopping the server");
        }
        return process.exitValue();
    }

    /** Fails the test unless the process is still running, showing its stderr. */
    public void assertAlive() {
        if (!process.isAlive()) {
            fail("server died with exit code " + process.exitValue() + "\n--- stderr ---\n" + stderr());
        }
    }

    /** SIGKILL and reap; never fails. */
    public void kill() {
        process.destroyForcibly();
        try {
            process.waitFor(10, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** For {@code @AfterEach}: stop politely if still running, then make sure it is gone. */
    @Override
    public void close() {
        if (process.isAlive()) {
            process.destroy();
            try {
                if (!process.waitFor(STOP_TIMEOUT_MS, TimeUnit.MILLISECONDS)) {
                    kill();
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                kill();
            }
        }
    }

    static Path logDir() {
        Path dir = Path.of(System.getProperty("basedir", "."), "target", "it-logs");
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return dir;
    }

    private static String safe(String label) {
        return label.replaceAll("[^A-Za-z0-9_.-]", "_");
    }

    private static String readQuietly(Path p) {
        try {
            return Files.readString(p, StandardCharsets.UTF_8);
        } catch (IOException e) {
            return "(cannot read " + p + ": " + e + ")";
        }
    }

    static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException(e);
        }
    }
}
