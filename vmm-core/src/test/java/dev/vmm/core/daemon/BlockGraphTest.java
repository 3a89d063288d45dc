package dev.vmm.core.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.iothread.IOThread;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code --blockdev} graphs: raw over file (inline and by name), a qcow2-shaped format with its
 * backing chain from the header (the fake format of {@link FakeQcow2Format}), loops, QEMU's
 * errors, {@code blockdev-del} rules and the homes of new nodes.
 */
class BlockGraphTest {
    @TempDir
    Path dir;
    Daemon daemon;

    @BeforeEach
    void start() {
        daemon = Daemon.start();
        Daemon.qcow2Format = new FakeQcow2Format();
    }

    @AfterEach
    void stop() {
        Daemon.qcow2Format = ImageFormat.QCOW2;
        daemon.shutdown(false);
    }

    BlockNode add(String spec) throws Exception {
        return daemon.blockdevAdd(KeyValueParser.parse("--blockdev", spec, null));
    }

    String error(String spec) {
        Exception e = assertThrows(Exception.class, () -> add(spec));
        assertTrue(e instanceof DaemonException || e instanceof OptionException, e.toString());
        return e.getMessage();
    }

    Path raw(String name, int size) throws Exception {
        Path p = dir.resolve(name);
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(size);
        }
        return p;
    }

    List<String> names() {
        List<String> out = new ArrayList<>();
        for (BlockNode n : daemon.nodes()) out.add(n.name());
        return out;
    }

    byte[] read(BlockNode n, long offset, int length) throws Exception {
        try (Memory m = new Memory(length)) {
            n.home().call(() -> {
                n.driver().read(offset, Pointer.nativeValue(m), length);
                return null;
            });
            return m.getByteArray(0, length);
        }
    }

    @Test
    void rawOverAnInlineFileOwnsItAndClosesItWithIt() throws Exception {
        Path img = raw("a.img", 1 << 20);
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.seek(8192);
            f.write("window".getBytes());
        }
        BlockNode r = add("driver=raw,node-name=r0,offset=8192,size=4096,file.driver=file,file.filename=" + img);
        assertEquals("raw", r.driverName());
        assertEquals(4096, r.size());
        BlockNode file = r.child(BlockNode.FILE);
        assertTrue(file.name().matches("#block\\d+"), file.name());
        assertEquals(List.of(r), file.parents());
        assertTrue(r.children().get(0).owned());
        assertEquals("window", new String(read(r, 0, 6)));
        assertEquals(List.of(file.name(), "r0"), names());
        assertEquals("Block device " + file.name() + " is in use", assertThrows(DaemonException.class,
                () -> daemon.blockdevDel(file.name())).getMessage());
        daemon.blockdevDel("r0");
        assertEquals(List.of(), names());
    }

    @Test
    void rawOverANamedFileLeavesItAndQemusErrors() throws Exception {
        Path img = raw("a.img", 1 << 20);
        add("driver=file,node-name=f0,filename=" + img);
        BlockNode r = add("driver=raw,node-name=r0,file=f0");
        assertFalse(r.children().get(0).owned());
        assertEquals("Block device f0 is in use", assertThrows(DaemonException.class, () -> daemon.blockdevDel("f0")).getMessage());
        assertEquals("Cannot find device='nope' nor node-name='nope'", error("driver=raw,node-name=r1,file=nope"));
        assertEquals("A block device must be specified for \"file\"", error("driver=raw,node-name=r1"));
        assertEquals("Duplicate nodes with node-name='r0'", error("driver=raw,node-name=r0,file=f0"));
        String conflict = error("driver=raw,node-name=r1,file=f0");
        assertTrue(conflict.startsWith("Permission conflict on node 'f0': permissions 'write' are both required by node 'r0'"), conflict);
        assertTrue(error("driver=raw,node-name=r2,offset=2M,file=f0,read-only=on").contains("has to be smaller or equal"));
        assertEquals(List.of("f0", "r0"), names(), "a failed command leaves nothing behind");
        add("driver=raw,node-name=r1,file=f0,read-only=on"); // a reader beside a writer is fine
        assertEquals(2, daemon.node("f0").parents().size());
        daemon.blockdevDel("r1");
        daemon.blockdevDel("r0");
        assertEquals(List.of("f0"), names());
        assertTrue(f0Parents().isEmpty());
        daemon.blockdevDel("f0");
    }

    private List<BlockNode> f0Parents() throws DaemonException {
        return daemon.node("f0").parents();
    }

    @Test
    void hostileGraphDefinitionsGetClearErrors() throws Exception {
        Path img = raw("a.img", 1 << 20);
        StringBuilder deep = new StringBuilder("node-name=d");
        String prefix = "";
        for (int i = 0; i < 40; i++) { // the limit is 32; thousands only cost parse time (quadratic key length)
            deep.append(',').append(prefix).append("driver=raw");
            prefix += "file.";
        }
        deep.append(',').append(prefix).append("driver=file,").append(prefix).append("filename=").append(img);
        assertTrue(error(deep.toString()).contains("nest deeper than"));
        assertEquals("Cannot find device='x' nor node-name='x'", error("driver=raw,node-name=x,file=x"));
        assertTrue(error("driver=raw,node-name=#x,file.driver=file,file.filename=" + img).contains("Invalid node-name"));
        assertTrue(error("driver=raw,node-name=y,file.driver=file,file.node-name=y,file.filename=" + img).contains("Duplicate nodes"));
        assertEquals(List.of(), names());
    }

    @Test
    void addingANodeOnTheMainLoopDoesNotWaitForItself() throws Exception {
        Path img = raw("a.img", 1 << 20);
        add("driver=file,node-name=f0,filename=" + img);
        BlockNode r = daemon.mainLoop().submit(() -> add("driver=raw,node-name=r0,file=f0")).get(10, java.util.concurrent.TimeUnit.SECONDS);
        assertSame(daemon.node("f0"), r.child(BlockNode.FILE));
    }

    @Test
    void qcow2KeysAreCheckedAndRefusedByName() throws Exception {
        Path img = dir.resolve("t.fq");
        FakeQcow2Format.create(img, 1 << 20, null, null);
        String f = ",file.driver=file,file.filename=" + img;
        assertTrue(error("driver=qcow2,node-name=q" + f + ",data-file=x").contains("'data-file'"));
        assertTrue(error("driver=qcow2,node-name=q" + f + ",encrypt.format=luks").contains("'encrypt"));
        assertTrue(error("driver=qcow2,node-name=q" + f + ",detect-zeroes=unmap,discard=ignore").contains("detect-zeroes to unmap is not allowed"));
        assertTrue(error("driver=qcow2,node-name=q" + f + ",detect-zeroes=bogus").contains("detect-zeroes"));
        assertTrue(error("driver=qcow2,node-name=q" + f + ",cache-size=1M,l2-cache-size=2M").contains("l2-cache-size may not exceed cache-size"));
        assertTrue(error("driver=qcow2,node-name=q" + f + ",bogus=1").contains("'bogus'"));
        assertTrue(error("driver=qcow2,node-name=q" + f + ",file.bogus=1").contains("'file.bogus'"));
        assertEquals(List.of(), names());
        BlockNode q = add("driver=qcow2,node-name=q" + f + ",l2-cache-size=1M,refcount-cache-size=256K,lazy-refcounts=on,"
                + "pass-discard-request=off,cache-clean-interval=0,discard=ignore,detect-zeroes=off,read-only=on");
        assertTrue(q.readOnly());
        assertTrue(q.child(BlockNode.FILE).readOnly(), "an inline file inherits read-only");
        assertEquals(1 << 20, q.size());
        Path notQcow = raw("n.img", 8192);
        assertEquals("Image is not in qcow2 format", error("driver=qcow2,node-name=n,file.driver=file,file.filename=" + notQcow));
    }

    @Test
    void backingChainFromTheHeaderIsImplicitReadOnlyAndGoesWithItsOwner() throws Exception {
        raw("base.raw", 1 << 20);
        Files.createDirectories(dir.resolve("sub"));
        FakeQcow2Format.create(dir.resolve("sub/mid.fq"), 1 << 20, "../base.raw", "raw");
        FakeQcow2Format.create(dir.resolve("top.fq"), 1 << 20, "sub/mid.fq", null); // format probed
        BlockNode top = add("driver=qcow2,node-name=top,file.driver=file,file.filename=" + dir.resolve("top.fq"));
        assertEquals(6, names().size(), names().toString());
        BlockNode mid = top.child(BlockNode.BACKING);
        assertEquals("qcow2", mid.driverName());
        assertTrue(mid.readOnly() && mid.child(BlockNode.FILE).readOnly());
        BlockNode base = mid.child(BlockNode.BACKING);
        assertEquals("raw", base.driverName());
        assertTrue(base.readOnly());
        // as QEMU's path_combine: joined to the image's directory, not normalized
        assertEquals(dir.resolve("sub/../base.raw").toString(), ((RawFileDriver) base.child(BlockNode.FILE).driver()).filename());
        assertNull(base.child(BlockNode.BACKING));
        assertEquals("sub/mid.fq", top.imageInfo().backingFilename());
        assertEquals(dir.resolve("sub/mid.fq").toString(), top.imageInfo().fullBackingFilename());
        assertEquals(6, top.connected().size());
        daemon.blockdevDel("top");
        assertEquals(List.of(), names());
    }

    @Test
    void backingNullNamedOrMissing() throws Exception {
        raw("base.raw", 1 << 20);
        FakeQcow2Format.create(dir.resolve("top.fq"), 1 << 20, "base.raw", "raw");
        String f = ",file.driver=file,file.filename=" + dir.resolve("top.fq");
        BlockNode none = add("driver=qcow2,node-name=t0,backing=" + f);
        assertNull(none.child(BlockNode.BACKING));
        assertEquals(2, names().size());
        daemon.blockdevDel("t0");
        // QMP's form: a nested file definition and "backing": null
        BlockNode json = add("{\"driver\":\"qcow2\",\"node-name\":\"tj\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\""
                + dir.resolve("top.fq") + "\"}}");
        assertNull(json.child(BlockNode.BACKING));
        assertTrue(json.children().get(0).owned());
        daemon.blockdevDel("tj");
        add("driver=file,node-name=b0,read-only=on,filename=" + dir.resolve("base.raw"));
        BlockNode named = add("driver=qcow2,node-name=t2,backing=b0" + f);
        assertSame(daemon.node("b0"), named.child(BlockNode.BACKING));
        assertEquals("Node 'b0' is busy: node is used as backing hd of 't2'",
                assertThrows(DaemonException.class, () -> daemon.blockdevDel("b0")).getMessage());
        assertEquals("Could not open backing file: Cannot find device='nope' nor node-name='nope'",
                error("driver=qcow2,node-name=t3,backing=nope,file.driver=file,file.filename=" + dir.resolve("top.fq")));
        daemon.blockdevDel("t2");
        assertEquals(List.of("b0"), names(), "a named backing node stays");
        // A node created inline with another (owned by it) is nobody else's backing either.
        add("driver=raw,node-name=r0,read-only=on,file.driver=file,file.node-name=rf,file.read-only=on,file.filename=" + dir.resolve("base.raw"));
        assertEquals("Node 'rf' is owned by node 'r0' (created with it) and cannot be a child of node 't4'",
                error("driver=qcow2,node-name=t4,backing=rf" + f));
        assertEquals(List.of("b0", "r0", "rf"), names().stream().sorted().toList(), "the refused node left nothing behind");
        daemon.blockdevDel("r0");
        FakeQcow2Format.create(dir.resolve("miss.fq"), 1 << 20, "gone.fq", null);
        assertEquals("Could not open backing file: Could not open '" + dir.resolve("gone.fq") + "': No such file or directory",
                error("driver=qcow2,node-name=m,file.driver=file,file.filename=" + dir.resolve("miss.fq")));
        assertEquals(List.of("b0"), names());
    }

    @Test
    void backingLoopsAndOverlongChainsAreRefused() throws Exception {
        FakeQcow2Format.create(dir.resolve("self.fq"), 4096, "self.fq", "qcow2");
        String self = error("driver=qcow2,node-name=s,file.driver=file,file.filename=" + dir.resolve("self.fq"));
        assertTrue(self.contains("backing file loop") && self.contains("self.fq"), self);
        FakeQcow2Format.create(dir.resolve("a.fq"), 4096, "b.fq", null);
        FakeQcow2Format.create(dir.resolve("b.fq"), 4096, "c.fq", null);
        FakeQcow2Format.create(dir.resolve("c.fq"), 4096, "a.fq", null);
        String abc = error("driver=qcow2,node-name=a,file.driver=file,file.filename=" + dir.resolve("a.fq"));
        assertTrue(abc.startsWith("Could not open backing file: ") && abc.contains("backing file loop"), abc);
        for (int i = 0; i <= BlockdevOpener.MAX_BACKING_CHAIN; i++) {
            FakeQcow2Format.create(dir.resolve("l" + i + ".fq"), 4096, i == BlockdevOpener.MAX_BACKING_CHAIN ? null : "l" + (i + 1) + ".fq", null);
        }
        String longChain = error("driver=qcow2,node-name=l,file.driver=file,file.filename=" + dir.resolve("l0.fq"));
        assertTrue(longChain.contains("longer than " + BlockdevOpener.MAX_BACKING_CHAIN), longChain);
        assertEquals(List.of(), names(), "nothing of a refused chain stays open");
    }

    BlockExport export(String spec) throws Exception {
        return daemon.exportAdd(KeyValueParser.parse("--export", spec, null));
    }

    @Test
    void anExportWithAnIothreadTakesTheWholeGraphAndWritersConflict() throws Exception {
        IOThread iot1 = daemon.addIOThread("iot1");
        Path img = raw("a.img", 1 << 20);
        add("driver=file,node-name=f0,filename=" + img);
        BlockNode r = add("driver=raw,node-name=r0,file=f0");
        String conflict = assertThrows(DaemonException.class, () -> export("type=test,id=e0,node-name=f0,writable=on")).getMessage();
        assertTrue(conflict.contains("Permission conflict on node 'f0': permissions 'write' are both required by export 'e0'"), conflict);
        export("type=test,id=e1,node-name=f0"); // a reader is fine
        String busy = assertThrows(DaemonException.class, () -> export("type=test,id=e2,node-name=r0,iothread=iot1")).getMessage();
        assertTrue(busy.contains("block node 'f0' (in the graph of 'r0') is served on IOThread 'main' by export 'e1'"), busy);
        daemon.exportDel("e1", true);
        export("type=test,id=e2,node-name=r0,iothread=iot1,writable=on");
        assertSame(iot1, r.home());
        assertSame(iot1, daemon.node("f0").home());
        assertEquals("Node r0 is in use", assertThrows(DaemonException.class, () -> daemon.blockdevDel("r0")).getMessage());
        String writer = error("driver=raw,node-name=r1,file=f0");
        assertTrue(writer.startsWith("Permission conflict on node 'f0'"), writer);
    }

    @Test
    void aNewNodeLivesWithItsChildAndBringsABackingGraphThere() throws Exception {
        IOThread iot1 = daemon.addIOThread("iot1");
        Path img = raw("a.img", 1 << 20);
        add("driver=file,node-name=f0,filename=" + img);
        daemon.moveNode("f0", "iot1").get();
        BlockNode r = add("driver=raw,node-name=r0,file=f0");
        assertSame(iot1, r.home());
        raw("base.raw", 1 << 20);
        FakeQcow2Format.create(dir.resolve("top.fq"), 1 << 20, null, null);
        add("driver=file,node-name=b0,read-only=on,filename=" + dir.resolve("base.raw"));
        daemon.moveNode("b0", "iot1").get();
        BlockNode t = add("driver=qcow2,node-name=t0,backing=b0,file.driver=file,file.filename=" + dir.resolve("top.fq"));
        assertSame(daemon.mainLoop(), t.home(), "the new node lives with its file child");
        assertSame(daemon.mainLoop(), daemon.node("b0").home(), "its backing graph came there");
        daemon.moveNode("b0", "iot1").get(); // the whole graph goes: b0, t0 and t0's file
        for (BlockNode n : t.connected().values()) assertSame(iot1, n.home(), n.name());
    }
}
