package dev.vmm.nbd.handoff;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.server.NbdServerComponent;
import dev.vmm.nbd.testing.NbdTestClient;
import java.io.RandomAccessFile;
import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Moves of a whole graph with NBD clients on two of its nodes: a writable raw node {@code disk0}
 * and a read-only raw node {@code ro}, both over one file node {@code f0}. Moving {@code f0} (a
 * node no client uses) takes both format nodes and all their clients along; the writers verify
 * every block they wrote, the reader's requests all succeed, and every node lands on the target.
 * Requests assert (-ea) that they run on their node's home.
 */
@Timeout(120)
class NbdGraphHandoffTest {
    static final long SIZE = 64L << 20;

    @TempDir Path tmp;
    Daemon daemon;
    InetSocketAddress address;

    @BeforeEach
    void start() throws Exception {
        Path image = tmp.resolve("disk.img");
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        daemon = Daemon.start();
        for (String id : List.of("iot0", "iot1", "iot2")) daemon.addIOThread(id);
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=f0,filename=" + image, null));
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=raw,node-name=disk0,file=f0", null));
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=raw,node-name=ro,file=f0,read-only=on", null));
        NbdServerComponent nbd = NbdServerComponent.configure(daemon,
                KeyValueParser.parse("--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=0", null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e0,node-name=disk0,writable=on,iothread=iot0", "type"));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e1,node-name=ro,allocation-depth=on", "type"));
        nbd.start();
        address = (InetSocketAddress) nbd.server().boundAddress();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    /** Reads and block-status queries on the read-only node until stopped; every reply must succeed. */
    Runnable reader(AtomicBoolean stop, AtomicLong ops, ConcurrentLinkedQueue<String> errors) {
        return () -> {
            try (NbdTestClient c = new NbdTestClient(address).handshake()) {
                c.structuredReplies();
                c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "ro", NbdMetaContext.BASE_ALLOCATION, NbdMetaContext.QEMU_ALLOCATION_DEPTH);
                c.go("ro");
                long at = 0;
                while (!stop.get()) {
                    c.read(at, 65536, 0);
                    if (c.request(0, NbdCmd.NBD_CMD_BLOCK_STATUS, at, 1 << 20, null).error() != 0) errors.add("reader: block status error");
                    at = (at + (1 << 20)) % SIZE;
                    ops.addAndGet(2);
                }
                c.disconnect();
            } catch (Exception e) {
                errors.add("reader: " + e);
            }
        };
    }

    @Test
    void movingTheSharedFileNodeTakesBothDisksAndTheirClients() throws Exception {
        BlockNode f0 = daemon.node("f0");
        assertEquals(3, f0.connected().size());
        for (BlockNode n : f0.connected().values()) assertEquals("iot0", n.home().id(), n.name());
        AtomicBoolean stop = new AtomicBoolean();
        AtomicLong ops = new AtomicLong();
        AtomicLong readOps = new AtomicLong();
        ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            threads.add(new Thread(new NbdHandoffTest.Worker(address, i, i % 2 == 1, stop, ops, errors), "writer-" + i));
        }
        threads.add(new Thread(reader(stop, readOps, errors), "reader"));
        threads.forEach(Thread::start);
        while (daemon.node("disk0").users().size() < 3 || daemon.node("ro").users().size() < 1) Thread.sleep(10);

        String[] ring = {"iot1", "iot2", "iot0"};
        int moves = 0;
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
        while (System.nanoTime() < end) {
            String to = ring[moves++ % ring.length];
            daemon.moveNode("f0", to).get(10, TimeUnit.SECONDS);
            for (BlockNode n : f0.connected().values()) assertSame(daemon.iothread(to), n.home(), n.name());
            Thread.sleep(2);
        }
        long before = ops.get();
        long readsBefore = readOps.get();
        Thread.sleep(300);
        assertTrue(ops.get() > before && readOps.get() > readsBefore, "writers and the reader still make progress");
        stop.set(true);
        for (Thread t : threads) t.join(20_000);
        assertEquals(List.of(), List.copyOf(errors));
        assertTrue(moves > 10, "moves done: " + moves);
    }
}
