package dev.vmm.core.tls;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.testing.TestCertificates;
import dev.vmm.core.testing.TestCertificates.KeyFormat;
import io.netty.buffer.ByteBufAllocator;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Loading QEMU's tls-creds-x509 server directory: the key formats certtool and openssl write, and
 * one clear error naming the file for everything that cannot work.
 */
class TlsCredentialsTest {
    @TempDir static Path tmp;
    static TestCertificates ca;
    static Path good;

    @BeforeAll
    static void pki() throws Exception {
        ca = TestCertificates.createCa(tmp.resolve("ca"), "vmm test CA");
        good = ca.serverDir("server", KeyFormat.PKCS8_RSA);
    }

    static String loadError(Path dir) {
        return assertThrows(TlsException.class, () -> TlsCredentials.loadServer("tls0", dir, true, true)).getMessage();
    }

    /** A copy of the good directory with {@code file} replaced by {@code content} (null: removed). */
    static Path variant(String name, String file, String content) throws Exception {
        Path d = tmp.resolve(name);
        Files.createDirectories(d);
        for (String f : new String[] {"ca-cert.pem", "server-cert.pem", "server-key.pem"}) {
            Files.copy(good.resolve(f), d.resolve(f), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        }
        if (content == null) Files.delete(d.resolve(file)); else Files.writeString(d.resolve(file), content);
        return d;
    }

    @Test
    void pkcs8Pkcs1AndSec1KeysLoad() throws Exception {
        for (KeyFormat f : KeyFormat.values()) {
            Path dir = f == KeyFormat.PKCS8_RSA ? good : ca.serverDir("server-" + f, f);
            String head = Files.readAllLines(dir.resolve("server-key.pem")).get(0);
            TlsCredentials c = TlsCredentials.loadServer("tls0", dir, true, true);
            assertNotNull(c.newHandler(ByteBufAllocator.DEFAULT), f + " (" + head + ")");
            assertTrue(c.verifyPeer());
        }
    }

    @Test
    void certtoolStyleTextAroundTheBlocksIsIgnored() throws Exception {
        String key = Files.readString(good.resolve("server-key.pem"));
        Path d = variant("certtool", "server-key.pem", "Public Key Info:\n\tPublic Key Algorithm: RSA\n\n" + key + "\n");
        assertNotNull(TlsCredentials.loadServer("tls0", d, false, true));
    }

    @Test
    void missingDirectoryAndFilesAreNamed() throws Exception {
        assertTrue(loadError(tmp.resolve("nope")).contains("no such directory"), loadError(tmp.resolve("nope")));
        for (String f : new String[] {"ca-cert.pem", "server-cert.pem", "server-key.pem"}) {
            String m = loadError(variant("missing-" + f, f, null));
            assertTrue(m.contains(f) && m.contains("no such file"), m);
        }
    }

    @Test
    void unusableKeysGetAClearError() throws Exception {
        String m = loadError(variant("garbage", "server-key.pem", "hello\n"));
        assertTrue(m.contains("server-key.pem") && m.contains("no PEM private key"), m);
        m = loadError(variant("encrypted", "server-key.pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"));
        assertTrue(m.contains("encrypted"), m);
        m = loadError(variant("dsa", "server-key.pem", "-----BEGIN DSA PRIVATE KEY-----\nAAAA\n-----END DSA PRIVATE KEY-----\n"));
        assertTrue(m.contains("unsupported key format 'DSA PRIVATE KEY'"), m);
        m = loadError(variant("bad-der", "server-key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"));
        assertTrue(m.contains("does not parse"), m);
        m = loadError(variant("bad-cert", "server-cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"));
        assertTrue(m.contains("server-cert.pem") && m.contains("does not parse"), m);
    }

    @Test
    void keyOfAnotherCertificateIsRefused() throws Exception {
        Path other = ca.serverDir("other", KeyFormat.PKCS8_RSA);
        String m = loadError(variant("mismatch", "server-key.pem", Files.readString(other.resolve("server-key.pem"))));
        assertTrue(m.contains("does not match"), m);
    }

    @Test
    void certificateFromAnotherCaIsRefusedUnlessSanityCheckIsOff() throws Exception {
        TestCertificates ca2 = TestCertificates.createCa(tmp.resolve("ca2"), "another CA");
        Path d = variant("foreign", "ca-cert.pem", Files.readString(ca2.caCert));
        String m = loadError(d);
        assertTrue(m.contains("not issued by a CA in") && m.contains("ca-cert.pem"), m);
        assertNotNull(TlsCredentials.loadServer("tls0", d, true, false));
    }

    @Test
    void revocationListsAreRefusedNotIgnored() throws Exception {
        Path d = variant("crl", "ca-crl.pem", "anything");
        assertTrue(loadError(d).contains("ca-crl.pem"));
    }

    @Test
    void pkcs1WrappingIsPkcs8() {
        byte[] inner = {0x30, 0x03, 0x02, 0x01, 0x00};
        byte[] w = Pem.wrapPkcs1(inner);
        assertEquals(0x30, w[0]);
        assertEquals(w.length - 2, w[1]);
        assertEquals(0x04, w[2 + 3 + 15]); // after version and AlgorithmIdentifier: OCTET STRING
    }

    // ---- the daemon's object ----

    @Test
    void objectAddUseAndDelete() throws Exception {
        Daemon d = Daemon.start();
        try {
            d.objectAdd(KeyValueParser.parse("--object", "tls-creds-x509,id=tls0,endpoint=server,dir=" + good, "qom-type"));
            String m = assertThrows(DaemonException.class, () -> d.addIOThread("tls0")).getMessage();
            assertTrue(m.contains("exists already"), m);
            TlsCredentials c = d.useTlsCredentials("tls0", "the NBD server");
            m = assertThrows(DaemonException.class, () -> d.objectDel("tls0")).getMessage();
            assertEquals("object 'tls0' is in use by the NBD server, can not be deleted", m);
            c.removeUser("the NBD server");
            d.objectDel("tls0");
            m = assertThrows(DaemonException.class, () -> d.useTlsCredentials("tls0", "x")).getMessage();
            assertEquals("No TLS credentials with id 'tls0'", m);
        } finally {
            d.shutdown(false);
        }
    }

    @Test
    void objectOptionsAreChecked() throws Exception {
        Daemon d = Daemon.start();
        try {
            String m = assertThrows(OptionException.class,
                    () -> d.objectAdd(KeyValueParser.parse("--object", "tls-creds-x509,id=tls0,dir=" + good, "qom-type"))).getMessage();
            assertTrue(m.contains("endpoint") && m.contains("server"), m);
            m = assertThrows(OptionException.class, () -> d.objectAdd(KeyValueParser.parse("--object",
                    "tls-creds-x509,id=tls0,endpoint=server,priority=NORMAL,dir=" + good, "qom-type"))).getMessage();
            assertTrue(m.contains("priority"), m);
            m = assertThrows(DaemonException.class, () -> d.objectAdd(KeyValueParser.parse("--object",
                    "tls-creds-x509,id=tls0,endpoint=server,dir=" + tmp.resolve("nope"), "qom-type"))).getMessage();
            assertTrue(m.startsWith("--object: tls0: ") && m.contains("no such directory"), m);
        } finally {
            d.shutdown(false);
        }
    }
}
