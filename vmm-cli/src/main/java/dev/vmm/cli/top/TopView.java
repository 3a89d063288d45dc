package dev.vmm.cli.top;

import java.time.Instant;
import java.time.ZoneId;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * One frame of {@code vmm top} from two samples: per IOThread its load (CPU time over wall time)
 * and homed disks; per disk and per export IOPS, MiB/s, in-flight requests, latency; the recent
 * handoffs with their pauses. Rates are deltas between the samples; the latency percentiles are
 * the node's since start (QMP shows the histogram's percentiles, not its buckets), the average is
 * over the interval.
 *
 * <p>Thread contract: a pure function; any thread.
 */
final class TopView {
    private static final DateTimeFormatter CLOCK = DateTimeFormatter.ofPattern("HH:mm:ss").withZone(ZoneId.systemDefault());
    private static final DateTimeFormatter CLOCK_MS = DateTimeFormatter.ofPattern("HH:mm:ss.SSS").withZone(ZoneId.systemDefault());
    /** Handoffs shown. */
    static final int HANDOFFS = 8;

    private TopView() {}

    static String render(String title, Sample prev, Sample cur) {
        double secs = Math.max(1e-9, (cur.nanos() - prev.nanos()) / 1e9);
        StringBuilder o = new StringBuilder();
        o.append(String.format(Locale.ROOT, "vmm top - %s - %s - interval %.1f s%n", title, CLOCK.format(Instant.now()), secs));

        // ---- IOThreads ----
        o.append(String.format(Locale.ROOT, "%n%-14s %6s %10s  %s%n", "IOTHREAD", "LOAD", "REQ/S", "NODES"));
        Map<String, Map<String, Object>> before = byKey(prev.iothreads(), "id");
        for (Map<String, Object> t : cur.iothreads()) {
            Map<String, Object> p = before.getOrDefault(str(t, "id"), t);
            long cpu = num(t, "x-cpu-ns") - num(p, "x-cpu-ns");
            String load = t.containsKey("x-cpu-ns") && num(t, "x-cpu-ns") >= 0 ? String.format(Locale.ROOT, "%5.1f%%", 100.0 * cpu / (secs * 1e9)) : "-";
            o.append(String.format(Locale.ROOT, "%-14s %6s %10s  %s%n", str(t, "id"), load,
                    rate(num(t, "requests") - num(p, "requests"), secs), join(t.get("nodes"))));
        }

        // ---- nodes ----
        o.append(String.format(Locale.ROOT, "%n%-14s %-10s %9s %9s %8s %8s %5s %8s %8s %8s %8s %6s%n", "NODE", "IOTHREAD",
                "R IOPS", "W IOPS", "R MiB/s", "W MiB/s", "INFL", "AVG us", "P50 us", "P99 us", "P99.9 us", "ERR/S"));
        Map<String, Map<String, Object>> nodesBefore = new HashMap<>();
        for (Map<String, Object> n : prev.blockstats()) nodesBefore.put(str(n, "node-name"), stats(n));
        for (Map<String, Object> n : cur.blockstats()) {
            Map<String, Object> s = stats(n);
            Map<String, Object> p = nodesBefore.getOrDefault(str(n, "node-name"), s);
            Map<String, Object> lat = sub(s, "x-latency");
            Map<String, Object> latBefore = sub(p, "x-latency");
            String avg = intervalMean(lat, latBefore);
            String iothread = s.containsKey("x-iothread") ? str(s, "x-iothread") : "";
            o.append(String.format(Locale.ROOT, "%-14s %-10s %9s %9s %8s %8s %5s %8s %8s %8s %8s %6s%n", str(n, "node-name"), iothread,
                    rate(delta(s, p, "rd_operations"), secs), rate(delta(s, p, "wr_operations"), secs),
                    mib(delta(s, p, "rd_bytes"), secs), mib(delta(s, p, "wr_bytes"), secs),
                    s.containsKey("x-in-flight") ? String.valueOf(num(s, "x-in-flight")) : "-", avg,
                    lat.isEmpty() ? "-" : us(num(lat, "p50-ns")), lat.isEmpty() ? "-" : us(num(lat, "p99-ns")),
                    lat.isEmpty() ? "-" : us(num(lat, "p99.9-ns")), rate(delta(s, p, "failed_operations"), secs)));
        }

        // ---- exports ----
        if (!cur.exports().isEmpty()) {
            o.append(String.format(Locale.ROOT, "%n%-14s %-15s %-12s %-16s %9s %9s %8s %8s %5s %8s %8s %8s %6s%n", "EXPORT", "TYPE", "NODE",
                    "CLIENTS", "R IOPS", "W IOPS", "R MiB/s", "W MiB/s", "INFL", "AVG us", "P50 us", "P99 us", "ERR/S"));
            Map<String, Map<String, Object>> exportsBefore = byKey(prev.exports(), "id");
            for (Map<String, Object> e : cur.exports()) {
                Map<String, Object> p = exportsBefore.getOrDefault(str(e, "id"), e);
                String clients = e.containsKey("frontend") ? str(e, "frontend") : String.valueOf(num(e, "clients"));
                Map<String, Object> lat = sub(e, "x-latency");
                o.append(String.format(Locale.ROOT, "%-14s %-15s %-12s %-16s %9s %9s %8s %8s %5s %8s %8s %8s %6s%n", str(e, "id"), str(e, "type"),
                        str(e, "node-name"), clients, rate(delta(e, p, "rd_operations"), secs), rate(delta(e, p, "wr_operations"), secs),
                        mib(delta(e, p, "rd_bytes"), secs), mib(delta(e, p, "wr_bytes"), secs), num(e, "in-flight"),
                        intervalMean(lat, sub(p, "x-latency")), lat.isEmpty() ? "-" : us(num(lat, "p50-ns")),
                        lat.isEmpty() ? "-" : us(num(lat, "p99-ns")), rate(delta(e, p, "failed_operations"), secs)));
            }
        }

        // ---- block jobs ----
        if (!cur.jobs().isEmpty()) {
            Map<String, Map<String, Object>> jobsBefore = byKey(prev.jobs(), "device");
            o.append(String.format(Locale.ROOT, "%n%-12s %-8s %-10s %14s %14s %6s %10s%n", "JOB", "TYPE", "STATUS", "OFFSET", "LEN", "DONE", "MiB/s"));
            for (Map<String, Object> j : cur.jobs()) {
                Map<String, Object> p = jobsBefore.getOrDefault(str(j, "device"), Map.of());
                long len = num(j, "len");
                o.append(String.format(Locale.ROOT, "%-12s %-8s %-10s %14d %14d %5.1f%% %10s%n", str(j, "device"), str(j, "type"),
                        str(j, "status"), num(j, "offset"), len, len == 0 ? 100.0 : 100.0 * num(j, "offset") / len,
                        mib(p.isEmpty() ? 0 : Math.max(0, num(j, "offset") - num(p, "offset")), secs)));
            }
        }

        // ---- handoffs ----
        Map<String, Object> h = cur.handoffs();
        if (!h.isEmpty()) {
            o.append(String.format(Locale.ROOT, "%nHANDOFFS %d in all, %s in this interval; pause p50 %s us, p99 %s us, max %s us%n",
                    num(h, "total"), num(h, "total") - num(prev.handoffs(), "total"),
                    us(num(h, "pause-p50-ns")), us(num(h, "pause-p99-ns")), us(num(h, "pause-max-ns"))));
            Object r = h.get("recent");
            List<?> recent = r instanceof List<?> l ? l : List.of();
            for (int i = Math.max(0, recent.size() - HANDOFFS); i < recent.size(); i++) {
                @SuppressWarnings("unchecked")
                Map<String, Object> x = (Map<String, Object>) recent.get(i);
                o.append(String.format(Locale.ROOT, "  %s  %-12s %s -> %s  paused %s us%n", CLOCK_MS.format(Instant.ofEpochMilli(num(x, "time-ms"))),
                        str(x, "node-name"), str(x, "from"), str(x, "to"), us(num(x, "pause-ns"))));
            }
        }
        return o.toString();
    }

    /** The mean service time of the requests between two samples of a latency summary. */
    private static String intervalMean(Map<String, Object> lat, Map<String, Object> latBefore) {
        long dCount = num(lat, "count") - num(latBefore, "count");
        double dSum = num(lat, "count") * (double) num(lat, "mean-ns") - num(latBefore, "count") * (double) num(latBefore, "mean-ns");
        return dCount > 0 ? us((long) (dSum / dCount)) : "-";
    }

    private static Map<String, Map<String, Object>> byKey(List<Map<String, Object>> l, String key) {
        Map<String, Map<String, Object>> m = new HashMap<>();
        for (Map<String, Object> x : l) m.put(str(x, key), x);
        return m;
    }

    private static Map<String, Object> stats(Map<String, Object> blockstats) { return sub(blockstats, "stats"); }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> sub(Map<String, Object> m, String key) {
        return m.get(key) instanceof Map<?, ?> s ? (Map<String, Object>) s : Map.of();
    }

    private static long delta(Map<String, Object> cur, Map<String, Object> prev, String key) {
        return Math.max(0, num(cur, key) - num(prev, key)); // a counter that went back: the object was re-created
    }

    static long num(Map<String, Object> m, String key) {
        return m.get(key) instanceof Number n ? n.longValue() : 0;
    }

    private static String str(Map<String, Object> m, String key) {
        Object v = m.get(key);
        return v == null ? "" : v.toString();
    }

    private static String join(Object list) {
        if (!(list instanceof List<?> l)) return "";
        List<String> s = new ArrayList<>();
        for (Object x : l) s.add(String.valueOf(x));
        return String.join(", ", s);
    }

    private static String rate(long delta, double secs) {
        return String.format(Locale.ROOT, "%,.0f", delta / secs);
    }

    private static String mib(long bytes, double secs) {
        return String.format(Locale.ROOT, "%.1f", bytes / secs / (1 << 20));
    }

    private static String us(long ns) {
        return ns >= 10_000_000 ? String.format(Locale.ROOT, "%,d", ns / 1000) : String.format(Locale.ROOT, "%.1f", ns / 1000.0);
    }
}
