package dev.vmm.core.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.json.Json;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.testing.QsdPeer;
import dev.vmm.core.testing.Tools;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code query-named-block-nodes}' {@code dirty-bitmaps} of a qcow2 node with persistent
 * bitmaps equals qemu-storage-daemon 7.2's for the same image, field by field and in the same
 * order (newest first), for recording, disabled, in_use (inconsistent) bitmaps.
 */
class DirtyBitmapsQueryTest {
    @TempDir
    Path dir;
    Daemon daemon;

    @BeforeEach
    void start() { daemon = Daemon.start(); }

    @AfterEach
    void stop() { daemon.shutdown(); }

    static String run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        assertEquals(0, p.waitFor(), String.join(" ", cmd) + ": " + out);
        return out;
    }

    @SuppressWarnings("unchecked")
    static Object qsdDirtyBitmaps(QsdPeer qsd, String node) throws Exception {
        List<Object> nodes = (List<Object>) qsd.qmp("query-named-block-nodes", "{\"flat\":true}").get(0);
        for (Object o : nodes) {
            Map<String, Object> m = (Map<String, Object>) o;
            if (node.equals(m.get("node-name"))) return m.get("dirty-bitmaps");
        }
        throw new AssertionError("no node " + node);
    }

    @Test
    void dirtyBitmapsEqualQsds() throws Exception {
        String img = Tools.require("qemu-img", "qemu-utils");
        String io = Tools.require("qemu-io", "qemu-utils");
        Path p = dir.resolve("a.qcow2");
        run(img, "create", "-q", "-f", "qcow2", p.toString(), "64M");
        run(img, "bitmap", "--add", p.toString(), "first");
        run(img, "bitmap", "--add", "--granularity", "4096", "--disable", p.toString(), "off");
        run(img, "bitmap", "--add", "--granularity", "512", p.toString(), "fine");
        run(io, "-f", "qcow2", "-c", "write -q 0 64k", "-c", "write -q 1M 5k", "-c", "write -q 65535k 1k", p.toString());
        // a bitmap left in_use by a daemon killed while it was loaded
        QsdPeer writer = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + p, "--blockdev", "qcow2,node-name=q,file=f");
        writer.qmp("block-dirty-bitmap-add", "{\"node\":\"q\",\"name\":\"crashed\",\"persistent\":true}");
        writer.close(); // stored at quit
        writer = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + p, "--blockdev", "qcow2,node-name=q,file=f");
        writer.kill(); // every bitmap is in_use in the image now

        Object theirs;
        try (QsdPeer qsd = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + p + ",read-only=on",
                "--blockdev", "qcow2,node-name=q,file=f,read-only=on")) {
            theirs = qsdDirtyBitmaps(qsd, "q");
        }
        BlockNode n = daemon.blockdevAdd(KeyValueParser.parse("--blockdev",
                "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + p, null));
        Map<String, Object> info = CoreCommands.nodeInfo(n, true);
        CoreTypes.BLOCK_DEVICE_INFO.check(Json.parse(Json.write(info)), "BlockDeviceInfo"); // the declared schema
        Object ours = Json.parse(Json.write(info.get("dirty-bitmaps")));
        assertNotNull(theirs);
        assertEquals(Json.write(theirs), Json.write(ours));
        assertEquals(theirs, ours);
    }

    @Test
    void cleanBitmapsEqualQsdsAndNoneMeansNoMember() throws Exception {
        String img = Tools.require("qemu-img", "qemu-utils");
        String io = Tools.require("qemu-io", "qemu-utils");
        Path p = dir.resolve("b.qcow2");
        run(img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", p.toString(), "10000k");
        run(img, "bitmap", "--add", "--granularity", "65536", p.toString(), "one");
        run(img, "bitmap", "--add", "--granularity", "1M", p.toString(), "two");
        run(io, "-f", "qcow2", "-c", "write -q 0 1", "-c", "write -q 9999k 1k", "-c", "write -q 3M 2M", p.toString());
        Object theirs;
        try (QsdPeer qsd = new QsdPeer(dir, "--blockdev", "file,node-name=f,filename=" + p + ",read-only=on",
                "--blockdev", "qcow2,node-name=q,file=f,read-only=on")) {
            theirs = qsdDirtyBitmaps(qsd, "q");
        }
        BlockNode n = daemon.blockdevAdd(KeyValueParser.parse("--blockdev",
                "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + p, null));
        assertEquals(Json.write(theirs), Json.write(CoreCommands.nodeInfo(n, true).get("dirty-bitmaps")));
        // QEMU leaves the member out when a node has no bitmaps
        assertFalse(CoreCommands.nodeInfo(n.child(BlockNode.FILE), true).containsKey("dirty-bitmaps"));
    }
}
