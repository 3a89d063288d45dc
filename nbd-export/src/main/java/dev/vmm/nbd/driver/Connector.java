package dev.vmm.nbd.driver;

import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.client.NbdClient.OptionReply;
import dev.vmm.nbd.protocol.NbdInfo;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdRep;
import dev.vmm.nbd.protocol.NbdTransmissionFlags;
import io.netty.bootstrap.Bootstrap;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFuture;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.channel.ChannelOption;
import io.netty.channel.IoEventLoopGroup;
import io.netty.channel.MultiThreadIoEventLoopGroup;
import io.netty.channel.epoll.EpollDomainSocketChannel;
import io.netty.channel.epoll.EpollIoHandler;
import io.netty.channel.epoll.EpollSocketChannel;
import io.netty.channel.unix.DomainSocketAddress;
import io.netty.handler.ssl.SslHandler;
import io.netty.util.ReferenceCountUtil;
import io.netty.util.concurrent.DefaultThreadFactory;
import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * Connects to an NBD server and negotiates an export: fixed newstyle, NBD_OPT_STARTTLS when TLS
 * is asked for, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT {@code base:allocation},
 * NBD_OPT_GO with NBD_INFO_BLOCK_SIZE (spec: doc/proto.md, "Fixed newstyle negotiation").
 *
 * <p>The channel is a Netty epoll channel on a small loop of its own ({@link #connectLoop()}),
 * and the negotiation is written as blocking code ({@link NbdClient} over streams fed by the
 * channel), bounded by a deadline. The caller then moves the channel to the node's home for
 * transmission, or keeps it here as a blocking side connection.
 *
 * <p>Thread contract: {@link #open} blocks; call it from a control thread or a reconnect thread,
 * never from an event loop.
 */
final class Connector {
    /** Largest payload we send or accept when the server names no maximum (QEMU's NBD_MAX_BUFFER_SIZE). */
    static final int DEFAULT_MAX_PAYLOAD = 32 << 20;
    /** Spec: the minimum block size MUST NOT exceed 64 KiB. */
    static final int MAX_MIN_BLOCK = 64 << 10;

    private static volatile IoEventLoopGroup connectLoop;

    private Connector() {}

    /** The loop that carries connections while they negotiate (and side connections). */
    static IoEventLoopGroup connectLoop() {
        IoEventLoopGroup g = connectLoop;
        if (g == null) {
            synchronized (Connector.class) {
                g = connectLoop;
                if (g == null) {
                    g = new MultiThreadIoEventLoopGroup(1, new DefaultThreadFactory("nbd-client-connect", true), EpollIoHandler.newFactory());
                    connectLoop = g;
                }
            }
        }
        return g;
    }

    /**
     * Connects and negotiates; on failure the connection is closed and the IOException says why
     * (a refused connection, a refused export, a server that broke the protocol, a timeout).
     *
     * @param tls builds the client's SslHandler, or null for a plain connection
     */
    static Session open(NbdTarget t, Function<Channel, SslHandler> tls, long timeoutMs) throws IOException {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        Bridge bridge = new Bridge(deadline);
        Bootstrap b = new Bootstrap().group(connectLoop()).handler(bridge)
                .option(ChannelOption.CONNECT_TIMEOUT_MILLIS, (int) Math.max(1, Math.min(Integer.MAX_VALUE, timeoutMs)));
        SocketAddress remote = t.address();
        if (remote instanceof DomainSocketAddress) {
            b.channel(EpollDomainSocketChannel.class);
        } else {
            InetSocketAddress a = (InetSocketAddress) remote;
            remote = new InetSocketAddress(a.getHostString(), a.getPort()); // resolves now, on this thread
            if (((InetSocketAddress) remote).isUnresolved()) throw new IOException("cannot resolve host '" + a.getHostString() + "'");
            b.channel(EpollSocketChannel.class).option(ChannelOption.TCP_NODELAY, true);
        }
        ChannelFuture cf = b.connect(remote);
        if (!cf.awaitUninterruptibly(timeoutMs)) {
            cf.channel().close();
            throw new SocketTimeoutException("connection timed out after " + timeoutMs + " ms");
        }
        if (!cf.isSuccess()) {
            Throwable c = cf.cause();
            throw new IOException(c == null ? "connection failed" : c.getMessage() == null ? c.toString() : c.getMessage().replaceFirst("^connect\\(\\.\\.\\) failed: ", ""), c);
        }
        Channel ch = cf.channel();
        try {
            return negotiate(t, ch, bridge, tls);
        } catch (IOException | RuntimeException e) {
            ch.close();
            if (e instanceof EOFException) throw new IOException("the server closed the connection during the handshake", e);
            if (e instanceof IOException io) throw io;
            throw new IOException("handshake failed: " + e, e);
        }
    }

    private static Session negotiate(NbdTarget t, Channel ch, Bridge bridge, Function<Channel, SslHandler> tls) throws IOException {
        NbdClient c = new NbdClient(bridge.input(), new BridgeOutput(ch, bridge), ch::close);
        c.handshake();
        if (tls != null) {
            OptionReply r = c.option(NbdOpt.NBD_OPT_STARTTLS, new byte[0]).get(0);
            if (r.type() != NbdRep.NBD_REP_ACK) throw new IOException("the server refused NBD_OPT_STARTTLS: " + describe(r));
            SslHandler ssl = tls.apply(ch);
            ch.pipeline().addFirst("tls", ssl);
            io.netty.util.concurrent.Future<Channel> hs = ssl.handshakeFuture();
            if (!hs.awaitUninterruptibly(bridge.remainingMs())) throw new SocketTimeoutException("TLS handshake timed out");
            if (!hs.isSuccess()) throw new IOException("TLS handshake failed: " + hs.cause().getMessage(), hs.cause());
        }
        boolean structured = false;
        long meta = -1;
        OptionReply sr = c.structuredReplies();
        if (sr.type() == NbdRep.NBD_REP_ACK) {
            structured = true;
            byte[] name = t.export().getBytes(StandardCharsets.UTF_8);
            byte[] q = NbdMetaContext.BASE_ALLOCATION.getBytes(StandardCharsets.UTF_8);
            // export name length, name, number of queries, then each query's length and text
            ByteBuffer d = ByteBuffer.allocate(4 + name.length + 4 + 4 + q.length);
            d.putInt(name.length).put(name).putInt(1).putInt(q.length).put(q);
            for (OptionReply r : c.option(NbdOpt.NBD_OPT_SET_META_CONTEXT, d.array())) {
                if (r.type() != NbdRep.NBD_REP_META_CONTEXT) continue;
                if (r.data().length < 5) throw new NbdClient.ProtocolException("NBD_REP_META_CONTEXT of " + r.data().length + " bytes");
                String got = new String(r.data(), 4, r.data().length - 4, StandardCharsets.UTF_8);
                if (!got.equals(NbdMetaContext.BASE_ALLOCATION)) {
                    throw new NbdClient.ProtocolException("NBD_OPT_SET_META_CONTEXT answered with context '" + got + "', which was not asked for");
                }
                meta = Integer.toUnsignedLong(ByteBuffer.wrap(r.data()).getInt());
            }
        } else if (!sr.isError()) {
            throw new NbdClient.ProtocolException("NBD_OPT_STRUCTURED_REPLY answered with " + NbdRep.name(sr.type()));
        }
        List<OptionReply> go = c.go(t.export(), NbdInfo.NBD_INFO_BLOCK_SIZE);
        OptionReply last = go.get(go.size() - 1);
        if (last.type() != NbdRep.NBD_REP_ACK) {
            if (last.type() == NbdRep.NBD_REP_ERR_TLS_REQD) throw new IOException("the server requires TLS (give tls-creds)");
            if (last.type() == NbdRep.NBD_REP_ERR_UNKNOWN) throw new IOException("export '" + t.export() + "' not present: " + describe(last));
            throw new IOException("NBD_OPT_GO for export '" + t.export() + "' refused: " + describe(last));
        }
        long size = -1;
        int flags = 0;
        int min = 1;
        int pref = 4096;
        long max = DEFAULT_MAX_PAYLOAD;
        for (OptionReply r : go) {
            if (r.type() != NbdRep.NBD_REP_INFO) continue;
            if (r.data().length < 2) throw new NbdClient.ProtocolException("NBD_REP_INFO of " + r.data().length + " bytes");
            ByteBuffer d = ByteBuffer.wrap(r.data());
            int info = Short.toUnsignedInt(d.getShort());
            if (info == NbdInfo.NBD_INFO_EXPORT) {
                if (r.data().length != 12) throw new NbdClient.ProtocolException("NBD_INFO_EXPORT of " + r.data().length + " bytes");
                size = d.getLong();
                flags = Short.toUnsignedInt(d.getShort());
            } else if (info == NbdInfo.NBD_INFO_BLOCK_SIZE) {
                if (r.data().length != 14) throw new NbdClient.ProtocolException("NBD_INFO_BLOCK_SIZE of " + r.data().length + " bytes");
                long mn = Integer.toUnsignedLong(d.getInt());
                long pr = Integer.toUnsignedLong(d.getInt());
                long mx = Integer.toUnsignedLong(d.getInt());
                // spec: minimum a power of 2 up to 64 KiB; preferred a power of 2 at least the
                // minimum; maximum a multiple of the minimum (or 0xffffffff: no limit)
                if (mn == 0 || mn > MAX_MIN_BLOCK || Long.bitCount(mn) != 1 || pr < mn || Long.bitCount(pr) != 1
                        || mx < mn || (mx != 0xFFFF_FFFFL && mx % mn != 0)) {
                    throw new NbdClient.ProtocolException("invalid NBD_INFO_BLOCK_SIZE: minimum " + mn + ", preferred " + pr + ", maximum " + mx);
                }
                min = (int) mn;
                pref = (int) Math.min(pr, DEFAULT_MAX_PAYLOAD);
                max = Math.min(mx, DEFAULT_MAX_PAYLOAD) / mn * mn;
            }
        }
        if (size < 0) throw new NbdClient.ProtocolException(size == -1 ? "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT" : "export size " + Long.toUnsignedString(size));
        if ((flags & NbdTransmissionFlags.NBD_FLAG_HAS_FLAGS) == 0) throw new NbdClient.ProtocolException("transmission flags without NBD_FLAG_HAS_FLAGS");
        if (!bridge.isEmpty()) throw new NbdClient.ProtocolException("the server sent bytes after NBD_REP_ACK to NBD_OPT_GO");
        return new Session(ch, c, bridge, size, flags, structured, meta, min, Math.max(pref, min), (int) max);
    }

    private static String describe(OptionReply r) {
        return NbdRep.name(r.type()) + (r.data().length == 0 ? "" : " (" + new String(r.data(), StandardCharsets.UTF_8).replaceAll("\\p{Cntrl}", "?") + ")");
    }

    /**
     * The handshake's input: bytes from the channel's loop queued for the blocking reader. Also
     * the reader of a side connection. Runs on the channel's loop; its stream on one other thread.
     */
    static final class Bridge extends ChannelInboundHandlerAdapter {
        private static final Object EOF = new Object();
        private final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();
        /** Deadline of the blocking calls ({@link System#nanoTime}); the reader's thread only. */
        volatile long deadline;

        Bridge(long deadline) {
            this.deadline = deadline;
        }

        @Override
        public boolean isSharable() {
            return false;
        }

        @Override
        public void channelRead(ChannelHandlerContext ctx, Object msg) {
            if (msg instanceof ByteBuf b) {
                queue.add(b);
            } else {
                ReferenceCountUtil.release(msg);
            }
        }

        @Override
        public void channelInactive(ChannelHandlerContext ctx) {
            queue.add(EOF);
            ctx.fireChannelInactive();
        }

        @Override
        public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
            queue.add(cause);
            ctx.close();
        }

        long remainingMs() {
            return Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()));
        }

        boolean isEmpty() {
            return queue.isEmpty();
        }

        /** Releases what is queued (the channel is gone or handed to the transmission decoder). */
        void drain() {
            Object o;
            while ((o = queue.poll()) != null) ReferenceCountUtil.release(o);
        }

        InputStream input() {
            return new InputStream() {
                private ByteBuf cur;

                @Override
                public int read() throws IOException {
                    byte[] one = new byte[1];
                    return read(one, 0, 1) < 0 ? -1 : one[0] & 0xFF;
                }

                @Override
                public int read(byte[] b, int off, int len) throws IOException {
                    if (len == 0) return 0;
                    while (cur == null || !cur.isReadable()) {
                        if (cur != null) {
                            cur.release();
                            cur = null;
                        }
                        Object o;
                        try {
                            o = queue.poll(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                            throw new java.io.InterruptedIOException("interrupted");
                        }
                        if (o == null) throw new SocketTimeoutException("the server did not answer in time");
                        if (o == EOF) {
                            queue.add(EOF);
                            return -1;
                        }
                        if (o instanceof Throwable e) {
                            queue.add(EOF);
                            throw new IOException(e.getMessage() == null ? e.toString() : e.getMessage(), e);
                        }
                        cur = (ByteBuf) o;
                    }
                    int n = Math.min(len, cur.readableBytes());
                    cur.readBytes(b, off, n);
                    return n;
                }
            };
        }
    }

    /** The handshake's output: buffered, sent by flush and waited for up to the deadline. */
    private static final class BridgeOutput extends OutputStream {
        private final Channel ch;
        private final Bridge bridge;
        private final ByteArrayOutputStream buf = new ByteArrayOutputStream();

        BridgeOutput(Channel ch, Bridge bridge) {
            this.ch = ch;
            this.bridge = bridge;
        }

        @Override
        public void write(int b) {
            buf.write(b);
        }

        @Override
        public void write(byte[] b, int off, int len) {
            buf.write(b, off, len);
        }

        @Override
        public void flush() throws IOException {
            if (buf.size() == 0) return;
            ChannelFuture f = ch.writeAndFlush(Unpooled.wrappedBuffer(buf.toByteArray()));
            buf.reset();
            if (!f.awaitUninterruptibly(bridge.remainingMs())) throw new SocketTimeoutException("sending to the server timed out");
            if (!f.isSuccess()) throw new IOException("sending to the server failed: " + f.cause().getMessage(), f.cause());
        }
    }
}
