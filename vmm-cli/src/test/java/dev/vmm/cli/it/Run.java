package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

/**
 * Runs a peer command to completion with a timeout and judges its exit code.
 *
 * <pre>{@code
 * Run.Result r = Run.cmd("qemu-img", "info", uri).expect(0);
 * }</pre>
 *
 * Output goes to temporary files (not pipes), so a chatty peer can never block on a full pipe.
 * On an unexpected exit code or a timeout the test fails with the command line, the exit code,
 * stdout and stderr.
 */
public final class Run {
    private final List<String> command;
    private long timeoutSeconds = 60;
    private Path dir;
    private final Map<String, String> env = new HashMap<>();

    private Run(List<String> command) {
        this.command = command;
    }

    public static Run cmd(String... command) {
        return new Run(new ArrayList<>(Arrays.asList(command)));
    }

    public static Run cmd(List<String> command) {
        return new Run(new ArrayList<>(command));
    }

    public Run timeoutSeconds(long seconds) {
        this.timeoutSeconds = seconds;
        return this;
    }

    public Run dir(Path dir) {
        this.dir = dir;
        return this;
    }

    public Run env(String key, String value) {
        env.put(key, value);
        return this;
    }

    /** What a finished command did. */
    public record Result(List<String> command, int exit, String stdout, String stderr) {
        public String describe() {
            return "command: " + String.join(" ", command) + "\nexit code: " + exit
                    + "\n--- stdout ---\n" + stdout + "\n--- stderr ---\n" + stderr;
        }
    }

    /** Runs the command and fails the test unless it exits with {@code expected}. */
    public Result expect(int expected) {
        Result r = expectAny();
        if (r.exit() != expected) {
            fail("expected exit code " + expected + "\n" + r.describe());
        }
        return r;
    }

    /** Runs the command and returns whatever it did; fails only on a timeout. */
    public Result expectAny() {
        Path out = null;
        Path err = null;
        try {
            out = Files.createTempFile("run", ".out");
            err = Files.createTempFile("run", ".err");
            ProcessBuilder pb = new ProcessBuilder(command)
                    .redirectOutput(out.toFile()).redirectError(err.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")));
            if (dir != null) {
                pb.directory(dir.toFile());
            }
            pb.environment().putAll(env);
            Process p = pb.start();
            if (!p.waitFor(timeoutSeconds, TimeUnit.SECONDS)) {
                p.descendants().forEach(ProcessHandle::destroyForcibly);
                p.destroyForcibly();
                p.waitFor(10, TimeUnit.SECONDS);
                Result r = new Result(command, -1, read(out), read(err));
                fail("timed out after " + timeoutSeconds + " s\n" + r.describe());
            }
            return new Result(command, p.exitValue(), read(out), read(err));
        } catch (IOException e) {
            return fail("cannot run " + command + ": " + e, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return fail("interrupted running " + command, e);
        } finally {
            delete(out);
            delete(err);
        }
    }

    private static String read(Path p) throws IOException {
        return new String(Files.readAllBytes(p), StandardCharsets.UTF_8);
    }

    private static void delete(Path p) {
        if (p != null) {
            try {
                Files.deleteIfExists(p);
            } catch (IOException ignored) {
                // best effort
            }
        }
    }
}
