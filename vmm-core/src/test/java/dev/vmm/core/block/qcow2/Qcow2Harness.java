package dev.vmm.core.block.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.testing.NativeBuffers;
import dev.vmm.core.testing.Tools;
import dev.vmm.iothread.IOThread;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * Test support: qemu-img/qemu-io runs, opening a qcow2 chain (RawFileDriver children) on an
 * IOThread, and driving the asynchronous API from the test thread.
 *
 * <p>Thread contract: the test thread calls these; every driver call is made on {@link #iot}.
 */
final class Qcow2Harness implements AutoCloseable {
    final IOThread iot;
    final List<BlockDriver> opened = new ArrayList<>();
    /** How the image file of the top node is opened (O_DIRECT, aio engine). */
    boolean direct;
    dev.vmm.core.aio.AioMode aio = dev.vmm.core.aio.IoEngines.defaultMode();

    Qcow2Harness(String name) {
        iot = IOThread.start(name);
    }

    static String qemuImg() { return Tools.require("qemu-img", "qemu-utils"); }

    static String qemuIo() { return Tools.require("qemu-io", "qemu-utils"); }

    /** Runs a command; returns its exit code, output in {@code out[0]} when given. */
    static int run(String[] out, String... cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        try (InputStream in = p.getInputStream()) {
            in.transferTo(b);
        }
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            fail("timed out: " + String.join(" ", cmd));
        }
        if (out != null) out[0] = b.toString();
        return p.exitValue();
    }

    /** Runs a command that must succeed. */
    static String ok(String... cmd) throws IOException, InterruptedException {
        String[] out = new String[1];
        int rc = run(out, cmd);
        if (rc != 0) fail(String.join(" ", cmd) + " exited " + rc + ": " + out[0]);
        return out[0];
    }

    static void qemuIoCmds(Path img, String fmt, String... cmds) throws Exception {
        List<String> c = new ArrayList<>(List.of(qemuIo(), "-f", fmt));
        for (String x : cmds) {
            c.add("-c");
            c.add(x);
        }
        c.add(img.toString());
        String out = ok(c.toArray(new String[0]));
        if (out.contains("failed") || out.contains("error")) fail("qemu-io: " + out);
    }

    /** The image's guest content, by qemu-img convert -O raw. */
    static byte[] rawContent(Path img, Path dir) throws Exception {
        Path raw = dir.resolve("content-" + System.nanoTime() + ".raw");
        ok(qemuImg(), "convert", "-O", "raw", img.toString(), raw.toString());
        byte[] b = Files.readAllBytes(raw);
        Files.delete(raw);
        return b;
    }

    <T> T on(java.util.concurrent.Callable<T> c) throws Exception {
        try {
            return iot.submit(c).get(30, TimeUnit.SECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            if (e.getCause() instanceof Exception x) throw x;
            throw e;
        }
    }

    /**
     * Opens {@code img} as qcow2 with its backing chain as the graph would (backing files are
     * opened read-only; a raw backing file by format or by its extension).
     */
    Qcow2Driver open(Path img, boolean readOnly) throws Exception {
        return open(img, Qcow2Options.defaults(readOnly));
    }

    Qcow2Driver open(Path img, Qcow2Options opts) throws Exception {
        return on(() -> openChain(img, opts));
    }

    private Qcow2Driver openChain(Path img, Qcow2Options opts) throws BlockException {
        RawFileDriver f = RawFileDriver.open(img, opts.readOnly(), direct, aio);
        f.attach(iot);
        opened.add(f);
        Qcow2Header h = Qcow2Driver.readHeader(f);
        BlockDriver backing = null;
        if (h.backingFile() != null) {
            Path bp = img.resolveSibling(h.backingFile());
            String fmt = h.backingFormat();
            RawFileDriver bf = RawFileDriver.open(bp, true, false);
            bf.attach(iot);
            opened.add(bf);
            if ("qcow2".equals(fmt) || (fmt == null && Qcow2Driver.probe(bf))) {
                backing = openChainOver(bp, bf);
            } else {
                backing = bf;
            }
        }
        Qcow2Driver d = Qcow2Driver.open(f, h, backing, opts);
        d.attach(iot);
        opened.add(d);
        return d;
    }

    private Qcow2Driver openChainOver(Path bp, RawFileDriver bf) throws BlockException {
        Qcow2Header h = Qcow2Driver.readHeader(bf);
        BlockDriver backing = null;
        if (h.backingFile() != null) {
            Path p = bp.resolveSibling(h.backingFile());
            RawFileDriver f2 = RawFileDriver.open(p, true, false);
            f2.attach(iot);
            opened.add(f2);
            backing = "qcow2".equals(h.backingFormat()) || (h.backingFormat() == null && Qcow2Driver.probe(f2))
                    ? openChainOver(p, f2) : f2;
        }
        Qcow2Driver d = Qcow2Driver.open(bf, h, backing, Qcow2Options.defaults(true));
        d.attach(iot);
        opened.add(d);
        return d;
    }

    interface Submit { void run(IoCompletion done) throws BlockException; }

    /** Runs {@code s} on the IOThread and waits for its completion's errno. */
    int await(Submit s) throws Exception {
        CompletableFuture<Integer> f = new CompletableFuture<>();
        iot.execute(() -> {
            try {
                s.run(f::complete);
            } catch (BlockException e) {
                f.completeExceptionally(e);
            } catch (RuntimeException e) {
                f.completeExceptionally(e);
            }
        });
        try {
            return f.get(30, TimeUnit.SECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            if (e.getCause() instanceof BlockException be) throw be;
            throw e;
        }
    }

    /** Reads the whole device in chunks of {@code chunk} bytes. */
    byte[] readAll(BlockDriver d, int chunk) throws Exception {
        long size = d.size();
        byte[] out = new byte[(int) size];
        Memory buf = NativeBuffers.aligned(chunk, 4096);
        for (long off = 0; off < size; off += chunk) {
            int len = (int) Math.min(chunk, size - off);
            long o = off;
            int err = await(done -> d.read(o, NativeBuffers.address(buf), len, done));
            assertEquals(0, err, "read at " + off);
            buf.read(0, out, (int) off, len);
        }
        return out;
    }

    int write(BlockDriver d, long off, byte[] data, boolean fua) throws Exception {
        Memory buf = NativeBuffers.aligned(Math.max(1, data.length), 4096);
        buf.write(0, data, 0, data.length);
        return await(done -> d.write(off, NativeBuffers.address(buf), data.length, fua, done));
    }

    int flush(BlockDriver d) throws Exception {
        return await(d::flush);
    }

    /** Closes every driver opened (qcow2 first, after a synchronous flush when asked). */
    void closeAll(boolean flush) throws Exception {
        on(() -> {
            for (int i = opened.size() - 1; i >= 0; i--) {
                BlockDriver d = opened.get(i);
                if (flush && d instanceof Qcow2Driver q && !q.readOnly()) q.flush();
                d.close();
            }
            opened.clear();
            return null;
        });
    }

    @Override
    public void close() throws Exception {
        try {
            closeAll(false);
        } finally {
            iot.shutdown(5000);
        }
    }
}
