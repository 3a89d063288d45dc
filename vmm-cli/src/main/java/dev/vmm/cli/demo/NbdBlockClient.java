package dev.vmm.cli.demo;

import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdHandshakeFlags;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdOpt;
import java.io.IOException;
import java.net.SocketAddress;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;

/**
 * The smallest NBD client the demo needs to check the guest's writes from the host without
 * depending on libnbd: fixed newstyle handshake with {@code NBD_OPT_EXPORT_NAME}, then simple
 * replies only (no structured replies are negotiated, so a READ answer is a 16-byte header plus
 * the data). NBD is big-endian, as {@link ByteBuffer}'s default order.
 * Layouts: NBD doc/proto.md "Fixed newstyle negotiation" and "Transmission".
 *
 * <p>Thread contract: blocking; one thread at a time.
 */
public final class NbdBlockClient implements AutoCloseable {
    private final SocketChannel channel;
    private final long size;
    private long nextCookie = 1;

    private NbdBlockClient(SocketChannel channel, long size) {
        this.channel = channel;
        this.size = size;
    }

    /** Connects to a unix socket and opens {@code export}. */
    public static NbdBlockClient connect(Path socket, String export) throws IOException {
        return connect(UnixDomainSocketAddress.of(socket), export);
    }

    /** Connects to {@code address} (unix or TCP) and opens {@code export}. */
    public static NbdBlockClient connect(SocketAddress address, String export) throws IOException {
        SocketChannel ch = SocketChannel.open(address);
        try {
            ByteBuffer greeting = readFully(ch, 18);
            if (greeting.getLong() != NbdMagic.NBDMAGIC || greeting.getLong() != NbdMagic.IHAVEOPT) {
                throw new IOException("not a fixed-newstyle NBD server");
            }
            int serverFlags = Short.toUnsignedInt(greeting.getShort());
            boolean noZeroes = (serverFlags & NbdHandshakeFlags.NBD_FLAG_NO_ZEROES) != 0;
            byte[] name = export.getBytes(StandardCharsets.UTF_8);
            ByteBuffer opt = ByteBuffer.allocate(4 + 16 + name.length);
            opt.putInt(NbdHandshakeFlags.NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NbdHandshakeFlags.NBD_FLAG_C_NO_ZEROES : 0));
            opt.putLong(NbdMagic.IHAVEOPT).putInt(NbdOpt.NBD_OPT_EXPORT_NAME).putInt(name.length).put(name).flip();
            writeFully(ch, opt);
            // A server that does not know the export just closes the connection here.
            ByteBuffer reply = readFully(ch, 10 + (noZeroes ? 0 : 124));
            return new NbdBlockClient(ch, reply.getLong());
        } catch (IOException e) {
            ch.close();
            throw new IOException("NBD handshake for export '" + export + "' failed: " + e.getMessage(), e);
        }
    }

    /** The export's size in bytes. */
    public long size() {
        return size;
    }

    /** NBD_CMD_READ of {@code length} bytes at {@code offset}. */
    public byte[] read(long offset, int length) throws IOException {
        long cookie = request(NbdCmd.NBD_CMD_READ, offset, length, null);
        replyHeader(cookie, "READ");
        byte[] data = new byte[length];
        readFully(channel, length).get(data);
        return data;
    }

    /** NBD_CMD_WRITE of {@code data} at {@code offset}. */
    public void write(long offset, byte[] data) throws IOException {
        long cookie = request(NbdCmd.NBD_CMD_WRITE, offset, data.length, data);
        replyHeader(cookie, "WRITE");
    }

    /** NBD_CMD_FLUSH. */
    public void flush() throws IOException {
        replyHeader(request(NbdCmd.NBD_CMD_FLUSH, 0, 0, null), "FLUSH");
    }

    private long request(int type, long offset, int length, byte[] payload) throws IOException {
        long cookie = nextCookie++;
        ByteBuffer b = ByteBuffer.allocate(28 + (payload == null ? 0 : payload.length));
        b.putInt(NbdMagic.NBD_REQUEST_MAGIC).putShort((short) 0).putShort((short) type)
                .putLong(cookie).putLong(offset).putInt(length);
        if (payload != null) b.put(payload);
        writeFully(channel, b.flip());
        return cookie;
    }

    private void replyHeader(long cookie, String what) throws IOException {
        ByteBuffer h = readFully(channel, 16);
        int magic = h.getInt();
        int error = h.getInt();
        long got = h.getLong();
        if (magic != NbdMagic.NBD_SIMPLE_REPLY_MAGIC || got != cookie) {
            throw new IOException("NBD " + what + ": unexpected reply (magic 0x" + Integer.toHexString(magic) + ", cookie " + got + ")");
        }
        if (error != 0) throw new IOException("NBD " + what + " failed with NBD error " + error);
    }

    private static ByteBuffer readFully(SocketChannel ch, int n) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n);
        while (b.hasRemaining()) {
            if (ch.read(b) < 0) throw new IOException("the server closed the connection");
        }
        return b.flip();
    }

    private static void writeFully(SocketChannel ch, ByteBuffer b) throws IOException {
        while (b.hasRemaining()) ch.write(b);
    }

    /** NBD_CMD_DISC, then close (the server sends no reply to DISC). */
    @Override
    public void close() throws IOException {
        try {
            if (channel.isOpen()) request(NbdCmd.NBD_CMD_DISC, 0, 0, null);
        } catch (IOException ignored) {
            // the server is gone already: nothing to say goodbye to
        } finally {
            channel.close();
        }
    }
}
