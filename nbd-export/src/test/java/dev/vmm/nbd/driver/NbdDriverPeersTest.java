package dev.vmm.nbd.driver;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.testing.Tools;
import dev.vmm.nbd.server.NbdServerComponent;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code driver=nbd} against real servers: nbdkit (memory plugin), qemu-nbd, qemu-storage-daemon
 * and vmm's own NBD server. Data goes through the driver by re-exporting the node over vmm's NBD
 * server and copying a random file into it with nbdcopy (many requests in flight); then the
 * remote server's export is copied out with nbdcopy (server side, not through vmm) and compared.
 */
@Timeout(180)
class NbdDriverPeersTest {
    static final long SIZE = 16L << 20;

    @TempDir Path tmp;
    Daemon daemon;
    Path vmmSock;
    final java.util.List<AutoCloseable> closeLater = new java.util.ArrayList<>();

    @BeforeEach
    void start() throws Exception {
        daemon = Daemon.start();
        daemon.addIOThread("iot0");
        daemon.addIOThread("iot1");
        vmmSock = tmp.resolve("vmm.sock");
        NbdServerComponent nbd = NbdServerComponent.configure(daemon,
                KeyValueParser.parse("--nbd-server", "addr.type=unix,addr.path=" + vmmSock, null));
        nbd.start();
    }

    @AfterEach
    void stop() throws Exception {
        daemon.shutdown(false);
        for (AutoCloseable c : closeLater) c.close();
    }

    static String uri(Path sock, String export) {
        return "nbd+unix:///" + export + "?socket=" + sock;
    }

    /** Adds {@code driver=nbd} node {@code name} over the server at {@code sock} and exports it writable on iot0 as {@code name}. */
    void nbdNode(String name, Path sock, String export, String extra) throws Exception {
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=nbd,node-name=" + name + ",server.type=unix,server.path=" + sock
                + ",export=" + export + extra, null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=" + name + ",node-name=" + name + ",writable=on,iothread=iot0", "type"));
    }

    /** Writes a random file through vmm (nbdcopy into the re-export), reads it back both ways, compares. */
    void roundTrip(String name, String serverUri) throws Exception {
        String nbdcopy = Tools.require("nbdcopy", "libnbd-bin");
        byte[] data = new byte[(int) SIZE];
        new Random(name.hashCode()).nextBytes(data);
        java.util.Arrays.fill(data, 1 << 20, 2 << 20, (byte) 0); // a zero run: nbdcopy may send it as write-zeroes
        Path in = tmp.resolve(name + ".in");
        Files.write(in, data);
        Peer.run(List.of(nbdcopy, in.toString(), uri(vmmSock, name)));
        if (serverUri != null) {
            Path server = tmp.resolve(name + ".server");
            Peer.run(List.of(nbdcopy, serverUri, server.toString()));
            assertArrayEquals(data, Files.readAllBytes(server), "the server's export holds what was written through the driver");
        }
        Path back = tmp.resolve(name + ".back");
        Peer.run(List.of(nbdcopy, uri(vmmSock, name), back.toString()));
        assertArrayEquals(data, Files.readAllBytes(back), "read back through the driver");
    }

    @Test
    void nbdkitMemory() throws Exception {
        Peer k = Peer.nbdkit(tmp, "kit", "memory", "size=" + SIZE).start();
        closeLater.add(k);
        nbdNode("n0", k.socket, "", "");
        roundTrip("n0", uri(k.socket, ""));
    }

    /** Starts {@code cmd}, which creates the socket {@code sock}; closed after the test. */
    Peer peer(Path sock, String name, String... cmd) throws Exception {
        Peer p = new Peer(sock, tmp.resolve(name + ".log"), List.of(cmd)).start();
        closeLater.add(p);
        return p;
    }

    Path image(String name) throws Exception {
        Path img = tmp.resolve(name + ".img");
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        return img;
    }

    @Test
    void qemuNbd() throws Exception {
        Path img = image("qn");
        Path sock = tmp.resolve("qn.sock");
        peer(sock, "qn", Tools.require("qemu-nbd", "qemu-utils"), "-f", "raw", "-k", sock.toString(), "-x", "exp", "-e", "8", "-t", img.toString());
        nbdNode("n1", sock, "exp", "");
        roundTrip("n1", uri(sock, "exp"));
        Peer.run(List.of(Tools.require("qemu-img", "qemu-utils"), "compare", "-f", "raw", "-F", "raw", img.toString(), tmp.resolve("n1.in").toString()));
    }

    @Test
    void qemuStorageDaemon() throws Exception {
        Path img = image("qsd");
        Path sock = tmp.resolve("qsd.sock");
        peer(sock, "qsd", Tools.require("qemu-storage-daemon", "qemu-system-common"), "--blockdev", "driver=file,node-name=f,filename=" + img,
                "--nbd-server", "addr.type=unix,addr.path=" + sock, "--export", "type=nbd,id=e,node-name=f,name=exp,writable=on");
        nbdNode("n2", sock, "exp", "");
        roundTrip("n2", uri(sock, "exp"));
        Peer.run(List.of(Tools.require("qemu-img", "qemu-utils"), "compare", "-f", "raw", "-F", "raw", img.toString(), tmp.resolve("n2.in").toString()));
    }

    @Test
    void anotherVmm() throws Exception {
        Path img = image("b");
        Path sock = tmp.resolve("b.sock");
        Daemon b = Daemon.start();
        closeLater.add(() -> b.shutdown(false));
        b.addIOThread("iot0");
        b.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=f,filename=" + img, null));
        NbdServerComponent nbd = NbdServerComponent.configure(b, KeyValueParser.parse("--nbd-server", "addr.type=unix,addr.path=" + sock, null));
        b.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=f,name=exp,writable=on,iothread=iot0", "type"));
        nbd.start();
        nbdNode("n3", sock, "exp", "");
        roundTrip("n3", uri(sock, "exp"));
        assertArrayEquals(Files.readAllBytes(tmp.resolve("n3.in")), Files.readAllBytes(img));
    }

    /** base:allocation of a sparse nbdkit memory disk, seen through the driver and vmm's export: data where written, holes elsewhere. */
    @Test
    void blockStatusOfASparseExport() throws Exception {
        Peer k = Peer.nbdkit(tmp, "sparse", "memory", "size=" + SIZE).start();
        closeLater.add(k);
        nbdNode("n4", k.socket, "", "");
        Peer.run(List.of(Tools.require("qemu-io", "qemu-utils"), "-f", "raw", "-c", "write -P 0x5a 4M 1M", uri(vmmSock, "n4")));
        String map = Peer.run(List.of(Tools.require("nbdinfo", "libnbd-bin"), "--map", uri(vmmSock, "n4")));
        List<String> lines = map.lines().map(String::trim).filter(l -> !l.isEmpty()).map(l -> String.join(" ", l.split("\\s+"))).toList();
        assertEquals(List.of("0 4194304 3 hole,zero", "4194304 1048576 0 data", "5242880 11534336 3 hole,zero"), lines, map);
        // the query-named-block-nodes filename, as QEMU names it
        assertEquals("nbd+unix://?socket=" + k.socket, ((NbdBlockDriver) daemon.node("n4").driver()).filename());
    }

    /** TLS (tls-creds-x509 endpoint=client) to another vmm whose NBD server requires it; a plain or misnamed connection is refused clearly. */
    @Test
    void tlsToAnotherVmm() throws Exception {
        dev.vmm.core.testing.TestCertificates pki = dev.vmm.core.testing.TestCertificates.createCa(tmp.resolve("pki"), "vmm test CA");
        Path serverDir = pki.serverDir("server", dev.vmm.core.testing.TestCertificates.KeyFormat.PKCS8_RSA);
        Path clientDir = pki.clientDir("client");
        Path img = image("tls");
        Daemon b = Daemon.start();
        closeLater.add(() -> b.shutdown(false));
        b.objectAdd(KeyValueParser.parse("--object", "tls-creds-x509,id=ts,endpoint=server,dir=" + serverDir, "qom-type"));
        b.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=f,filename=" + img, null));
        NbdServerComponent nbd = NbdServerComponent.configure(b,
                KeyValueParser.parse("--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=ts", null));
        b.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=f,name=exp,writable=on", "type"));
        nbd.start();
        int port = ((java.net.InetSocketAddress) nbd.server().boundAddress()).getPort();
        String server = "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=" + port + ",export=exp";

        String plain = org.junit.jupiter.api.Assertions.assertThrows(dev.vmm.core.daemon.DaemonException.class,
                () -> daemon.blockdevAdd(KeyValueParser.parse("--blockdev", server + ",node-name=plain", null))).getMessage();
        assertTrue(plain.contains("requires TLS"), plain);
        daemon.objectAdd(KeyValueParser.parse("--object", "tls-creds-x509,id=tc,endpoint=client,dir=" + clientDir, "qom-type"));
        String misnamed = org.junit.jupiter.api.Assertions.assertThrows(dev.vmm.core.daemon.DaemonException.class,
                () -> daemon.blockdevAdd(KeyValueParser.parse("--blockdev", server + ",node-name=bad,tls-creds=tc,tls-hostname=elsewhere.example", null)))
                .getMessage();
        assertTrue(misnamed.contains("TLS handshake failed"), misnamed);

        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", server + ",node-name=n5,tls-creds=tc", null));
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=n5,node-name=n5,writable=on,iothread=iot0", "type"));
        roundTrip("n5", null);
        assertArrayEquals(Files.readAllBytes(tmp.resolve("n5.in")), Files.readAllBytes(img), "the image behind the TLS server");
        assertEquals("nbd://127.0.0.1:" + port + "/exp", ((NbdBlockDriver) daemon.node("n5").driver()).filename());
    }

    /** blockdev-add's nested JSON form (QMP), with the port as a string as QEMU's schema has it. */
    @Test
    void qmpJsonForm() throws Exception {
        Path img = image("json");
        Daemon b = Daemon.start();
        closeLater.add(() -> b.shutdown(false));
        b.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=file,node-name=f,filename=" + img, null));
        NbdServerComponent nbd = NbdServerComponent.configure(b, KeyValueParser.parse("--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=0", null));
        b.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=e,node-name=f,name=exp,writable=on", "type"));
        nbd.start();
        int port = ((java.net.InetSocketAddress) nbd.server().boundAddress()).getPort();
        daemon.blockdevAdd(dev.vmm.core.options.Options.of("blockdev-add", java.util.Map.of("driver", "nbd", "node-name", "j", "export", "exp",
                "server", java.util.Map.of("type", "inet", "host", "127.0.0.1", "port", String.valueOf(port)))));
        assertEquals(SIZE, daemon.node("j").size());
        assertEquals("nbd", daemon.node("j").driverName());
        daemon.exportAdd(KeyValueParser.parse("--export", "type=nbd,id=j,node-name=j,writable=on,iothread=iot1", "type"));
        roundTrip("j", null);
        assertArrayEquals(Files.readAllBytes(tmp.resolve("j.in")), Files.readAllBytes(img));
    }
}
