package dev.vmm.core.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.testing.QsdPeer;
import dev.vmm.core.testing.Tools;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The daemon wires the qcow2 bitmap store into the node's life: a writable {@code blockdev-add}
 * marks the image's bitmaps in_use (what a {@code kill -9} leaves), and {@code blockdev-del} and
 * shutdown store the node's persistent bitmaps (BlockdevOpener binds the node, BlockNode's close
 * hook stores), which qemu-img and qemu-storage-daemon 7.2 then read with the same bits.
 */
class PersistentBitmapsCloseTest {
    @TempDir
    Path dir;
    Daemon daemon;

    @BeforeEach
    void start() { daemon = Daemon.start(); }

    @AfterEach
    void stop() { if (daemon != null) daemon.shutdown(); }

    static String run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        assertEquals(0, p.waitFor(), String.join(" ", cmd) + ": " + out);
        return out;
    }

    BlockNode add(Path p) throws Exception {
        return daemon.blockdevAdd(KeyValueParser.parse("--blockdev",
                "driver=qcow2,node-name=disk0,file.driver=file,file.filename=" + p, null));
    }

    DirtyBitmap persistent(BlockNode n, String name, long off, long len) throws Exception {
        DirtyBitmap b = new DirtyBitmap(name, n.driver().size(), 65536);
        b.setPersistent(true);
        n.home().submit(() -> {
            b.set(off, len);
            return null;
        }).get();
        n.addDirtyBitmap(b);
        return b;
    }

    void assertQsdSees(Path p, String name, String extents) throws Exception {
        try (QsdPeer qsd = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + p + ",read-only=on",
                "--blockdev", "qcow2,node-name=q,file=f,read-only=on", "--export", "nbd,id=e,node-name=q,name=q,bitmaps.0=" + name)) {
            assertEquals(extents, QsdPeer.show(QsdPeer.nbdMapSet(qsd.nbdUri("q"), "qemu:dirty-bitmap:" + name)));
        }
    }

    @Test
    void blockdevDelAndShutdownStoreTheNodesPersistentBitmaps() throws Exception {
        String img = Tools.require("qemu-img", "qemu-utils");
        Path p = dir.resolve("a.qcow2");
        run(img, "create", "-q", "-f", "qcow2", p.toString(), "64M");
        run(img, "bitmap", "--add", p.toString(), "old");
        BlockNode n = add(p);
        String open = run(img, "info", "-U", p.toString());
        assertTrue(open.contains("in-use"), "a writable open marks them in_use:\n" + open);
        DirtyBitmap b = persistent(n, "new", 1 << 20, 100_000);
        daemon.blockdevDel("disk0");
        String closed = run(img, "info", p.toString());
        assertTrue(closed.contains("name: new") && closed.contains("name: old") && !closed.contains("in-use"), closed);
        run(img, "check", p.toString());
        List<long[]> want = new java.util.ArrayList<>();
        QsdPeer.addExtent(want, 1 << 20, 131072);
        assertQsdSees(p, "new", QsdPeer.show(want));
        assertEquals(131072, b.count());

        n = add(p);
        persistent(n, "at-shutdown", 0, 1);
        daemon.shutdown();
        daemon = null;
        closed = run(img, "info", p.toString());
        assertTrue(closed.contains("name: at-shutdown") && !closed.contains("in-use"), closed);
        run(img, "check", p.toString());
        want.clear();
        QsdPeer.addExtent(want, 0, 65536);
        assertQsdSees(p, "at-shutdown", QsdPeer.show(want));
    }

    /** A daemon holding the image writable dies by SIGKILL: the bitmaps stay in_use, the next open says inconsistent. */
    @Test
    void killMinus9LeavesThemInUseAndTheNextOpenInconsistent() throws Exception {
        String img = Tools.require("qemu-img", "qemu-utils");
        Path p = dir.resolve("k.qcow2");
        run(img, "create", "-q", "-f", "qcow2", p.toString(), "16M");
        run(img, "bitmap", "--add", p.toString(), "nightly");
        List<String> cmd = new java.util.ArrayList<>();
        cmd.add(ProcessHandle.current().info().command().orElseThrow());
        cmd.addAll(java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments().stream()
                .filter(a -> a.startsWith("--add-")).toList());
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), HoldImageMain.class.getName(),
                "driver=qcow2,node-name=disk0,file.driver=file,file.filename=" + p));
        Process child = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            java.io.BufferedReader r = new java.io.BufferedReader(new java.io.InputStreamReader(child.getInputStream()));
            StringBuilder seen = new StringBuilder();
            for (String line; (line = r.readLine()) != null && !line.equals("ready"); ) seen.append(line).append('\n');
            assertTrue(child.isAlive(), "child daemon died:\n" + seen);
            assertTrue(run(img, "info", "-U", p.toString()).contains("in-use"));
            run("kill", "-9", Long.toString(child.pid()));
            child.waitFor();
        } finally {
            child.destroyForcibly();
        }
        String after = run(img, "info", p.toString());
        assertTrue(after.contains("in-use"), after);
        run(img, "check", p.toString());
        BlockNode n = daemon.blockdevAdd(KeyValueParser.parse("--blockdev",
                "driver=qcow2,node-name=again,read-only=on,file.driver=file,file.filename=" + p, null));
        assertEquals(1, n.dirtyBitmaps().size());
        assertTrue(n.dirtyBitmaps().get(0).inconsistent());
    }
}
