package dev.vmm.cli.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;

class ScriptTest {
    @Test
    void commandsSleepsAndNestedRepeats() throws Exception {
        Script s = Script.parse("t.qmp", """
                # header
                query-iothreads

                repeat 3
                  x-blockdev-set-iothread node-name=d0 iothread=iot1
                  sleep 20ms
                  repeat 2
                    sleep 1.5s
                  end
                end
                """);
        List<Script.Step> steps = s.steps();
        assertEquals(2, steps.size());
        Script.Command c = (Script.Command) steps.get(0);
        assertEquals(2, c.line());
        assertEquals("query-iothreads", c.request().command());
        Script.Repeat r = (Script.Repeat) steps.get(1);
        assertEquals(4, r.line());
        assertEquals(3, r.count());
        assertEquals(3, r.body().size());
        assertEquals(20_000_000L, ((Script.Sleep) r.body().get(1)).nanos());
        Script.Repeat inner = (Script.Repeat) r.body().get(2);
        assertEquals(1_500_000_000L, ((Script.Sleep) inner.body().get(0)).nanos());
    }

    private static String error(String text) {
        return assertThrows(Script.ScriptException.class, () -> Script.parse("t.qmp", text)).getMessage();
    }

    @Test
    void errorsNameTheLine() {
        assertEquals("t.qmp:2: expected 'sleep N(ms|s)', e.g. 'sleep 20ms', got 'sleep 20'", error("query-version\nsleep 20\n"));
        assertEquals("t.qmp:1: expected 'repeat N' with N a whole number >= 0, got 'repeat x'", error("repeat x\nend"));
        assertEquals("t.qmp:3: 'end' without 'repeat'", error("repeat 1\nend\nend"));
        assertEquals("t.qmp:2: 'repeat' without 'end'", error("query-version\nrepeat 2\nquery-version\n"));
        assertEquals("t.qmp:1: expected key=value, got 'writable'", error("block-export-add writable"));
    }

    @Test
    void monitorsWaitsAndVariables() throws Exception {
        Script s = Script.parse("t.qmp", String.join("\n",
                "monitor dst ${RUN}/b.sock",
                "@dst blockdev-add driver=file node-name=t0 filename=${RUN}/t.img",
                "wait-event BLOCK_JOB_READY device=m0 timeout=10m",
                "wait-event @dst JOB_STATUS_CHANGE",
                ""), java.util.Map.of("RUN", "/tmp/x"));
        List<Script.Step> steps = s.steps();
        assertEquals(new Script.Monitor(1, "dst", Path.of("/tmp/x/b.sock")), steps.get(0));
        Script.Command c = (Script.Command) steps.get(1);
        assertEquals("dst", c.monitor());
        assertEquals("/tmp/x/t.img", c.request().arguments().get("filename"));
        Script.WaitEvent w = (Script.WaitEvent) steps.get(2);
        assertEquals("", w.monitor());
        assertEquals("BLOCK_JOB_READY", w.event());
        assertEquals(java.util.Map.of("device", "m0"), w.data());
        assertEquals(600_000_000_000L, w.timeoutNanos());
        Script.WaitEvent w2 = (Script.WaitEvent) steps.get(3);
        assertEquals("dst", w2.monitor());
        assertEquals(Script.DEFAULT_WAIT_NANOS, w2.timeoutNanos());
        assertTrue(ScriptRunner.matches(w, java.util.Map.of("event", "BLOCK_JOB_READY", "data", java.util.Map.of("device", "m0", "len", 5))));
        assertFalse(ScriptRunner.matches(w, java.util.Map.of("event", "BLOCK_JOB_READY", "data", java.util.Map.of("device", "m1"))));
        assertFalse(ScriptRunner.matches(w, java.util.Map.of("event", "BLOCK_JOB_READY")));
    }

    @Test
    void monitorAndWaitErrorsNameTheLine() {
        assertEquals("t.qmp:1: unknown monitor 'b' (define it with 'monitor NAME PATH' first)", error("@b query-version"));
        assertEquals("t.qmp:2: monitor 'b' is defined twice", error("monitor b /x\nmonitor b /y"));
        assertEquals("t.qmp:1: expected 'monitor NAME PATH', got 'monitor b'", error("monitor b"));
        assertEquals("t.qmp:1: expected 'wait-event [@MONITOR] EVENT [key=value ...] [timeout=30s]', got 'wait-event'", error("wait-event"));
        assertEquals("t.qmp:1: expected timeout=N(ms|s|m), got 'timeout=5h'", error("wait-event X timeout=5h"));
        assertEquals("t.qmp:1: unknown monitor 'c' (define it with 'monitor NAME PATH' first)", error("wait-event @c X"));
        String unset = assertThrows(Script.ScriptException.class,
                () -> Script.parse("t.qmp", "query-version x=${NOPE_VMM}", java.util.Map.of())).getMessage();
        assertEquals("t.qmp:1: ${NOPE_VMM} is not set in the environment", unset);
    }

    @Test
    void theShippedExamplesParse() throws Exception {
        Path root = Path.of(System.getenv().getOrDefault("VMM_ROOT", "..")).resolve("examples");
        java.util.Map<String, String> env = java.util.Map.of("RUN", "/run/x", "PKI", "/pki", "DST_HOST", "10.0.0.2", "DST_PORT", "10809");
        for (String f : List.of("rotate-three-iothreads.qmp", "spread-disks.qmp", "drain-iothread.qmp", "migrate-disk.qmp")) {
            Script.parse(f, Files.readString(root.resolve(f)), env);
        }
        // examples/backup.sh's two scripts, with the values it passes
        java.util.Map<String, String> backup = java.util.Map.of("NODE", "disk0", "SCRATCH", "/tmp/s.qcow2", "FLEECE", "fleece-1",
                "EXPORT", "backup", "BITMAPS", "[\"b0\"]",
                "ACTIONS", "{\"type\":\"block-dirty-bitmap-disable\",\"data\":{\"node\":\"disk0\",\"name\":\"b0\"}},");
        for (String f : List.of("backup-start.qmp", "backup-stop.qmp")) {
            Script.parse(f, Files.readString(root.resolve(f)), backup);
        }
    }

    @Test
    void percentilesAreNearestRank() {
        List<Long> sorted = java.util.stream.LongStream.rangeClosed(1, 200).boxed().toList();
        assertEquals(100, ScriptRunner.percentile(sorted, 50));
        assertEquals(198, ScriptRunner.percentile(sorted, 99));
        assertEquals(7, ScriptRunner.percentile(List.of(7L), 99));
    }
}
