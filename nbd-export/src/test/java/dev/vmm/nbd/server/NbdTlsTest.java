package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdRep.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.testing.TestCertificates;
import dev.vmm.core.testing.TestCertificates.KeyFormat;
import dev.vmm.core.tls.TlsCredentials;
import dev.vmm.core.tls.TlsException;
import io.netty.handler.ssl.SslProvider;
import dev.vmm.nbd.client.NbdClient.OptionReply;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.testing.NbdTestClient;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import javax.net.ssl.SSLContext;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The server in FORCEDTLS mode (proto.md "TLS support"), in-process with {@link NbdTestClient}
 * doing STARTTLS through the JDK's SSLSocket: nothing but STARTTLS and ABORT before TLS, a fresh
 * haggling over TLS, the data path without its zero-copy paths, and client certificates checked.
 */
@Timeout(60)
class NbdTlsTest extends NbdServerFixture {
    @TempDir static Path pki;
    static TestCertificates ca;
    static Path serverDir;
    static SSLContext client;

    @BeforeAll
    static void certificates() throws Exception {
        ca = TestCertificates.createCa(pki.resolve("ca"), "vmm test CA");
        serverDir = ca.serverDir("server", KeyFormat.PKCS1_RSA);
        client = NbdTestClient.clientContext(ca.clientDir("client"));
    }

    /** Null: the default (BoringSSL where it loads); {@link NbdTlsJdkTest} runs every test on the JDK's provider. */
    SslProvider provider() { return null; }

    TlsCredentials load(boolean verifyPeer) throws TlsException {
        return provider() == null ? TlsCredentials.loadServer("tls0", serverDir, verifyPeer, true)
                : TlsCredentials.loadServer("tls0", serverDir, verifyPeer, true, provider());
    }

    @Override
    TlsCredentials tls() throws Exception {
        return load(true);
    }

    @Test
    void beforeStartTlsEveryOptionButAbortGetsTlsRequired() throws Exception {
        try (NbdTestClient c = client()) {
            for (int opt : new int[] {NbdOpt.NBD_OPT_LIST, NbdOpt.NBD_OPT_STRUCTURED_REPLY, NbdOpt.NBD_OPT_EXTENDED_HEADERS, 99}) {
                List<OptionReply> r = c.option(opt, new byte[0]);
                assertEquals(1, r.size(), NbdOpt.name(opt) + ": no export list, one reply");
                assertEquals(NBD_REP_ERR_TLS_REQD, r.get(0).type(), NbdOpt.name(opt));
            }
            // A known and an unknown name get the same answer: a plain client cannot probe names.
            OptionReply known = c.option(NbdOpt.NBD_OPT_GO, NbdTestClient.infoRequest("disk0")).get(0);
            OptionReply unknown = c.option(NbdOpt.NBD_OPT_GO, NbdTestClient.infoRequest("nope")).get(0);
            assertEquals(NBD_REP_ERR_TLS_REQD, known.type());
            assertEquals(known.type(), unknown.type());
            assertArrayEquals(known.data(), unknown.data());
            assertEquals(NBD_REP_ERR_TLS_REQD, c.option(NbdOpt.NBD_OPT_INFO, NbdTestClient.infoRequest("disk0")).get(0).type());
            assertEquals(NBD_REP_ERR_TLS_REQD, c.option(NbdOpt.NBD_OPT_INFO, new byte[HandshakeHandler.MAX_OPTION_LENGTH + 1]).get(0).type(),
                    "an oversized option too (its data is skipped)");
            assertEquals(NBD_REP_ACK, c.option(NbdOpt.NBD_OPT_ABORT, new byte[0]).get(0).type());
        }
    }

    @Test
    void exportNameWithoutTlsClosesTheConnection() throws Exception {
        try (NbdTestClient c = client()) {
            c.sendOption(NbdOpt.NBD_OPT_EXPORT_NAME, "disk0".getBytes());
            assertTrue(c.closedByServer());
        }
    }

    @Test
    void overTlsTheClientNegotiatesAfreshAndServesData() throws Exception {
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ACK, c.startTls(client).type());
            assertEquals(NBD_REP_ERR_INVALID, c.option(NbdOpt.NBD_OPT_STARTTLS, new byte[0]).get(0).type(), "second STARTTLS");
            assertEquals(3, c.option(NbdOpt.NBD_OPT_LIST, new byte[0]).size(), "two exports and an ACK, over TLS");
            assertEquals(NBD_REP_ACK, c.structuredReplies().type());
            List<OptionReply> go = c.go("disk0");
            assertEquals(NBD_REP_ACK, go.get(go.size() - 1).type());
            // Large enough for the sendfile path (>= SENDFILE_MIN), which must be off under TLS.
            assertArrayEquals(fileBytes(0, 512 << 10), c.read(0, 512 << 10, 0));
            // Large enough to arrive in many TLS records, gathered into its own buffer before the write.
            byte[] data = random(4 << 20, 7);
            for (int i = 0; i < 4; i++) assertEquals(0, c.write(8L << 20, data, 0));
            assertArrayEquals(data, c.read(8L << 20, 4 << 20, 0));
            c.disconnect();
        }
        assertArrayEquals(random(4 << 20, 7), fileBytes(8L << 20, 4 << 20));
    }

    @Test
    void simpleRepliesAndPipelinedRequestsOverTls() throws Exception {
        try (NbdTestClient c = client()) {
            c.startTls(client);
            c.go("disk0");
            byte[] block = random(64 << 10, 3);
            for (int i = 0; i < 32; i++) c.sendRequest(0, dev.vmm.nbd.protocol.NbdCmd.NBD_CMD_WRITE, (16L << 20) + i * block.length, block.length, block);
            for (int i = 0; i < 32; i++) assertEquals(0, c.readReply(0).error());
            for (int i = 0; i < 32; i++) assertArrayEquals(block, c.read((16L << 20) + i * block.length, block.length, 0));
        }
    }

    @Test
    void serverStopEndsTlsAtAReplyBoundaryWithCloseNotify() throws Exception {
        // As NbdServerTest.stopEndsAConnectionAtAReplyBoundaryWithoutAReset, over TLS: requests pile
        // up unread while stop() starts; the client must get whole replies, then close_notify (a
        // clean end-of-stream), not a truncation (SSLException) or a reset.
        NbdTestClient c = client();
        c.startTls(client);
        c.go("disk0"); // simple replies: a 16-byte header, then the data
        int len = 64 << 10;
        Thread sender = new Thread(() -> {
            try {
                for (int i = 0; i < 50_000; i++) c.sendRequest(0, dev.vmm.nbd.protocol.NbdCmd.NBD_CMD_READ, (long) (i % 16) * len, len, null);
            } catch (java.io.IOException expected) {
                // the server stopped reading and closed: that is the point
            }
        });
        sender.setDaemon(true);
        sender.start();
        Thread.sleep(1000); // replies are not read: the server stops reading, requests pile up
        java.util.concurrent.CountDownLatch stopping = new java.util.concurrent.CountDownLatch(1);
        Thread stopper = new Thread(() -> {
            stopping.countDown();
            server.stop(5000);
        });
        stopper.start();
        stopping.await();
        Thread.sleep(100); // reading starts only once stop() is under way
        // Not clean: an SSLException (truncated without close_notify), a reset, a torn reply.
        NbdTestClient.StreamEnd end = c.readSimpleReadRepliesUntilEnd(len);
        stopper.join(10_000);
        assertTrue(end.clean(), end.toString());
        assertTrue(end.replies() > 0, "replies before the end: " + end);
        assertFalse(stopper.isAlive(), "stop() finished");
        c.close();
    }

    @Test
    void startTlsWithDataIsInvalidAndTheHandshakeGoesOn() throws Exception {
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ERR_INVALID, c.option(NbdOpt.NBD_OPT_STARTTLS, new byte[1]).get(0).type());
            assertEquals(NBD_REP_ACK, c.startTls(client).type());
        }
    }

    @Test
    void unknownExportsGetTheSameReplyWhateverExists() throws Exception {
        try (NbdTestClient c = client()) {
            c.startTls(client);
            for (int opt : new int[] {NbdOpt.NBD_OPT_INFO, NbdOpt.NBD_OPT_GO}) {
                OptionReply a = c.option(opt, NbdTestClient.infoRequest("nope")).get(0);
                OptionReply b = c.option(opt, NbdTestClient.infoRequest("disk")).get(0); // a prefix of a real name
                assertEquals(NBD_REP_ERR_UNKNOWN, a.type());
                assertEquals(a.type(), b.type());
                assertArrayEquals(a.data(), b.data(), "no names or hints in the message");
                assertFalse(new String(a.data()).contains("disk0"));
            }
        }
    }

    @Test
    void clientWithoutCertificateIsRefused() throws Exception {
        SSLContext noCert = NbdTestClient.clientContext(copyCaOnly("nocert"));
        try (NbdTestClient c = client()) {
            assertThrows(java.io.IOException.class, () -> {
                c.startTls(noCert);
                c.option(NbdOpt.NBD_OPT_LIST, new byte[0]); // TLS 1.3: the refusal may come after the client's Finished
            });
        }
    }

    @Test
    void clientWithACertificateFromAnotherCaIsRefused() throws Exception {
        TestCertificates other = TestCertificates.createCa(tmp.resolve("other-ca"), "another CA");
        Path dir = other.clientDir("client");
        Files.copy(ca.caCert, dir.resolve("ca-cert.pem"), java.nio.file.StandardCopyOption.REPLACE_EXISTING); // trusts our server
        SSLContext foreign = NbdTestClient.clientContext(dir);
        try (NbdTestClient c = client()) {
            assertThrows(java.io.IOException.class, () -> {
                c.startTls(foreign);
                c.option(NbdOpt.NBD_OPT_LIST, new byte[0]);
            });
        }
    }

    Path copyCaOnly(String name) throws Exception {
        Path d = tmp.resolve(name);
        Files.createDirectories(d);
        Files.copy(ca.caCert, d.resolve("ca-cert.pem"));
        return d;
    }

    /** verify-peer=off: no client certificate is asked for. */
    static final class VerifyPeerOff extends NbdServerFixture {
        final TlsCredentials tls;

        VerifyPeerOff(TlsCredentials tls) { this.tls = tls; }

        @Override
        TlsCredentials tls() { return tls; }
    }

    @Test
    void verifyPeerOffAcceptsAClientWithoutCertificate() throws Exception {
        VerifyPeerOff f = new VerifyPeerOff(load(false));
        f.tmp = tmp.resolve("off");
        Files.createDirectories(f.tmp);
        f.start();
        try (NbdTestClient c = f.client()) {
            assertEquals(NBD_REP_ACK, c.startTls(NbdTestClient.clientContext(copyCaOnly("nocert-off"))).type());
            c.go("disk0");
            assertTrue(Arrays.equals(f.fileBytes(0, 4096), c.read(0, 4096, 0)));
        } finally {
            f.stop();
        }
    }
}
