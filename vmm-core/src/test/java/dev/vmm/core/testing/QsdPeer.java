package dev.vmm.core.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.json.Json;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A qemu-storage-daemon 7.2 peer for tests: started with a QMP monitor and an NBD server on unix
 * sockets in {@code dir}; QMP commands go through a small python3 client (one connection per
 * call), NBD maps through {@code nbdinfo --map}.
 *
 * <p>Thread contract: one test thread.
 */
public final class QsdPeer implements AutoCloseable {
    private static final String QMP_CLIENT = String.join("\n",
            "import json,socket,sys",
            "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rw')",
            "def cmd(c,a):",
            "    f.write(json.dumps({'execute':c,'arguments':a})+'\\n'); f.flush()",
            "    while True:",
            "        r=json.loads(f.readline())",
            "        if 'event' not in r: return r",
            "json.loads(f.readline()); cmd('qmp_capabilities',{})",
            "r=[]",
            "for i in range(2,len(sys.argv),2): r.append(cmd(sys.argv[i], json.loads(sys.argv[i+1])))",
            "print(json.dumps(r))", "");

    private final Process process;
    private final Path qmp;
    private final Path nbd;
    private final Path dir;

    /** Starts QSD with {@code args} (its {@code --blockdev}, {@code --export}, ... options). */
    public QsdPeer(Path dir, String... args) throws Exception {
        this.dir = dir;
        this.qmp = dir.resolve("qsd-qmp-" + System.nanoTime() + ".sock");
        this.nbd = dir.resolve("qsd-nbd-" + System.nanoTime() + ".sock");
        List<String> cmd = new ArrayList<>();
        cmd.add(Tools.require("qemu-storage-daemon", "qemu-system-common"));
        // QSD applies its options in order: the NBD server before any export
        cmd.addAll(List.of("--chardev", "socket,id=qmp0,path=" + qmp + ",server=on,wait=off", "--monitor", "qmp0",
                "--nbd-server", "addr.type=unix,addr.path=" + nbd));
        cmd.addAll(List.of(args));
        process = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(dir.resolve("qsd-" + System.nanoTime() + ".log").toFile()).start();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!(Files.exists(qmp) && Files.exists(nbd))) {
            assertTrue(process.isAlive(), "qemu-storage-daemon exited: " + String.join(" ", cmd));
            assertTrue(System.nanoTime() < deadline, "qemu-storage-daemon did not start");
            Thread.sleep(20);
        }
    }

    /** The NBD socket (for {@code nbd+unix:///NAME?socket=...}). */
    public Path nbdSocket() { return nbd; }

    public String nbdUri(String export) { return "nbd+unix:///" + export + "?socket=" + nbd; }

    /**
     * Runs QMP commands (name, JSON arguments, name, arguments, ...) and returns each reply's
     * {@code return} value; an {@code error} reply fails the test.
     */
    @SuppressWarnings("unchecked")
    public List<Object> qmp(String... nameArgs) throws Exception {
        Path script = dir.resolve("qmp-client.py");
        if (!Files.exists(script)) Files.writeString(script, QMP_CLIENT);
        List<String> cmd = new ArrayList<>(List.of(Tools.require("python3", "python3"), script.toString(), qmp.toString()));
        cmd.addAll(List.of(nameArgs));
        List<Object> replies = (List<Object>) Json.parse(run(cmd.toArray(String[]::new)));
        List<Object> out = new ArrayList<>();
        for (Object r : replies) {
            java.util.Map<String, Object> m = (java.util.Map<String, Object>) r;
            assertTrue(m.containsKey("return"), "QMP error from qemu-storage-daemon: " + m);
            out.add(m.get("return"));
        }
        return out;
    }

    /**
     * The extents of {@code context} ({@code base:allocation}, {@code qemu:dirty-bitmap:NAME})
     * whose type has bit 0 set, as {offset, length} pairs merged when adjacent.
     */
    public static List<long[]> nbdMapSet(String uri, String context) throws Exception {
        String out = run(Tools.require("nbdinfo", "libnbd-bin"), "--map=" + context, uri);
        List<long[]> set = new ArrayList<>();
        for (String line : out.split("\n")) {
            String[] f = line.trim().split("\\s+");
            if (f.length < 3) continue;
            long off = Long.parseLong(f[0]);
            long len = Long.parseLong(f[1]);
            if ((Long.parseLong(f[2]) & 1) == 0) continue;
            addExtent(set, off, len);
        }
        return set;
    }

    /** Appends {@code [off, off+len)}, merging with the last extent when adjacent. */
    public static void addExtent(List<long[]> set, long off, long len) {
        if (!set.isEmpty()) {
            long[] last = set.get(set.size() - 1);
            if (last[0] + last[1] == off) {
                last[1] += len;
                return;
            }
        }
        set.add(new long[] {off, len});
    }

    /** Readable form of an extent list for assertion messages. */
    public static String show(List<long[]> set) {
        StringBuilder sb = new StringBuilder("[");
        for (long[] e : set) sb.append(' ').append(e[0]).append('+').append(e[1]);
        return sb.append(" ]").toString();
    }

    /** Kills QSD with SIGKILL (a crash: persistent bitmaps stay in_use in the image). */
    public void kill() throws Exception {
        process.destroyForcibly();
        assertTrue(process.waitFor(20, TimeUnit.SECONDS));
    }

    /** Asks QSD to quit over QMP and waits for it (bitmaps are stored on the way out). */
    @Override
    public void close() throws Exception {
        if (process.isAlive()) {
            try {
                qmp("quit", "{}");
            } catch (Throwable t) {
                // gone already or not answering: kill below
            }
            if (!process.waitFor(20, TimeUnit.SECONDS)) process.destroyForcibly().waitFor();
        }
    }

    static String run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        p.getOutputStream().close();
        byte[] out = p.getInputStream().readAllBytes();
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), String.join(" ", cmd) + " hangs");
        String s = new String(out, StandardCharsets.UTF_8);
        assertEquals(0, p.exitValue(), String.join(" ", cmd) + ": " + s);
        return s;
    }
}
