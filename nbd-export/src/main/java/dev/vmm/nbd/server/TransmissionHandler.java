package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.*;
import static dev.vmm.nbd.protocol.NbdCmdFlags.*;
import static dev.vmm.nbd.protocol.NbdReplyType.*;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStats;
import dev.vmm.core.stats.ExportStats;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.NodeUser;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdReplyFlags;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.handler.codec.ByteToMessageDecoder;
import io.netty.util.internal.PlatformDependent;
import java.nio.charset.StandardCharsets;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The transmission phase of one NBD client (proto.md, "Transmission"): parses requests,
 * runs them on the export's block node and writes the replies.
 *
 * <p>Thread contract: every method runs on the channel's event loop, which is the home
 * IOThread of the export's node; the block driver is called synchronously there, so requests
 * of one node never race. Replies are written as requests are parsed and flushed once per read
 * batch, so deep pipelining costs one {@code writev} per batch.
 *
 * <p>Memory bound: a request's payload is buffered only up to {@link NbdExport#MAX_PAYLOAD};
 * a longer WRITE payload is read and discarded in place, then answered with an error, so the
 * stream keeps its framing. Replies stop being produced while the channel is not writable (the
 * client does not read), and reading stops with them.
 *
 * <p>TLS: on a channel that did NBD_OPT_STARTTLS the socket carries ciphertext, so the zero-copy
 * paths that touch the socket fd directly ({@link SendfileRegion} for READ,
 * {@link SpliceReceiver} for WRITE) are off; data goes through the SslHandler in buffers.
 *
 * <p>Errors: a request the spec calls invalid gets its error reply and the connection goes on;
 * only a framing violation (bad request magic) closes it.
 */
final class TransmissionHandler extends ChannelInboundHandlerAdapter implements NodeUser {
    private static final Logger LOG = LoggerFactory.getLogger(TransmissionHandler.class);

    /** Reads at least this long are checked for holes and answered with OFFSET_HOLE chunks where possible. */
    static final int SPARSE_READ_MIN = 64 * 1024;
    /** Most chunks one sparse read is split into; the rest goes as one data chunk. */
    static final int MAX_READ_CHUNKS = 16;
    /** Most descriptors in one block-status reply. */
    static final int MAX_EXTENTS = 2048;
    /** WRITE payloads at least this long are streamed to the file as they arrive instead of buffered. */
    static final int STREAM_WRITE_MIN = 64 * 1024;
    /** Reads at least this long go out with sendfile when the driver has a page-cache fd. */
    static final int SENDFILE_MIN = 128 * 1024;

    private static final int SIMPLE_REPLY_SIZE = 16;

    private final NbdExport export;
    private final BlockDriver driver;
    private final BlockStats stats;
    /** This export's counters, beside the node's. */
    private final ExportStats exportStats;
    /** The IOThread this client is served on; changes only in {@link #attach}. */
    private IOThread home;
    private final long size;
    private final boolean writable;
    private final boolean structured;
    private final boolean extended;
    private final boolean baseAllocation;
    /** The socket carries TLS records: no sendfile, no splice. */
    private final boolean tls;
    private final int requestSize;
    /** Chunk header size: 20 for structured replies, 32 for extended ones. */
    private final int chunkHeaderSize;

    // ---- state, confined to the event loop ----
    private ByteBuf cum;
    /** Bytes of a refused payload still to discard, and the request they belong to. */
    private long skipRemaining;
    private long skipCookie;
    private long skipOffset;
    private int skipError;
    private String skipMessage;
    /**
     * A WRITE whose payload had not all arrived: its bytes go to the file as they come (one
     * pwrite per received chunk), so a large payload is never buffered or copied in the JVM.
     */
    private long streamRemaining;
    private long streamOffset;
    private long streamCookie;
    private long streamRequestOffset;
    private boolean streamFua;
    private int streamError;
    private String streamMessage;
    /** Zero-copy receive of large payloads; opened on first use, closed with the channel. */
    private SpliceReceiver splice;
    private boolean spliceUnavailable;
    /** Output is full: stop producing replies until the channel is writable again. */
    private boolean paused;
    private boolean closing;
    /** The node is moving: requests wait in {@link #cum} until {@link #resume}. */
    private boolean quiesced;
    private ChannelHandlerContext ctx;
    private final BlockStatus status = new BlockStatus();
    private final long[] extentLength = new long[MAX_EXTENTS];
    private final int[] extentFlags = new int[MAX_EXTENTS];

    TransmissionHandler(NbdExport export, Negotiated negotiated, IOThread home, ByteBuf leftover) {
        this.export = export;
        this.driver = export.node().driver();
        this.stats = export.node().stats();
        this.exportStats = export.stats();
        this.home = home;
        this.size = export.node().size();
        this.writable = export.writable();
        this.structured = negotiated.structuredReplies;
        this.extended = negotiated.extendedHeaders;
        this.baseAllocation = negotiated.baseAllocation;
        this.tls = negotiated.tls;
        this.requestSize = extended ? 32 : 28;
        this.chunkHeaderSize = extended ? 32 : 20;
        this.cum = leftover == null ? null : direct(leftover);
    }

    /** Called once on the IOThread after the channel was registered there: serve what already arrived, then read. */
    void start(ChannelHandlerContext ctx) {
        assert ctx.executor().inEventLoop();
        this.ctx = ctx;
        if (cum != null) process(ctx);
        ctx.flush();
        if (!paused && !closing) ctx.channel().config().setAutoRead(true);
    }

    /**
     * The server is stopping: no further request is taken, and whatever the client still sends is
     * read and dropped, so its end-of-stream is seen (a write left half-received is abandoned,
     * never acknowledged). Called on the channel's loop.
     */
    void stopTakingRequests() {
        assert ctx == null || ctx.executor().inEventLoop();
        closing = true;
        release();
        abandonStream();
        if (ctx != null) ctx.channel().config().setAutoRead(true);
    }

    @Override
    public void channelRead(ChannelHandlerContext ctx, Object msg) {
        ByteBuf in = (ByteBuf) msg;
        if (closing) {
            in.release();
            return;
        }
        // direct(): a guard; sockets and Netty 4.2's SslHandler (BoringSSL and JDK alike) deliver direct buffers
        cum = direct(cum == null ? in : ByteToMessageDecoder.MERGE_CUMULATOR.cumulate(ctx.alloc(), cum, in));
        if (!quiesced) process(ctx);
    }

    @Override
    public void channelReadComplete(ChannelHandlerContext ctx) {
        ctx.flush();
    }

    @Override
    public void channelWritabilityChanged(ChannelHandlerContext ctx) {
        if (paused && !quiesced && ctx.channel().isWritable()) {
            paused = false;
            process(ctx);
            ctx.flush();
            if (!paused && !closing) ctx.channel().config().setAutoRead(true);
        }
        ctx.fireChannelWritabilityChanged();
    }

    @Override
    public void channelInactive(ChannelHandlerContext ctx) {
        release();
        abandonStream();
        export.clients().remove(ctx.channel());
        export.node().removeUser(this);
        ctx.fireChannelInactive();
    }

    @Override
    public void handlerRemoved(ChannelHandlerContext ctx) {
        release();
        abandonStream();
    }

    /** The connection ended in the middle of a streamed WRITE: it will never complete. */
    private void abandonStream() {
        if (streamRemaining > 0) {
            streamRemaining = 0;
            exportStats.inFlight.decrement();
        }
    }

    @Override
    public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
        LOG.debug("NBD client {}: {}", NbdServer.peer(ctx.channel()), cause.toString());
        ctx.close();
    }

    /**
     * {@code b} itself when it is direct, else a direct copy (and {@code b} is released): the data
     * path hands native addresses of {@link #cum} to the driver. Plain sockets always deliver
     * direct buffers; a cumulation that merges into a direct buffer stays direct.
     */
    private static ByteBuf direct(ByteBuf b) {
        if (b.isDirect() && (b.hasMemoryAddress() || b.nioBufferCount() == 1)) return b;
        ByteBuf d = io.netty.buffer.PooledByteBufAllocator.DEFAULT.directBuffer(Math.max(b.readableBytes(), 1));
        d.writeBytes(b);
        b.release();
        return d;
    }

    private void release() {
        if (cum != null) {
            cum.release();
            cum = null;
        }
        if (splice != null) {
            splice.close();
            splice = null;
        }
    }

    // ---- NodeUser: following the node to another IOThread ----

    @Override
    public String describe() {
        return "NBD client " + (ctx == null ? "?" : NbdServer.peer(ctx.channel())) + " of export '" + export.name() + "'";
    }

    @Override
    public void quiesce() {
        quiesced = true;
        if (!ctx.channel().isActive()) return; // left already; channelInactive removes it from the node
        ctx.channel().config().setAutoRead(false); // new bytes wait in the socket
        ctx.flush();
    }

    @Override
    public java.util.concurrent.CompletableFuture<Void> detach() {
        java.util.concurrent.CompletableFuture<Void> f = new java.util.concurrent.CompletableFuture<>();
        ctx.channel().deregister().addListener(d -> f.complete(null));
        return f;
    }

    @Override
    public java.util.concurrent.CompletableFuture<Void> attach(IOThread newHome) {
        java.util.concurrent.CompletableFuture<Void> f = new java.util.concurrent.CompletableFuture<>();
        home = newHome;
        ((io.netty.channel.EventLoop) newHome.loop()).register(ctx.channel()).addListener(r -> {
            if (!r.isSuccess()) {
                // Not registered anywhere: close it rather than leave the client hanging.
                ctx.channel().unsafe().closeForcibly();
                export.clients().remove(ctx.channel());
                export.node().removeUser(this);
                f.completeExceptionally(r.cause());
            } else {
                f.complete(null);
            }
        });
        return f;
    }

    @Override
    public void resume() {
        quiesced = false;
        // A client that closed during the move could not re-register: nothing to serve.
        if (!ctx.channel().isActive() || !ctx.channel().isRegistered() || !ctx.executor().inEventLoop()) return;
        if (cum != null) process(ctx); // requests that arrived before the move, not waiting for more bytes
        ctx.flush();
        if (!paused && !closing) ctx.channel().config().setAutoRead(true);
    }

    /** Serves every complete request in the cumulation buffer, as long as output can be written. */
    private void process(ChannelHandlerContext ctx) {
        while (cum != null && !closing && !quiesced) {
            if (streamRemaining > 0) {
                if (!streamWrite(ctx)) break;
                continue;
            }
            if (skipRemaining > 0) {
                int n = (int) Math.min(skipRemaining, cum.readableBytes());
                cum.skipBytes(n);
                skipRemaining -= n;
                if (skipRemaining > 0) break;
                replyError(ctx, skipCookie, skipOffset, skipError, skipMessage);
                continue;
            }
            if (!ctx.channel().isWritable()) {
                paused = true;
                ctx.channel().config().setAutoRead(false);
                ctx.flush();
                break;
            }
            if (cum.readableBytes() < requestSize) break;
            int ri = cum.readerIndex();
            int magic = cum.getInt(ri);
            int expected = extended ? NbdMagic.NBD_EXTENDED_REQUEST_MAGIC : NbdMagic.NBD_REQUEST_MAGIC;
            if (magic != expected) {
                LOG.info("NBD client {}: bad request magic 0x{}; closing", NbdServer.peer(ctx.channel()), Integer.toHexString(magic));
                closing = true;
                ctx.flush();
                ctx.close();
                break;
            }
            int flags = cum.getUnsignedShort(ri + 4);
            int type = cum.getUnsignedShort(ri + 6);
            long cookie = cum.getLong(ri + 8);
            long offset = cum.getLong(ri + 16);
            long length = extended ? cum.getLong(ri + 24) : cum.getUnsignedInt(ri + 24);
            // Payload: WRITE always carries `length` bytes; in extended mode, PAYLOAD_LEN says so for others.
            long payload = type == NBD_CMD_WRITE || (extended && (flags & NBD_CMD_FLAG_PAYLOAD_LEN) != 0) ? length : 0;
            if (payload > NbdExport.MAX_PAYLOAD || payload < 0) {
                if (extended) {
                    // proto.md (extended headers): a payload over the maximum SHOULD end the connection.
                    LOG.info("NBD client {}: payload of {} bytes exceeds the maximum; closing", NbdServer.peer(ctx.channel()), Long.toUnsignedString(payload));
                    closing = true;
                    ctx.flush();
                    ctx.close();
                    break;
                }
                // Compact WRITE (at most 4 GiB): read and drop the payload without buffering it,
                // then refuse the request; the stream keeps its framing.
                cum.skipBytes(requestSize);
                skipRemaining = payload;
                skipCookie = cookie;
                skipOffset = offset;
                skipError = NbdError.NBD_EINVAL;
                skipMessage = "payload larger than the maximum of " + NbdExport.MAX_PAYLOAD + " bytes";
                continue;
            }
            if (cum.readableBytes() < requestSize + payload) {
                if (type == NBD_CMD_WRITE && payload >= STREAM_WRITE_MIN && cum.readableBytes() > requestSize) {
                    cum.skipBytes(requestSize);
                    home.countRequest();
                    exportStats.inFlight.increment(); // until its payload has all arrived and the reply is written
                    startStreamWrite(flags, cookie, offset, payload);
                    continue;
                }
                break;
            }
            cum.skipBytes(requestSize);
            home.countRequest();
            exportStats.inFlight.increment();
            long t0 = System.nanoTime();
            handle(ctx, type, flags, cookie, offset, length, (int) payload);
            long ns = System.nanoTime() - t0;
            stats.latency.record(ns);
            exportStats.latency.record(ns);
            exportStats.inFlight.decrement();
        }
        if (cum != null) {
            if (!cum.isReadable()) {
                release();
            } else {
                cum.discardSomeReadBytes();
            }
        }
    }

    /** Checks a WRITE whose payload is still arriving; errors are answered once the payload is consumed. */
    private void startStreamWrite(int flags, long cookie, long offset, long payload) {
        streamRemaining = payload;
        streamOffset = offset;
        streamCookie = cookie;
        streamRequestOffset = offset;
        streamFua = (flags & NBD_CMD_FLAG_FUA) != 0;
        streamError = 0;
        try {
            checkFlags(flags, NBD_CMD_FLAG_FUA | (extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0), NBD_CMD_WRITE);
            checkWritable();
            checkRange(offset, payload, NbdError.NBD_ENOSPC);
        } catch (RequestError e) {
            streamError = e.error;
            streamMessage = e.getMessage();
        }
    }

    /** Writes what arrived of a streamed WRITE; false when it waits for more bytes. */
    private boolean streamWrite(ChannelHandlerContext ctx) {
        int n = (int) Math.min(streamRemaining, cum.readableBytes());
        if (n > 0) {
            if (streamError == 0) {
                try {
                    driver.write(streamOffset, address(cum, cum.readerIndex()), n, false);
                } catch (BlockException e) {
                    streamFailed(e);
                }
            }
            cum.skipBytes(n); // consumed whatever happens: the stream keeps its framing
            streamOffset += n;
            streamRemaining -= n;
        }
        if (streamRemaining > 0 && streamError == 0 && !cum.isReadable() && !tls) spliceRest(ctx);
        if (streamRemaining > 0) return false;
        if (streamError == 0 && streamFua) {
            try {
                driver.flush(); // the whole payload, written piecewise, must be durable
            } catch (BlockException e) {
                streamError = NbdError.fromErrno(e.errno());
                streamMessage = e.getMessage();
            }
        }
        long length = streamOffset - streamRequestOffset;
        if (streamError == 0) {
            countWrite(length);
            replyOk(ctx, streamCookie, streamRequestOffset);
        } else {
            replyError(ctx, streamCookie, streamRequestOffset, streamError, streamMessage);
        }
        exportStats.inFlight.decrement();
        return true;
    }

    private void streamFailed(BlockException e) {
        stats.errors.increment();
        streamError = NbdError.fromErrno(e.errno());
        streamMessage = e.getMessage();
        LOG.warn("export '{}': NBD_CMD_WRITE at offset {} failed: {}", export.name(), streamOffset, e.getMessage());
    }

    /**
     * The rest of a streamed payload that is already in the socket goes straight to the file
     * ({@link SpliceReceiver}); what is not there yet arrives later through Netty as usual.
     */
    private void spliceRest(ChannelHandlerContext ctx) {
        int fileFd = driver.sendfileFd();
        if (fileFd < 0 || !(ctx.channel() instanceof io.netty.channel.unix.UnixChannel uc)) return;
        if (splice == null) {
            if (spliceUnavailable) return;
            splice = SpliceReceiver.open();
            if (splice == null) {
                spliceUnavailable = true;
                return;
            }
        }
        int socketFd = uc.fd().intValue();
        while (streamRemaining > 0) {
            long moved;
            try {
                moved = splice.receive(socketFd, fileFd, streamOffset, streamRemaining);
            } catch (BlockException e) {
                streamFailed(e); // the rest of the payload is read and dropped by the ordinary path
                return;
            }
            if (moved <= 0) return; // nothing waiting (Netty reads the rest) or end of stream
            streamOffset += moved;
            streamRemaining -= moved;
        }
    }

    /** Runs one request whose header was consumed; consumes its {@code payload} bytes from {@link #cum}. */
    private void handle(ChannelHandlerContext ctx, int type, int flags, long cookie, long offset, long length, int payload) {
        assert home.inThread() && export.node().home() == home : "NBD request served off the node's home thread";
        if (type != NBD_CMD_WRITE && payload > 0) cum.skipBytes(payload); // only WRITE uses a payload
        try {
            switch (type) {
                case NBD_CMD_READ -> {
                    checkFlags(flags, structured ? NBD_CMD_FLAG_DF : 0, type);
                    checkRange(offset, length, NbdError.NBD_EINVAL);
                    if (length > NbdExport.MAX_PAYLOAD) throw new RequestError(NbdError.NBD_EINVAL, "read longer than the maximum payload");
                    if (length == 0 && structured) {
                        // Nothing to send as data: an empty reply that is still a structured one.
                        ByteBuf b = ctx.alloc().directBuffer(chunkHeaderSize);
                        chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, offset, 0);
                        ctx.write(b, ctx.voidPromise());
                        return;
                    }
                    read(ctx, cookie, offset, (int) length, (flags & NBD_CMD_FLAG_DF) != 0);
                    return;
                }
                case NBD_CMD_WRITE -> {
                    long address = address(cum, cum.readerIndex());
                    try {
                        checkFlags(flags, NBD_CMD_FLAG_FUA | (extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0), type);
                        checkWritable();
                        checkRange(offset, length, NbdError.NBD_ENOSPC);
                        if (payload > 0) driver.write(offset, address, payload, (flags & NBD_CMD_FLAG_FUA) != 0);
                        countWrite(payload);
                    } finally {
                        cum.skipBytes(payload); // consumed whatever happens: the stream keeps its framing
                    }
                }
                case NBD_CMD_DISC -> {
                    // All earlier requests are done (they run synchronously): flush their replies and close.
                    closing = true;
                    ctx.writeAndFlush(Unpooled.EMPTY_BUFFER).addListener(ChannelFutureListener.CLOSE);
                    return;
                }
                case NBD_CMD_FLUSH -> {
                    checkFlags(flags, 0, type);
                    driver.flush();
                    stats.flushOps.increment();
                    exportStats.otherOps.increment();
                }
                case NBD_CMD_TRIM -> {
                    checkFlags(flags, NBD_CMD_FLAG_FUA, type);
                    checkWritable();
                    checkRange(offset, length, NbdError.NBD_EINVAL);
                    if (length > 0) driver.discard(offset, length);
                    if ((flags & NBD_CMD_FLAG_FUA) != 0) driver.flush();
                    stats.discardOps.increment();
                    exportStats.otherOps.increment();
                }
                case NBD_CMD_CACHE -> {
                    checkFlags(flags, 0, type);
                    checkRange(offset, length, NbdError.NBD_EINVAL);
                    if (length > 0) driver.prefetch(offset, length);
                    exportStats.otherOps.increment();
                }
                case NBD_CMD_WRITE_ZEROES -> {
                    checkFlags(flags, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, type);
                    checkWritable();
                    checkRange(offset, length, NbdError.NBD_ENOSPC);
                    if (length > 0) driver.writeZeroes(offset, length, (flags & NBD_CMD_FLAG_NO_HOLE) == 0,
                            (flags & NBD_CMD_FLAG_FAST_ZERO) != 0, (flags & NBD_CMD_FLAG_FUA) != 0);
                    stats.zeroOps.increment();
                    exportStats.otherOps.increment();
                }
                case NBD_CMD_BLOCK_STATUS -> {
                    checkFlags(flags, NBD_CMD_FLAG_REQ_ONE, type);
                    if (!baseAllocation) throw new RequestError(NbdError.NBD_EINVAL, "no metadata context was negotiated");
                    checkRange(offset, length, NbdError.NBD_EINVAL);
                    if (length == 0) throw new RequestError(NbdError.NBD_EINVAL, "block status of length 0");
                    blockStatus(ctx, cookie, offset, length, (flags & NBD_CMD_FLAG_REQ_ONE) != 0);
                    exportStats.otherOps.increment();
                    return;
                }
                default -> {
                    throw new RequestError(NbdError.NBD_EINVAL, "unknown command " + NbdCmd.name(type));
                }
            }
            replyOk(ctx, cookie, offset);
        } catch (RequestError e) {
            replyError(ctx, cookie, offset, e.error, e.getMessage());
        } catch (BlockException e) {
            stats.errors.increment();
            LOG.warn("export '{}': {} at offset {} length {} failed: {}", export.name(), NbdCmd.name(type), offset, length, e.getMessage());
            replyError(ctx, cookie, offset, NbdError.fromErrno(e.errno()), e.getMessage());
        }
    }

    private void checkFlags(int flags, int allowed, int type) throws RequestError {
        if ((flags & ~allowed) != 0) {
            throw new RequestError(NbdError.NBD_EINVAL, "flags 0x" + Integer.toHexString(flags) + " not valid for " + NbdCmd.name(type));
        }
    }

    private void checkWritable() throws RequestError {
        if (!writable) throw new RequestError(NbdError.NBD_EPERM, "export is read-only");
    }

    /** Overflow-safe {@code offset + length <= size}. */
    private void checkRange(long offset, long length, int error) throws RequestError {
        if (offset < 0 || length < 0 || offset > size || length > size - offset) {
            throw new RequestError(error, "request beyond the end of the export");
        }
    }

    // ---- READ ----

    private void read(ChannelHandlerContext ctx, long cookie, long offset, int length, boolean df) throws BlockException {
        if (structured && length >= SPARSE_READ_MIN && sparseRead(ctx, cookie, offset, length, df)) return;
        int header = structured ? chunkHeaderSize + 8 : SIMPLE_REPLY_SIZE;
        int fileFd;
        if (!tls && length >= SENDFILE_MIN && (fileFd = driver.sendfileFd()) >= 0
                && ctx.channel() instanceof io.netty.channel.unix.UnixChannel uc) {
            ByteBuf h = ctx.alloc().directBuffer(header);
            readReplyHeader(h, cookie, offset, length);
            ctx.write(h, ctx.voidPromise());
            ctx.write(new SendfileRegion(uc.fd().intValue(), fileFd, offset, length), ctx.voidPromise());
            countRead(length);
            return;
        }
        ByteBuf b = ctx.alloc().directBuffer(header + length);
        try {
            readReplyHeader(b, cookie, offset, length);
            int at = b.writerIndex();
            driver.read(offset, address(b, at), length); // capacity >= header + length: checked by construction
            b.writerIndex(at + length);
        } catch (BlockException e) {
            b.release();
            throw e;
        }
        countRead(length);
        ctx.write(b, ctx.voidPromise());
    }

    /** What precedes a successful READ's data: one OFFSET_DATA chunk header (and its offset), or a simple reply. */
    private void readReplyHeader(ByteBuf b, long cookie, long offset, int length) {
        if (structured) {
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, offset, 8L + length);
            b.writeLong(offset);
        } else {
            b.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(0).writeLong(cookie);
        }
    }

    /**
     * Answers a large read with OFFSET_HOLE chunks for its holes and OFFSET_DATA chunks for the
     * rest. Returns false (nothing written) when the range is all data, so the caller sends one
     * chunk. With DF only an all-hole range is answered here, as one OFFSET_HOLE chunk.
     */
    private boolean sparseRead(ChannelHandlerContext ctx, long cookie, long offset, int length, boolean df) throws BlockException {
        int n = collectExtents(offset, length, MAX_READ_CHUNKS, (a, b) -> ((a & BlockStatus.ZERO) != 0) == ((b & BlockStatus.ZERO) != 0));
        if (n == 1 && (extentFlags[0] & BlockStatus.ZERO) == 0) return false; // all data
        if (df && !(n == 1 && extentLength[0] == length)) return false;
        long covered = 0;
        for (int i = 0; i < n; i++) covered += extentLength[i];
        if (covered < length) { // more extents than chunks: the rest goes as one data chunk
            extentLength[n] = length - covered;
            extentFlags[n] = 0;
            n++;
        }
        long at = offset;
        for (int i = 0; i < n; i++) {
            int len = (int) extentLength[i];
            int done = i == n - 1 ? NbdReplyFlags.NBD_REPLY_FLAG_DONE : 0;
            if ((extentFlags[i] & BlockStatus.ZERO) != 0) {
                ByteBuf b = ctx.alloc().directBuffer(chunkHeaderSize + 12);
                chunkHeader(b, done, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, offset, 12);
                b.writeLong(at).writeInt(len);
                ctx.write(b, ctx.voidPromise());
            } else {
                ByteBuf b = ctx.alloc().directBuffer(chunkHeaderSize + 8 + len);
                try {
                    chunkHeader(b, done, NBD_REPLY_TYPE_OFFSET_DATA, cookie, offset, 8L + len);
                    b.writeLong(at);
                    int w = b.writerIndex();
                    driver.read(at, address(b, w), len);
                    b.writerIndex(w + len);
                } catch (BlockException e) {
                    b.release();
                    // Chunks already sent stand; the error chunk ends the reply (proto.md allows mixing).
                    replyError(ctx, cookie, offset, NbdError.fromErrno(e.errno()), e.getMessage());
                    stats.errors.increment();
                    return true;
                }
                ctx.write(b, ctx.voidPromise());
            }
            at += len;
        }
        countRead(length);
        return true;
    }

    // ---- BLOCK_STATUS (base:allocation) ----

    private void blockStatus(ChannelHandlerContext ctx, long cookie, long offset, long length, boolean reqOne) throws BlockException {
        int n = collectExtents(offset, length, reqOne ? 1 : MAX_EXTENTS, (a, b) -> a == b);
        ByteBuf b;
        if (extended) {
            b = ctx.alloc().directBuffer(chunkHeaderSize + 8 + 16 * n);
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, cookie, offset, 8L + 16L * n);
            b.writeInt(HandshakeHandler.BASE_ALLOCATION_ID).writeInt(n);
            for (int i = 0; i < n; i++) b.writeLong(extentLength[i]).writeLong(extentFlags[i]);
        } else {
            b = ctx.alloc().directBuffer(chunkHeaderSize + 4 + 8 * n);
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, offset, 4L + 8L * n);
            b.writeInt(HandshakeHandler.BASE_ALLOCATION_ID);
            for (int i = 0; i < n; i++) b.writeInt((int) extentLength[i]).writeInt(extentFlags[i]);
        }
        ctx.write(b, ctx.voidPromise());
    }

    private interface SameRun { boolean same(int flagsA, int flagsB); }

    /**
     * Fills {@link #extentLength}/{@link #extentFlags} with at most {@code max} runs covering a
     * prefix of [offset, offset+length), merging neighbours that {@code same} says are alike.
     * Extent lengths stay below 2^32 so that they fit 32-bit descriptors. Returns the count (>= 1).
     */
    private int collectExtents(long offset, long length, int max, SameRun same) throws BlockException {
        int n = 0;
        long at = offset;
        long end = offset + length;
        final long maxRun = 0xFFFF_F000L; // 32-bit descriptor limit, kept 4 KiB aligned
        while (at < end) {
            driver.status(at, end - at, status);
            long len = Math.min(status.length, end - at);
            if (len <= 0) len = end - at; // defensive: a driver must report progress
            if (n > 0 && same.same(extentFlags[n - 1], status.flags) && extentLength[n - 1] + len <= maxRun) {
                extentLength[n - 1] += len;
            } else {
                if (n == max) break;
                len = Math.min(len, maxRun);
                extentLength[n] = len;
                extentFlags[n] = status.flags;
                n++;
            }
            at += len;
        }
        return n;
    }

    // ---- replies ----

    /**
     * Structured (20 bytes) or extended (32 bytes) chunk header. {@code offset} is the request's
     * offset (proto.md: it MUST match the request, even for OFFSET_DATA); the compact form has none.
     */
    private void chunkHeader(ByteBuf b, int flags, int type, long cookie, long offset, long payloadLength) {
        if (extended) {
            b.writeInt(NbdMagic.NBD_EXTENDED_REPLY_MAGIC).writeShort(flags).writeShort(type).writeLong(cookie)
                    .writeLong(offset).writeLong(payloadLength);
        } else {
            b.writeInt(NbdMagic.NBD_STRUCTURED_REPLY_MAGIC).writeShort(flags).writeShort(type).writeLong(cookie)
                    .writeInt((int) payloadLength);
        }
    }

    private void replyOk(ChannelHandlerContext ctx, long cookie, long offset) {
        ByteBuf b;
        if (extended) { // simple replies do not exist with extended headers
            b = ctx.alloc().directBuffer(chunkHeaderSize);
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, offset, 0);
        } else {
            b = ctx.alloc().directBuffer(SIMPLE_REPLY_SIZE);
            b.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(0).writeLong(cookie);
        }
        ctx.write(b, ctx.voidPromise());
    }

    private void countRead(long bytes) {
        stats.readOps.increment();
        stats.readBytes.add(bytes);
        exportStats.read(bytes);
    }

    private void countWrite(long bytes) {
        stats.writeOps.increment();
        stats.writeBytes.add(bytes);
        exportStats.write(bytes);
    }

    /** Every error reply counts for the export (bad requests too); the node counts I/O failures only. */
    private void replyError(ChannelHandlerContext ctx, long cookie, long offset, int error, String message) {
        exportStats.errors.increment();
        if (LOG.isDebugEnabled()) LOG.debug("NBD client {}: error {}: {}", NbdServer.peer(ctx.channel()), NbdError.name(error), message);
        ByteBuf b;
        if (structured) {
            byte[] m = message.getBytes(StandardCharsets.UTF_8);
            int mlen = Math.min(m.length, 4096);
            b = ctx.alloc().directBuffer(chunkHeaderSize + 6 + mlen);
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, offset, 6L + mlen);
            b.writeInt(error).writeShort(mlen).writeBytes(m, 0, mlen);
        } else {
            b = ctx.alloc().directBuffer(SIMPLE_REPLY_SIZE);
            b.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(error).writeLong(cookie);
        }
        ctx.write(b, ctx.voidPromise());
    }

    /**
     * Native address of {@code index} in a direct buffer. The pooled allocator's buffers have one
     * (Unsafe is available on the JVMs we run); other direct buffers go through their NIO view.
     */
    private static long address(ByteBuf b, int index) {
        if (b.hasMemoryAddress()) return b.memoryAddress() + index;
        if (b.nioBufferCount() == 1 && b.isDirect()) {
            return PlatformDependent.directBufferAddress(b.nioBuffer(index, b.capacity() - index));
        }
        throw new IllegalStateException("NBD data path needs a direct buffer with a native address");
    }

    /** A request the spec says to refuse; the connection goes on. */
    private static final class RequestError extends Exception {
        private static final long serialVersionUID = 1L;
        final int error;

        RequestError(int error, String message) {
            super(message, null, false, false);
            this.error = error;
        }
    }
}
