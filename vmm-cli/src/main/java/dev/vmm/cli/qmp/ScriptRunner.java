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

    public ScriptRunner(QmpClient client, String name, PrintWriter out, PrintWriter err, boolean continueOnError) {
        this.client = client;
        this.name = name;
        this.out = out;
        this.err = err;
        this.continueOnError = continueOnError;
        client.onEvent(this::event);
    }

    /** Runs the script; true when no command failed. */
    public boolean run(Script script) throws IOException {
        run(script.steps());
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
            }
        }
    }

    private void command(Script.Command c) throws IOException {
        long t0 = System.nanoTime();
        Map<String, Object> reply = client.execute(c.request());
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
