package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.testing.TestCertificates;
import dev.vmm.core.testing.TestCertificates.KeyFormat;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * NBD over TLS with real peers (qemu-img with QEMU's tls-creds-x509, nbdinfo/nbdcopy with libnbd's
 * {@code nbds://} and {@code tls-certificates=DIR}), and the other side of it: who must not get
 * in. Certificates are made per test class with {@code openssl}. The command lines are QSD's, so
 * {@code -Dvmm.it.server=qsd} runs the same checks against qemu-storage-daemon.
 */
@Timeout(180)
class TlsTest extends PeerTestBase {
    @TempDir static Path pki;
    static TestCertificates ca;
    /** ca-cert.pem, server-cert.pem, server-key.pem (PKCS#1 RSA key, as older certtool writes it). */
    static Path serverDir;
    /** ca-cert.pem, client-cert.pem, client-key.pem issued by our CA. */
    static Path clientDir;
    /** A client certificate from another CA (the directory still trusts our server). */
    static Path foreignClientDir;
    /** Only ca-cert.pem: a client without a certificate. */
    static Path noCertDir;

    @BeforeAll
    static void certificates() throws Exception {
        ca = TestCertificates.createCa(pki.resolve("ca"), "vmm test CA");
        serverDir = ca.serverDir("server", KeyFormat.PKCS1_RSA);
        clientDir = ca.clientDir("client");
        TestCertificates other = TestCertificates.createCa(pki.resolve("other-ca"), "another CA");
        foreignClientDir = other.clientDir("client");
        Files.copy(ca.caCert, foreignClientDir.resolve("ca-cert.pem"), StandardCopyOption.REPLACE_EXISTING);
        noCertDir = Files.createDirectories(pki.resolve("nocert"));
        Files.copy(ca.caCert, noCertDir.resolve("ca-cert.pem"));
    }

    record Server(VmmProcess process, int port) {}

    /** {@code --object tls-creds-x509 ... --nbd-server ...,tls-creds=tls0 --export ...,name=NAME}. */
    Server serveTls(Path image, String name, boolean writable, String extraCredsKeys) {
        int port = Net.freePort();
        // On an IOThread, so that the TLS channel moves from the main loop after GO. Not with QSD:
        // 7.2 aborts when an NBD client of an export on an iothread disconnects, TLS or not
        // (blockdev-nbd.c:62 nbd_blockdev_client_closed: Assertion `qemu_in_main_thread()').
        String iothread = Peers.qsd() ? "" : ",iothread=iot0";
        VmmProcess p = serve(
                "--object", "tls-creds-x509,id=tls0,dir=" + serverDir + ",endpoint=server" + extraCredsKeys,
                "--blockdev", "driver=file,node-name=disk0,filename=" + image,
                "--object", "iothread,id=iot0",
                "--nbd-server", Net.inetServer(port) + ",tls-creds=tls0",
                "--export", "type=nbd,id=exp0,node-name=disk0,name=" + name + (writable ? ",writable=on" : "") + iothread);
        return new Server(p, port);
    }

    Path dataImage(String file, long size) {
        Path img = Images.sparse(tmp.resolve(file), size);
        Images.fill(img, 0, (int) Math.min(size, 4 * MiB), 11);
        Images.fill(img, size - MiB, (int) MiB, 12);
        return img;
    }

    static String tls(Path dir) {
        return "tls-certificates=" + dir;
    }

    static String nbds(int port, String export, Path dir) {
        return "nbds://" + Net.HOST + ":" + port + "/" + export + "?" + tls(dir);
    }

    /** qemu-img's client credentials object and the NBD image options that use it. */
    static List<String> qemuImgTls(Path dir) {
        return List.of("--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client");
    }

    static String qemuNbd(int port, String export) {
        return "driver=nbd,server.type=inet,server.host=" + Net.HOST + ",server.port=" + port + ",export=" + export + ",tls-creds=tls0";
    }

    static List<String> cmd(String first, List<String> middle, String... rest) {
        List<String> c = new ArrayList<>();
        c.add(first);
        c.addAll(middle);
        c.addAll(Arrays.asList(rest));
        return c;
    }

    // ---- clients that must get in ----

    @Test
    void qemuImgInfoConvertAndCompareOverTls() {
        String qemuImg = Peers.require("qemu-img");
        Path img = dataImage("disk.img", 32 * MiB);
        Server s = serveTls(img, "disk0", false, "");
        Run.Result info = Run.cmd(cmd(qemuImg, List.of("info"), "--object", "tls-creds-x509,id=tls0,dir=" + clientDir + ",endpoint=client",
                "--image-opts", qemuNbd(s.port(), "disk0"))).expect(0);
        assertTrue(info.stdout().contains("virtual size: 32 MiB"), info.describe());
        Path copy = tmp.resolve("copy.raw");
        Run.cmd(cmd(qemuImg, List.of("convert"), "--object", "tls-creds-x509,id=tls0,dir=" + clientDir + ",endpoint=client",
                "--image-opts", qemuNbd(s.port(), "disk0"), "-O", "raw", copy.toString())).expect(0);
        assertEquals(Images.sha256(img), Images.sha256(copy));
        Run.cmd(cmd(qemuImg, List.of("compare"), "--object", "tls-creds-x509,id=tls0,dir=" + clientDir + ",endpoint=client",
                "--image-opts", qemuNbd(s.port(), "disk0"), "driver=file,filename=" + img)).expect(0);
        s.process().assertAlive();
        if (!Peers.qsd()) { // BoringSSL unless -Dvmm.tls.provider=jdk was given (passed on to the server)
            String provider = "jdk".equals(System.getProperty("vmm.tls.provider")) ? "JDK TLS" : "BoringSSL";
            String log = s.process().stdout() + s.process().stderr();
            assertTrue(log.contains("verify-peer=on, " + provider + ")"), log);
        }
    }

    @Test
    void qemuImgWritesOverTls() {
        String qemuImg = Peers.require("qemu-img");
        Path src = dataImage("src.img", 16 * MiB);
        Path img = Images.sparse(tmp.resolve("disk.img"), 16 * MiB);
        Server s = serveTls(img, "disk0", true, "");
        Run.cmd(cmd(qemuImg, List.of("convert"), "--object", "tls-creds-x509,id=tls0,dir=" + clientDir + ",endpoint=client",
                "-n", "-f", "raw", src.toString(), "--target-image-opts", qemuNbd(s.port(), "disk0"))).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(img));
    }

    @Test
    void nbdinfoAndNbdcopyOverTls() {
        String nbdinfo = Peers.require("nbdinfo");
        String nbdcopy = Peers.require("nbdcopy");
        Path img = Images.sparse(tmp.resolve("disk.img"), 32 * MiB);
        Server s = serveTls(img, "disk0", true, "");
        String uri = nbds(s.port(), "disk0", clientDir);
        Run.Result info = Run.cmd(nbdinfo, uri).expect(0);
        assertTrue(info.stdout().contains("with TLS"), info.describe());
        assertEquals(String.valueOf(32 * MiB), Run.cmd(nbdinfo, "--size", uri).expect(0).stdout().strip());
        Path src = dataImage("src.img", 32 * MiB);
        Run.cmd(nbdcopy, "--connections=2", src.toString(), uri).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(img));
        Path back = tmp.resolve("back.raw");
        Run.cmd(nbdcopy, uri, back.toString()).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(back));
        Run.Result list = Run.cmd(nbdinfo, "--list", "nbds://" + Net.HOST + ":" + s.port() + "?" + tls(clientDir)).expect(0);
        assertTrue(list.stdout().contains("disk0"), list.describe());
    }

    @Test
    void tlsOverUnixSocket() throws Exception {
        String nbdinfo = Peers.require("nbdinfo");
        Path dir = socketDir();
        Path sock = dir.resolve("nbd.sock");
        Path img = dataImage("disk.img", 8 * MiB);
        serve("--object", "tls-creds-x509,id=tls0,dir=" + serverDir + ",endpoint=server",
                "--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--nbd-server", Net.unixServer(sock) + ",tls-creds=tls0",
                "--export", "type=nbd,id=exp0,node-name=disk0");
        if (!Peers.qsd()) { // QSD leaves the socket's mode to the umask
            assertEquals("rw-------", java.nio.file.attribute.PosixFilePermissions.toString(Files.getPosixFilePermissions(sock)));
        }
        Run.Result r = Run.cmd(nbdinfo, "--size", "nbds+unix:///disk0?socket=" + sock + "&" + tls(clientDir)).expect(0);
        assertEquals(String.valueOf(8 * MiB), r.stdout().strip(), r.describe());
        Run.cmd(nbdinfo, Net.unixUri(sock, "disk0")).expect(1);
    }

    @Test
    void verifyPeerOffAcceptsAClientWithoutCertificate() {
        Path img = dataImage("disk.img", 8 * MiB);
        Server s = serveTls(img, "disk0", false, ",verify-peer=off");
        Run.Result r = Run.cmd(Peers.require("nbdinfo"), "--size", nbds(s.port(), "disk0", noCertDir)).expect(0);
        assertEquals(String.valueOf(8 * MiB), r.stdout().strip(), r.describe());
    }

    // ---- clients that must not ----

    @Test
    void plainClientsGetNoDataAndNoNames() {
        String nbdinfo = Peers.require("nbdinfo");
        String secret = "secret-export-name";
        Path img = dataImage("disk.img", 8 * MiB);
        Server s = serveTls(img, secret, false, "");
        Run.Result go = Run.cmd(nbdinfo, Net.uri(s.port(), secret)).expectAny();
        assertNotEquals(0, go.exit(), go.describe());
        Run.Result list = Run.cmd(nbdinfo, "--list", "nbd://" + Net.HOST + ":" + s.port()).expectAny();
        assertNotEquals(0, list.exit(), list.describe());
        assertFalse((list.stdout() + list.stderr()).contains(secret), "a plain client learnt the export name\n" + list.describe());
        // EXPORT_NAME (old-style clients) without TLS: the server closes.
        Run.Result qemu = Run.cmd(Peers.require("qemu-img"), "info", Net.uri(s.port(), secret)).expectAny();
        assertNotEquals(0, qemu.exit(), qemu.describe());
        s.process().assertAlive();
    }

    @Test
    void clientCertificateFromAnotherCaIsRefused() {
        Path img = dataImage("disk.img", 8 * MiB);
        Server s = serveTls(img, "disk0", false, "");
        Run.Result r = Run.cmd(Peers.require("nbdinfo"), nbds(s.port(), "disk0", foreignClientDir)).expectAny();
        assertNotEquals(0, r.exit(), r.describe());
        Run.Result q = Run.cmd(cmd(Peers.require("qemu-img"), List.of("info"), "--object",
                "tls-creds-x509,id=tls0,dir=" + foreignClientDir + ",endpoint=client", "--image-opts", qemuNbd(s.port(), "disk0"))).expectAny();
        assertNotEquals(0, q.exit(), q.describe());
        // and still serves the right client
        Run.cmd(Peers.require("nbdinfo"), "--size", nbds(s.port(), "disk0", clientDir)).expect(0);
    }

    @Test
    void clientWithoutCertificateIsRefusedWhenVerifyPeerIsOn() {
        Path img = dataImage("disk.img", 8 * MiB);
        Server s = serveTls(img, "disk0", false, ""); // verify-peer defaults to on, as in QEMU
        Run.Result r = Run.cmd(Peers.require("nbdinfo"), nbds(s.port(), "disk0", noCertDir)).expectAny();
        assertNotEquals(0, r.exit(), r.describe());
        if (!Peers.qsd()) {
            assertTrue(s.process().stderr().contains("TLS handshake failed"), s.process().stderr());
        }
    }

    // ---- configuration errors: one line naming the file, exit 1, nothing listens ----

    private void assertRejected(String mentions, String credsKeys) {
        Path img = Images.sparse(tmp.resolve("disk.img"), MiB);
        int port = Net.freePort();
        Path pidfile = tmp.resolve("rejected.pid");
        Run.Result r = VmmProcess.runToExit(List.of(
                "--object", "tls-creds-x509,id=tls0,endpoint=server," + credsKeys,
                "--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--nbd-server", Net.inetServer(port) + ",tls-creds=tls0",
                "--export", "type=nbd,id=exp0,node-name=disk0",
                "--pidfile", pidfile.toString()), 30);
        assertEquals(1, r.exit(), r.describe());
        String err = r.stderr().strip();
        assertTrue(err.lines().count() == 1, "expected one line\n" + r.describe());
        assertTrue(err.contains(mentions), "message does not name '" + mentions + "'\n" + r.describe());
        assertFalse(err.contains("Exception") || err.contains("\tat "), "stack trace\n" + r.describe());
        assertFalse(Files.exists(pidfile));
        assertFalse(Net.listening(port), "something listens on " + port);
    }

    @Test
    void badCredentialDirectoriesAreRejectedBeforeAnythingListens() throws Exception {
        Assumptions.assumeFalse(Peers.qsd(), "QSD's messages differ");
        assertRejected(tmp.resolve("no-such-dir").toString(), "dir=" + tmp.resolve("no-such-dir"));
        Path noKey = Files.createDirectories(tmp.resolve("nokey"));
        Files.copy(serverDir.resolve("ca-cert.pem"), noKey.resolve("ca-cert.pem"));
        Files.copy(serverDir.resolve("server-cert.pem"), noKey.resolve("server-cert.pem"));
        assertRejected(noKey.resolve("server-key.pem") + ": no such file", "dir=" + noKey);
        Path badKey = Files.createDirectories(tmp.resolve("badkey"));
        Files.copy(serverDir.resolve("ca-cert.pem"), badKey.resolve("ca-cert.pem"));
        Files.copy(serverDir.resolve("server-cert.pem"), badKey.resolve("server-cert.pem"));
        Files.writeString(badKey.resolve("server-key.pem"), "not a key\n");
        assertRejected(badKey.resolve("server-key.pem").toString(), "dir=" + badKey);
        Path keyDir = Files.createDirectories(tmp.resolve("keydir"));
        Files.copy(serverDir.resolve("ca-cert.pem"), keyDir.resolve("ca-cert.pem"));
        Files.copy(serverDir.resolve("server-cert.pem"), keyDir.resolve("server-cert.pem"));
        Files.createDirectories(keyDir.resolve("server-key.pem")); // unreadable as a file (root reads any file)
        assertRejected(keyDir.resolve("server-key.pem").toString(), "dir=" + keyDir);
        assertRejected("endpoint", "dir=" + serverDir + ",endpoint=client");
    }

    @Test
    void unknownCredentialsIdIsRejected() {
        Assumptions.assumeFalse(Peers.qsd(), "QSD's messages differ");
        Path img = Images.sparse(tmp.resolve("disk.img"), MiB);
        int port = Net.freePort();
        Run.Result r = VmmProcess.runToExit(List.of(
                "--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--nbd-server", Net.inetServer(port) + ",tls-creds=nope"), 30);
        assertEquals(1, r.exit(), r.describe());
        assertEquals("vmm: --nbd-server: 'tls-creds': no TLS credentials object with id 'nope'", r.stderr().strip(), r.describe());
    }
}
