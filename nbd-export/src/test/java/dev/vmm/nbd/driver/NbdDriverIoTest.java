package dev.vmm.nbd.driver;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.options.KeyValueParser;
import io.netty.util.internal.PlatformDependent;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The driver's own data path, called directly on the node's home: scatter-gather requests
 * ({@code readv}/{@code writev} over iovecs of odd sizes) split by a server that advertises a
 * 64 KiB maximum and a 512-byte minimum (nbdkit's blocksize-policy filter), alignment refused,
 * write-zeroes and discard, block status, and the synchronous calls.
 */
@Timeout(120)
class NbdDriverIoTest {
    static final long SIZE = 16L << 20;

    @TempDir Path tmp;
    Daemon daemon;
    Peer kit;
    BlockNode node;
    final List<ByteBuffer> keep = new ArrayList<>();

    @BeforeEach
    void start() throws Exception {
        kit = Peer.nbdkit(tmp, "kit", "--filter=blocksize-policy", "memory", "size=" + SIZE, "blocksize-minimum=512",
                "blocksize-preferred=4096", "blocksize-maximum=65536", "blocksize-error-policy=error").start();
        daemon = Daemon.start();
        daemon.addIOThread("iot0");
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=nbd,node-name=n0,server.type=unix,server.path=" + kit.socket, null));
        node = daemon.node("n0");
    }

    @AfterEach
    void stop() throws Exception {
        daemon.shutdown(false);
        kit.close();
    }

    interface Submit {
        void submit(BlockDriver d, dev.vmm.core.block.IoCompletion done) throws BlockException;
    }

    /** Submits on the home thread and waits for the completion's errno. */
    int io(Submit s) throws Exception {
        CompletableFuture<Integer> f = new CompletableFuture<>();
        node.home().execute(() -> {
            try {
                s.submit(node.driver(), errno -> {
                    assertTrue(node.home().inThread(), "completion on the home thread");
                    f.complete(errno);
                });
            } catch (BlockException e) {
                f.completeExceptionally(e);
            }
        });
        try {
            return f.get(30, TimeUnit.SECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            throw (Exception) e.getCause();
        }
    }

    ByteBuffer direct(int n) {
        ByteBuffer b = ByteBuffer.allocateDirect(n);
        keep.add(b);
        return b;
    }

    /** An iovec array over {@code segs} buffers of the given sizes; returns {iovAddress, buffers...}. */
    long iovec(ByteBuffer[] segs) {
        ByteBuffer iov = direct(16 * segs.length).order(ByteOrder.nativeOrder());
        for (int i = 0; i < segs.length; i++) {
            iov.putLong(16 * i, PlatformDependent.directBufferAddress(segs[i]));
            iov.putLong(16 * i + 8, segs[i].capacity());
        }
        return PlatformDependent.directBufferAddress(iov);
    }

    @Test
    void scatterGatherRequestsSplitByTheServersMaximum() throws Exception {
        assertEquals(4096, node.driver().preferredBlockSize());
        int[] sizes = {512, 300_000 - 512 - 212, 212, 748_576}; // 1 MiB, odd segment borders
        int total = 0;
        for (int s : sizes) total += s;
        assertEquals(1 << 20, total);
        byte[] data = new byte[total];
        new Random(1).nextBytes(data);
        ByteBuffer[] out = new ByteBuffer[sizes.length];
        int at = 0;
        for (int i = 0; i < sizes.length; i++) {
            out[i] = direct(sizes[i]);
            out[i].put(0, data, at, sizes[i]);
            at += sizes[i];
        }
        long outIov = iovec(out);
        int len = total;
        assertEquals(0, io((d, c) -> d.writev(1 << 20, outIov, sizes.length, len, true, c)));

        int[] inSizes = {4096, 1000, (1 << 20) - 4096 - 1000 - 7, 7};
        ByteBuffer[] in = new ByteBuffer[inSizes.length];
        for (int i = 0; i < inSizes.length; i++) in[i] = direct(inSizes[i]);
        long inIov = iovec(in);
        assertEquals(0, io((d, c) -> d.readv(1 << 20, inIov, inSizes.length, len, c)));
        byte[] back = new byte[total];
        at = 0;
        for (ByteBuffer b : in) {
            b.get(0, back, at, b.capacity());
            at += b.capacity();
        }
        assertArrayEquals(data, back);

        // the synchronous path (a second connection) sees the same bytes
        ByteBuffer sync = direct(65536 * 3);
        node.home().call(() -> {
            node.driver().read(1 << 20, PlatformDependent.directBufferAddress(sync), sync.capacity());
            return null;
        });
        byte[] s = new byte[sync.capacity()];
        sync.get(0, s);
        assertArrayEquals(java.util.Arrays.copyOf(data, s.length), s);
    }

    @Test
    void unalignedRequestsAreRefusedAndZeroesAndStatusWork() throws Exception {
        ByteBuffer b = direct(8192);
        long addr = PlatformDependent.directBufferAddress(b);
        BlockException e = assertThrows(BlockException.class, () -> io((d, c) -> d.read(100, addr, 512, c)));
        assertEquals(Errno.EINVAL, e.errno());
        e = assertThrows(BlockException.class, () -> io((d, c) -> d.read(SIZE - 512, addr, 1024, c)));
        assertEquals(Errno.EINVAL, e.errno());

        for (int i = 0; i < 8192; i++) b.put(i, (byte) 0x33);
        assertEquals(0, io((d, c) -> d.write(0, addr, 8192, false, c)));
        assertEquals(0, io((d, c) -> d.writeZeroes(0, 4096, false, false, false, c)));
        assertEquals(0, io((d, c) -> d.flush(c)));
        ByteBuffer r = direct(8192);
        long raddr = PlatformDependent.directBufferAddress(r);
        assertEquals(0, io((d, c) -> d.read(0, raddr, 8192, c)));
        for (int i = 0; i < 8192; i++) assertEquals(i < 4096 ? 0 : 0x33, r.get(i), "byte " + i);

        assertEquals(0, io((d, c) -> d.discard(1 << 20, 1 << 20, c)));
        BlockStatus st = new BlockStatus();
        node.home().call(() -> {
            node.driver().status(8 << 20, 1 << 20, st);
            return null;
        });
        assertEquals(1 << 20, st.length);
        assertEquals(BlockStatus.HOLE | BlockStatus.ZERO, st.flags);
        node.home().call(() -> {
            node.driver().status(4096, SIZE, st);
            return null;
        });
        assertEquals(0, st.flags, "data at 4096: " + st);
        assertTrue(st.length >= 4096 && st.length <= SIZE - 4096, st.toString());
    }
}
