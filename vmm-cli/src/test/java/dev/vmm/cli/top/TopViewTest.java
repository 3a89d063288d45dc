package dev.vmm.cli.top;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** Rates from deltas: two samples one second apart, as a QMP monitor would return them. */
class TopViewTest {
    private static Sample sample(long seconds, long cpuNs, long reads, long bytes, long handoffs) {
        Map<String, Object> iot = Map.of("id", "iot0", "requests", reads, "nodes", List.of("disk0"), "x-cpu-ns", cpuNs);
        Map<String, Object> lat = Map.of("count", reads, "mean-ns", 20_000L, "p50-ns", 15_000L, "p99-ns", 90_000L, "p99.9-ns", 400_000L);
        Map<String, Object> stats = Map.of("rd_operations", reads, "rd_bytes", bytes, "wr_operations", 0L, "wr_bytes", 0L,
                "failed_operations", 0L, "x-latency", lat, "x-in-flight", 1L, "x-iothread", "iot0");
        Map<String, Object> export = Map.of("id", "exp0", "type", "nbd", "node-name", "disk0", "clients", 2L,
                "rd_operations", reads, "rd_bytes", bytes, "wr_operations", 0L, "wr_bytes", 0L, "failed_operations", 0L, "in-flight", 1L);
        Map<String, Object> moved = Map.of("node-name", "disk0", "from", "iot1", "to", "iot0", "pause-ns", 130_000L, "time-ms", 0L);
        Map<String, Object> h = Map.of("total", handoffs, "pause-p50-ns", 130_000L, "pause-p99-ns", 130_000L, "pause-max-ns", 130_000L,
                "recent", List.of(moved));
        return new Sample(seconds * 1_000_000_000L, List.of(iot), List.of(Map.of("node-name", "disk0", "stats", stats)), List.of(export), h,
                List.of(Map.of("device", "m0", "type", "mirror", "status", "running", "offset", seconds * 4L * 1048576, "len", 64L * 1048576)));
    }

    @Test
    void ratesAreDeltasOverTheInterval() {
        String frame = TopView.render("qmp.sock", sample(10, 1_000_000_000L, 1000, 4_096_000, 0),
                sample(11, 1_250_000_000L, 51_000, 4_096_000 + 50_000L * 4096, 1));
        assertTrue(frame.contains(" 25.0%"), "load = 0.25 s of CPU in 1 s\n" + frame);
        assertTrue(frame.matches("(?s).*\\ndisk0 +iot0 +50,000 +0 +195\\.3 +0\\.0 +1 +20\\.0 +15\\.0 +90\\.0 +400\\.0 +0\\n.*"), frame);
        assertTrue(frame.matches("(?s).*\\nexp0 +nbd +disk0 +2 +50,000 .*"), frame);
        assertTrue(frame.contains("HANDOFFS 1 in all, 1 in this interval") && frame.contains("iot1 -> iot0  paused 130.0 us"), frame);
        // the mirror copied 4 MiB in the 1 s interval: 44 of 64 MiB
        assertTrue(frame.matches("(?s).*\\nm0 +mirror +running +46137344 +67108864 +68\\.8% +4\\.0.*"), frame);
        assertTrue(!frame.contains("JOB") || frame.contains("m0"), frame);
    }

    @Test
    void aMonitorWithoutOurExtensionsStillShowsNodes() {
        Sample a = new Sample(0, List.of(Map.of("id", "iot0")), List.of(Map.of("node-name", "disk0", "stats", Map.of("rd_operations", 0L))),
                List.of(), Map.of(), List.of());
        Sample b = new Sample(2_000_000_000L, List.of(Map.of("id", "iot0")),
                List.of(Map.of("node-name", "disk0", "stats", Map.of("rd_operations", 100L))), List.of(), Map.of(), List.of());
        String frame = TopView.render("qsd", a, b);
        assertTrue(frame.matches("(?s).*\\ndisk0 +50 .*"), frame);
        assertTrue(!frame.contains("EXPORT") && !frame.contains("HANDOFFS") && !frame.contains("JOB"), frame);
    }
}
