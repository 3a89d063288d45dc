package dev.vmm.cli.guest;

import java.nio.file.Path;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * What one guest run did: QEMU's exit code (or a timeout), the console output, and the
 * {@code VMMTEST:key=value} lines the guest printed.
 *
 * @param exitCode   QEMU's exit code; -1 after a timeout
 * @param timedOut   true if QEMU was killed because the run took longer than the timeout
 * @param elapsed    wall time from QEMU's start to its exit
 * @param consoleLog the file holding the console (and QEMU's own messages), or null when the
 *                   console went to the terminal
 * @param console    the console text ("" when it went to the terminal)
 * @param results    the result lines in order of appearance; a repeated key keeps its last value
 */
public record GuestRun(int exitCode, boolean timedOut, Duration elapsed, Path consoleLog, String console,
        Map<String, String> results) {

    public GuestRun {
        results = java.util.Collections.unmodifiableMap(new LinkedHashMap<>(results));
    }

    /** Parses {@code VMMTEST:key=value} lines; the prefix may follow other text on the line (kernel messages interleave). */
    public static Map<String, String> parseResults(String console) {
        Map<String, String> m = new LinkedHashMap<>();
        for (String line : console.split("\r?\n|\r")) {
            int at = line.indexOf(Initramfs.RESULT_PREFIX);
            if (at < 0) continue;
            String kv = line.substring(at + Initramfs.RESULT_PREFIX.length()).strip();
            int eq = kv.indexOf('=');
            if (eq <= 0) continue;
            m.put(kv.substring(0, eq), kv.substring(eq + 1));
        }
        return m;
    }

    /** The value the guest reported for {@code key}, or null. */
    public String result(String key) {
        return results.get(key);
    }

    /** The workload's exit status as the guest reported it ({@code VMMTEST:exit=N}), or null if it never got there. */
    public Integer workloadExit() {
        String v = results.get("exit");
        try {
            return v == null ? null : Integer.valueOf(v.strip());
        } catch (NumberFormatException e) {
            return null;
        }
    }

    /** True if QEMU exited by itself with 0 and the workload reported exit status 0. */
    public boolean succeeded() {
        return !timedOut && exitCode == 0 && Integer.valueOf(0).equals(workloadExit());
    }

    /** The last {@code lines} lines of the console. */
    public String tail(int lines) {
        List<String> all = List.of(console.split("\r?\n"));
        return String.join("\n", all.subList(Math.max(0, all.size() - lines), all.size()));
    }

    /** One paragraph for a failure message: outcome, log file and the console's tail. */
    public String describe() {
        return (timedOut ? "guest timed out after " + elapsed.toSeconds() + " s (QEMU killed)"
                        : "QEMU exited with " + exitCode + " after " + elapsed.toMillis() + " ms")
                + ", workload exit " + workloadExit()
                + (consoleLog == null ? "" : ", console log " + consoleLog)
                + "\n--- console tail ---\n" + tail(40);
    }

    /** Returns this run if it {@link #succeeded()}, else throws a {@link GuestException} with {@link #describe()}. */
    public GuestRun expectSuccess() {
        if (!succeeded()) throw new GuestException(describe());
        return this;
    }
}
