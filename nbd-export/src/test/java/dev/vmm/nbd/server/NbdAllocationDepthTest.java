package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.NBD_CMD_BLOCK_STATUS;
import static dev.vmm.nbd.protocol.NbdCmdFlags.NBD_CMD_FLAG_REQ_ONE;
import static dev.vmm.nbd.protocol.NbdRep.NBD_REP_ACK;
import static dev.vmm.nbd.protocol.NbdRep.NBD_REP_META_CONTEXT;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.testing.Tools;
import dev.vmm.nbd.client.NbdClient.Chunk;
import dev.vmm.nbd.client.NbdClient.OptionReply;
import dev.vmm.nbd.client.NbdClient.Reply;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.testing.NbdTestClient;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * QEMU's {@code qemu:allocation-depth} metadata context: offered by exports with
 * {@code allocation-depth=on} only (as QEMU), listed for the {@code qemu:} namespace, answered in a
 * second BLOCK_STATUS chunk. A raw file says depth 1 over the whole disk, holes included, as
 * qemu-storage-daemon 7.2 answers for the same file ({@code nbdinfo --map=qemu:allocation-depth}:
 * one extent, {@code 1 local}).
 */
class NbdAllocationDepthTest extends NbdServerFixture {
    @BeforeEach
    void addDepthExport() {
        server.addExport(new NbdExport("e2", "depth", null, new BlockNode("depth0", roDriver, iot), false, true));
    }

    static List<String> names(List<OptionReply> replies) {
        List<String> out = new ArrayList<>();
        for (OptionReply r : replies) {
            if (r.type() == NBD_REP_META_CONTEXT) out.add(new String(r.data(), 4, r.data().length - 4, StandardCharsets.UTF_8));
        }
        return out;
    }

    @Test
    void listedForTheQemuNamespaceOnlyWhereOffered() throws Exception {
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ACK, c.structuredReplies().type());
            assertEquals(List.of(NbdMetaContext.BASE_ALLOCATION, NbdMetaContext.QEMU_ALLOCATION_DEPTH),
                    names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "depth")));
            assertEquals(List.of(NbdMetaContext.QEMU_ALLOCATION_DEPTH), names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "depth", "qemu:")));
            assertEquals(List.of(NbdMetaContext.BASE_ALLOCATION), names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "depth", "base:")));
            assertEquals(List.of(), names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "disk0", "qemu:")), "not offered by default");
            assertEquals(List.of(NbdMetaContext.BASE_ALLOCATION), names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "disk0")));
            assertEquals(List.of(), names(c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "disk0", NbdMetaContext.QEMU_ALLOCATION_DEPTH)));
        }
    }

    @Test
    void blockStatusAnswersBothContextsDepthLast() throws Exception {
        try (NbdTestClient c = client()) {
            c.structuredReplies();
            List<OptionReply> set = c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "depth",
                    NbdMetaContext.QEMU_ALLOCATION_DEPTH, NbdMetaContext.BASE_ALLOCATION);
            assertEquals(List.of(NbdMetaContext.BASE_ALLOCATION, NbdMetaContext.QEMU_ALLOCATION_DEPTH), names(set));
            c.go("depth");
            Reply r = c.request(0, NBD_CMD_BLOCK_STATUS, 0, SIZE, null);
            assertEquals(2, r.chunks().size());
            Chunk base = r.chunks().get(0);
            Chunk depth = r.chunks().get(1);
            assertFalse(base.done());
            assertTrue(depth.done());
            assertEquals(HandshakeHandler.BASE_ALLOCATION_ID, NbdTestClient.readInt(base.payload(), 0));
            assertEquals(HandshakeHandler.ALLOCATION_DEPTH_ID, NbdTestClient.readInt(depth.payload(), 0));
            assertTrue(base.payload().length > 4 + 8, "data, then a hole: more than one base:allocation extent");
            assertEquals(4 + 8, depth.payload().length, "one depth extent: a raw file is depth 1 everywhere, holes too");
            assertEquals(SIZE, NbdTestClient.readInt(depth.payload(), 4));
            assertEquals(1, NbdTestClient.readInt(depth.payload(), 8));
            Reply one = c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 4096, 8192, null);
            assertEquals(2, one.chunks().size());
            assertEquals(8192, NbdTestClient.readInt(one.chunks().get(1).payload(), 4));
        }
    }

    @Test
    void depthOnlyIsEnoughForBlockStatus() throws Exception {
        try (NbdTestClient c = client()) {
            c.structuredReplies();
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "depth", NbdMetaContext.QEMU_ALLOCATION_DEPTH);
            c.go("depth");
            Reply r = c.request(0, NBD_CMD_BLOCK_STATUS, 0, SIZE, null);
            assertEquals(1, r.chunks().size());
            assertTrue(r.chunks().get(0).done());
            assertEquals(HandshakeHandler.ALLOCATION_DEPTH_ID, NbdTestClient.readInt(r.chunks().get(0).payload(), 0));
        }
    }

    String uri() {
        InetSocketAddress a = (InetSocketAddress) server.boundAddress();
        return "nbd://127.0.0.1:" + a.getPort() + "/depth";
    }

    static String run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), "timed out: " + String.join(" ", cmd));
        assertEquals(0, p.exitValue(), String.join(" ", cmd) + ":\n" + out);
        return out;
    }

    @Test
    void nbdinfoMapsItAsQemuStorageDaemonDoes() throws Exception {
        String nbdinfo = Tools.require("nbdinfo", "libnbd-bin");
        String out = run(nbdinfo, "--map=qemu:allocation-depth", uri()).strip();
        // QSD 7.2 on a raw file: "0  4194304  1  local" (one extent over the whole disk)
        assertTrue(out.matches("0\\s+" + SIZE + "\\s+1\\s+local"), out);
        String list = run(nbdinfo, "--list", "--content", uri());
        assertTrue(list.contains(NbdMetaContext.QEMU_ALLOCATION_DEPTH), list);
    }

    @Test
    void libnbdSeesBothContexts() throws Exception {
        // Debian's python3 (python3-libnbd installs its module there, not for other interpreters on PATH)
        if (!java.nio.file.Files.isExecutable(java.nio.file.Path.of("/usr/bin/python3"))) Tools.missing("/usr/bin/python3", "python3");
        String script = String.join("\n",
                "import nbd, sys",
                "h = nbd.NBD()",
                "h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)",
                "h.add_meta_context('qemu:allocation-depth')",
                "h.connect_uri(sys.argv[1])",
                "assert h.can_meta_context('qemu:allocation-depth')",
                "seen = {}",
                "def cb(ctx, off, entries, err):",
                "    seen[ctx] = list(entries)",
                "    return 0",
                "h.block_status(h.get_size(), 0, cb)",
                "print(seen['qemu:allocation-depth'])",
                "print(seen['base:allocation'][:2])",
                "");
        String out;
        try {
            out = run("/usr/bin/python3", "-c", script, uri());
        } catch (AssertionError e) {
            if (e.getMessage().contains("No module named 'nbd'")) {
                Tools.missing("python3 module nbd", "python3-libnbd");
                return;
            }
            throw e;
        }
        String[] lines = out.strip().split("\n");
        assertEquals("[" + SIZE + ", 1]", lines[0], out);
        assertEquals("[1048576, 0]", lines[1], out);
    }
}
