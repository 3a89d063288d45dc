package dev.vmm.core.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.testing.Tools;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The {@code --blockdev} keys managers send (issue 14): detect-zeroes, cache.no-flush,
 * auto-read-only, each checked against what qemu-io / qemu-storage-daemon 7.2 do with the same key.
 */
class BlockdevKeysTest {
    static final int MB = 1 << 20;

    @TempDir
    Path dir;
    Daemon daemon;
    Path img;

    @BeforeEach
    void start() throws Exception {
        Tools.require("qemu-img", "qemu-utils");
        daemon = Daemon.start();
        img = dir.resolve("a.img");
        filled(img);
    }

    @AfterEach
    void stop() {
        daemon.shutdown();
    }

    /** A 2 MiB image whose every block is allocated (non-zero data). */
    static void filled(Path p) throws Exception {
        byte[] data = new byte[2 * MB];
        java.util.Arrays.fill(data, (byte) 0x5a);
        Files.write(p, data);
    }

    BlockNode add(String opts) throws Exception {
        return daemon.blockdevAdd(KeyValueParser.parse("--blockdev", opts, null));
    }

    /** Writes 1 MiB of zeros at offset 0 through {@code n}, asynchronously as the data path does. */
    static void writeZeroBuffer(BlockNode n) throws Exception {
        Memory buf = new Memory(MB);
        buf.clear();
        CompletableFuture<Integer> done = new CompletableFuture<>();
        n.home().execute(() -> {
            try {
                n.driver().write(0, Pointer.nativeValue(buf), MB, false, done::complete);
            } catch (Exception e) {
                done.completeExceptionally(e);
            }
        });
        assertEquals(0, done.get(10, TimeUnit.SECONDS));
        buf.close();
    }

    static long allocated(Path p) throws Exception {
        return Long.parseLong(run("stat", "-c", "%b", p.toString()).trim()) * 512;
    }

    @Test
    void detectZeroesUnmapPunchesAHoleAsQemuDoes() throws Exception {
        Tools.require("qemu-io", "qemu-utils");
        BlockNode n = add("driver=raw,node-name=r,detect-zeroes=unmap,file.driver=file,file.filename=" + img);
        writeZeroBuffer(n);
        daemon.blockdevDel("r");
        long vmm = allocated(img);
        assertTrue(vmm <= MB + 64 * 1024, "the zero MiB should be a hole now: " + vmm + " bytes allocated");
        // the same key on qemu-io's file node
        Path q = dir.resolve("q.img");
        filled(q);
        run("qemu-io", "--image-opts", "driver=file,filename=" + q + ",discard=unmap,detect-zeroes=unmap", "-c", "write -P 0 0 1M");
        assertEquals(allocated(q), vmm, "QEMU leaves the same allocation");
        assertTrue(java.util.Arrays.equals(Files.readAllBytes(q), Files.readAllBytes(img)), "same content");
    }

    @Test
    void detectZeroesOnKeepsTheBlocksAndOffWritesData() throws Exception {
        BlockNode n = add("driver=file,node-name=f,detect-zeroes=on,filename=" + img);
        writeZeroBuffer(n);
        daemon.blockdevDel("f");
        assertEquals(2 * MB, allocated(img), "detect-zeroes=on zeroes without unmapping");
        byte[] b = Files.readAllBytes(img);
        assertEquals(0, b[0]);
        assertEquals(0, b[MB - 1]);
        assertEquals(0x5a, b[MB]);
        // detect-zeroes=unmap on a file node: a hole
        BlockNode u = add("driver=file,node-name=u,detect-zeroes=unmap,filename=" + img);
        writeZeroBuffer(u);
        daemon.blockdevDel("u");
        assertTrue(allocated(img) <= MB + 64 * 1024, "file node with detect-zeroes=unmap: " + allocated(img));
    }

    @Test
    void detectZeroesUnmapNeedsDiscardUnmapWithQemuWords() {
        OptionException e = assertThrows(OptionException.class,
                () -> add("driver=file,node-name=f,filename=" + img + ",discard=ignore,detect-zeroes=unmap"));
        assertTrue(e.getMessage().contains("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"),
                e.getMessage());
        assertThrows(OptionException.class, () -> add("driver=file,node-name=f,filename=" + img + ",detect-zeroes=bad"));
    }

    @Test
    void cacheNoFlushAnswersFlushesAtOnce() throws Exception {
        BlockNode n = add("driver=file,node-name=f,cache.no-flush=on,filename=" + img);
        assertTrue(((RawFileDriver) n.driver()).noFlush());
        CompletableFuture<Integer> done = new CompletableFuture<>();
        n.home().execute(() -> {
            try {
                n.driver().flush(done::complete);
            } catch (Exception e) {
                done.completeExceptionally(e);
            }
        });
        assertEquals(0, done.get(10, TimeUnit.SECONDS));
        assertFalse(((RawFileDriver) add("driver=file,node-name=g,filename=" + img + ",locking=off").driver()).noFlush());
    }

    @Test
    void autoReadOnlyFallsBackLikeQemu() throws Exception {
        // a file that even root cannot open for writing: a read-only sysfs attribute
        Path ro = Path.of("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
        Assumptions.assumeTrue(Files.exists(ro), ro + " is missing on this kernel");
        DaemonException e = assertThrows(DaemonException.class, () -> add("driver=file,node-name=f,filename=" + ro));
        assertTrue(e.getMessage().contains("Permission denied"), e.getMessage());
        BlockNode n = add("driver=file,node-name=f,auto-read-only=on,filename=" + ro);
        assertTrue(n.readOnly(), "fell back to read-only");
        // inherited by an inline child, and the format node over it becomes read-only too (QEMU's bdrv_apply_auto_read_only)
        assertThrows(DaemonException.class, () -> add("driver=raw,node-name=r0,file.driver=file,file.filename=" + ro));
        BlockNode r = add("driver=raw,node-name=r,auto-read-only=on,file.driver=file,file.filename=" + ro);
        assertTrue(r.readOnly() && r.child(BlockNode.FILE).readOnly());
    }

    static String run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        p.getOutputStream().close();
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), String.join(" ", cmd) + " hangs");
        String out = new String(p.getInputStream().readAllBytes());
        assertEquals(0, p.exitValue(), String.join(" ", cmd) + ": " + out);
        return out;
    }
}
