package dev.vmm.cli.top;

import dev.vmm.cli.qmp.QmpClient;
import dev.vmm.cli.qmp.ShellSyntax;
import java.io.IOException;
import java.util.List;
import java.util.Map;

/**
 * One poll of a daemon's monitor: {@code query-iothreads}, {@code query-blockstats},
 * {@code x-query-export-stats}, {@code x-query-handoffs} and {@code query-block-jobs}, stamped with the local monotonic
 * time. Our {@code x-} commands are optional: against qemu-storage-daemon (which lacks them) the
 * corresponding parts are empty.
 *
 * <p>Thread contract: immutable once taken; {@link #take} uses the client, one thread at a time.
 */
record Sample(long nanos, List<Map<String, Object>> iothreads, List<Map<String, Object>> blockstats,
        List<Map<String, Object>> exports, Map<String, Object> handoffs, List<Map<String, Object>> jobs) {

    static Sample take(QmpClient qmp) throws IOException {
        long t = System.nanoTime();
        return new Sample(t, list(qmp, "query-iothreads", true), list(qmp, "query-blockstats", true),
                list(qmp, "x-query-export-stats", false), map(qmp, "x-query-handoffs"), list(qmp, "query-block-jobs", false));
    }

    @SuppressWarnings("unchecked")
    private static List<Map<String, Object>> list(QmpClient qmp, String command, boolean required) throws IOException {
        Object r = call(qmp, command, required);
        return r instanceof List<?> l ? (List<Map<String, Object>>) l : List.of();
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> map(QmpClient qmp, String command) throws IOException {
        Object r = call(qmp, command, false);
        return r instanceof Map<?, ?> m ? (Map<String, Object>) m : Map.of();
    }

    private static Object call(QmpClient qmp, String command, boolean required) throws IOException {
        Map<String, Object> reply = qmp.execute(new ShellSyntax.Request(command, Map.of()));
        if (reply.containsKey("error")) {
            if (!required) return null; // an extension this monitor does not have
            throw new IOException(command + ": " + dev.vmm.core.json.Json.write(reply.get("error")));
        }
        return reply.get("return");
    }
}
