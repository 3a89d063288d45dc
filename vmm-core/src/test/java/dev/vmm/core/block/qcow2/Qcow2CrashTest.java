package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Harness.ok;
import static dev.vmm.core.block.qcow2.Qcow2Harness.qemuImg;
import static dev.vmm.core.block.qcow2.Qcow2Harness.run;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.core.testing.NativeBuffers;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Crash consistency: every write and flush the driver sends to its file is recorded; then a
 * crash is simulated at every flush of the run (all writes before it durable, any subset of the
 * writes after it). {@code qemu-img check} on each such image must find at most leaked
 * clusters (exit 0 or 3, never 2), and everything acknowledged before a flush must be there.
 */
class Qcow2CrashTest {
    @TempDir
    Path dir;
    Qcow2Harness h;

    @BeforeEach
    void start() { h = new Qcow2Harness("qcow2-crash"); }

    @AfterEach
    void stop() throws Exception { h.close(); }

    /** One recorded child operation: a write (data), a flush (null data) or a grow (size only). */
    record Rec(long offset, byte[] data, boolean flush, long grow) {}

    /** Records what reaches the file, in submission order. Home thread. */
    static final class Recorder extends ForwardingBlockDriver {
        final List<Rec> log = new ArrayList<>();

        Recorder(BlockDriver d) { super(d); }

        private void rec(long off, long addr, long len) {
            byte[] b = new byte[(int) len];
            for (int i = 0; i < len; i++) b[i] = (byte) RawMemory.getByte(addr + i);
            log.add(new Rec(off, b, false, -1));
        }

        private void recv(long off, long iov, int n) {
            for (int i = 0; i < n; i++) {
                long base = RawMemory.getLe64(iov + 16L * i);
                long len = RawMemory.getLe64(iov + 16L * i + 8);
                rec(off, base, len);
                off += len;
            }
        }

        @Override public void write(long o, long a, int l, boolean fua) throws BlockException { rec(o, a, l); super.write(o, a, l, fua); }
        @Override public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException { rec(o, a, l); super.write(o, a, l, fua, c); }
        @Override public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException { recv(o, iov, n); super.writev(o, iov, n, t, fua, c); }
        @Override public void flush(IoCompletion c) throws BlockException { log.add(new Rec(0, null, true, -1)); super.flush(c); }
        @Override public void flush() throws BlockException { log.add(new Rec(0, null, true, -1)); super.flush(); }
        @Override public void grow(long n) throws BlockException { log.add(new Rec(0, null, false, n)); super.grow(n); }
    }

    /** Applies records {@code [0, upTo)} fully, then those of {@code [upTo, until)} chosen by {@code pick}. */
    static void rebuild(Path initial, Path out, List<Rec> log, int upTo, int until, Random pick) throws Exception {
        Files.copy(initial, out, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        try (RandomAccessFile f = new RandomAccessFile(out.toFile(), "rw")) {
            for (int i = 0; i < until; i++) {
                Rec r = log.get(i);
                if (r.grow >= 0) {
                    if (f.length() < r.grow) f.setLength(r.grow); // ftruncate is metadata: assume durable
                    continue;
                }
                if (r.flush) continue;
                if (i >= upTo && pick != null && !pick.nextBoolean()) continue;
                f.seek(r.offset);
                f.write(r.data);
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"cluster_size=4096", "cluster_size=65536,extended_l2=on", "cluster_size=512,refcount_bits=64",
        "cluster_size=65536,compat=0.10"})
    void crashAtEveryFlushLeavesOnlyLeaks(String opts) throws Exception {
        Path img = dir.resolve("c.qcow2");
        ok(qemuImg(), "create", "-q", "-f", "qcow2", "-o", opts, img.toString(), "8M");
        ok(Qcow2Harness.qemuIo(), "-f", "qcow2", "-c", "write -P 0x42 0 1M", img.toString());
        ok(qemuImg(), "snapshot", "-c", "s", img.toString()); // shared clusters: COW and deferred frees
        Path initial = dir.resolve("initial.qcow2");
        Files.copy(img, initial);
        int cs = Integer.parseInt(opts.replaceAll(".*cluster_size=(\\d+).*", "$1"));
        long size = 8L << 20;
        byte[] model = Qcow2Harness.rawContent(img, dir);
        // A small L2 cache forces evictions (writebacks that are not guest flushes).
        Qcow2Options o = new Qcow2Options(false, 4L * cs, 4L * cs, null, true);
        Recorder[] rec = new Recorder[1];
        Qcow2Driver d = h.on(() -> {
            RawFileDriver f = RawFileDriver.open(img, false, false);
            f.attach(h.iot);
            h.opened.add(f);
            rec[0] = new Recorder(f);
            Qcow2Driver q = Qcow2Driver.open(rec[0], Qcow2Driver.readHeader(rec[0]), null, o);
            q.attach(h.iot);
            h.opened.add(q);
            return q;
        });
        Random rnd = new Random(opts.hashCode());
        List<byte[]> afterFlush = new ArrayList<>();
        List<Integer> flushRecIndex = new ArrayList<>();
        for (int batch = 0; batch < 12; batch++) {
            int n = 6;
            CompletableFuture<Void> all = new CompletableFuture<>();
            List<Memory> bufs = new ArrayList<>();
            long[] offs = new long[n];
            int[] lens = new int[n];
            for (int i = 0; i < n; i++) {
                // non-overlapping: one slot of size/n each
                long slot = size / n;
                lens[i] = 512 * (1 + rnd.nextInt(3 * cs / 512 + 1));
                offs[i] = i * slot + ((rnd.nextLong() & Long.MAX_VALUE) % (slot - lens[i])) / 512 * 512;
                Memory m = NativeBuffers.aligned(lens[i], 4096);
                byte v = (byte) (1 + rnd.nextInt(250));
                m.setMemory(0, lens[i], v);
                bufs.add(m);
                java.util.Arrays.fill(model, (int) offs[i], (int) offs[i] + lens[i], v);
            }
            int[] errs = new int[1];
            h.iot.execute(() -> {
                int[] left = {n};
                try {
                    for (int i = 0; i < n; i++) {
                        d.write(offs[i], NativeBuffers.address(bufs.get(i)), lens[i], false, err -> {
                            if (err != 0) errs[0] = err;
                            if (--left[0] == 0) all.complete(null);
                        });
                    }
                } catch (BlockException e) {
                    all.completeExceptionally(e);
                }
            });
            all.get(30, TimeUnit.SECONDS);
            assertEquals(0, errs[0]);
            if (batch % 3 == 2) {
                assertEquals(0, h.flush(d));
                afterFlush.add(model.clone());
                flushRecIndex.add(h.on(() -> rec[0].log.size()));
            }
        }
        List<Rec> log = h.on(() -> new ArrayList<>(rec[0].log));
        h.closeAll(false); // crash: no writeback at close
        List<Integer> flushes = new ArrayList<>();
        for (int i = 0; i < log.size(); i++) if (log.get(i).flush) flushes.add(i);
        assertTrue(flushes.size() >= 8, "evictions and flushes wrote back metadata " + flushes.size() + " times");
        Path crashed = dir.resolve("crashed.qcow2");
        int checks = 0;
        for (int k = 0; k <= flushes.size(); k++) {
            int upTo = k == 0 ? 0 : flushes.get(k - 1) + 1;
            int until = k == flushes.size() ? log.size() : flushes.get(k);
            for (int variant = 0; variant < 3; variant++) {
                Random pick = variant == 0 ? null : new Random(k * 31L + variant);
                rebuild(initial, crashed, log, upTo, variant == 0 ? upTo : until, pick);
                String[] out = new String[1];
                int rc = run(out, qemuImg(), "check", crashed.toString());
                checks++;
                assertTrue(rc == 0 || rc == 3, "crash after flush record " + upTo + " (variant " + variant + "): qemu-img check exit "
                        + rc + ": " + out[0]);
            }
        }
        // After each acknowledged guest flush, what was written before it is there.
        for (int i = 0; i < afterFlush.size(); i++) {
            int idx = flushRecIndex.get(i);
            rebuild(initial, crashed, log, idx, idx, null);
            assertArrayEquals(afterFlush.get(i), Qcow2Harness.rawContent(crashed, dir), "content after guest flush " + i);
        }
        assertTrue(checks > 20);
    }
}
