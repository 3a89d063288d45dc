package dev.vmm.cli.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
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
    void theShippedExamplesParse() throws Exception {
        Path root = Path.of(System.getenv().getOrDefault("VMM_ROOT", "..")).resolve("examples");
        for (String f : List.of("rotate-three-iothreads.qmp", "spread-disks.qmp", "drain-iothread.qmp")) {
            Script.parse(f, Files.readString(root.resolve(f)));
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
