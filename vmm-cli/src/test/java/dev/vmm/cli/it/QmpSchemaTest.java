package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.ServeCommand;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.json.Json;
import dev.vmm.core.qmp.QmpCommands;
import dev.vmm.core.qmp.QmpException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@code query-qmp-schema} as a libvirt-like client uses it (qmp_schema_client.py, plain json):
 * the schema parses, schema queries resolve, every listed command called with arguments built
 * from its declaration answers a return or a proper error (never a protocol break), returns match
 * the declared ret-type, and the argument errors read as qemu-storage-daemon 7.2's.
 */
@Timeout(180)
class QmpSchemaTest extends PeerTestBase {

    private static List<String> monitor(Path sock) {
        return List.of("--chardev", "socket,id=m,path=" + sock + ",server=on,wait=off", "--monitor", "chardev=m");
    }

    /** The command table of {@code vmm serve}, built as serve builds it. */
    private static <T> T withCommands(java.util.function.Function<QmpCommands, T> f) throws Exception {
        Daemon daemon = Daemon.start();
        try {
            return f.apply(ServeCommand.qmpCommands(daemon, () -> { }));
        } finally {
            daemon.shutdown(false);
        }
    }

    @Test
    void everyRegisteredCommandAndEveryEmittedEventIsDeclared() throws Exception {
        withCommands(t -> {
            assertEquals(List.of(), t.undeclared(), "commands registered without argument/return declarations");
            String schema = Json.write(t.schema());
            assertFalse(schema.contains("x-undeclared"), "an export driver declares no qmpOptions: " + schema);
            for (String event : emittedEvents()) {
                assertNotNull(t.eventData(event), "event " + event + " is emitted but not declared");
            }
            return null;
        });
    }

    /**
     * Every {@code emit(NAME, data)} in the main sources, NAME resolved through its
     * {@code static final String NAME = "..."} declaration.
     */
    static Set<String> emittedEvents() {
        Path root = Path.of(System.getProperty("user.dir")).getParent(); // vmm-cli -> the reactor root
        Pattern call = Pattern.compile("\\bemit\\(\\s*([A-Za-z_][A-Za-z0-9_.]*|\"[^\"]+\")\\s*,");
        Map<String, String> constants = new HashMap<>();
        List<String> refs = new ArrayList<>();
        try (Stream<Path> files = Files.walk(root)) {
            for (Path p : files.filter(p -> p.toString().endsWith(".java") && p.toString().contains("/src/main/java/")).toList()) {
                String src = Files.readString(p);
                Matcher c = Pattern.compile("static final String ([A-Z_0-9]+) = \"([^\"]+)\"").matcher(src);
                while (c.find()) constants.put(c.group(1), c.group(2));
                Matcher m = call.matcher(src);
                while (m.find()) refs.add(m.group(1));
            }
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
        Set<String> out = new LinkedHashSet<>();
        for (String r : refs) {
            if (r.startsWith("\"")) {
                out.add(r.substring(1, r.length() - 1));
            } else {
                String name = r.substring(r.lastIndexOf('.') + 1);
                String v = constants.get(name);
                if (v == null) fail("emit(" + r + ", ...): cannot resolve the event name in the sources");
                out.add(v);
            }
        }
        assertTrue(out.size() >= 2, "found emit calls: " + out);
        return out;
    }

    @Test
    @SuppressWarnings("unchecked")
    void libvirtLikeClientCallsEveryListedCommand() throws Exception {
        Assumptions.assumeFalse(Peers.qsd(), "vmm's schema; QSD is the reference of argumentErrorsReadAsQsds");
        Path dir = socketDir();
        Path mon = dir.resolve("qmp.sock");
        Path image = Images.sparse(tmp.resolve("disk.img"), 4 * MiB);
        VmmProcess vmm = serve(Stream.concat(Stream.of("--object", "iothread,id=iot0",
                "--blockdev", "driver=file,node-name=disk0,filename=" + image,
                "--nbd-server", "addr.type=unix,addr.path=" + dir.resolve("nbd.sock"),
                "--export", "type=nbd,id=exp0,node-name=disk0"), monitor(mon).stream()).toList());
        Run.Result r = Run.cmd(python("qmp_schema_client.py", "every", mon.toString())).timeoutSeconds(120).expect(0);
        Map<String, Object> report = (Map<String, Object>) Json.parse(r.stdout().strip());

        Map<String, Object> greeting = (Map<String, Object>) report.get("greeting");
        assertEquals(List.of("QMP"), new ArrayList<>(greeting.keySet()));
        Map<String, Object> qmp = (Map<String, Object>) greeting.get("QMP");
        assertEquals(List.of("version", "capabilities"), new ArrayList<>(qmp.keySet()));
        assertEquals(Map.of("return", Map.of(), "id", 1L), report.get("capabilities"));

        List<Object> commands = (List<Object>) report.get("commands");
        assertEquals(commands, report.get("query-commands"), "query-commands and query-qmp-schema list the same commands");
        List<String> expected = withCommands(QmpCommands::names);
        assertEquals(new LinkedHashSet<>(expected), new LinkedHashSet<>(commands));
        assertTrue(((List<Object>) report.get("events")).containsAll(List.of("BLOCK_EXPORT_DELETED", "VMM_NODE_MOVED")), r.stdout());

        Map<String, Object> queries = (Map<String, Object>) report.get("queries");
        assertEquals("str", queries.get("blockdev-add/arg-type/+file/filename"));
        assertEquals("BlockdevRefOrNull", queries.get("blockdev-add/arg-type/+qcow2/backing"));
        assertEquals("str", queries.get("block-export-add/arg-type/+nbd/name"));
        assertEquals("str", queries.get("nbd-server-start/arg-type/tls-creds"));
        assertEquals("str", queries.get("query-named-block-nodes/ret-type/element-type/node-name"));
        assertEquals(null, queries.get("blockdev-add/arg-type/+nosuch"));

        int ok = 0;
        for (Object o : (List<Object>) report.get("calls")) {
            Map<String, Object> call = (Map<String, Object>) o;
            String name = (String) call.get("command");
            Map<String, Object> args = (Map<String, Object>) call.get("arguments");
            Map<String, Object> reply = (Map<String, Object>) call.get("reply");
            if (args.containsKey("x-bogus-member")) {
                assertEquals("Parameter 'x-bogus-member' is unexpected", ((Map<String, Object>) reply.get("error")).get("desc"), name);
            } else if (reply.containsKey("return")) {
                ok++;
                Object ret = reply.get("return");
                withCommands(t -> {
                    try {
                        t.entry(name).returns().check(ret, null);
                    } catch (QmpException e) {
                        fail(name + " returned what its ret-type does not allow: " + e.getMessage() + "\n" + Json.write(ret));
                    }
                    return null;
                });
            } else {
                Map<String, Object> err = (Map<String, Object>) reply.get("error");
                String desc = (String) err.get("desc");
                assertFalse(desc.contains("internal error") || desc.contains("Exception"), name + " " + args + ": " + desc);
            }
        }
        assertTrue(ok >= 8, "most query commands succeed with generated arguments: " + r.stdout());
        assertTrue(((Map<String, Object>) report.get("quit")).containsKey("return"), r.stdout());
        for (int i = 0; i < 200 && vmm.isAlive(); i++) Thread.sleep(50);
        assertEquals(0, vmm.stop(), vmm.stderr());
    }

    /** The same bad requests to vmm and qemu-storage-daemon 7.2: the same error class and desc. */
    @Test
    @SuppressWarnings("unchecked")
    void argumentErrorsReadAsQsds() throws Exception {
        Map<Server, Map<String, Object>> answers = new HashMap<>();
        for (Server server : Server.values()) {
            Path dir = socketDir();
            Path mon = dir.resolve("qmp.sock");
            serve(server, monitor(mon));
            Run.Result r = Run.cmd(python("qmp_schema_client.py", "errors", mon.toString())).timeoutSeconds(60).expect(0);
            answers.put(server, (Map<String, Object>) Json.parse(r.stdout().strip()));
        }
        Map<String, Object> qsd = answers.get(Server.QSD);
        Map<String, Object> vmm = answers.get(Server.VMM);
        // QSD offers "oob"; we offer no capability (commands run in order): the one difference.
        assertEquals(List.of("oob"), qsd.remove("greeting-capabilities"));
        assertEquals(List.of(), vmm.remove("greeting-capabilities"));
        assertEquals(qsd.remove("negotiation-bad-enable"), vmm.remove("negotiation-bad-enable"));
        List<String> diffs = new ArrayList<>();
        for (String k : qsd.keySet()) if (!qsd.get(k).equals(vmm.get(k))) diffs.add(k + "\n  qsd: " + qsd.get(k) + "\n  vmm: " + vmm.get(k));
        assertEquals(List.of(), diffs, String.join("\n", diffs));
    }
}
