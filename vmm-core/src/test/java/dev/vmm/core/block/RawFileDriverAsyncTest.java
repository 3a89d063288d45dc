package dev.vmm.core.block;

import dev.vmm.core.linux.Errno;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.aio.AioMode;
import dev.vmm.core.aio.AioRequest;
import dev.vmm.core.aio.IoEngine;
import dev.vmm.core.aio.IoEngines;
import dev.vmm.core.aio.ThreadPoolEngine;
import dev.vmm.core.linux.LibC;
import dev.vmm.iothread.IOThread;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/** The asynchronous data path of {@link RawFileDriver} on a real IOThread, through each engine. */
class RawFileDriverAsyncTest {
    static final int BLOCK = 4096;
    static IOThread iot;

    @TempDir
    Path dir;

    @BeforeAll
    static void start() { iot = IOThread.start("async-test"); }

    @AfterAll
    static void stop() { iot.shutdown(5000); }

    Path image(long size) throws Exception {
        Path p = dir.resolve("disk.img");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(size);
        }
        return p;
    }

    /** Runs {@code submit} on the IOThread and waits for the completion it was given. */
    static int await(SubmitOne submit) throws Exception {
        CompletableFuture<Integer> f = new CompletableFuture<>();
        iot.execute(() -> {
            try {
                submit.run(f::complete);
            } catch (BlockException e) {
                f.completeExceptionally(e);
            }
        });
        return f.get(10, TimeUnit.SECONDS);
    }

    interface SubmitOne { void run(IoCompletion done) throws BlockException; }

    @ParameterizedTest
    @EnumSource(value = AioMode.class, names = {"IO_URING", "THREADS"})
    void manyRequestsInFlightReadBackWhatWasWritten(AioMode mode) throws Exception {
        for (boolean direct : new boolean[] {false, true}) {
            int n = 64;
            Path img = image((long) n * BLOCK);
            RawFileDriver d = RawFileDriver.open(img, false, direct, mode);
            Memory buf = new Memory((long) (n + 1) * BLOCK);
            long base = (Pointer.nativeValue(buf) + BLOCK - 1) & -BLOCK;
            byte[] expect = new byte[n * BLOCK];
            new Random(mode.ordinal() * 2 + (direct ? 1 : 0)).nextBytes(expect);
            buf.write(base - Pointer.nativeValue(buf), expect, 0, expect.length);
            try {
                CompletableFuture<Void> all = new CompletableFuture<>();
                int[] seenInFlight = new int[1];
                AtomicInteger errors = new AtomicInteger();
                iot.execute(() -> {
                    d.attach(iot);
                    int[] left = {n};
                    try {
                        for (int i = 0; i < n; i++) {
                            d.write((long) i * BLOCK, base + (long) i * BLOCK, BLOCK, false, err -> {
                                if (err != 0) errors.incrementAndGet();
                                if (--left[0] == 0) all.complete(null);
                            });
                        }
                        seenInFlight[0] = d.inFlight(); // completions never run inside the submitting call
                    } catch (BlockException | RuntimeException | Error e) {
                        all.completeExceptionally(e);
                    }
                });
                try { all.get(10, TimeUnit.SECONDS); } catch (java.util.concurrent.TimeoutException te) { throw new AssertionError("direct=" + direct + " inflight=" + iot.call(d::inFlight) + " engine=" + d.engine().inFlight() + " errors=" + errors, te); }
                assertEquals(n, seenInFlight[0], "all writes were in flight at once");
                assertEquals(0, errors.get());
                assertEquals(0, await(done -> d.flush(done)));
                byte[] file = Files.readAllBytes(img);
                assertArrayEquals(expect, file, "what the file holds (" + mode + ", direct=" + direct + ")");
                // read back through the driver into a clean buffer
                buf.clear();
                for (int i = 0; i < n; i++) {
                    long at = (long) i * BLOCK;
                    assertEquals(0, await(done -> d.read(at, base + at, BLOCK, done)));
                }
                byte[] got = new byte[n * BLOCK];
                buf.read(base - Pointer.nativeValue(buf), got, 0, got.length);
                assertArrayEquals(expect, got);
                assertEquals(mode == AioMode.THREADS ? AioMode.THREADS : AioMode.IO_URING, d.engine().mode());
            } finally {
                iot.call(() -> { d.close(); return null; });
                buf.close();
                Files.delete(img);
            }
        }
    }

    /** Runs every request synchronously on the calling (home) thread, with faults on demand. */
    static final class FaultyEngine implements IoEngine {
        int failFsyncs;
        boolean shortTransfers;
        int fsyncsSeen;
        /** Fails the transfer at this file offset with EIO (-1: none). */
        long failAt = -1;
        /** Keep fsyncs in flight until {@link #release}. */
        boolean holdFsyncs;
        /** Keep the next request of any kind in flight until {@link #release}. */
        boolean holdNext;
        AioRequest held;

        @Override
        public void submit(AioRequest r) {
            int res;
            if ((r.opcode == OP_FSYNC && holdFsyncs) || (r.opcode != OP_FSYNC && holdNext)) {
                holdNext = false;
                fsyncsSeen++;
                held = r;
                return;
            }
            if (r.opcode == OP_FSYNC) {
                fsyncsSeen++;
                res = failFsyncs > 0 ? -Errno.EIO : ThreadPoolEngine.perform(r);
                if (failFsyncs > 0) failFsyncs--;
            } else if (r.offset == failAt && (r.opcode == OP_READV || r.opcode == OP_WRITEV)) {
                res = -Errno.EIO;
            } else if (shortTransfers && (r.opcode == OP_READV || r.opcode == OP_WRITEV) && r.len > 1) {
                int len = r.len;
                r.len = 1; // only the first iovec: a short transfer the driver must continue
                res = ThreadPoolEngine.perform(r);
                r.len = len;
            } else {
                res = ThreadPoolEngine.perform(r);
            }
            int result = res;
            iot.execute(() -> r.completed(result));
        }

        void release() {
            AioRequest r = held;
            held = null;
            int res = ThreadPoolEngine.perform(r);
            iot.execute(() -> r.completed(res));
        }

        @Override
        public AioMode mode() { return AioMode.THREADS; }

        @Override
        public int inFlight() { return 0; }
    }

    @Test
    void aFailedFlushStaysFailed() throws Exception {
        RawFileDriver d = RawFileDriver.open(image(BLOCK), false, false, AioMode.IO_URING);
        FaultyEngine e = new FaultyEngine();
        iot.call(() -> { d.attach(iot); d.useEngine(e); return null; });
        try {
            e.failFsyncs = 1;
            assertEquals(Errno.EIO, await(done -> d.flush(done)));
            // The kernel would now report success (it forgot the error): we must not.
            assertEquals(Errno.EIO, await(done -> d.flush(done)), "second flush after a writeback error");
            Memory m = new Memory(BLOCK);
            assertEquals(Errno.EIO, await(done -> d.write(0, Pointer.nativeValue(m), BLOCK, true, done)),
                    "a FUA write after a writeback error cannot be durable either");
            assertEquals(0, await(done -> d.write(0, Pointer.nativeValue(m), BLOCK, false, done)), "plain writes still work");
            assertEquals(1, e.fsyncsSeen, "later flushes do not even ask the kernel");
            BlockException sync = org.junit.jupiter.api.Assertions.assertThrows(BlockException.class,
                    () -> iot.call(() -> { d.flush(); return null; }), "the final (synchronous) flush of blockdev-del and shutdown");
            assertEquals(dev.vmm.core.linux.Errno.EIO, sync.errno());
            m.close();
        } finally {
            iot.call(() -> { d.close(); return null; });
        }
    }

    @Test
    void shortTransfersAreContinued() throws Exception {
        int n = 8;
        RawFileDriver d = RawFileDriver.open(image((long) n * BLOCK), false, false, AioMode.IO_URING);
        FaultyEngine e = new FaultyEngine();
        e.shortTransfers = true;
        iot.call(() -> { d.attach(iot); d.useEngine(e); return null; });
        Memory data = new Memory((long) n * BLOCK);
        Memory iov = new Memory(16L * n);
        byte[] expect = new byte[n * BLOCK];
        new Random(7).nextBytes(expect);
        data.write(0, expect, 0, expect.length);
        for (int i = 0; i < n; i++) {
            iov.setLong(16L * i, Pointer.nativeValue(data) + (long) i * BLOCK);
            iov.setLong(16L * i + 8, BLOCK);
        }
        try {
            assertEquals(0, await(done -> d.writev(0, Pointer.nativeValue(iov), n, (long) n * BLOCK, false, done)));
            assertArrayEquals(expect, Files.readAllBytes(dir.resolve("disk.img")));
            data.clear();
            assertEquals(0, await(done -> d.readv(0, Pointer.nativeValue(iov), n, (long) n * BLOCK, done)));
            byte[] got = new byte[n * BLOCK];
            data.read(0, got, 0, got.length);
            assertArrayEquals(expect, got);
            // the caller's iovec array is untouched by the continuation
            for (int i = 0; i < n; i++) assertEquals(BLOCK, iov.getLong(16L * i + 8));
        } finally {
            iot.call(() -> { d.close(); return null; });
            data.close();
            iov.close();
        }
    }

    @Test
    void oneFailedRequestInABatchFailsAloneAndTheOthersComplete() throws Exception {
        int n = 32;
        RawFileDriver d = RawFileDriver.open(image((long) n * BLOCK), false, false, AioMode.IO_URING);
        FaultyEngine e = new FaultyEngine();
        e.failAt = 7L * BLOCK;
        iot.call(() -> { d.attach(iot); d.useEngine(e); return null; });
        Memory m = new Memory((long) n * BLOCK);
        int[] errno = new int[n];
        CompletableFuture<Void> all = new CompletableFuture<>();
        try {
            iot.execute(() -> {
                int[] left = {n};
                try {
                    for (int i = 0; i < n; i++) {
                        int k = i;
                        d.write((long) i * BLOCK, Pointer.nativeValue(m) + (long) i * BLOCK, BLOCK, false, err -> {
                            errno[k] = err;
                            if (--left[0] == 0) all.complete(null);
                        });
                    }
                } catch (BlockException ex) {
                    all.completeExceptionally(ex);
                }
            });
            all.get(10, TimeUnit.SECONDS);
            for (int i = 0; i < n; i++) assertEquals(i == 7 ? Errno.EIO : 0, errno[i], "request " + i);
            assertEquals(0, (int) iot.call(d::inFlight));
        } finally {
            iot.call(() -> { d.close(); return null; });
            m.close();
        }
    }

    @Test
    void flushesShareFdatasyncsAndSkipThemWhenNothingWasWritten() throws Exception {
        RawFileDriver d = RawFileDriver.open(image(BLOCK), false, false, AioMode.IO_URING);
        FaultyEngine e = new FaultyEngine();
        iot.call(() -> { d.attach(iot); d.useEngine(e); return null; });
        Memory m = new Memory(BLOCK);
        long buf = Pointer.nativeValue(m);
        try {
            assertEquals(0, await(done -> d.flush(done)));
            assertEquals(1, e.fsyncsSeen, "the first flush after open always syncs");
            assertEquals(0, await(done -> d.flush(done)));
            assertEquals(1, e.fsyncsSeen, "nothing written since: no fdatasync");

            // three flushes at once after a write: one fdatasync answers all
            assertEquals(0, await(done -> d.write(0, buf, BLOCK, false, done)));
            CompletableFuture<int[]> three = new CompletableFuture<>();
            iot.execute(() -> {
                int[] res = {-1, -1, -1};
                int[] left = {3};
                try {
                    for (int i = 0; i < 3; i++) {
                        int k = i;
                        d.flush(err -> { res[k] = err; if (--left[0] == 0) three.complete(res); });
                    }
                } catch (BlockException ex) {
                    three.completeExceptionally(ex);
                }
            });
            assertArrayEquals(new int[] {0, 0, 0}, three.get(10, TimeUnit.SECONDS));
            assertEquals(2, e.fsyncsSeen, "three concurrent flushes, one fdatasync");

            // a write that finishes while a flush is in the kernel needs a flush of its own
            assertEquals(0, await(done -> d.write(0, buf, BLOCK, false, done)));
            e.holdFsyncs = true;
            CompletableFuture<Integer> first = new CompletableFuture<>();
            iot.execute(() -> { try { d.flush(first::complete); } catch (BlockException ex) { first.completeExceptionally(ex); } });
            while (iot.call(() -> e.held) == null) Thread.sleep(1);
            assertEquals(0, await(done -> d.write(0, buf, BLOCK, false, done)));
            CompletableFuture<Integer> second = new CompletableFuture<>();
            iot.execute(() -> { try { d.flush(second::complete); } catch (BlockException ex) { second.completeExceptionally(ex); } });
            iot.call(() -> { e.holdFsyncs = false; e.release(); return null; });
            assertEquals(0, first.get(10, TimeUnit.SECONDS));
            assertEquals(0, second.get(10, TimeUnit.SECONDS));
            assertEquals(4, e.fsyncsSeen, "the flush that waited covered the later write with a second fdatasync");
        } finally {
            iot.call(() -> { d.close(); return null; });
            m.close();
        }
    }

    @Test
    void anUnalignedODirectWriteWaitsUntilNothingElseIsInTheKernel() throws Exception {
        RawFileDriver d = RawFileDriver.open(image(4 * BLOCK), false, true, AioMode.IO_URING);
        FaultyEngine e = new FaultyEngine();
        iot.call(() -> { d.attach(iot); d.useEngine(e); return null; });
        Memory m = new Memory(4L * BLOCK);
        long aligned = (Pointer.nativeValue(m) + BLOCK - 1) & -BLOCK;
        m.setMemory(0, 4L * BLOCK, (byte) 0x11);
        try {
            e.holdNext = true; // the aligned write stays in the "kernel"
            CompletableFuture<Integer> first = new CompletableFuture<>();
            iot.execute(() -> { try { d.write(0, aligned, BLOCK, false, first::complete); } catch (BlockException ex) { first.completeExceptionally(ex); } });
            while (iot.call(() -> e.held) == null) Thread.sleep(1);
            // 512 bytes from a misaligned buffer into the same block: a read-modify-write bounce
            CompletableFuture<Integer> bounce = new CompletableFuture<>();
            iot.execute(() -> { try { d.write(512, aligned + 1, 512, false, bounce::complete); } catch (BlockException ex) { bounce.completeExceptionally(ex); } });
            Thread.sleep(200);
            assertTrue(!bounce.isDone(), "the bounce ran while a write to its block was in flight");
            assertEquals(1L, (long) iot.call(d::bouncedRequests));
            iot.call(() -> { e.release(); return null; });
            assertEquals(0, first.get(10, TimeUnit.SECONDS));
            assertEquals(0, bounce.get(10, TimeUnit.SECONDS));
            byte[] file = Files.readAllBytes(dir.resolve("disk.img"));
            for (int i = 0; i < BLOCK; i++) assertEquals((byte) 0x11, file[i], "byte " + i);
            assertEquals(0, (int) iot.call(d::inFlight));
        } finally {
            iot.call(() -> { d.close(); return null; });
            m.close();
        }
    }

    @Test
    void theDefaultEngineIsIoUringWhereTheKernelAllowsIt() throws Exception {
        IoEngine e = IoEngines.forThread(iot, AioMode.IO_URING);
        if ("true".equals(System.getenv("CI")) && System.getenv("VMM_AIO") == null) {
            // The project's machines allow io_uring: CI must not pass on the fallback unnoticed.
            assertEquals(null, IoEngines.uringUnavailable(), "io_uring refused on a CI machine");
        }
        if (IoEngines.uringUnavailable() == null) {
            assertEquals(AioMode.IO_URING, e.mode());
        } else {
            assertEquals(AioMode.THREADS, e.mode());
        }
        assertTrue(IoEngines.forThread(iot, AioMode.THREADS).mode() == AioMode.THREADS);
    }
}
