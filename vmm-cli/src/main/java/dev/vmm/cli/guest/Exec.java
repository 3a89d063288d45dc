package dev.vmm.cli.guest;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** Runs a short host command to completion, output captured through a temp file. Stateless: any thread. */
final class Exec {
    record Result(List<String> command, int exit, String output) {
        String describe() {
            String out = output.strip();
            if (out.length() > 2000) out = "..." + out.substring(out.length() - 2000);
            return String.join(" ", command) + " exited with " + exit + (out.isEmpty() ? "" : ": " + out);
        }
    }

    private Exec() {}

    /** Runs {@code command} (its first word is resolved with {@link HostTools#require}) in {@code dir}. */
    static Result run(Path dir, long timeoutSeconds, String... command) {
        List<String> cmd = new ArrayList<>(List.of(command));
        cmd.set(0, HostTools.require(cmd.get(0)).toString());
        Path out = null;
        try {
            out = Files.createTempFile("vmm-exec", ".out");
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true)
                    .redirectOutput(out.toFile()).redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")));
            if (dir != null) pb.directory(dir.toFile());
            pb.environment().put("LC_ALL", "C");
            Process p = pb.start();
            if (!p.waitFor(timeoutSeconds, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                p.waitFor(10, TimeUnit.SECONDS);
                throw new GuestException(String.join(" ", cmd) + " did not finish within " + timeoutSeconds + " s");
            }
            return new Result(cmd, p.exitValue(), Files.readString(out, StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new GuestException("cannot run " + String.join(" ", cmd) + ": " + e.getMessage(), e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new GuestException("interrupted while running " + String.join(" ", cmd), e);
        } finally {
            if (out != null) {
                try {
                    Files.deleteIfExists(out);
                } catch (IOException ignored) {
                    // temp file
                }
            }
        }
    }

    /** Like {@link #run} but throws unless the command exits with 0. */
    static Result check(Path dir, long timeoutSeconds, String... command) {
        Result r = run(dir, timeoutSeconds, command);
        if (r.exit() != 0) {
            throw new GuestException(r.describe());
        }
        return r;
    }
}
