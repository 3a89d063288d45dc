package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.qmp.QmpClient;
import dev.vmm.cli.qmp.ShellSyntax;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.core.testing.TestCertificates;
import dev.vmm.nbd.server.NbdServerComponent;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Every field of every command-line option and every QMP command, given each of a list of bad
 * values one at a time: the answer is a clear error naming the field (or the value is
 * accepted), never an unexpected exception, a stack trace or a dead monitor. The sweep finds
 * fields by walking valid templates, so a key added to a template is swept without more code.
 */
@Timeout(180)
class BadInputSweepTest extends PeerTestBase {
    /** Values no field should choke on: wrong types, signs, sizes, syntax and encodings. */
    static final List<String> BAD_TEXT = List.of("", " ", "x", "-1", "0", "1.5", "1e3", "0x10", "99999999999999999999",
            "-9223372036854775808", "on,,off", "ON", "yes", "\u0000", "\u00e9\u00e8", "../../..", "a".repeat(5000), "%s%n");

    // ---- command line: the code behind --object, --blockdev, --nbd-server and --export ----

    @Test
    void everyCommandLineFieldRejectsBadValuesByName() throws Exception {
        Path img = Images.sparse(tmp.resolve("disk.img"), 4 * MiB);
        Path sock = socketDir();
        Path certs = TestCertificates.createCa(tmp.resolve("pki"), "sweep CA").serverDir("server", TestCertificates.KeyFormat.PKCS8_RSA);
        Map<String, String> templates = new LinkedHashMap<>();
        templates.put("--object", "qom-type=iothread,id=iotX,poll-max-ns=0,poll-grow=0,poll-shrink=0,aio-max-batch=0");
        templates.put("--object tls", "qom-type=tls-creds-x509,id=tlsX,dir=" + certs + ",endpoint=server,verify-peer=on,sanity-check=on");
        templates.put("--blockdev", "driver=file,node-name=nX,filename=" + img + ",read-only=off,cache.direct=off,discard=unmap,aio=threads");
        templates.put("--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=0,max-connections=0,handshake-max-seconds=10");
        templates.put("--nbd-server tls", "addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=tls0");
        templates.put("--export nbd", "type=nbd,id=eX,node-name=d0,writable=on,iothread=iot0,fixed-iothread=off,name=n,description=d");
        templates.put("--export vhost-user-blk", "type=vhost-user-blk,id=eX,node-name=d0,writable=on,iothread=iot0,"
                + "addr.type=unix,addr.path=" + sock.resolve("vu.sock") + ",num-queues=1,logical-block-size=512");
        int cases = 0;
        List<String> failures = new ArrayList<>();
        for (Map.Entry<String, String> t : templates.entrySet()) {
            String optionName = t.getKey().split(" ")[0];
            for (String field : keysOf(t.getValue())) {
                for (String bad : BAD_TEXT) {
                    Map<String, String> flat = flatOf(t.getValue());
                    flat.put(field, bad);
                    cases++;
                    Daemon daemon = Daemon.start();
                    try {
                        daemon.addIOThread("iot0");
                        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=d0,filename=" + img, null));
                        if (t.getKey().endsWith(" tls")) {
                            daemon.objectAdd(KeyValueParser.parse("--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + certs, "qom-type"));
                        }
                        if (optionName.equals("--export")) {
                            NbdServerComponent.configure(daemon, KeyValueParser.parse("--nbd-server",
                                    "addr.type=unix,addr.path=" + sock.resolve("nbd.sock"), null));
                        }
                        Options o = Options.of(optionName, flat);
                        switch (optionName) {
                            case "--object" -> daemon.objectAdd(o);
                            case "--blockdev" -> daemon.blockdevAdd(o);
                            case "--nbd-server" -> startNbd(daemon, o);
                            default -> daemon.exportAdd(o);
                        }
                    } catch (OptionException e) {
                        String m = e.getMessage();
                        if (!m.contains(optionName) || !m.contains(field.substring(field.lastIndexOf('.') + 1)) || !clean(m)) {
                            failures.add(optionName + " " + field + "=" + show(bad) + ": " + m);
                        }
                    } catch (DaemonException e) {
                        if (!e.getMessage().contains(optionName) || !clean(e.getMessage())) {
                            failures.add(optionName + " " + field + "=" + show(bad) + ": " + e.getMessage());
                        }
                    } catch (Exception | Error e) {
                        failures.add(optionName + " " + field + "=" + show(bad) + ": unexpected " + e);
                    } finally {
                        daemon.shutdown(false);
                    }
                }
            }
        }
        System.out.println("command-line sweep: " + cases + " cases, " + failures.size() + " failures");
        assertTrue(cases > 500, "too few cases: " + cases);
        assertTrue(failures.isEmpty(), failures.size() + " of " + cases + " bad values were not clear errors:\n"
                + String.join("\n", failures.subList(0, Math.min(40, failures.size()))));
    }

    @Test
    void malformedOptionSyntaxIsAClearError() {
        List<String> failures = new ArrayList<>();
        for (String text : List.of(",", ",,", "=", "=x", "a==b", "a=1,a=2", "a.=1", ".a=1", "a..b=1", "a=1,a.b=2",
                "{", "{}x", "{\"a\":[1]}", "{\"a\":{\"b\":null}}", "[1]", "\"s\"", "{\"a\":1e999}", "a=\u0000",
                "x".repeat(100_000) + "=1")) {
            try {
                KeyValueParser.parse("--blockdev", text, null).checkAllConsumed();
                failures.add(show(text) + ": accepted");
            } catch (OptionException e) {
                if (!e.getMessage().contains("--blockdev") || !clean(e.getMessage())) failures.add(show(text) + ": " + e.getMessage());
            } catch (Exception | Error e) {
                failures.add(show(text) + ": unexpected " + e);
            }
        }
        assertTrue(failures.isEmpty(), String.join("\n", failures));
    }

    // ---- QMP: the same against a running server ----

    @Test
    void everyQmpArgumentRejectsBadValuesAndTheMonitorStays() throws Exception {
        Path img = Images.sparse(tmp.resolve("disk.img"), 4 * MiB);
        Path img2 = Images.sparse(tmp.resolve("other.img"), 1 * MiB);
        Path img3 = Images.sparse(tmp.resolve("mirror-target.img"), 4 * MiB);
        Path dir = socketDir();
        Path mon = dir.resolve("qmp.sock");
        Path certs = TestCertificates.createCa(tmp.resolve("pki"), "sweep CA").serverDir("server", TestCertificates.KeyFormat.PKCS8_RSA);
        VmmProcess vmm = serve("--object", "iothread,id=iot0", "--object", "iothread,id=iot1",
                "--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + certs,
                "--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--blockdev", "driver=file,node-name=tS,filename=" + img3,
                "--nbd-server", Net.unixServer(dir.resolve("nbd.sock")),
                "--export", "type=nbd,id=exp0,node-name=disk0,writable=on,iothread=iot0",
                "--qmp", mon.toString());
        Map<String, Map<String, Object>> templates = new LinkedHashMap<>();
        templates.put("object-add", map("qom-type", "iothread", "id", "iotS"));
        // a second template of a command: "name#variant"
        templates.put("object-add#tls", map("qom-type", "tls-creds-x509", "id", "tlsS", "dir", certs.toString(), "endpoint", "server",
                "verify-peer", true, "sanity-check", true));
        templates.put("object-del", map("id", "iotS"));
        templates.put("blockdev-add", map("driver", "file", "node-name", "nS", "filename", img2.toString(), "read-only", false,
                "cache", map("direct", false), "discard", "unmap", "aio", "threads"));
        templates.put("blockdev-del", map("node-name", "nS"));
        templates.put("block-export-add", map("type", "nbd", "id", "eS", "node-name", "disk0", "writable", false,
                "name", "s", "description", "d", "iothread", "iot0"));
        templates.put("block-export-del", map("id", "eS", "mode", "hard"));
        templates.put("x-blockdev-set-iothread", map("node-name", "disk0", "iothread", "iot1", "force", true));
        // speed 1: a variant that starts the job leaves it running (and tied to disk0) for the rest of the sweep
        templates.put("blockdev-mirror", map("job-id", "jS", "device", "disk0", "target", "tS", "sync", "full", "speed", 1,
                "granularity", 65536, "buf-size", 1048576, "copy-mode", "write-blocking", "on-source-error", "report",
                "on-target-error", "stop", "auto-finalize", true, "auto-dismiss", true));
        templates.put("block-job-set-speed", map("device", "jS", "speed", 1));
        templates.put("block-job-cancel", map("device", "jS", "force", false));
        templates.put("query-blockstats", map("query-nodes", true));
        templates.put("query-named-block-nodes", map("flat", true));
        templates.put("nbd-server-stop", map());
        templates.put("nbd-server-start", map("addr", map("type", "unix", "data", map("path", dir.resolve("n2.sock").toString())),
                "max-connections", 4));
        templates.put("nbd-server-start#tls", map("addr", map("type", "unix", "data", map("path", dir.resolve("n3.sock").toString())),
                "tls-creds", "tls0"));
        List<Object> badValues = new ArrayList<>(List.of(1, -1, 1.5, 1e300, true, false, List.of(), List.of(1, "x"), map(), map("a", 1),
                Long.MAX_VALUE, new java.math.BigInteger("123456789012345678901234567890")));
        badValues.addAll(BAD_TEXT);
        badValues.add(null);
        int cases = 0;
        List<String> failures = new ArrayList<>();
        try (QmpClient qmp = QmpClient.connect(mon)) {
            Set<String> registered = new java.util.TreeSet<>();
            Object cmds = qmp.execute(new ShellSyntax.Request("query-commands", Map.of())).get("return");
            for (Object c : (List<?>) cmds) registered.add((String) ((Map<?, ?>) c).get("name"));
            for (String name : registered) {
                if (name.equals("quit")) continue;
                List<Map<String, Object>> variants = new ArrayList<>();
                variants.add(map("bogus", 1));
                for (Map.Entry<String, Map<String, Object>> t : templates.entrySet()) {
                    if (!t.getKey().equals(name) && !t.getKey().startsWith(name + "#")) continue;
                    for (String path : leafPaths(t.getValue(), "")) {
                        for (Object bad : badValues) variants.add(replaced(t.getValue(), path, bad));
                        variants.add(replaced(t.getValue(), path, REMOVE));
                    }
                }
                for (Map<String, Object> args : variants) {
                    cases++;
                    Map<String, Object> reply = qmp.execute(new ShellSyntax.Request(name, args));
                    if (reply.containsKey("error")) {
                        Map<?, ?> err = (Map<?, ?>) reply.get("error");
                        String desc = String.valueOf(err.get("desc"));
                        if (!clean(desc) || desc.startsWith("internal error") || desc.isBlank()) {
                            failures.add(name + " " + show(String.valueOf(args)) + ": " + desc);
                        }
                    } else if (!reply.containsKey("return")) {
                        failures.add(name + " " + show(String.valueOf(args)) + ": no return, no error: " + reply);
                    }
                }
            }
            // Still the same server, still answering, its disk still exported.
            assertEquals(Set.of("return"), qmp.execute(new ShellSyntax.Request("query-version", Map.of())).keySet());
        }
        vmm.assertAlive();
        System.out.println("QMP sweep: " + cases + " requests, " + failures.size() + " failures");
        assertTrue(cases > 300, "too few cases: " + cases);
        assertTrue(failures.isEmpty(), failures.size() + " of " + cases + " requests got no clear error:\n"
                + String.join("\n", failures.subList(0, Math.min(40, failures.size()))));
        assertEquals(0, vmm.stop(), vmm.stderr());
        assertFalse(vmm.stderr().contains("\tat "), "a stack trace reached the log:\n" + vmm.stderr());
        assertFalse(vmm.stderr().contains("ERROR"), "an error was logged:\n" + vmm.stderr());
    }

    // ---- helpers ----

    /** As {@code vmm serve} does it: a failure to listen is the option's error. */
    private static void startNbd(Daemon daemon, Options o) throws Exception {
        NbdServerComponent nbd = NbdServerComponent.configure(daemon, o);
        try {
            nbd.start();
        } catch (java.io.IOException e) {
            throw new DaemonException("--nbd-server: " + e.getMessage(), e);
        }
    }

    private static final Object REMOVE = new Object();

    /** A message a user may see: one line, no Java exception names or internals. */
    private static boolean clean(String m) {
        if (m == null || m.isBlank() || m.contains("\n") || m.contains("Exception") || m.contains("java.")) return false;
        return !m.equals("null") && !m.endsWith(": null"); // a Java null's toString leaking out
    }

    private static String show(String s) {
        String t = s.replace("\u0000", "\\0");
        return t.length() > 60 ? t.substring(0, 60) + "...(" + t.length() + ")" : t;
    }

    private static Map<String, String> flatOf(String keyValues) {
        Map<String, String> m = new LinkedHashMap<>();
        for (String kv : keyValues.split(",")) {
            int eq = kv.indexOf('=');
            m.put(kv.substring(0, eq), kv.substring(eq + 1));
        }
        return m;
    }

    private static List<String> keysOf(String keyValues) {
        return new ArrayList<>(flatOf(keyValues).keySet());
    }

    static Map<String, Object> map(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    private static List<String> leafPaths(Map<String, Object> m, String prefix) {
        List<String> out = new ArrayList<>();
        for (Map.Entry<String, Object> e : m.entrySet()) {
            String p = prefix + e.getKey();
            out.add(p);
            if (e.getValue() instanceof Map<?, ?> sub) {
                @SuppressWarnings("unchecked")
                Map<String, Object> s = (Map<String, Object>) sub;
                out.addAll(leafPaths(s, p + "/"));
            }
        }
        return out;
    }

    /** A deep copy of {@code m} with the member at {@code path} ("a/b") set to {@code v} or removed. */
    @SuppressWarnings("unchecked")
    private static Map<String, Object> replaced(Map<String, Object> m, String path, Object v) {
        Map<String, Object> copy = deepCopy(m);
        List<String> parts = Arrays.asList(path.split("/"));
        Map<String, Object> at = copy;
        for (String p : parts.subList(0, parts.size() - 1)) at = (Map<String, Object>) at.get(p);
        String last = parts.get(parts.size() - 1);
        if (v == REMOVE) at.remove(last);
        else at.put(last, v);
        return copy;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> deepCopy(Map<String, Object> m) {
        Map<String, Object> copy = new LinkedHashMap<>();
        for (Map.Entry<String, Object> e : m.entrySet()) {
            copy.put(e.getKey(), e.getValue() instanceof Map<?, ?> sub ? deepCopy((Map<String, Object>) sub) : e.getValue());
        }
        return copy;
    }
}
