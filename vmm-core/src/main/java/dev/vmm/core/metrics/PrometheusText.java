package dev.vmm.core.metrics;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.BlockStats;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.stats.ExportStats;
import dev.vmm.core.stats.HandoffLog;
import dev.vmm.core.stats.LatencyCopies;
import dev.vmm.core.stats.LatencyHistogram;
import dev.vmm.iothread.IOThread;
import java.util.List;
import java.util.Locale;

/**
 * The daemon's counters in the Prometheus text exposition format 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/): the same {@link BlockStats},
 * {@link ExportStats}, IOThread counters and {@link HandoffLog} that QMP shows, read when
 * scraped, so serving metrics costs the data path nothing.
 *
 * <p>Counters end in {@code _total}; latencies and pauses are summaries in seconds with
 * quantiles 0.5, 0.99 and 0.999. A node's home IOThread is an info metric
 * ({@code vmm_node_info{node,iothread} 1}) rather than a label on every series, so a handoff does
 * not start new series.
 *
 * <p>Thread contract: any thread except the main loop and the IOThreads: each node's latency
 * histogram is copied on its home thread, and this waits for that, at most
 * {@link LatencyCopies#WAIT_MS} per IOThread: the summaries of a node or an export whose
 * IOThread does not answer are left out of that scrape (logged once by {@link LatencyCopies}).
 */
public final class PrometheusText {
    private final StringBuilder out = new StringBuilder(8192);
    private String family;

    private PrometheusText() {}

    /** The whole scrape. */
    public static String render(Daemon daemon) {
        PrometheusText p = new PrometheusText();
        p.write(daemon);
        return p.out.toString();
    }

    private void write(Daemon daemon) {
        List<BlockNode> nodes = daemon.nodes();
        List<BlockExport> exports = daemon.exports();
        List<IOThread> threads = new java.util.ArrayList<>(daemon.iothreads());
        threads.add(0, daemon.mainLoop());

        // ---- IOThreads ----
        family("vmm_iothread_requests_total", "counter", "Data-path requests served on the IOThread.");
        for (IOThread t : threads) sample("iothread", t.id(), t.requests());
        family("vmm_iothread_cpu_seconds_total", "counter",
                "CPU time of the IOThread; its rate is the thread's busy fraction (running tasks and I/O vs. waiting).");
        for (IOThread t : threads) {
            long ns = t.cpuTimeNanos();
            if (ns >= 0) sample("iothread", t.id(), ns / 1e9);
        }
        family("vmm_iothread_nodes", "gauge", "Block nodes homed on the IOThread.");
        for (IOThread t : threads) {
            int n = 0;
            for (BlockNode b : nodes) if (b.home() == t) n++;
            sample("iothread", t.id(), n);
        }

        // ---- block nodes ----
        family("vmm_node_info", "gauge", "A block node and the IOThread that homes it now (always 1).");
        for (BlockNode n : nodes) sample2("node", n.name(), "iothread", n.home().id(), 1);
        nodeCounter(nodes, "vmm_node_read_operations_total", "Read requests completed.", s -> s.readOps.sum());
        nodeCounter(nodes, "vmm_node_read_bytes_total", "Bytes read.", s -> s.readBytes.sum());
        nodeCounter(nodes, "vmm_node_write_operations_total", "Write requests completed.", s -> s.writeOps.sum());
        nodeCounter(nodes, "vmm_node_written_bytes_total", "Bytes written.", s -> s.writeBytes.sum());
        nodeCounter(nodes, "vmm_node_flush_operations_total", "Flush requests completed.", s -> s.flushOps.sum());
        nodeCounter(nodes, "vmm_node_discard_operations_total", "Discard (trim) requests completed.", s -> s.discardOps.sum());
        nodeCounter(nodes, "vmm_node_write_zeroes_operations_total", "Write-zeroes requests completed.", s -> s.zeroOps.sum());
        nodeCounter(nodes, "vmm_node_failed_operations_total", "Requests that failed with an I/O error.", s -> s.errors.sum());
        family("vmm_node_in_flight_requests", "gauge", "Requests accepted by the node's exports and not yet completed.");
        for (BlockNode n : nodes) {
            long f = 0;
            for (BlockExport e : exports) if (e.node() == n) f += e.stats().inFlightNow();
            sample("node", n.name(), f);
        }
        family("vmm_node_request_latency_seconds", "summary", "Service time of each request on the home IOThread (parse to completion).");
        for (BlockNode n : nodes) {
            LatencyHistogram h = LatencyCopies.copy(n.home(), n.stats().latency); // its one writer: a consistent copy
            if (h != null) summary("node", n.name(), h); // else being removed, or its IOThread is stuck: skip it this time
        }

        // ---- exports ----
        family("vmm_export_info", "gauge", "An export, its type and node (always 1).");
        for (BlockExport e : exports) {
            line("vmm_export_info{export=\"" + esc(e.id()) + "\",type=\"" + esc(e.type()) + "\",node=\"" + esc(e.node().name()) + "\"} 1");
        }
        family("vmm_export_clients", "gauge", "Users connected now (NBD clients, a vhost-user front-end).");
        for (BlockExport e : exports) sample("export", e.id(), e.users());
        exportCounter(exports, "vmm_export_connections_total", "Users that have connected.", s -> s.connections.sum());
        exportCounter(exports, "vmm_export_read_operations_total", "Read requests completed.", s -> s.readOps.sum());
        exportCounter(exports, "vmm_export_read_bytes_total", "Bytes read.", s -> s.readBytes.sum());
        exportCounter(exports, "vmm_export_write_operations_total", "Write requests completed.", s -> s.writeOps.sum());
        exportCounter(exports, "vmm_export_written_bytes_total", "Bytes written.", s -> s.writeBytes.sum());
        exportCounter(exports, "vmm_export_other_operations_total", "Requests that move no data (flush, trim, zeroes, status).", s -> s.otherOps.sum());
        exportCounter(exports, "vmm_export_failed_operations_total", "Requests answered with an error.", s -> s.errors.sum());
        family("vmm_export_in_flight_requests", "gauge", "Requests accepted and not yet completed.");
        for (BlockExport e : exports) sample("export", e.id(), e.stats().inFlightNow());
        family("vmm_export_request_latency_seconds", "summary", "Service time of the export's requests on the home IOThread.");
        for (BlockExport e : exports) {
            LatencyHistogram h = LatencyCopies.copy(e.node().home(), e.stats().latency);
            if (h != null) summary("export", e.id(), h);
        }

        // ---- handoffs ----
        HandoffLog log = daemon.handoffs();
        LatencyHistogram pauses = log.pauses();
        family("vmm_handoffs_total", "counter", "Block nodes moved between IOThreads.");
        line("vmm_handoffs_total " + pauses.count());
        family("vmm_handoff_pause_seconds", "summary", "Pause of each handoff, first quiesce to last resume.");
        summary(null, null, pauses);

        // ---- block jobs ----
        List<dev.vmm.core.job.Job> jobs = daemon.jobs().all();
        family("vmm_job_info", "gauge", "A block job and its status (always 1).");
        for (dev.vmm.core.job.Job j : jobs) {
            out.append(family).append("{job=\"").append(esc(j.id())).append("\",type=\"").append(esc(j.type()))
                    .append("\",status=\"").append(j.status().wire()).append("\"} 1\n");
        }
        family("vmm_job_offset_bytes", "gauge", "Bytes the job has copied (query-block-jobs' offset).");
        for (dev.vmm.core.job.Job j : jobs) if (j instanceof dev.vmm.core.job.MirrorJob m) sample("job", j.id(), m.offset());
        for (dev.vmm.core.job.Job j : jobs) if (j instanceof dev.vmm.core.job.BackupJob b) sample("job", j.id(), b.offset());
        family("vmm_job_len_bytes", "gauge", "Bytes the job has to copy in all, so far (query-block-jobs' len; grows with writes).");
        for (dev.vmm.core.job.Job j : jobs) if (j instanceof dev.vmm.core.job.MirrorJob m) sample("job", j.id(), m.len());
        for (dev.vmm.core.job.Job j : jobs) if (j instanceof dev.vmm.core.job.BackupJob b) sample("job", j.id(), b.len());
    }

    private interface NodeValue { long of(BlockStats s); }

    private interface ExportValue { long of(ExportStats s); }

    private void nodeCounter(List<BlockNode> nodes, String name, String help, NodeValue v) {
        family(name, "counter", help);
        for (BlockNode n : nodes) sample("node", n.name(), v.of(n.stats()));
    }

    private void exportCounter(List<BlockExport> exports, String name, String help, ExportValue v) {
        family(name, "counter", help);
        for (BlockExport e : exports) sample("export", e.id(), v.of(e.stats()));
    }

    private void family(String name, String type, String help) {
        family = name;
        out.append("# HELP ").append(name).append(' ').append(help).append('\n');
        out.append("# TYPE ").append(name).append(' ').append(type).append('\n');
    }

    private void sample(String label, String value, double v) {
        out.append(family).append('{').append(label).append("=\"").append(esc(value)).append("\"} ").append(num(v)).append('\n');
    }

    private void sample2(String l1, String v1, String l2, String v2, double v) {
        out.append(family).append('{').append(l1).append("=\"").append(esc(v1)).append("\",").append(l2).append("=\"")
                .append(esc(v2)).append("\"} ").append(num(v)).append('\n');
    }

    private void line(String s) { out.append(s).append('\n'); }

    /** Quantiles, _sum and _count of a histogram in ns, as seconds; label may be null. */
    private void summary(String label, String value, LatencyHistogram h) {
        String l = label == null ? "" : label + "=\"" + esc(value) + "\",";
        String only = label == null ? "" : "{" + label + "=\"" + esc(value) + "\"}";
        for (double q : new double[] {0.5, 0.99, 0.999}) {
            out.append(family).append('{').append(l).append("quantile=\"").append(num(q)).append("\"} ")
                    .append(num(h.percentile(q * 100) / 1e9)).append('\n');
        }
        out.append(family).append("_sum").append(only).append(' ').append(num(h.sum() / 1e9)).append('\n');
        out.append(family).append("_count").append(only).append(' ').append(h.count()).append('\n');
    }

    /** Label value escaping of the text format: backslash, double quote, line feed. */
    static String esc(String s) {
        return s.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n");
    }

    private static String num(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) return Long.toString((long) v);
        return String.format(Locale.ROOT, "%.9g", v).replaceFirst("\\.?0+(e|$)", "$1");
    }
}
