package dev.vmm.core.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.BitmapStore;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.linux.Errno;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The bitmap commands' use of a format's {@link BitmapStore} (qcow2 implements it; here a
 * recording double under the node's driver chain): {@code persistent=true} asks
 * {@link BitmapStore#checkCanStore} on the home thread and answers its refusal as the error;
 * removing a persistent bitmap removes it from the image first (a failure leaves the bitmap), in
 * a transaction at prepare, and an abort keeps the bitmap on the node.
 */
@Timeout(60)
class BitmapStoreCommandsTest {
    @TempDir
    Path dir;
    Daemon daemon;
    QmpServer server;
    Path socket;

    /** A format double that stores bitmaps: records what it was asked, on which thread. */
    static final class Store extends ForwardingBlockDriver implements BitmapStore {
        final List<String> calls = new ArrayList<>();
        volatile String refuse;
        volatile int removeErrno;
        volatile boolean offHome;
        final BlockNode[] node = new BlockNode[1];

        Store(RawFileDriver d) { super(d); }

        @Override
        public String checkCanStore(String name, long granularity) {
            if (!node[0].home().inThread()) offHome = true;
            calls.add("check " + name + " " + granularity);
            return refuse;
        }

        @Override
        public void removeStored(String name, IoCompletion done) {
            if (!node[0].home().inThread()) offHome = true;
            calls.add("remove " + name);
            node[0].home().execute(() -> done.ioDone(removeErrno)); // later, as real I/O
        }
    }

    Store store;

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        QmpCommands commands = new QmpCommands();
        CoreCommands.register(commands, daemon, (n, t) -> java.util.concurrent.CompletableFuture.completedFuture(0L), () -> {});
        BitmapCommands.register(commands, daemon);
        TransactionCommand.register(commands, daemon);
        server = new QmpServer(daemon.mainLoop(), commands, QmpServer.Version.DEFAULT);
        daemon.putComponent(QmpServer.class, server);
        socket = dir.resolve("qmp.sock");
        server.listen(socket);
        Path img = dir.resolve("s.img");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(16 << 20);
        }
        store = new Store(RawFileDriver.open(img, false, false));
        BlockNode n = new BlockNode("s", "qcow2", store, daemon.mainLoop(), List.of());
        store.node[0] = n;
        daemon.addNode(n);
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    QmpServerTest.Client client() throws Exception {
        QmpServerTest.Client c = new QmpServerTest.Client(socket);
        c.read();
        c.ok("{\"execute\":\"qmp_capabilities\"}");
        return c;
    }

    static String add(String name, String extra) {
        return "{\"execute\":\"block-dirty-bitmap-add\",\"arguments\":{\"node\":\"s\",\"name\":\"" + name + "\"" + extra + "}}";
    }

    static String remove(String name) {
        return "{\"execute\":\"block-dirty-bitmap-remove\",\"arguments\":{\"node\":\"s\",\"name\":\"" + name + "\"}}";
    }

    BlockNode node() throws Exception { return daemon.node("s"); }

    @Test
    void persistentAddAsksTheStoreAndRemoveRemovesFromIt() throws Exception {
        try (QmpServerTest.Client c = client()) {
            store.refuse = "Can't make bitmap 'p' persistent in 's': too many bitmaps";
            assertEquals("GenericError: Can't make bitmap 'p' persistent in 's': too many bitmaps", c.error(add("p", ",\"persistent\":true")));
            assertNull(node().dirtyBitmap("p"));
            store.refuse = null;
            c.ok(add("p", ",\"persistent\":true,\"granularity\":4096"));
            assertTrue(node().dirtyBitmap("p").persistent());
            c.ok(add("t", "")); // not persistent: the store is not asked
            assertEquals(List.of("check p 65536", "check p 4096"), store.calls);

            store.removeErrno = Errno.EIO;
            assertEquals("GenericError: Failed to remove bitmap 'p' from the image of node 's': " + dev.vmm.core.linux.LibC.describe(Errno.EIO),
                    c.error(remove("p")));
            assertNotNull(node().dirtyBitmap("p"), "kept when the image could not drop it");
            assertFalse(node().dirtyBitmap("p").busy());
            store.removeErrno = 0;
            c.ok(remove("t")); // not persistent: the image is not touched
            assertEquals(List.of("check p 65536", "check p 4096", "remove p"), store.calls);
            // in a transaction that aborts: removed from the image at prepare (as QEMU), kept on the node
            assertEquals("GenericError: Transaction aborted using Abort action", c.error("{\"execute\":\"transaction\",\"arguments\":{\"actions\":["
                    + "{\"type\":\"block-dirty-bitmap-remove\",\"data\":{\"node\":\"s\",\"name\":\"p\"}},{\"type\":\"abort\",\"data\":{}}]}}"));
            assertNotNull(node().dirtyBitmap("p"));
            assertFalse(node().dirtyBitmap("p").busy(), "not busy after the abort");
            c.ok(remove("p"));
            assertNull(node().dirtyBitmap("p"));
            assertEquals(List.of("check p 65536", "check p 4096", "remove p", "remove p", "remove p"), store.calls);
            assertFalse(store.offHome, "the store was called off the node's home thread");
        }
    }
}
