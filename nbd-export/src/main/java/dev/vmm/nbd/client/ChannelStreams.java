package dev.vmm.nbd.client;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;

/**
 * Streams over a blocking {@link SocketChannel} that one thread may read while another writes.
 * JDK 17's {@code Channels.newInputStream}/{@code newOutputStream} both take the channel's
 * blocking lock, so a read blocked waiting for a reply would stall every request write; the
 * channel's own read and write locks are separate, which is all these need.
 *
 * <p>Thread contract: one reading thread and one writing thread at a time.
 */
final class ChannelStreams {
    private ChannelStreams() {}

    static InputStream input(SocketChannel ch) {
        return new InputStream() {
            @Override
            public int read() throws IOException {
                byte[] one = new byte[1];
                return read(one, 0, 1) < 0 ? -1 : one[0] & 0xff;
            }

            @Override
            public int read(byte[] b, int off, int len) throws IOException {
                return ch.read(ByteBuffer.wrap(b, off, len));
            }
        };
    }

    static OutputStream output(SocketChannel ch) {
        return new OutputStream() {
            @Override
            public void write(int b) throws IOException {
                write(new byte[] {(byte) b}, 0, 1);
            }

            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                ByteBuffer buf = ByteBuffer.wrap(b, off, len);
                while (buf.hasRemaining()) ch.write(buf);
            }
        };
    }
}
