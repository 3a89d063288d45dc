package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.json.Json;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.qmp.CoreCommands;
import dev.vmm.core.qmp.QmpCommands;
import dev.vmm.core.qmp.QmpServer;
import dev.vmm.core.testing.Tools;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The QMP side of exported bitmaps, the same commands sent to vmm's monitor and to
 * qemu-storage-daemon 7.2's: {@code block-export-add} with {@code bitmaps} (a list; a string is
 * QEMU's type error), {@code nbd-server-add} with {@code bitmap} and {@code nbd-server-remove}
 * (before and after {@code nbd-server-start}); every answer (return or error text) must be equal,
 * and a bitmap is busy exactly while an export holds it.
 */
class NbdBitmapQmpTest {
    @TempDir Path dir;
    Daemon daemon;
    Path vmmQmp;

    /** One connection, commands from argv (name, JSON arguments, ...), one answer per line: the return value or "error: DESC". */
    static final String CLIENT = String.join("\n",
            "import json,socket,sys",
            "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rw')",
            "def cmd(c,a):",
            "    f.write(json.dumps({'execute':c,'arguments':a})+'\\n'); f.flush()",
            "    while True:",
            "        r=json.loads(f.readline())",
            "        if 'event' not in r: return r",
            "json.loads(f.readline()); cmd('qmp_capabilities',{})",
            "for i in range(2,len(sys.argv),2):",
            "    r=cmd(sys.argv[i], json.loads(sys.argv[i+1]))",
            "    print(json.dumps(r['return'], sort_keys=True) if 'return' in r else 'error: ' + r['error']['desc'])",
            "");

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        QmpCommands commands = new QmpCommands();
        CoreCommands.register(commands, daemon, (node, target) -> CompletableFuture.completedFuture(0L), () -> { });
        NbdQmpCommands.register(commands, daemon);
        QmpServer server = new QmpServer(daemon.mainLoop(), commands, QmpServer.Version.DEFAULT);
        daemon.putComponent(QmpServer.class, server);
        vmmQmp = dir.resolve("vmm-qmp.sock");
        server.listen(vmmQmp);
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    List<String> qmp(Path socket, String... nameArgs) throws Exception {
        Path script = dir.resolve("client.py");
        if (!Files.exists(script)) Files.writeString(script, CLIENT);
        List<String> cmd = new ArrayList<>(List.of(Tools.require("python3", "python3"), script.toString(), socket.toString()));
        cmd.addAll(List.of(nameArgs));
        return NbdDirtyBitmapPeersTest.run(cmd.toArray(String[]::new)).lines().toList();
    }

    @Test
    @SuppressWarnings("unchecked")
    void sameAnswersAsQsd() throws Exception {
        String img = Tools.require("qemu-img", "qemu-utils");
        Path p = dir.resolve("a.qcow2");
        NbdDirtyBitmapPeersTest.run(img, "create", "-q", "-f", "qcow2", p.toString(), "16M");
        NbdDirtyBitmapPeersTest.run(img, "bitmap", "--add", "-g", "4096", p.toString(), "on");
        NbdDirtyBitmapPeersTest.run(img, "bitmap", "--add", "--disable", p.toString(), "off");
        NbdDirtyBitmapPeersTest.write(p, "1M 4k");
        String vmmNbd = dir.resolve("vmm-nbd.sock").toString();
        String qsdNbd = dir.resolve("qsd-nbd2.sock").toString();
        String[] steps = {
            "nbd-server-add", "{\"device\":\"q\",\"bitmap\":\"off\"}",
            "nbd-server-remove", "{\"name\":\"q\"}",
            "nbd-server-start", "{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"NBD\"}}}",
            "nbd-server-add", "{\"device\":\"nope\"}",
            "nbd-server-add", "{\"device\":\"q\",\"bitmap\":\"nope\"}",
            "nbd-server-add", "{\"device\":\"q\",\"bitmap\":\"off\",\"writable\":true}",
            "nbd-server-add", "{\"device\":\"q\",\"name\":\"q2\",\"bitmap\":\"off\"}",
            "nbd-server-add", "{\"device\":\"q\"}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e1\",\"node-name\":\"q\",\"name\":\"e1\",\"bitmaps\":\"on\"}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e1\",\"node-name\":\"q\",\"name\":\"e1\",\"bitmaps\":[\"on\",\"off\"]}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e2\",\"node-name\":\"q\",\"name\":\"e2\",\"bitmaps\":[\"on\"]}",
            "nbd-server-remove", "{\"name\":\"zz\"}",
            "nbd-server-remove", "{\"name\":\"q\",\"mode\":\"hard\"}",
            "block-export-del", "{\"id\":\"e1\"}",
            "nbd-server-add", "{\"device\":\"q\",\"name\":\"q2\",\"bitmap\":\"off\"}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e3\",\"node-name\":\"q\",\"name\":\"e3\",\"bitmaps\":[\"on\"]}",
            "query-block-exports", "{}",
            "query-named-block-nodes", "{\"flat\":true}",
            "nbd-server-stop", "{}",
            "query-named-block-nodes", "{\"flat\":true}",
        };
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + p, null));
        List<String> ours = qmp(vmmQmp, with(steps, vmmNbd));
        List<String> theirs;
        Path qsdQmp = dir.resolve("qsd-qmp.sock");
        Process qsd = new ProcessBuilder(Tools.require("qemu-storage-daemon", "qemu-system-common"),
                "--chardev", "socket,id=m,path=" + qsdQmp + ",server=on,wait=off", "--monitor", "m",
                "--blockdev", "file,node-name=f,filename=" + p + ",read-only=on", "--blockdev", "qcow2,node-name=q,file=f,read-only=on")
                .redirectErrorStream(true).redirectOutput(dir.resolve("qsd.log").toFile()).start();
        try {
            for (int i = 0; i < 400 && !Files.exists(qsdQmp); i++) Thread.sleep(25);
            theirs = qmp(qsdQmp, with(steps, qsdNbd));
            qmp(qsdQmp, "quit", "{}");
        } finally {
            if (!qsd.waitFor(20, java.util.concurrent.TimeUnit.SECONDS)) qsd.destroyForcibly();
        }
        assertEquals(steps.length / 2, ours.size(), String.join("\n", ours));
        int n = steps.length / 2;
        int exportsAt = n - 4; // query-block-exports: compared as sets below
        for (int i = n - 3; i < n; i += 2) { // query-named-block-nodes: their dirty-bitmaps, field for field
            assertEquals(Json.write(bitmapsOf(theirs.get(i))), Json.write(bitmapsOf(ours.get(i))), "dirty-bitmaps, answer " + i);
        }
        for (int i = 0; i < n - 4; i++) assertEquals(theirs.get(i), ours.get(i), "answer to " + steps[2 * i] + " " + steps[2 * i + 1]);
        assertEquals(theirs.get(n - 2), ours.get(n - 2), "answer to nbd-server-stop");
        assertTrue(ours.get(5).equals("{}"), "a read-only node is exported read-only by nbd-server-add: " + ours.get(5));
        assertTrue(ours.get(6).startsWith("error: Bitmap 'off' is currently in use"), ours.get(6));
        // query-block-exports: the same exports (QEMU lists them newest first)
        List<Object> a = (List<Object>) Json.parse(ours.get(exportsAt));
        List<Object> b = (List<Object>) Json.parse(theirs.get(exportsAt));
        assertEquals(ids(b), ids(a));
        // the exported bitmaps show "busy": true; nbd-server-stop removes the exports and frees them
        assertTrue(Json.write(bitmapsOf(ours.get(n - 3))).contains("\"busy\":true"), ours.get(n - 3));
        assertTrue(Json.write(bitmapsOf(ours.get(n - 1))).contains("\"busy\":false"), ours.get(n - 1));
        assertTrue(!Json.write(bitmapsOf(ours.get(n - 1))).contains("\"busy\":true"), ours.get(n - 1));
        assertTrue(daemon.node("q").dirtyBitmaps().stream().noneMatch(x -> x.busy()), "released by nbd-server-stop");
    }

    @Test
    void badValuesAreClearErrors() throws Exception {
        Path p = dir.resolve("b.qcow2");
        NbdDirtyBitmapPeersTest.run(Tools.require("qemu-img", "qemu-utils"), "create", "-q", "-f", "qcow2", p.toString(), "1M");
        NbdDirtyBitmapPeersTest.run(Tools.require("qemu-img", "qemu-utils"), "bitmap", "--add", "--disable", p.toString(), "off");
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + p, null));
        String longName = "x".repeat(5000);
        String[] steps = {
            "nbd-server-start", "{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"" + dir.resolve("bad-nbd.sock") + "\"}}}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"q\",\"bitmaps\":[1]}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"q\",\"bitmaps\":[[\"off\"]]}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"q\",\"bitmaps\":{\"0\":\"off\"}}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"q\",\"bitmaps\":[\"\"]}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"q\",\"bitmaps\":[\"" + longName + "\"]}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"q\",\"bitmaps\":[\"\\u0000\"]}",
            "nbd-server-add", "{\"device\":\"q\",\"bitmap\":[\"off\"]}",
            "nbd-server-add", "{\"device\":\"q\",\"bitmap\":\"" + longName + "\"}",
            "nbd-server-add", "{\"device\":\"\",\"bitmap\":\"off\"}",
            "nbd-server-add", "{\"bitmap\":\"off\"}",
            "nbd-server-add", "{\"device\":\"q\",\"writable\":\"maybe\"}",
            "nbd-server-remove", "{\"name\":\"q\",\"mode\":\"soft\"}",
            "nbd-server-remove", "{}",
            "block-export-add", "{\"type\":\"nbd\",\"id\":\"e\",\"node-name\":\"q\",\"bitmaps\":[\"off\"]}",
        };
        List<String> out = qmp(vmmQmp, steps);
        assertEquals(steps.length / 2, out.size(), String.join("\n", out));
        assertEquals("{}", out.get(0));
        for (int i = 1; i < out.size() - 1; i++) {
            assertTrue(out.get(i).startsWith("error: "), steps[2 * i] + " " + steps[2 * i + 1] + " -> " + out.get(i));
            assertTrue(out.get(i).length() < 600, "one clear line: " + out.get(i));
        }
        assertEquals("{}", out.get(out.size() - 1), "the monitor and the bitmap are still usable");
        assertTrue(daemon.node("q").dirtyBitmaps().get(0).busy());
    }

    /** The dirty-bitmaps member of node "q" in a query-named-block-nodes answer. */
    @SuppressWarnings("unchecked")
    static Object bitmapsOf(String answer) throws Exception {
        for (Object n : (List<Object>) Json.parse(answer)) {
            Map<String, Object> m = (Map<String, Object>) n;
            if ("q".equals(m.get("node-name"))) return m.get("dirty-bitmaps");
        }
        throw new AssertionError("no node q in " + answer);
    }

    @SuppressWarnings("unchecked")
    static java.util.Set<Object> ids(List<Object> exports) {
        java.util.Set<Object> out = new java.util.TreeSet<>();
        for (Object e : exports) out.add(((Map<String, Object>) e).get("id"));
        return out;
    }

    static String[] with(String[] steps, String nbdPath) {
        String[] out = steps.clone();
        for (int i = 0; i < out.length; i++) out[i] = out[i].replace("NBD", nbdPath);
        return out;
    }
}
