package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Harness.ok;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuImg;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.testing.NativeBuffers;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The BlockDriver contract on qcow2 nodes: completions, draining, FUA, sticky flush errors. */
class Qcow2ContractTest {
    @TempDir
    Path dir;
    Qcow2Harness h;

    @BeforeEach
    void start() { h = new Qcow2Harness("qcow2-contract"); }

    @AfterEach
    void stop() throws Exception { h.close(); }

    /** Counts child flushes; fails async flushes while {@code failFlushes} > 0. */
    static final class FlakyFile extends ForwardingBlockDriver {
        final AtomicInteger flushes = new AtomicInteger();
        int failFlushes;

        FlakyFile(BlockDriver d) { super(d); }

        @Override
        public void flush(IoCompletion c) throws BlockException {
            flushes.incrementAndGet();
            if (failFlushes > 0) {
                failFlushes--;
                super.flush(err -> c.ioDone(Errno.EIO));
                return;
            }
            super.flush(c);
        }
    }

    /** Holds the completions of data writes submitted while {@code on}. Home thread. */
    static final class HoldWrites extends ForwardingBlockDriver {
        boolean on;
        final java.util.List<Runnable> held = new java.util.ArrayList<>();

        HoldWrites(BlockDriver d) { super(d); }

        @Override
        public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
            if (!on) {
                super.writev(o, iov, n, t, fua, c);
                return;
            }
            super.writev(o, iov, n, t, fua, err -> held.add(() -> c.ioDone(err)));
        }

        void release() {
            java.util.List<Runnable> l = new java.util.ArrayList<>(held);
            held.clear();
            l.forEach(Runnable::run);
        }
    }

    Qcow2Driver open(Path img, FlakyFile[] out) throws Exception {
        return h.on(() -> {
            RawFileDriver f = RawFileDriver.open(img, false, false);
            f.attach(h.iot);
            h.opened.add(f);
            out[0] = new FlakyFile(f);
            Qcow2Driver q = Qcow2Driver.open(out[0], Qcow2Driver.readHeader(out[0]), null, Qcow2Options.defaults(false));
            q.attach(h.iot);
            h.opened.add(q);
            return q;
        });
    }

    Path image() throws Exception {
        Path p = dir.resolve("k.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", p.toString(), "4M");
        return p;
    }

    @Test
    void completionsNeverRunInsideTheSubmittingCallAndWhenIdleWaitsForWriteback() throws Exception {
        FlakyFile[] f = new FlakyFile[1];
        Qcow2Driver d = open(image(), f);
        Memory m = NativeBuffers.aligned(65536, 4096);
        CompletableFuture<String> r = new CompletableFuture<>();
        h.iot.execute(() -> {
            boolean[] inCall = {true};
            int[] left = {3};
            StringBuilder bad = new StringBuilder();
            IoCompletion c = err -> {
                if (inCall[0]) bad.append("completion inside the call; ");
                if (err != 0) bad.append("errno ").append(err).append("; ");
                left[0]--;
            };
            try {
                d.read(0, NativeBuffers.address(m), 4096, c); // unallocated: zeros, no I/O at all
                d.write(0, NativeBuffers.address(m), 65536, false, c); // allocating
                d.flush(c); // metadata writeback
                inCall[0] = false;
                if (d.inFlight() == 0) bad.append("nothing in flight; ");
                d.whenIdle(() -> {
                    if (left[0] != 0) bad.append("idle with ").append(left[0]).append(" requests left; ");
                    if (d.inFlight() != 0) bad.append("idle with inFlight ").append(d.inFlight()).append("; ");
                    r.complete(bad.toString());
                });
            } catch (BlockException e) {
                r.completeExceptionally(e);
            }
        });
        assertEquals("", r.get(10, TimeUnit.SECONDS));
    }

    @Test
    void fuaWritesAreFlushed() throws Exception {
        FlakyFile[] f = new FlakyFile[1];
        Qcow2Driver d = open(image(), f);
        int before = f[0].flushes.get();
        assertEquals(0, h.write(d, 8192, new byte[4096], true));
        assertTrue(f[0].flushes.get() > before, "a FUA write flushed the file");
        before = f[0].flushes.get();
        assertEquals(0, h.write(d, 8192, new byte[4096], false));
        assertEquals(before, f[0].flushes.get(), "a plain in-place write does not");
    }

    @Test
    void aFailedFlushStaysFailed() throws Exception {
        FlakyFile[] f = new FlakyFile[1];
        Qcow2Driver d = open(image(), f);
        assertEquals(0, h.write(d, 0, new byte[4096], false));
        h.on(() -> { f[0].failFlushes = 1; return null; });
        assertEquals(Errno.EIO, h.flush(d));
        assertEquals(Errno.EIO, h.flush(d), "sticky: the child would succeed now");
        assertFalse(h.on(() -> f[0].failFlushes > 0));
    }

    /**
     * A cluster unmapped by a discard while an in-place write to it is still in the kernel is not
     * reused (nor freed) until that write completed.
     */
    @Test
    void aFreedClusterWaitsForTransfersStillInTheKernel() throws Exception {
        Path img = image();
        Qcow2Harness.qemuIoCmds(img, "qcow2", "write -P 0x44 0 64k");
        HoldWrites[] hold = new HoldWrites[1];
        Qcow2Driver d = h.on(() -> {
            RawFileDriver f = RawFileDriver.open(img, false, false);
            f.attach(h.iot);
            h.opened.add(f);
            hold[0] = new HoldWrites(f);
            Qcow2Driver q = Qcow2Driver.open(hold[0], Qcow2Driver.readHeader(hold[0]), null, Qcow2Options.defaults(false));
            q.attach(h.iot);
            h.opened.add(q);
            return q;
        });
        Memory a = NativeBuffers.aligned(65536, 4096);
        a.setMemory(0, 65536, (byte) 0x55);
        Memory b = NativeBuffers.aligned(65536, 4096);
        b.setMemory(0, 65536, (byte) 0x66);
        Memory warm = NativeBuffers.aligned(4096, 4096);
        assertEquals(0, h.await(done -> d.read(0, NativeBuffers.address(warm), 4096, done))); // L2 table cached
        CompletableFuture<Integer> w1 = new CompletableFuture<>();
        CompletableFuture<Integer> fl = new CompletableFuture<>();
        CompletableFuture<Integer> w2 = new CompletableFuture<>();
        CompletableFuture<Integer> disc = new CompletableFuture<>();
        h.on(() -> {
            hold[0].on = true;
            d.write(0, NativeBuffers.address(a), 65536, false, w1::complete); // in place, held in the "kernel"
            hold[0].on = false;
            d.discard(0, 65536, disc::complete); // unmaps cluster 0 (metadata only)
            d.flush(fl::complete);
            return null;
        });
        assertEquals(0, disc.get(5, TimeUnit.SECONDS));
        h.on(() -> { d.write(5L << 16, NativeBuffers.address(b), 65536, false, w2::complete); return null; });
        Thread.sleep(300);
        assertFalse(fl.isDone(), "the free waits for the write still in flight");
        assertFalse(w2.isDone(), "no allocation may reuse the cluster meanwhile");
        assertEquals(1, (int) h.on(() -> hold[0].held.size()), "the in-place write is held");
        h.on(() -> { hold[0].release(); return null; });
        assertEquals(0, w1.get(5, TimeUnit.SECONDS));
        assertEquals(0, fl.get(5, TimeUnit.SECONDS));
        assertEquals(0, w2.get(5, TimeUnit.SECONDS));
        h.closeAll(true);
        String[] out = new String[1];
        assertEquals(0, Qcow2Harness.run(out, qemuImg(), "check", img.toString()), out[0]);
        byte[] c = Qcow2Harness.rawContent(img, dir);
        for (int i = 0; i < 65536; i++) {
            assertEquals(0, c[i], "discarded cluster reads zeros at " + i);
            assertEquals(0x66, c[(5 << 16) + i], "new cluster at " + i);
        }
    }

    /** Whole new clusters of one request are allocated contiguously and written with one child write. */
    @Test
    void wholeClusterWritesAllocateInOneChildWrite() throws Exception {
        Path img = image();
        BlockDriver[] w = new BlockDriver[1];
        int[] writes = new int[1];
        Qcow2Driver d = h.on(() -> {
            RawFileDriver f = RawFileDriver.open(img, false, false);
            f.attach(h.iot);
            h.opened.add(f);
            w[0] = new ForwardingBlockDriver(f) {
                @Override
                public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
                    writes[0]++;
                    super.writev(o, iov, n, t, fua, c);
                }
            };
            Qcow2Driver q = Qcow2Driver.open(w[0], Qcow2Driver.readHeader(w[0]), null, Qcow2Options.defaults(false));
            q.attach(h.iot);
            h.opened.add(q);
            return q;
        });
        byte[] data = new byte[1 << 20];
        new java.util.Random(3).nextBytes(data);
        assertEquals(0, h.write(d, 0, data, false));
        assertEquals(1, (int) h.on(() -> writes[0]), "16 new clusters, one child write");
        h.closeAll(true);
        String[] out = new String[1];
        assertEquals(0, Qcow2Harness.run(out, qemuImg(), "check", img.toString()), out[0]);
        byte[] c = Qcow2Harness.rawContent(img, dir);
        org.junit.jupiter.api.Assertions.assertArrayEquals(data, java.util.Arrays.copyOf(c, data.length));
    }

    /** A partial-cluster allocating write with IOV_MAX caller iovecs (head and tail COW would exceed it). */
    @Test
    void allocatingWriteWithIovMaxSegments() throws Exception {
        Path img = image();
        Qcow2Harness.qemuIoCmds(img, "qcow2", "write -P 0x31 0 64k");
        ok(qemuImg(), "snapshot", "-c", "s", img.toString()); // cluster 0 shared: the write below copies it
        Qcow2Driver d = h.open(img, false);
        int n = 1024;
        Memory buf = NativeBuffers.aligned(n * 16L, 4096);
        buf.setMemory(0, n * 16L, (byte) 0x77);
        long[] lens = new long[n];
        java.util.Arrays.fill(lens, 16);
        Memory iov = NativeBuffers.split(buf, lens);
        assertEquals(0, h.await(done -> d.writev(1000, NativeBuffers.address(iov), n, n * 16L, false, done)));
        h.closeAll(true);
        byte[] c = Qcow2Harness.rawContent(img, dir);
        for (int i = 0; i < 65536; i++) {
            int want = i >= 1000 && i < 1000 + n * 16 ? 0x77 : 0x31;
            if (c[i] != (byte) want) org.junit.jupiter.api.Assertions.fail("byte " + i + " is " + c[i]);
        }
        String[] out = new String[1];
        assertEquals(0, Qcow2Harness.run(out, qemuImg(), "check", img.toString()), out[0]);
    }

    @Test
    void readOnlyNodesRefuseWrites() throws Exception {
        Qcow2Driver d = h.open(image(), true);
        BlockException e = org.junit.jupiter.api.Assertions.assertThrows(BlockException.class, () -> h.write(d, 0, new byte[512], false));
        assertEquals(Errno.EROFS, e.errno());
        assertEquals(0, h.flush(d));
    }
}
