package dev.vmm.core.tls;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.testing.TestCertificates;
import dev.vmm.core.testing.TestCertificates.KeyFormat;
import io.netty.buffer.ByteBufAllocator;
import io.netty.handler.ssl.OpenSsl;
import io.netty.handler.ssl.SslProvider;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLEngineResult.HandshakeStatus;
import javax.net.ssl.SSLException;
import javax.net.ssl.TrustManagerFactory;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

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

    /** The key formats load and serve a handshake (TLS 1.3 and 1.2, client certificate required) on both providers. */
    @ParameterizedTest
    @EnumSource(value = SslProvider.class, names = {"OPENSSL", "JDK"})
    void pkcs8Pkcs1AndSec1KeysLoadAndHandshake(SslProvider provider) throws Exception {
        SSLContext client = clientContext(ca.clientDir("client-" + provider), true);
        for (KeyFormat f : KeyFormat.values()) {
            Path dir = f == KeyFormat.PKCS8_RSA ? good : ca.serverDir("server-" + f + "-" + provider, f);
            String head = Files.readAllLines(dir.resolve("server-key.pem")).get(0);
            TlsCredentials c = TlsCredentials.loadServer("tls0", dir, true, true, provider);
            assertEquals(provider, c.provider());
            assertTrue(c.verifyPeer());
            for (String version : new String[] {"TLSv1.3", "TLSv1.2"}) {
                assertEquals(version, handshake(c, client, version), f + " (" + head + "), " + version);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(value = SslProvider.class, names = {"OPENSSL", "JDK"})
    void verifyPeerDecidesWhetherAClientCertificateIsRequired(SslProvider provider) throws Exception {
        SSLContext anonymous = clientContext(ca.clientDir("anonymous-" + provider), false);
        TlsCredentials on = TlsCredentials.loadServer("tls0", good, true, true, provider);
        assertThrows(SSLException.class, () -> handshake(on, anonymous, "TLSv1.3"));
        assertThrows(SSLException.class, () -> handshake(on, anonymous, "TLSv1.2"));
        TlsCredentials off = TlsCredentials.loadServer("tls0", good, false, true, provider);
        assertEquals("TLSv1.3", handshake(off, anonymous, "TLSv1.3"));
        assertEquals("TLSv1.2", handshake(off, anonymous, "TLSv1.2"));
        // A certificate from another CA is refused.
        TestCertificates other = TestCertificates.createCa(tmp.resolve("other-ca-" + provider), "another CA");
        Path foreign = other.clientDir("client");
        Files.copy(ca.caCert, foreign.resolve("ca-cert.pem"), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        assertThrows(SSLException.class, () -> handshake(on, clientContext(foreign, true), "TLSv1.3"));
    }

    @ParameterizedTest
    @EnumSource(value = SslProvider.class, names = {"OPENSSL", "JDK"})
    void onlyTls13And12AreEnabled(SslProvider provider) throws Exception {
        SSLEngine e = TlsCredentials.loadServer("tls0", good, false, true, provider).newHandler(ByteBufAllocator.DEFAULT).engine();
        try {
            // The JDK engine also lists SSLv2Hello: a ClientHello format, it still negotiates 1.2 or 1.3.
            String[] enabled = java.util.Arrays.stream(e.getEnabledProtocols()).filter(p -> !p.equals("SSLv2Hello")).sorted().toArray(String[]::new);
            assertArrayEquals(new String[] {"TLSv1.2", "TLSv1.3"}, enabled, java.util.Arrays.toString(enabled));
        } finally {
            io.netty.util.ReferenceCountUtil.release(e);
        }
    }

    @ParameterizedTest
    @EnumSource(value = SslProvider.class, names = {"OPENSSL", "JDK"})
    void onlyForwardSecretAeadSuitesAreAccepted(SslProvider provider) throws Exception {
        SSLContext client = clientContext(ca.clientDir("suites-" + provider), true);
        TlsCredentials c = TlsCredentials.loadServer("tls0", good, true, true, provider);
        SSLEngine e = c.newHandler(ByteBufAllocator.DEFAULT).engine();
        try {
            for (String s : e.getEnabledCipherSuites()) {
                assertTrue(s.startsWith("TLS_AES_") || s.startsWith("TLS_CHACHA20_")
                        || (s.startsWith("TLS_ECDHE_") && (s.contains("_GCM_") || s.contains("_CHACHA20_"))), provider + " enables " + s);
            }
        } finally {
            io.netty.util.ReferenceCountUtil.release(e);
        }
        assertEquals("TLSv1.2", handshake(c, client, "TLSv1.2"), "an ECDHE-AEAD client still gets in");
        // A client that offers only static-RSA CBC-SHA1 (what the providers' defaults would accept) is refused.
        assertThrows(SSLException.class, () -> handshake(c, client, "TLSv1.2", "TLS_RSA_WITH_AES_128_CBC_SHA"));
    }

    /** CI's platform is linux-x86_64, whose netty-tcnative jar we ship: BoringSSL must load there and be the default. */
    @Test
    void boringSslIsTheDefaultOnLinuxX86_64() throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue(System.getProperty("os.name").equals("Linux")
                && System.getProperty("os.arch").equals("amd64") && System.getProperty(TlsCredentials.PROVIDER_PROPERTY) == null);
        assertTrue(OpenSsl.isAvailable(), () -> "netty-tcnative does not load: " + OpenSsl.unavailabilityCause());
        assertEquals(SslProvider.OPENSSL, TlsCredentials.loadServer("tls0", good, true, true).provider());
    }

    @Test
    void providerPropertyForcesOneAndRejectsOthers() throws Exception {
        String saved = System.getProperty(TlsCredentials.PROVIDER_PROPERTY);
        try {
            System.setProperty(TlsCredentials.PROVIDER_PROPERTY, "jdk");
            assertEquals(SslProvider.JDK, TlsCredentials.loadServer("tls0", good, true, true).provider());
            if (OpenSsl.isAvailable()) {
                System.setProperty(TlsCredentials.PROVIDER_PROPERTY, "openssl");
                assertEquals(SslProvider.OPENSSL, TlsCredentials.loadServer("tls0", good, true, true).provider());
            }
            System.setProperty(TlsCredentials.PROVIDER_PROPERTY, "gnutls");
            String m = loadError(good);
            assertTrue(m.contains("vmm.tls.provider=gnutls") && m.contains("'jdk' or 'openssl'"), m);
        } finally {
            if (saved == null) System.clearProperty(TlsCredentials.PROVIDER_PROPERTY);
            else System.setProperty(TlsCredentials.PROVIDER_PROPERTY, saved);
        }
    }

    /** A JDK client context trusting our CA, with the directory's client certificate when {@code withCert}. */
    static SSLContext clientContext(Path dir, boolean withCert) throws Exception {
        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        trust.setCertificateEntry("ca", Pem.certificates(dir.resolve("ca-cert.pem")).get(0));
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        KeyManagerFactory kmf = null;
        if (withCert) {
            KeyStore keys = KeyStore.getInstance("PKCS12");
            keys.load(null, null);
            char[] pw = "x".toCharArray();
            keys.setKeyEntry("client", Pem.privateKey(dir.resolve("client-key.pem")), pw,
                    Pem.certificates(dir.resolve("client-cert.pem")).toArray(new X509Certificate[0]));
            kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(keys, pw);
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf == null ? null : kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        return ctx;
    }

    /**
     * A handshake in memory between a JDK client limited to {@code version} and the server engine
     * of {@code c}, then one application record each way. Returns the negotiated protocol; throws
     * the SSLException of whichever side gave up.
     */
    static String handshake(TlsCredentials c, SSLContext clientContext, String version, String... suites) throws Exception {
        SSLEngine server = c.newHandler(ByteBufAllocator.DEFAULT).engine();
        SSLEngine client = clientContext.createSSLEngine("localhost", 1);
        client.setUseClientMode(true);
        client.setEnabledProtocols(new String[] {version});
        if (suites.length > 0) client.setEnabledCipherSuites(suites);
        try {
            ByteBuffer toServer = ByteBuffer.allocate(1 << 17), toClient = ByteBuffer.allocate(1 << 17);
            ByteBuffer serverIn = ByteBuffer.allocate(1 << 17), clientIn = ByteBuffer.allocate(1 << 17);
            ByteBuffer ping = ByteBuffer.wrap("ping".getBytes()), pong = ByteBuffer.wrap("pong".getBytes());
            client.beginHandshake();
            server.beginHandshake();
            for (int round = 0; round < 100 && (clientIn.position() < 4 || serverIn.position() < 4); round++) {
                if (server.isInboundDone() || client.isInboundDone()) throw new SSLException("closed during the handshake");
                boolean clientReady = client.getHandshakeStatus() == HandshakeStatus.NOT_HANDSHAKING;
                boolean serverReady = server.getHandshakeStatus() == HandshakeStatus.NOT_HANDSHAKING;
                client.wrap(clientReady ? ping : ByteBuffer.allocate(0), toServer);
                server.wrap(serverReady ? pong : ByteBuffer.allocate(0), toClient);
                runTasks(client);
                runTasks(server);
                toServer.flip();
                while (toServer.hasRemaining() && server.unwrap(toServer, serverIn).bytesConsumed() > 0) runTasks(server);
                toServer.compact();
                toClient.flip();
                while (toClient.hasRemaining() && client.unwrap(toClient, clientIn).bytesConsumed() > 0) runTasks(client);
                toClient.compact();
            }
            assertEquals("ping", new String(serverIn.array(), 0, serverIn.position()));
            assertEquals("pong", new String(clientIn.array(), 0, clientIn.position()));
            assertEquals(client.getSession().getProtocol(), server.getSession().getProtocol());
            return server.getSession().getProtocol();
        } finally {
            io.netty.util.ReferenceCountUtil.release(server); // the OpenSSL engine's native state; a no-op for the JDK's
        }
    }

    private static void runTasks(SSLEngine e) {
        for (Runnable t; (t = e.getDelegatedTask()) != null; ) t.run();
    }

    @Test
    void aKeyReadableByItsGroupOrEveryoneIsWarnedAboutButLoads() throws Exception {
        Path d = variant("exposed", "ca-cert.pem", Files.readString(good.resolve("ca-cert.pem")));
        Path key = d.resolve("server-key.pem");
        Files.setPosixFilePermissions(key, java.nio.file.attribute.PosixFilePermissions.fromString("rw-------"));
        assertNull(Pem.readableByOthers(key));
        Files.setPosixFilePermissions(key, java.nio.file.attribute.PosixFilePermissions.fromString("rw-r-----"));
        String m = Pem.readableByOthers(key);
        assertTrue(m.startsWith(key + ": the private key is readable by its group (mode rw-r-----)"), m);
        Files.setPosixFilePermissions(key, java.nio.file.attribute.PosixFilePermissions.fromString("rw-r--r--"));
        assertTrue(Pem.readableByOthers(key).contains("readable by every user"));
        assertNotNull(TlsCredentials.loadServer("tls0", d, true, true), "a warning, not an error");
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
            // QEMU's default endpoint is client: credentials for driver=nbd nodes (the NBD server refuses them)
            d.objectAdd(KeyValueParser.parse("--object", "tls-creds-x509,id=tls0,dir=" + good, "qom-type"));
            assertTrue(d.useTlsCredentials("tls0", "x").isClient());
            d.useTlsCredentials("tls0", "x").removeUser("x");
            d.objectDel("tls0");
            String m = assertThrows(OptionException.class, () -> d.objectAdd(KeyValueParser.parse("--object",
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
