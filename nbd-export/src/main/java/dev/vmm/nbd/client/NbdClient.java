package dev.vmm.nbd.client;

import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdHandshakeFlags;
import dev.vmm.nbd.protocol.NbdInfo;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdRep;
import dev.vmm.nbd.protocol.NbdReplyFlags;
import dev.vmm.nbd.protocol.NbdReplyType;
import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.Closeable;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.SocketException;
import java.net.StandardSocketOptions;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * A small blocking NBD client. Handshake: fixed newstyle, {@code NBD_OPT_GO}, and optionally
 * {@code NBD_OPT_STRUCTURED_REPLY} or {@code NBD_OPT_EXTENDED_HEADERS} before it. Transmission:
 * requests with compact or extended headers, replies simple, structured or extended.
 * All fields are big-endian (network byte order). Layouts: NBD
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md">doc/proto.md</a>,
 * "Fixed newstyle negotiation", "Request message", "Simple reply message", "Structured reply
 * chunk message", "Extended reply chunk message".
 *
 * <p>A misbehaving server is reported as an {@link IOException}, never an unchecked one:
 * {@link ProtocolException} for broken framing (bad magic, a reply that cannot be for the
 * request, an oversized length), {@link NbdErrorException} for an error reply to a helper
 * call, {@link EOFException} when the connection ends between replies and a plain
 * {@code IOException} when it ends inside one.
 *
 * <p>Thread contract: blocking; one thread at a time. The one exception is pipelining in
 * transmission: one thread may send ({@link #writeRequest}, {@link #flushOutput},
 * {@link #sendRequest}, {@link #disconnect}) while one other thread reads replies with
 * {@link #readReply}; the handshake must be complete before the two start (the state it sets
 * is read by both; {@code Thread.start} publishes it). {@link #abort} may be called from any
 * thread to unblock both.
 */
public class NbdClient implements Closeable {
    /** One option reply: {@code NBD_REP_*} type and its data. */
    public record OptionReply(int option, int type, byte[] data) {
        public boolean isError() { return NbdRep.isError(type); }
    }

    /** One reply chunk; a simple reply is reported as one chunk of type {@link #SIMPLE} with its error. */
    public record Chunk(int flags, int type, long cookie, long offset, byte[] payload, int error) {
        public boolean done() { return (flags & NbdReplyFlags.NBD_REPLY_FLAG_DONE) != 0; }
    }

    /** Everything the server sent for one request. */
    public record Reply(long cookie, List<Chunk> chunks) {
        /** The NBD error of the reply, 0 when it succeeded. */
        public int error() {
            for (Chunk c : chunks) {
                if (c.type == SIMPLE) return c.error;
                // readReply checked that an error chunk carries at least the 32-bit error
                if (NbdReplyType.isError(c.type)) return ByteBuffer.wrap(c.payload).getInt();
            }
            return 0;
        }
    }

    /** The chunk type of a simple reply. */
    public static final int SIMPLE = -1;

    /** Largest reply chunk payload accepted; anything larger is taken as broken framing. */
    static final int MAX_CHUNK = 64 << 20;
    /** Largest option reply accepted (the spec lets a client drop a connection sending more). */
    static final int MAX_OPTION_REPLY = 1 << 20;

    /** The server answered a request with an NBD error. */
    public static class NbdErrorException extends IOException {
        private static final long serialVersionUID = 1L;
        /** The {@code NBD_E*} value. */
        public final int error;

        public NbdErrorException(int error) {
            this("NBD error " + error, error);
        }

        NbdErrorException(String message, int error) {
            super(message);
            this.error = error;
        }
    }

    /** The server broke the protocol: the connection cannot be trusted any further. */
    public static final class ProtocolException extends IOException {
        private static final long serialVersionUID = 1L;

        public ProtocolException(String message) {
            super(message);
        }
    }

    // ---- transport: replaced only during the handshake (STARTTLS) ----
    private DataInputStream in;
    private DataOutputStream out;
    private Closeable transport;

    // ---- negotiated in the handshake; read-only in transmission ----
    private boolean structured;
    private boolean extended;
    private long size;
    private int transmissionFlags;
    /** NBD_OPT_GO was acknowledged and no NBD_CMD_DISC sent yet: {@link #close} sends one. */
    private boolean transmission;

    // ---- sending thread ----
    private long nextCookie = 1;

    /**
     * A client over already connected streams; {@code transport} is what {@link #close} closes.
     * The streams should be buffered: requests and option bytes are written in small pieces and
     * sent by {@link #flushOutput}.
     */
    public NbdClient(InputStream in, OutputStream out, Closeable transport) {
        switchTransport(in, out, transport);
    }

    /**
     * Connects to {@code address} (a {@link java.net.UnixDomainSocketAddress} or a TCP address,
     * with {@code TCP_NODELAY}); no byte is exchanged yet.
     */
    public static NbdClient connect(SocketAddress address) throws IOException {
        SocketChannel ch = SocketChannel.open(address);
        try {
            if (address instanceof InetSocketAddress) ch.setOption(StandardSocketOptions.TCP_NODELAY, true);
        } catch (IOException e) {
            ch.close();
            throw e;
        }
        return new NbdClient(new BufferedInputStream(ChannelStreams.input(ch), 64 << 10),
                new BufferedOutputStream(ChannelStreams.output(ch), 64 << 10), ch);
    }

    /**
     * Connects, handshakes and opens {@code export} with {@code NBD_OPT_GO}: the client is in
     * transmission with simple replies. A refusal or a broken handshake is an IOException naming
     * the export; the connection is closed then.
     */
    public static NbdClient open(SocketAddress address, String export) throws IOException {
        NbdClient c = connect(address);
        try {
            c.handshake();
            List<OptionReply> replies = c.go(export);
            OptionReply last = replies.get(replies.size() - 1);
            if (last.type() != NbdRep.NBD_REP_ACK) {
                throw new IOException("NBD_OPT_GO refused: " + NbdRep.name(last.type())
                        + (last.data().length == 0 ? "" : " (" + new String(last.data(), StandardCharsets.UTF_8) + ")"));
            }
            return c;
        } catch (IOException e) {
            try {
                c.abort();
            } catch (IOException suppressed) {
                e.addSuppressed(suppressed);
            }
            String why = e instanceof EOFException ? "the server closed the connection" : e.getMessage();
            throw new IOException("NBD handshake for export '" + export + "' failed: " + why, e);
        }
    }

    /** Replaces the streams under the protocol, as STARTTLS does; handshake thread only. */
    protected final void switchTransport(InputStream in, OutputStream out, Closeable transport) {
        this.in = in instanceof DataInputStream d ? d : new DataInputStream(in);
        this.out = out instanceof DataOutputStream d ? d : new DataOutputStream(out);
        this.transport = transport;
    }

    // ---- handshake ----

    /**
     * Reads the greeting and sends the client flags: fixed newstyle, and no zeroes when the
     * server offers it.
     */
    public NbdClient handshake() throws IOException {
        long magic = in.readLong();
        if (magic != NbdMagic.NBDMAGIC) throw new ProtocolException("bad NBDMAGIC 0x" + Long.toHexString(magic));
        magic = in.readLong();
        if (magic != NbdMagic.IHAVEOPT) throw new ProtocolException("bad IHAVEOPT 0x" + Long.toHexString(magic) + " (not a newstyle server)");
        int flags = in.readUnsignedShort();
        if ((flags & NbdHandshakeFlags.NBD_FLAG_FIXED_NEWSTYLE) == 0) throw new ProtocolException("not a fixed-newstyle server");
        int noZeroes = (flags & NbdHandshakeFlags.NBD_FLAG_NO_ZEROES) != 0 ? NbdHandshakeFlags.NBD_FLAG_C_NO_ZEROES : 0;
        out.writeInt(NbdHandshakeFlags.NBD_FLAG_C_FIXED_NEWSTYLE | noZeroes);
        out.flush();
        return this;
    }

    /** Sends one option: IHAVEOPT, option, length, data. */
    public void sendOption(int option, byte[] data) throws IOException {
        out.writeLong(NbdMagic.IHAVEOPT);
        out.writeInt(option);
        out.writeInt(data.length);
        out.write(data);
        out.flush();
    }

    /** Reads one option reply: NBD_REP_MAGIC, option, type, length, data. */
    public OptionReply readOptionReply() throws IOException {
        long magic = in.readLong();
        if (magic != NbdMagic.NBD_REP_MAGIC) throw new ProtocolException("bad option reply magic 0x" + Long.toHexString(magic));
        int option = in.readInt();
        int type = in.readInt();
        int len = in.readInt();
        if (len < 0 || len > MAX_OPTION_REPLY) throw new ProtocolException("option reply length " + Integer.toUnsignedString(len));
        byte[] data = new byte[len];
        in.readFully(data);
        return new OptionReply(option, type, data);
    }

    /** Sends an option and collects its replies up to the final ACK or error. */
    public List<OptionReply> option(int option, byte[] data) throws IOException {
        sendOption(option, data);
        List<OptionReply> replies = new ArrayList<>();
        while (true) {
            OptionReply r = readOptionReply();
            replies.add(r);
            if (r.type() == NbdRep.NBD_REP_ACK || r.isError()) return replies;
        }
    }

    /** NBD_OPT_STRUCTURED_REPLY; on ACK, replies may be structured. */
    public OptionReply structuredReplies() throws IOException {
        OptionReply r = option(NbdOpt.NBD_OPT_STRUCTURED_REPLY, new byte[0]).get(0);
        if (r.type() == NbdRep.NBD_REP_ACK) structured = true;
        return r;
    }

    /** NBD_OPT_EXTENDED_HEADERS; on ACK, requests and replies use the extended headers. */
    public OptionReply extendedHeaders() throws IOException {
        OptionReply r = option(NbdOpt.NBD_OPT_EXTENDED_HEADERS, new byte[0]).get(0);
        if (r.type() == NbdRep.NBD_REP_ACK) {
            structured = true;
            extended = true;
        }
        return r;
    }

    /** The data of NBD_OPT_INFO/GO: export name length and name, count of info requests, infos. */
    public static byte[] infoRequest(String export, int... infos) {
        byte[] name = export.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(4 + name.length + 2 + 2 * infos.length);
        b.putInt(name.length).put(name).putShort((short) infos.length);
        for (int i : infos) b.putShort((short) i);
        return b.array();
    }

    /**
     * NBD_OPT_GO; records the size and transmission flags of an NBD_INFO_EXPORT reply. The
     * replies are returned as sent, a refusal included: after an ACK the client is in
     * transmission, after an error it still negotiates.
     */
    public List<OptionReply> go(String export, int... infos) throws IOException {
        List<OptionReply> replies = option(NbdOpt.NBD_OPT_GO, infoRequest(export, infos));
        for (OptionReply r : replies) {
            if (r.type() != NbdRep.NBD_REP_INFO || r.data().length < 2) continue;
            ByteBuffer d = ByteBuffer.wrap(r.data());
            if (Short.toUnsignedInt(d.getShort()) != NbdInfo.NBD_INFO_EXPORT) continue;
            // NBD_INFO_EXPORT: 16-bit info, 64-bit size, 16-bit transmission flags
            if (d.remaining() < 10) throw new ProtocolException("NBD_INFO_EXPORT of " + r.data().length + " bytes");
            size = d.getLong();
            transmissionFlags = Short.toUnsignedInt(d.getShort());
        }
        if (replies.get(replies.size() - 1).type() == NbdRep.NBD_REP_ACK) transmission = true;
        return replies;
    }

    /** The export's size in bytes, from NBD_OPT_GO. */
    public long size() {
        return size;
    }

    /** The export's transmission flags ({@code NBD_FLAG_*}), from NBD_OPT_GO. */
    public int transmissionFlags() {
        return transmissionFlags;
    }

    // ---- transmission: sending thread ----

    /**
     * Buffers one request with the caller's cookie: the compact 28-byte header (magic, 16-bit
     * flags, 16-bit type, 64-bit cookie, 64-bit offset, 32-bit length) or, after extended
     * headers, the 32-byte one with a 64-bit length; then the payload if any. Nothing is sent
     * before {@link #flushOutput}.
     */
    public void writeRequest(int flags, int type, long cookie, long offset, long length, byte[] payload) throws IOException {
        if (extended) {
            out.writeInt(NbdMagic.NBD_EXTENDED_REQUEST_MAGIC);
        } else {
            if (length < 0 || length > 0xFFFF_FFFFL) throw new IllegalArgumentException("length " + length + " needs extended headers");
            out.writeInt(NbdMagic.NBD_REQUEST_MAGIC);
        }
        out.writeShort(flags);
        out.writeShort(type);
        out.writeLong(cookie);
        out.writeLong(offset);
        if (extended) out.writeLong(length); else out.writeInt((int) length);
        if (payload != null) out.write(payload);
    }

    /** Sends what {@link #writeRequest} buffered. */
    public void flushOutput() throws IOException {
        out.flush();
    }

    /** Sends one request with the next cookie (1, 2, ...) and returns the cookie. */
    public long sendRequest(int flags, int type, long offset, long length, byte[] payload) throws IOException {
        long cookie = nextCookie++;
        writeRequest(flags, type, cookie, offset, length, payload);
        out.flush();
        return cookie;
    }

    /**
     * Sends NBD_CMD_DISC (the server answers it by closing the connection, with no reply;
     * replies to earlier requests still come). {@link #close} then says nothing more.
     */
    public void disconnect() throws IOException {
        transmission = false;
        sendRequest(0, NbdCmd.NBD_CMD_DISC, 0, 0, null);
    }

    // ---- transmission: reading thread ----

    /**
     * Reads one whole reply: one simple reply (with {@code readLengthIfSimple} bytes of data
     * when it succeeded) or structured/extended chunks up to the one flagged DONE. Ends with
     * {@link EOFException} if the connection ends before the reply's first byte; a connection
     * lost inside the reply is a plain IOException.
     */
    public Reply readReply(int readLengthIfSimple) throws IOException {
        List<Chunk> chunks = new ArrayList<>();
        int first = in.read();
        if (first < 0) throw new EOFException("the server closed the connection");
        try {
            while (true) {
                int magic = chunks.isEmpty() ? first << 24 | in.readUnsignedByte() << 16 | in.readUnsignedShort() : in.readInt();
                if (magic == NbdMagic.NBD_SIMPLE_REPLY_MAGIC && chunks.isEmpty()) {
                    if (extended) throw new ProtocolException("simple reply with extended headers");
                    int error = in.readInt();
                    long cookie = in.readLong();
                    byte[] data = new byte[error == 0 ? readLengthIfSimple : 0];
                    in.readFully(data);
                    chunks.add(new Chunk(NbdReplyFlags.NBD_REPLY_FLAG_DONE, SIMPLE, cookie, 0, data, error));
                    return new Reply(cookie, chunks);
                }
                int flags;
                int type;
                long cookie;
                long offset = 0;
                long len;
                if (magic == NbdMagic.NBD_STRUCTURED_REPLY_MAGIC) {
                    if (extended) throw new ProtocolException("structured reply with extended headers");
                    if (!structured) throw new ProtocolException("structured reply without NBD_OPT_STRUCTURED_REPLY");
                    flags = in.readUnsignedShort();
                    type = in.readUnsignedShort();
                    cookie = in.readLong();
                    len = in.readInt() & 0xFFFF_FFFFL;
                } else if (magic == NbdMagic.NBD_EXTENDED_REPLY_MAGIC) {
                    if (!extended) throw new ProtocolException("extended reply without extended headers");
                    flags = in.readUnsignedShort();
                    type = in.readUnsignedShort();
                    cookie = in.readLong();
                    offset = in.readLong();
                    len = in.readLong();
                } else {
                    throw new ProtocolException("bad reply magic " + NbdMagic.name(magic)
                            + (chunks.isEmpty() ? "" : " after " + chunks.size() + " chunk(s)"));
                }
                if (len < 0 || len > MAX_CHUNK) throw new ProtocolException("reply chunk of " + Long.toUnsignedString(len) + " bytes");
                // an error chunk starts with the 32-bit error and 16-bit message length
                if (NbdReplyType.isError(type) && len < 6) throw new ProtocolException("error chunk of " + len + " bytes");
                byte[] payload = new byte[(int) len];
                in.readFully(payload);
                chunks.add(new Chunk(flags, type, cookie, offset, payload, 0));
                if ((flags & NbdReplyFlags.NBD_REPLY_FLAG_DONE) != 0) return new Reply(cookie, chunks);
            }
        } catch (EOFException | SocketException e) {
            throw new IOException("connection lost in the middle of a reply: " + e.getMessage(), e);
        }
    }

    // ---- one request at a time ----

    /** Sends one request and reads its reply (all of it); the reply must carry the cookie sent. */
    public Reply request(int flags, int type, long offset, long length, byte[] payload) throws IOException {
        long cookie = sendRequest(flags, type, offset, length, payload);
        Reply r = readReply(type == NbdCmd.NBD_CMD_READ ? (int) length : 0);
        for (Chunk c : r.chunks()) {
            if (c.cookie() != cookie) {
                throw new ProtocolException("reply cookie " + c.cookie() + " to " + NbdCmd.name(type) + " with cookie " + cookie);
            }
        }
        return r;
    }

    /** NBD_CMD_READ of {@code length} bytes at {@code offset}. */
    public byte[] read(long offset, int length) throws IOException {
        return read(offset, length, 0);
    }

    /**
     * NBD_CMD_READ with {@code flags}; assembles data and hole chunks. An error reply is an
     * {@link NbdErrorException}.
     */
    public byte[] read(long offset, int length, int flags) throws IOException {
        return readData(request(flags, NbdCmd.NBD_CMD_READ, offset, length, null), offset, length);
    }

    /**
     * The data of the reply {@code r} to a READ of {@code length} bytes at {@code offset} (e.g. one
     * read with {@link #readReply} after pipelining): a simple reply's payload, or the data and
     * hole chunks assembled. An error reply is an {@link NbdErrorException}. Stateless.
     */
    public static byte[] readData(Reply r, long offset, int length) throws IOException {
        check(r, NbdCmd.NBD_CMD_READ);
        byte[] data = new byte[length];
        for (Chunk c : r.chunks()) {
            if (c.type() == SIMPLE) return c.payload();
            if (c.type() == NbdReplyType.NBD_REPLY_TYPE_OFFSET_DATA) {
                // 64-bit offset, then the data
                if (c.payload().length < 8) throw new ProtocolException("OFFSET_DATA chunk of " + c.payload().length + " bytes");
                long at = ByteBuffer.wrap(c.payload()).getLong() - offset;
                int n = c.payload().length - 8;
                if (at < 0 || at + n > length) throw new ProtocolException("OFFSET_DATA chunk outside the request");
                System.arraycopy(c.payload(), 8, data, (int) at, n);
            }
            // OFFSET_HOLE: already zero
        }
        return data;
    }

    /** NBD_CMD_WRITE of {@code data} at {@code offset}; an error reply is an {@link NbdErrorException}. */
    public void write(long offset, byte[] data) throws IOException {
        check(request(0, NbdCmd.NBD_CMD_WRITE, offset, data.length, data), NbdCmd.NBD_CMD_WRITE);
    }

    /** NBD_CMD_FLUSH; an error reply is an {@link NbdErrorException}. */
    public void flush() throws IOException {
        check(request(0, NbdCmd.NBD_CMD_FLUSH, 0, 0, null), NbdCmd.NBD_CMD_FLUSH);
    }

    private static void check(Reply r, int type) throws NbdErrorException {
        int error = r.error();
        if (error != 0) throw new NbdErrorException(NbdCmd.name(type) + " failed: " + NbdError.name(error), error);
    }

    /**
     * Closes the connection without NBD_CMD_DISC; any thread, to end blocked reads and writes
     * (a blocking channel's close wakes them with an IOException).
     */
    public void abort() throws IOException {
        transport.close();
    }

    /**
     * Sends NBD_CMD_DISC when in transmission, then closes; a server that is gone already is
     * not an error. One-thread contract: with a sender and a reader running, use {@link #abort}.
     */
    @Override
    public void close() throws IOException {
        try {
            if (transmission) disconnect();
        } catch (IOException ignored) {
            // the server is gone already: nothing to say goodbye to
        } finally {
            abort();
        }
    }
}
