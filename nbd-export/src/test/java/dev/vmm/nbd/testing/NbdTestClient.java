package dev.vmm.nbd.testing;

import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdRep;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * The {@link NbdClient} for tests: a TCP socket with timeouts, raw access to its streams to
 * send malformed bytes on purpose, STARTTLS, meta contexts, and a probe for the server hanging
 * up. Options, {@code go}, requests and replies (extended headers included: Debian's libnbd
 * and qemu are too old for those) are the client's own. One thread per client; not for
 * production use.
 */
public final class NbdTestClient extends NbdClient {
    private Socket socket;
    private DataInputStream in;
    private DataOutputStream out;
    /** Set by {@link #go}: export size and transmission flags. */
    public long size;
    public int transmissionFlags;

    /** A connected socket and the streams over it, built before the superclass is. */
    private record Connection(Socket socket, DataInputStream in, DataOutputStream out) {
        static Connection open(InetSocketAddress address) throws IOException {
            Socket socket = new Socket();
            socket.connect(address, 5000);
            socket.setSoTimeout(20_000);
            socket.setTcpNoDelay(true);
            return new Connection(socket, new DataInputStream(new BufferedInputStream(socket.getInputStream())),
                    new DataOutputStream(new BufferedOutputStream(socket.getOutputStream())));
        }
    }

    public NbdTestClient(InetSocketAddress address) throws IOException {
        this(Connection.open(address));
    }

    private NbdTestClient(Connection c) {
        super(c.in(), c.out(), c.socket());
        socket = c.socket();
        in = c.in();
        out = c.out();
    }

    public Socket socket() { return socket; }
    /** The stream requests are written to; bytes written here go out in order with the client's. */
    public DataOutputStream out() { return out; }
    public DataInputStream in() { return in; }

    /** Reads the greeting and sends the client flags (fixed newstyle, no zeroes). */
    @Override
    public NbdTestClient handshake() throws IOException {
        super.handshake();
        return this;
    }

    /**
     * NBD_OPT_STARTTLS, then a TLS handshake over the same socket with {@code tls} (see
     * {@link #clientContext}); the following options and requests go over TLS. Returns the
     * option reply; on an error reply the connection stays plain.
     */
    public OptionReply startTls(javax.net.ssl.SSLContext tls) throws IOException {
        OptionReply r = option(NbdOpt.NBD_OPT_STARTTLS, new byte[0]).get(0);
        if (r.type() != NbdRep.NBD_REP_ACK) return r;
        javax.net.ssl.SSLSocket s = (javax.net.ssl.SSLSocket) tls.getSocketFactory()
                .createSocket(socket, socket.getInetAddress().getHostAddress(), socket.getPort(), true);
        s.setUseClientMode(true);
        s.startHandshake();
        socket = s;
        in = new DataInputStream(new BufferedInputStream(s.getInputStream()));
        out = new DataOutputStream(new BufferedOutputStream(s.getOutputStream()));
        switchTransport(in, out, s);
        return r;
    }

    /**
     * A TLS client context from a QEMU/libnbd client directory: trusts {@code ca-cert.pem} and
     * presents {@code client-cert.pem}/{@code client-key.pem} when they exist.
     */
    public static javax.net.ssl.SSLContext clientContext(java.nio.file.Path dir) throws Exception {
        java.security.KeyStore trust = java.security.KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        int i = 0;
        for (var c : dev.vmm.core.tls.Pem.certificates(dir.resolve("ca-cert.pem"))) trust.setCertificateEntry("ca" + i++, c);
        javax.net.ssl.TrustManagerFactory tmf = javax.net.ssl.TrustManagerFactory.getInstance(javax.net.ssl.TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        javax.net.ssl.KeyManager[] kms = null;
        if (java.nio.file.Files.exists(dir.resolve("client-key.pem"))) {
            java.security.KeyStore keys = java.security.KeyStore.getInstance("PKCS12");
            keys.load(null, null);
            char[] pw = "x".toCharArray();
            keys.setKeyEntry("client", dev.vmm.core.tls.Pem.privateKey(dir.resolve("client-key.pem")), pw,
                    dev.vmm.core.tls.Pem.certificates(dir.resolve("client-cert.pem")).toArray(new java.security.cert.X509Certificate[0]));
            javax.net.ssl.KeyManagerFactory kmf = javax.net.ssl.KeyManagerFactory.getInstance(javax.net.ssl.KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(keys, pw);
            kms = kmf.getKeyManagers();
        }
        javax.net.ssl.SSLContext ctx = javax.net.ssl.SSLContext.getInstance("TLS");
        ctx.init(kms, tmf.getTrustManagers(), null);
        return ctx;
    }

    /** NBD_OPT_SET_META_CONTEXT (or LIST) for one export and the given queries. */
    public List<OptionReply> metaContext(int option, String export, String... queries) throws IOException {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        DataOutputStream d = new DataOutputStream(b);
        byte[] n = export.getBytes(StandardCharsets.UTF_8);
        d.writeInt(n.length);
        d.write(n);
        d.writeInt(queries.length);
        for (String q : queries) {
            byte[] qb = q.getBytes(StandardCharsets.UTF_8);
            d.writeInt(qb.length);
            d.write(qb);
        }
        return option(option, b.toByteArray());
    }

    /** NBD_OPT_GO; on success records size and flags and enters transmission. */
    @Override
    public List<OptionReply> go(String export, int... infos) throws IOException {
        List<OptionReply> replies = super.go(export, infos);
        size = size();
        transmissionFlags = transmissionFlags();
        return replies;
    }

    /** NBD_CMD_WRITE with {@code flags}; returns the reply's NBD error, 0 on success. */
    public int write(long offset, byte[] data, int flags) throws IOException {
        return request(flags, NbdCmd.NBD_CMD_WRITE, offset, data.length, data).error();
    }

    /** True when the server closed the connection (EOF within the socket timeout). */
    public boolean closedByServer() {
        try {
            socket.setSoTimeout(5000);
            while (true) {
                if (in.read() < 0) return true;
            }
        } catch (EOFException e) {
            return true;
        } catch (IOException e) {
            return e.getMessage() != null && e.getMessage().contains("reset");
        }
    }

    /** Closes the socket without NBD_CMD_DISC (tests disconnect explicitly, or not at all on purpose). */
    @Override
    public void close() throws IOException {
        abort();
    }

    public static int readShort(byte[] b, int at) {
        return ((b[at] & 0xff) << 8) | (b[at + 1] & 0xff);
    }

    public static int readInt(byte[] b, int at) {
        return ((b[at] & 0xff) << 24) | ((b[at + 1] & 0xff) << 16) | ((b[at + 2] & 0xff) << 8) | (b[at + 3] & 0xff);
    }

    public static long readLong(byte[] b, int at) {
        return ((long) readInt(b, at) << 32) | (readInt(b, at + 4) & 0xFFFFFFFFL);
    }

    /** How a stream of simple READ replies ended: after how many whole replies, and how. */
    public record StreamEnd(int replies, String how) {
        public boolean clean() { return how.equals("end-of-stream"); }
    }

    /**
     * Reads simple replies to READs of {@code len} bytes each (no error expected) until the stream
     * ends: {@code end-of-stream} when it ends at a reply boundary, else what broke it (a torn
     * reply, an error reply, an IOException such as a reset or a TLS truncation).
     */
    public StreamEnd readSimpleReadRepliesUntilEnd(int len) {
        int replies = 0;
        try {
            java.io.InputStream in = in();
            byte[] header = new byte[16];
            byte[] payload = new byte[len];
            while (true) {
                int got = in.readNBytes(header, 0, 16);
                if (got == 0) return new StreamEnd(replies, "end-of-stream");
                if (got < 16) return new StreamEnd(replies, "torn reply header");
                if (readInt(header, 4) != 0) return new StreamEnd(replies, "error reply " + readInt(header, 4));
                if (in.readNBytes(payload, 0, len) < len) return new StreamEnd(replies, "torn reply payload");
                replies++;
            }
        } catch (IOException e) {
            return new StreamEnd(replies, e.toString());
        }
    }
}
