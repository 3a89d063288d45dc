package dev.vmm.nbd.testing;

import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdHandshakeFlags;
import dev.vmm.nbd.protocol.NbdInfo;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdRep;
import dev.vmm.nbd.protocol.NbdReplyFlags;
import dev.vmm.nbd.protocol.NbdReplyType;
import java.io.ByteArrayOutputStream;
import java.io.Closeable;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * A blocking NBD client for tests: speaks every part of the protocol the server implements,
 * extended headers included (Debian's libnbd and qemu are too old for those), and can send
 * malformed bytes on purpose. One thread per client; not for production use.
 */
public final class NbdTestClient implements Closeable {
    /** One option reply. */
    public record OptionReply(int option, int type, byte[] data) {
        public boolean isError() { return NbdRep.isError(type); }
    }

    /** One reply chunk (a simple reply is reported as one chunk of type -1 with its error). */
    public record Chunk(int flags, int type, long cookie, long offset, byte[] payload, int error) {
        public boolean done() { return (flags & NbdReplyFlags.NBD_REPLY_FLAG_DONE) != 0; }
    }

    /** Everything the server sent for one request. */
    public record Reply(long cookie, List<Chunk> chunks) {
        /** The NBD error of the reply, 0 when it succeeded. */
        public int error() {
            for (Chunk c : chunks) {
                if (c.type == -1) return c.error;
                if (NbdReplyType.isError(c.type)) return readInt(c.payload, 0);
            }
            return 0;
        }
    }

    public static final int SIMPLE = -1;

    private Socket socket;
    private DataInputStream in;
    private DataOutputStream out;
    private boolean structured;
    private boolean extended;
    private long nextCookie = 1;
    /** Set by {@link #go}: export size and transmission flags. */
    public long size;
    public int transmissionFlags;

    public NbdTestClient(InetSocketAddress address) throws IOException {
        socket = new Socket();
        socket.connect(address, 5000);
        socket.setSoTimeout(20_000);
        socket.setTcpNoDelay(true);
        in = new DataInputStream(new java.io.BufferedInputStream(socket.getInputStream()));
        out = new DataOutputStream(new java.io.BufferedOutputStream(socket.getOutputStream()));
    }

    public Socket socket() { return socket; }
    public DataOutputStream out() { return out; }
    public DataInputStream in() { return in; }

    /** Reads the greeting and sends the client flags (fixed newstyle, no zeroes). */
    public NbdTestClient handshake() throws IOException {
        if (in.readLong() != NbdMagic.NBDMAGIC) throw new IOException("bad NBDMAGIC");
        if (in.readLong() != NbdMagic.IHAVEOPT) throw new IOException("bad IHAVEOPT");
        int flags = in.readUnsignedShort();
        if ((flags & NbdHandshakeFlags.NBD_FLAG_FIXED_NEWSTYLE) == 0) throw new IOException("not fixed newstyle");
        out.writeInt(NbdHandshakeFlags.NBD_FLAG_C_FIXED_NEWSTYLE | NbdHandshakeFlags.NBD_FLAG_C_NO_ZEROES);
        out.flush();
        return this;
    }

    public void sendOption(int option, byte[] data) throws IOException {
        out.writeLong(NbdMagic.IHAVEOPT);
        out.writeInt(option);
        out.writeInt(data.length);
        out.write(data);
        out.flush();
    }

    public OptionReply readOptionReply() throws IOException {
        long magic = in.readLong();
        if (magic != NbdMagic.NBD_REP_MAGIC) throw new IOException("bad option reply magic 0x" + Long.toHexString(magic));
        int option = in.readInt();
        int type = in.readInt();
        int len = in.readInt();
        if (len < 0 || len > 1 << 20) throw new IOException("option reply length " + len);
        byte[] data = new byte[len];
        in.readFully(data);
        return new OptionReply(option, type, data);
    }

    /** Sends an option and collects replies up to the final ACK or error. */
    public List<OptionReply> option(int option, byte[] data) throws IOException {
        sendOption(option, data);
        List<OptionReply> replies = new ArrayList<>();
        while (true) {
            OptionReply r = readOptionReply();
            replies.add(r);
            if (r.type() == NbdRep.NBD_REP_ACK || r.isError()) return replies;
        }
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
        in = new DataInputStream(new java.io.BufferedInputStream(s.getInputStream()));
        out = new DataOutputStream(new java.io.BufferedOutputStream(s.getOutputStream()));
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

    public OptionReply structuredReplies() throws IOException {
        OptionReply r = option(NbdOpt.NBD_OPT_STRUCTURED_REPLY, new byte[0]).get(0);
        if (r.type() == NbdRep.NBD_REP_ACK) structured = true;
        return r;
    }

    public OptionReply extendedHeaders() throws IOException {
        OptionReply r = option(NbdOpt.NBD_OPT_EXTENDED_HEADERS, new byte[0]).get(0);
        if (r.type() == NbdRep.NBD_REP_ACK) {
            structured = true;
            extended = true;
        }
        return r;
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

    public static byte[] infoRequest(String export, int... infos) throws IOException {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        DataOutputStream d = new DataOutputStream(b);
        byte[] n = export.getBytes(StandardCharsets.UTF_8);
        d.writeInt(n.length);
        d.write(n);
        d.writeShort(infos.length);
        for (int i : infos) d.writeShort(i);
        return b.toByteArray();
    }

    /** NBD_OPT_GO; on success records size and flags and enters transmission. */
    public List<OptionReply> go(String export, int... infos) throws IOException {
        List<OptionReply> replies = option(NbdOpt.NBD_OPT_GO, infoRequest(export, infos));
        for (OptionReply r : replies) {
            if (r.type() == NbdRep.NBD_REP_INFO && readShort(r.data(), 0) == NbdInfo.NBD_INFO_EXPORT) {
                size = readLong(r.data(), 2);
                transmissionFlags = readShort(r.data(), 10);
            }
        }
        return replies;
    }

    // ---- transmission ----

    public long sendRequest(int flags, int type, long offset, long length, byte[] payload) throws IOException {
        long cookie = nextCookie++;
        if (extended) {
            out.writeInt(NbdMagic.NBD_EXTENDED_REQUEST_MAGIC);
            out.writeShort(flags);
            out.writeShort(type);
            out.writeLong(cookie);
            out.writeLong(offset);
            out.writeLong(length);
        } else {
            out.writeInt(NbdMagic.NBD_REQUEST_MAGIC);
            out.writeShort(flags);
            out.writeShort(type);
            out.writeLong(cookie);
            out.writeLong(offset);
            out.writeInt((int) length);
        }
        if (payload != null) out.write(payload);
        out.flush();
        return cookie;
    }

    /** Reads one whole reply (all chunks up to DONE, or one simple reply). */
    public Reply readReply(int readLengthIfSimple) throws IOException {
        List<Chunk> chunks = new ArrayList<>();
        long cookie;
        while (true) {
            int magic = in.readInt();
            if (magic == NbdMagic.NBD_SIMPLE_REPLY_MAGIC) {
                if (extended) throw new IOException("simple reply with extended headers");
                int error = in.readInt();
                cookie = in.readLong();
                byte[] data = new byte[error == 0 ? readLengthIfSimple : 0];
                in.readFully(data);
                chunks.add(new Chunk(NbdReplyFlags.NBD_REPLY_FLAG_DONE, SIMPLE, cookie, 0, data, error));
                return new Reply(cookie, chunks);
            }
            int flags;
            int type;
            long offset = 0;
            long len;
            if (magic == NbdMagic.NBD_STRUCTURED_REPLY_MAGIC) {
                if (extended) throw new IOException("structured reply with extended headers");
                flags = in.readUnsignedShort();
                type = in.readUnsignedShort();
                cookie = in.readLong();
                len = in.readInt() & 0xFFFFFFFFL;
            } else if (magic == NbdMagic.NBD_EXTENDED_REPLY_MAGIC) {
                if (!extended) throw new IOException("extended reply without extended headers");
                flags = in.readUnsignedShort();
                type = in.readUnsignedShort();
                cookie = in.readLong();
                offset = in.readLong();
                len = in.readLong();
            } else {
                throw new IOException("bad reply magic 0x" + Integer.toHexString(magic));
            }
            if (len > 64 << 20) throw new IOException("chunk of " + len + " bytes");
            byte[] payload = new byte[(int) len];
            in.readFully(payload);
            chunks.add(new Chunk(flags, type, cookie, offset, payload, 0));
            if ((flags & NbdReplyFlags.NBD_REPLY_FLAG_DONE) != 0) return new Reply(cookie, chunks);
        }
    }

    public Reply request(int flags, int type, long offset, long length, byte[] payload) throws IOException {
        sendRequest(flags, type, offset, length, payload);
        return readReply(type == NbdCmd.NBD_CMD_READ ? (int) length : 0);
    }

    /**
     * Reads {@code length} bytes, assembling data and hole chunks; throws on an error reply.
     */
    public byte[] read(long offset, int length, int flags) throws IOException {
        Reply r = request(flags, NbdCmd.NBD_CMD_READ, offset, length, null);
        if (r.error() != 0) throw new NbdErrorException(r.error());
        byte[] data = new byte[length];
        for (Chunk c : r.chunks()) {
            if (c.type() == SIMPLE) return c.payload();
            if (c.type() == NbdReplyType.NBD_REPLY_TYPE_OFFSET_DATA) {
                long at = readLong(c.payload(), 0);
                System.arraycopy(c.payload(), 8, data, (int) (at - offset), c.payload().length - 8);
            }
            // OFFSET_HOLE: already zero
        }
        return data;
    }

    public int write(long offset, byte[] data, int flags) throws IOException {
        return request(flags, NbdCmd.NBD_CMD_WRITE, offset, data.length, data).error();
    }

    public void disconnect() throws IOException {
        sendRequest(0, NbdCmd.NBD_CMD_DISC, 0, 0, null);
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

    @Override
    public void close() throws IOException {
        socket.close();
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

    /** An NBD error reply, with the NBD error number. */
    public static final class NbdErrorException extends IOException {
        private static final long serialVersionUID = 1L;
        public final int error;

        public NbdErrorException(int error) {
            super("NBD error " + error);
            this.error = error;
        }
    }
}
