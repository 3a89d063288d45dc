package dev.vmm.cli.it;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;

/**
 * A deliberately minimal NBD client over a raw TCP socket, to misbehave on purpose (NBD is
 * big-endian, DataOutputStream too). Layouts: doc/proto.md "Fixed newstyle negotiation" and
 * "Transmission".
 */
final class RawNbd implements AutoCloseable {
    static final long NBDMAGIC = 0x4e42444d41474943L; // "NBDMAGIC"
    static final long IHAVEOPT = 0x49484156454F5054L; // "IHAVEOPT"
    static final int NBD_FLAG_C_FIXED_NEWSTYLE = 1;
    static final int NBD_FLAG_C_NO_ZEROES = 2;
    static final int NBD_OPT_EXPORT_NAME = 1;
    static final int NBD_REQUEST_MAGIC = 0x25609513;
    static final int NBD_CMD_WRITE = 1;

    final Socket socket;
    final DataInputStream in;
    final DataOutputStream out;

    RawNbd(int port) throws IOException {
        socket = new Socket();
        socket.connect(new InetSocketAddress(Net.HOST, port), 5000);
        socket.setSoTimeout(10_000);
        in = new DataInputStream(socket.getInputStream());
        out = new DataOutputStream(socket.getOutputStream());
    }

    /** Reads the server's greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
    int readGreeting() throws IOException {
        long magic = in.readLong();
        long opt = in.readLong();
        if (magic != NBDMAGIC || opt != IHAVEOPT) {
            throw new IOException("bad greeting " + Long.toHexString(magic) + " " + Long.toHexString(opt));
        }
        return in.readUnsignedShort();
    }

    /** Greeting, client flags, NBD_OPT_EXPORT_NAME; returns the export size. */
    long handshake(String export) throws IOException {
        int serverFlags = readGreeting();
        boolean noZeroes = (serverFlags & NBD_FLAG_C_NO_ZEROES) != 0;
        out.writeInt(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
        byte[] name = export.getBytes(StandardCharsets.UTF_8);
        out.writeLong(IHAVEOPT);
        out.writeInt(NBD_OPT_EXPORT_NAME);
        out.writeInt(name.length);
        out.write(name);
        out.flush();
        long size = in.readLong();
        in.readUnsignedShort(); // transmission flags
        if (!noZeroes) {
            in.readFully(new byte[124]);
        }
        return size;
    }

    /** A request header: magic, flags, type, handle (cookie), offset, length (28 bytes). */
    void request(int magic, int flags, int type, long handle, long offset, int length) throws IOException {
        out.writeInt(magic);
        out.writeShort(flags);
        out.writeShort(type);
        out.writeLong(handle);
        out.writeLong(offset);
        out.writeInt(length);
        out.flush();
    }

    /** True when the server closes (EOF or reset) within the socket timeout. */
    boolean closedByServer() {
        try {
            byte[] buf = new byte[4096];
            while (true) {
                if (in.read(buf) < 0) {
                    return true;
                }
            }
        } catch (SocketTimeoutException e) {
            return false;
        } catch (IOException e) {
            return true; // connection reset
        }
    }

    @Override
    public void close() {
        try {
            socket.close();
        } catch (IOException ignored) {
            // nothing to do
        }
    }
}
