package dev.vmm.nbd.handoff;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.testing.TestCertificates;
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
import javax.net.ssl.SSLContext;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@link NbdHandoffTest}'s scenario over TLS: the channel moves from the main loop to the node's
 * IOThread after GO, then between IOThreads, with its SslHandler (and the TLS session state in
 * it) in the pipeline; no request may fail and the stream must stay decryptable.
 */
@Timeout(120)
class NbdTlsHandoffTest {
    @TempDir Path tmp;
    Daemon daemon;
    NbdServerComponent nbd;
    InetSocketAddress address;
    SSLContext client;

    @BeforeEach
    void start() throws Exception {
        TestCertificates ca = TestCertificates.createCa(tmp.resolve("pki"), "vmm test CA");
        Path serverDir = ca.serverDir("server", TestCertificates.KeyFormat.PKCS8_RSA);
        client = NbdTestClient.clientContext(ca.clientDir("client"));
        Path image = tmp.resolve("disk.img");
        try (RandomAccessFile f = new RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(NbdHandoffTest.SIZE);
        }
        daemon = Daemon.start();
        for (String id : List.of("iot0", "iot1", "iot2")) daemon.addIOThread(id);
        daemon.objectAdd(KeyValueParser.parse("--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + serverDir, "qom-type"));
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=disk0,filename=" + image, null));
        nbd = NbdServerComponent.configure(daemon,
                KeyValueParser.parse("--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=tls0", null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e0,node-name=disk0,writable=on,iothread=iot0", "type"));
        nbd.start();
        address = (InetSocketAddress) nbd.server().boundAddress();
    }

    @AfterEach
    void stop() {
        daemon.shutdown(false);
    }

    @Test
    void tlsClientsKeepWorkingWhileTheNodeHopsBetweenIOThreads() throws Exception {
        AtomicBoolean stop = new AtomicBoolean();
        AtomicLong ops = new AtomicLong();
        ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            NbdHandoffTest.Worker w = new NbdHandoffTest.Worker(address, i, i % 2 == 1, stop, ops, errors);
            w.tls = client;
            Thread t = new Thread(w, "tls-client-" + i);
            t.start();
            threads.add(t);
        }
        BlockNode node = daemon.node("disk0");
        long wait = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (node.users().size() < 4 && errors.isEmpty() && System.nanoTime() < wait) Thread.sleep(10);
        assertEquals(List.of(), List.copyOf(errors));
        int moves = NbdHandoffTest.moveAround(daemon, node, new String[] {"iot1", "iot2", "iot0", "main"}, 3, ops).size();
        stop.set(true);
        for (Thread t : threads) t.join(20_000);
        assertEquals(List.of(), List.copyOf(errors));
        assertTrue(moves > 10, "moves done: " + moves);
        System.out.printf("[tls handoff, %s] %d moves, %d client ops%n", nbd.server().config().tls().providerName(), moves, ops.get());
    }

    @Test
    void credentialsInUseByTheServerCannotBeDeleted() throws Exception {
        String m = assertThrows(DaemonException.class, () -> daemon.objectDel("tls0")).getMessage();
        assertEquals("object 'tls0' is in use by the NBD server, can not be deleted", m);
        daemon.removeComponent(NbdServerComponent.class);
        daemon.exportDel("e0", true);
        nbd.close();
        daemon.objectDel("tls0"); // the stopped server let go of them
    }
}
