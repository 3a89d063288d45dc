package dev.vmm.cli.qmp;

import dev.vmm.core.json.Json;
import java.io.IOException;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Runs a {@link Script} against a {@link QmpClient}: one JSON line per command on {@code out}
 * ({@code {"line", "command", "return"|"error", "ms"}}), every event as it arrives, and at the
 * end a summary line ({@code {"summary": {"commands", "errors", "moves", "pause-ns": {...}}}}).
 * Moves and pauses come from our {@code VMM_NODE_MOVED} events (sent before the command's
 * reply, so all are in when the script ends); against a QEMU without that event, moves are the
 * successful {@code x-blockdev-set-iothread} commands and pauses are unknown.
 *
 * <p>More monitors ({@code monitor NAME PATH}) are connected when the script reaches that line
 * and closed at the end; their events are printed with {@code "monitor": NAME}. Every event is
 * also kept, per monitor, until a {@code wait-event} consumes it (with the ones before it), so
 * an event that arrived during an earlier command is not missed. While a {@code wait-event}
 * waits, a progress line goes to stderr every second for each job {@code query-jobs} lists.
 *
 * <p>Thread contract: one run per instance, on one thread.
 */
public final class ScriptRunner {
    private final QmpClient client;
    private final PrintWriter out;
    private final PrintWriter err;
    private final boolean continueOnError;
    private final String name;
    private final List<Long> pauses = new ArrayList<>();
    private long commands;
    private long errors;
    private long setIothreadOk;
    private boolean stopped;
    static final int MAX_KEPT_EVENTS = 10_000;
    private final Map<String, QmpClient> monitors = new LinkedHashMap<>();
    private final Map<String, List<Map<String, Object>>> unconsumed = new LinkedHashMap<>();
    /** Monitors where {@code query-jobs} failed: no progress lines from them. */
    private final java.util.Set<String> noJobs = new java.util.HashSet<>();

    public ScriptRunner(QmpClient client, String name, PrintWriter out, PrintWriter err, boolean continueOnError) {
        this.client = client;
        this.name = name;
        this.out = out;
        this.err = err;
        this.continueOnError = continueOnError;
        attach("", client);
    }

    private void attach(String monitor, QmpClient c) {
        monitors.put(monitor, c);
        List<Map<String, Object>> kept = new ArrayList<>();
        unconsumed.put(monitor, kept);
        c.onEvent(e -> {
            if (kept.size() >= MAX_KEPT_EVENTS) kept.remove(0); // a long script of moves, never waited on
            kept.add(e);
            if (!monitor.isEmpty()) {
                Map<String, Object> tagged = new LinkedHashMap<>(e);
                tagged.put("monitor", monitor);
                e = tagged;
            }
            event(e);
        });
    }

    /** Runs the script; true when no command failed. */
    public boolean run(Script script) throws IOException {
        try {
            run(script.steps());
        } finally {
            for (Map.Entry<String, QmpClient> m : monitors.entrySet()) {
                if (!m.getKey().isEmpty()) m.getValue().close();
            }
        }
        summary();
        return errors == 0;
    }

    private void run(List<Script.Step> steps) throws IOException {
        for (Script.Step s : steps) {
            if (stopped) return;
            if (s instanceof Script.Command c) {
                command(c);
            } else if (s instanceof Script.Sleep sl) {
                sleepNanos(sl.nanos());
            } else if (s instanceof Script.Repeat r) {
                for (long i = 0; i < r.count() && !stopped; i++) run(r.body());
            } else if (s instanceof Script.Monitor m) {
                try {
                    attach(m.name(), QmpClient.connect(m.path()));
                } catch (IOException e) {
                    fail(m.line(), "monitor " + m.name() + " " + m.path(), e.getMessage());
                    stopped = true; // later lines would name a monitor that is not there
                }
            } else if (s instanceof Script.WaitEvent w) {
                waitEvent(w);
            }
        }
    }

    private void command(Script.Command c) throws IOException {
        long t0 = System.nanoTime();
        Map<String, Object> reply = monitors.get(c.monitor()).execute(c.request());
        long t1 = System.nanoTime();
        commands++;
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("line", c.line());
        line.put("command", c.text());
        line.putAll(reply);
        line.put("ms", Math.round((t1 - t0) / 1e3) / 1e3);
        out.println(Json.write(line));
        out.flush();
        if (reply.containsKey("error")) {
            errors++;
            if (!continueOnError) {
                err.println("vmm qmp: " + name + ":" + c.line() + ": " + c.text() + ": " + desc(reply));
                err.flush();
                stopped = true;
            }
        } else if (c.request().command().equals("x-blockdev-set-iothread")) {
            setIothreadOk++;
        }
    }

    private void fail(int line, String text, String why) {
        errors++;
        err.println("vmm qmp: " + name + ":" + line + ": " + text + ": " + why);
        err.flush();
        if (!continueOnError) stopped = true;
    }

    private void waitEvent(Script.WaitEvent w) throws IOException {
        QmpClient c = monitors.get(w.monitor());
        List<Map<String, Object>> kept = unconsumed.get(w.monitor());
        long t0 = System.nanoTime();
        long deadline = t0 + w.timeoutNanos();
        Map<String, Object> found = null;
        while (found == null) {
            for (int i = 0; i < kept.size(); i++) {
                if (matches(w, kept.get(i))) {
                    found = kept.get(i);
                    kept.subList(0, i + 1).clear();
                    break;
                }
            }
            if (found != null) break;
            long left = deadline - System.nanoTime();
            if (left <= 0) break;
            if (c.awaitEvent(e -> matches(w, e), Math.min(left, 1_000_000_000L)) == null) {
                progress(w);
            }
        }
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("line", w.line());
        line.put("command", w.text());
        if (found != null) {
            line.put("return", Map.of("event", found.get("event")));
        } else {
            line.put("error", Map.of("class", "GenericError", "desc", "no " + w.event() + " event within the timeout"));
        }
        line.put("ms", Math.round((System.nanoTime() - t0) / 1e3) / 1e3);
        out.println(Json.write(line));
        out.flush();
        commands++;
        if (found == null) fail(w.line(), w.text(), "no " + w.event() + " event" + (w.data().isEmpty() ? "" : " with " + Json.write(w.data()))
                + " within " + w.timeoutNanos() / 1_000_000 + " ms");
    }

    static boolean matches(Script.WaitEvent w, Map<String, Object> e) {
        if (!w.event().equals(e.get("event"))) return false;
        Object d = e.get("data");
        if (w.data().isEmpty()) return true;
        if (!(d instanceof Map<?, ?> data)) return false;
        for (Map.Entry<String, Object> f : w.data().entrySet()) {
            // compared as JSON text: 5 and 5L, "a" and "a" are the same
            if (!data.containsKey(f.getKey()) || !Json.write(data.get(f.getKey())).equals(Json.write(f.getValue()))) return false;
        }
        return true;
    }

    /** One stderr line per job of the waited-on monitor: status and progress. */
    private void progress(Script.WaitEvent w) throws IOException {
        if (noJobs.contains(w.monitor())) return;
        Map<String, Object> r = monitors.get(w.monitor()).execute(new ShellSyntax.Request("query-jobs", Map.of()));
        if (!(r.get("return") instanceof List<?> jobs)) {
            noJobs.add(w.monitor());
            return;
        }
        for (Object o : jobs) {
            if (!(o instanceof Map<?, ?> j)) continue;
            long cur = j.get("current-progress") instanceof Number n ? n.longValue() : 0;
            long total = j.get("total-progress") instanceof Number n ? n.longValue() : 0;
            err.printf("vmm qmp: waiting for %s: job %s %s, %.1f/%.1f MiB%s%n", w.event(), j.get("id"), j.get("status"),
                    cur / 1048576.0, total / 1048576.0, total > 0 ? String.format(" (%.0f%%)", 100.0 * cur / total) : "");
        }
        err.flush();
    }

    /** {@code desc (class)} of an error reply. */
    static String desc(Map<String, Object> reply) {
        Object e = reply.get("error");
        if (e instanceof Map<?, ?> m) return m.get("desc") + " (" + m.get("class") + ")";
        return String.valueOf(e);
    }

    private void event(Map<String, Object> e) {
        out.println(Json.write(e));
        out.flush();
        if ("VMM_NODE_MOVED".equals(e.get("event")) && e.get("data") instanceof Map<?, ?> d && d.get("pause-ns") instanceof Number n) {
            pauses.add(n.longValue());
        }
    }

    private void summary() {
        Map<String, Object> s = new LinkedHashMap<>();
        s.put("commands", commands);
        s.put("errors", errors);
        long moves = pauses.isEmpty() ? setIothreadOk : pauses.size();
        s.put("moves", moves);
        String human = "vmm qmp: " + commands + " commands, " + errors + " errors, " + moves + " moves";
        if (!pauses.isEmpty()) {
            List<Long> sorted = new ArrayList<>(pauses);
            Collections.sort(sorted);
            Map<String, Object> p = new LinkedHashMap<>();
            p.put("p50", percentile(sorted, 50));
            p.put("p99", percentile(sorted, 99));
            p.put("max", sorted.get(sorted.size() - 1));
            s.put("pause-ns", p);
            human += String.format(", pause p50 %.1f us, p99 %.1f us, max %.1f us",
                    percentile(sorted, 50) / 1e3, percentile(sorted, 99) / 1e3, sorted.get(sorted.size() - 1) / 1e3);
        }
        out.println(Json.write(Map.of("summary", s)));
        out.flush();
        err.println(human);
        err.flush();
    }

    /** Nearest-rank percentile of a sorted, non-empty list. */
    static long percentile(List<Long> sorted, int pct) {
        int rank = (int) Math.ceil(pct / 100.0 * sorted.size());
        return sorted.get(Math.max(0, rank - 1));
    }

    private static void sleepNanos(long nanos) {
        try {
            Thread.sleep(nanos / 1_000_000, (int) (nanos % 1_000_000));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
