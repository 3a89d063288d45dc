package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.*;
import static dev.vmm.nbd.protocol.NbdCmdFlags.*;
import static dev.vmm.nbd.protocol.NbdReplyType.*;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStats;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.NodeUser;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.stats.ExportStats;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdReplyFlags;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.handler.codec.ByteToMessageDecoder;
import io.netty.util.internal.PlatformDependent;
import java.util.ArrayList;
import java.util.concurrent.CompletableFuture;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The transmission phase of one NBD client (proto.md, "Transmission"): parses requests from the
 * socket, {@linkplain #validate validates} them, {@linkplain #handle hands} them to the export's
 * block driver asynchronously and {@linkplain #answer answers} each when it completes. Replies go
 * out in completion order, matched by cookie (proto.md: "the server MAY send replies in any
 * order"), and are flushed once per event-loop iteration.
 *
 * <p>Thread contract: every method runs on the channel's event loop, which is the home IOThread
 * of the export's node; driver completions ({@link NbdRequest#ioDone}) arrive there too. Nothing
 * here is shared with another thread.
 *
 * <p>Bounds: at most {@link #MAX_IN_FLIGHT} requests and {@link #MAX_IN_FLIGHT_BYTES} of READ/WRITE
 * data are taken at once; at the bound parsing stops and the socket is not read (autoRead off)
 * until a request completes. Parsing also stops while the channel is not writable (the client
 * does not read its replies). A request's slot is a pooled {@link NbdRequest}: no allocation per
 * request beyond the pooled reply and payload buffers.
 *
 * <p>WRITE payloads: a WRITE reaches the driver only once its whole payload has arrived, so a
 * client that resets or leaves in the middle of a payload changes nothing on the disk. A payload
 * that is in the cumulation buffer already is passed as a retained slice of it (no copy); one that
 * is still arriving is gathered into a buffer of its own as it comes (one copy, no re-merging of a
 * growing cumulation). A payload over {@link NbdExport#MAX_PAYLOAD} is read and dropped, then
 * refused, so the stream keeps its framing.
 *
 * <p>READ: into a pooled direct buffer that already holds the reply header, answered on
 * completion. Large reads of sparse ranges are answered with OFFSET_HOLE chunks for the holes.
 * Large reads on plain sockets whose range is all in the page cache ({@link PageCache}) leave with
 * {@link SendfileRegion} instead (page cache to socket, one copy fewer; see {@link #SENDFILE}):
 * answered at once, as sendfile runs when the socket takes the data.
 *
 * <p>Moves ({@link NodeUser}): after {@link #quiesce} no request is taken; requests already taken
 * complete on the old home (the move drains the node) and their replies are written and flushed
 * there before {@link #detach}. Closing: NBD_CMD_DISC and {@link #stopTakingRequests} take no new
 * request and let those in flight complete and be answered first ({@link #whenIdle}). A completion
 * that arrives after the channel closed only releases its buffers.
 *
 * <p>Errors: a request the spec calls invalid gets its error reply and the connection goes on;
 * only a framing violation (bad request magic, an extended payload over the maximum) closes it.
 * Every errno is mapped by {@link NbdError#fromErrno(int, int)}.
 */
final class TransmissionHandler extends ChannelInboundHandlerAdapter implements NodeUser {
    private static final Logger LOG = LoggerFactory.getLogger(TransmissionHandler.class);

    /**
     * Requests of one client taken at once. 128 is the deepest pipeline of the clients we serve
     * (the Linux nbd driver's default queue depth; nbdcopy keeps 64, qemu 16, fio its iodepth),
     * so they never stall on it, while one client cannot flood the IOThread's ring or memory.
     */
    static final int MAX_IN_FLIGHT = 128;
    /** READ/WRITE bytes of one client taken at once; two maximum-size requests always fit. */
    static final long MAX_IN_FLIGHT_BYTES = 2L * NbdExport.MAX_PAYLOAD;
    /** Reads at least this long are checked for holes and answered with OFFSET_HOLE chunks where possible. */
    static final int SPARSE_READ_MIN = 64 * 1024;
    /** Most chunks one sparse read is split into; the rest goes as one data chunk. */
    static final int MAX_READ_CHUNKS = 16;
    /** Most descriptors in one block-status reply. */
    static final int MAX_EXTENTS = 2048;
    /** Reads at least this long may go out with sendfile (see {@link #SENDFILE}). */
    static final int SENDFILE_MIN = 128 * 1024;
    /**
     * Large reads on plain sockets leave with sendfile(2) when their range is in the page cache:
     * hot 1 MiB reads (fio, QD8, unix socket, a busy shared machine) measured 1.0-1.5x the
     * throughput of the asynchronous read plus a writev per round, 1.3x over six runs each, at a
     * quarter to a half of the server CPU per MiB (docs/performance.md). On a miss sendfile would read the
     * disk inside the socket write, blocking the IOThread, so those go the asynchronous way.
     * {@code -Dvmm.nbd.sendfile=off} turns it off (A/B measurements).
     */
    static final boolean SENDFILE = !"off".equals(System.getProperty("vmm.nbd.sendfile"));

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
    /** qemu:allocation-depth was negotiated: BLOCK_STATUS answers it too, in a second chunk. */
    private final boolean allocationDepth;
    /** The export's bitmaps whose qemu:dirty-bitmap: context was negotiated (null entries: not selected); null: none. */
    private final DirtyBitmap[] bitmaps;
    /** Chunks one BLOCK_STATUS reply has: one per negotiated context. */
    private final int contexts;
    /** The socket carries TLS records: no sendfile. */
    private final boolean tls;
    private final int requestSize;
    private final ReplyEncoder replies;

    // ---- state, confined to the event loop ----
    private ChannelHandlerContext ctx;
    private ByteBuf cum;
    /** A WRITE whose payload is still arriving into its own buffer; submitted once that is full. */
    private NbdRequest assembling;
    /** The driver's buffer alignment (O_DIRECT), 1 without: data buffers are placed to suit it. */
    private final int memAlign;
    /** Bytes of a refused payload still to discard, and the request they belong to. */
    private long skipRemaining;
    private long skipCookie;
    private long skipOffset;
    private int skipError;
    private String skipMessage;
    /** Free request slots; made on demand, never more than {@link #MAX_IN_FLIGHT}. */
    private final NbdRequest[] freeSlots = new NbdRequest[MAX_IN_FLIGHT];
    private int freeCount;
    /** Requests taken and not yet answered (in the driver, or a WRITE gathering its payload). */
    private int inFlight;
    private long bytesInFlight;
    /** Parsing stopped at the in-flight bound: a completion resumes it. */
    private boolean full;
    /** Output is full: stop taking requests until the channel is writable again. */
    private boolean paused;
    /** NBD_CMD_DISC or a server stop: no new request; input is read and dropped. */
    private boolean closing;
    /** The node is moving: requests wait in {@link #cum} or the socket until {@link #resume}. */
    private boolean quiesced;
    /** The channel closed or this handler left it: completions only release what they hold. */
    private boolean gone;
    private boolean flushScheduled;
    private final Runnable flushTask = this::scheduledFlush;
    /** Run once nothing is in flight (graceful close, DISC); null when none wait. */
    private ArrayList<Runnable> idleWaiters;
    /** Message of the last {@link #validate} failure (error path only). */
    private String invalid;
    private final BlockStatus status = new BlockStatus();
    private final long[] extentLength = new long[MAX_EXTENTS];
    private final int[] extentFlags = new int[MAX_EXTENTS];
    /** Descriptors of the qemu:dirty-bitmap: chunk being built. */
    private final ExtentSink sink = new ExtentSink();

    TransmissionHandler(NbdExport export, Negotiated negotiated, IOThread home, ByteBuf leftover) {
        this.export = export;
        this.driver = export.node().io();
        this.memAlign = Math.max(1, driver.memoryAlignment());
        this.stats = export.node().stats();
        this.exportStats = export.stats();
        this.home = home;
        this.size = export.node().size();
        this.writable = export.writable();
        this.structured = negotiated.structuredReplies || negotiated.extendedHeaders;
        this.extended = negotiated.extendedHeaders;
        this.baseAllocation = negotiated.baseAllocation;
        this.allocationDepth = negotiated.allocationDepth;
        DirtyBitmap[] selected = null;
        int n = (baseAllocation ? 1 : 0) + (allocationDepth ? 1 : 0);
        if (negotiated.bitmaps != null) {
            selected = new DirtyBitmap[negotiated.bitmaps.length];
            for (int i = 0; i < selected.length; i++) {
                if (negotiated.bitmaps[i]) {
                    selected[i] = export.bitmaps().get(i);
                    n++;
                }
            }
        }
        this.bitmaps = selected;
        this.contexts = n;
        this.tls = negotiated.tls;
        this.requestSize = extended ? 32 : 28;
        this.replies = new ReplyEncoder(negotiated.structuredReplies, extended);
        this.cum = leftover == null ? null : direct(leftover);
    }

    /** Called once on the IOThread after the channel was registered there: serve what already arrived, then read. */
    void start(ChannelHandlerContext ctx) {
        assert ctx.executor().inEventLoop();
        this.ctx = ctx;
        process();
        ctx.flush();
    }

    /**
     * The server is stopping: no further request is taken, and whatever the client still sends is
     * read and dropped, so its end-of-stream is seen (a write whose payload was still arriving is
     * abandoned, never submitted). Requests in flight complete and are answered; {@link #whenIdle}
     * says when. Called on the channel's loop.
     */
    void stopTakingRequests() {
        assert ctx == null || ctx.executor().inEventLoop();
        closing = true;
        releaseInput();
        if (ctx != null && !gone) ctx.channel().config().setAutoRead(true);
    }

    /**
     * Runs {@code r} on this loop once no request of this client is in flight: at once when none
     * is, else after the last one was answered (its reply written, not necessarily flushed).
     */
    void whenIdle(Runnable r) {
        assert ctx == null || ctx.executor().inEventLoop();
        if (inFlight == 0) {
            r.run();
            return;
        }
        if (idleWaiters == null) idleWaiters = new ArrayList<>(2);
        idleWaiters.add(r);
    }

    // ---- event wiring ----

    @Override
    public void channelRead(ChannelHandlerContext ctx, Object msg) {
        ByteBuf in = (ByteBuf) msg;
        if (closing || gone) {
            in.release();
            return;
        }
        if (assembling != null) { // the payload of a WRITE goes to its own buffer
            ByteBuf p = assembling.buf;
            p.writeBytes(in, Math.min(p.writableBytes(), in.readableBytes()));
        }
        if (!in.isReadable()) {
            in.release();
        } else {
            // direct(): a guard; sockets and Netty 4.2's SslHandler (BoringSSL and JDK alike) deliver direct buffers
            cum = direct(cum == null ? in : ByteToMessageDecoder.MERGE_CUMULATOR.cumulate(ctx.alloc(), cum, in));
        }
        if (!quiesced) process();
    }

    @Override
    public void channelReadComplete(ChannelHandlerContext ctx) {
        ctx.flush();
    }

    @Override
    public void channelWritabilityChanged(ChannelHandlerContext ctx) {
        if (paused && !quiesced && ctx.channel().isWritable()) {
            paused = false;
            process();
            ctx.flush();
        }
        ctx.fireChannelWritabilityChanged();
    }

    @Override
    public void channelInactive(ChannelHandlerContext ctx) {
        gone = true;
        releaseInput();
        export.clients().remove(ctx.channel());
        export.node().removeUser(this);
        ctx.fireChannelInactive();
    }

    @Override
    public void handlerRemoved(ChannelHandlerContext ctx) {
        gone = true;
        releaseInput();
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

    /** Drops input not yet taken: the cumulation, a WRITE still gathering its payload, a payload being skipped. */
    private void releaseInput() {
        if (cum != null) {
            cum.release();
            cum = null;
        }
        skipRemaining = 0;
        NbdRequest r = assembling;
        if (r != null) { // never submitted: the disk never sees it
            assembling = null;
            r.releaseBuffer();
            endRequest(r);
            recycle(r);
            idleCheck();
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
    public CompletableFuture<Void> detach() {
        // The drain answered every request on this loop; their replies leave from here.
        flushScheduled = false;
        ctx.flush();
        CompletableFuture<Void> f = new CompletableFuture<>();
        ctx.channel().deregister().addListener(d -> f.complete(null));
        return f;
    }

    @Override
    public CompletableFuture<Void> attach(IOThread newHome) {
        CompletableFuture<Void> f = new CompletableFuture<>();
        home = newHome;
        ((io.netty.channel.EventLoop) newHome.loop()).register(ctx.channel()).addListener(r -> {
            if (!r.isSuccess()) {
                // Not registered anywhere: close it rather than leave the client hanging.
                boolean left = !ctx.channel().isOpen();
                ctx.channel().unsafe().closeForcibly();
                export.clients().remove(ctx.channel());
                export.node().removeUser(this);
                if (left) {
                    // A client hanging up during a move is normal: one line, no exception name.
                    LOG.info("NBD client {} left export '{}' during a move", NbdServer.peer(ctx.channel()), export.name());
                    f.complete(null);
                } else {
                    f.completeExceptionally(r.cause());
                }
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
        flushScheduled = false; // a flush task queued on the old loop does not run for this channel
        // Writability events are ignored while quiesced: the output may have drained during the
        // move, and no new event would come to clear the pause.
        if (paused && ctx.channel().isWritable()) paused = false;
        process(); // requests that arrived before the move, not waiting for more bytes
        ctx.flush();
    }

    // ---- parsing and admission ----

    /** Takes every complete request in the cumulation buffer, as long as the bounds and the output allow. */
    private void process() {
        full = false;
        while (!closing && !quiesced && !gone) {
            if (assembling != null) {
                if (assembling.buf.isWritable()) break; // its payload is still arriving
                NbdRequest r = assembling;
                assembling = null;
                submit(r);
                continue;
            }
            if (cum == null) break;
            if (skipRemaining > 0) {
                int n = (int) Math.min(skipRemaining, cum.readableBytes());
                cum.skipBytes(n);
                skipRemaining -= n;
                if (skipRemaining > 0) break;
                emit(replies.error(ctx.alloc(), skipCookie, skipOffset, skipError, skipMessage));
                exportStats.errors.increment();
                continue;
            }
            if (!ctx.channel().isWritable()) {
                paused = true;
                ctx.flush();
                break;
            }
            if (cum.readableBytes() < requestSize) break;
            int ri = cum.readerIndex();
            int magic = cum.getInt(ri);
            if (magic != (extended ? NbdMagic.NBD_EXTENDED_REQUEST_MAGIC : NbdMagic.NBD_REQUEST_MAGIC)) {
                LOG.info("NBD client {}: bad request magic 0x{}; closing", NbdServer.peer(ctx.channel()), Integer.toHexString(magic));
                fatal();
                return;
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
                    fatal();
                    return;
                }
                // Compact WRITE (at most 4 GiB): read and drop the payload without buffering it,
                // then refuse the request; the stream keeps its framing.
                cum.skipBytes(requestSize);
                skip(payload, cookie, offset, NbdError.NBD_EINVAL, "payload larger than the maximum of " + NbdExport.MAX_PAYLOAD + " bytes");
                continue;
            }
            long cost = type == NBD_CMD_READ || type == NBD_CMD_WRITE ? Math.min(length, NbdExport.MAX_PAYLOAD) : 0;
            if (inFlight >= MAX_IN_FLIGHT || (inFlight > 0 && bytesInFlight + cost > MAX_IN_FLIGHT_BYTES)) {
                full = true; // a completion resumes parsing
                break;
            }
            cum.skipBytes(requestSize);
            assert home.inThread() && export.node().home() == home : "NBD request served off the node's home thread";
            home.countRequest();
            long t0 = System.nanoTime();
            int error = validate(type, flags, offset, length);
            if (error != 0) {
                if (payload > 0) {
                    // Consume the payload whatever happens: the stream keeps its framing.
                    skip(payload, cookie, offset, error, invalid);
                } else {
                    replyNow(cookie, offset, error, invalid, t0);
                }
                continue;
            }
            if (type == NBD_CMD_DISC) {
                disconnect();
                return;
            }
            exportStats.inFlight.increment();
            handle(type, flags, cookie, offset, length, cost, t0);
        }
        if (cum != null) {
            if (!cum.isReadable()) {
                cum.release(); // WRITE payload slices keep their part alive
                cum = null;
            } else if (cum.refCnt() == 1) {
                cum.discardSomeReadBytes(); // never under a retained payload slice: it would move its bytes
            }
        }
        updateReading();
    }

    /** Reads are wanted unless taking requests is blocked (a move, a full output, the in-flight bound). */
    private void updateReading() {
        if (gone || ctx == null) return;
        ctx.channel().config().setAutoRead(closing || !(quiesced || paused || full));
    }

    /** Drops the next {@code payload} bytes, then answers {@code error}. */
    private void skip(long payload, long cookie, long offset, int error, String message) {
        skipRemaining = payload;
        skipCookie = cookie;
        skipOffset = offset;
        skipError = error;
        skipMessage = message;
    }

    /** A framing violation: what was answered so far goes out, then the connection closes. */
    private void fatal() {
        closing = true;
        ctx.flush();
        ctx.close();
    }

    /** NBD_CMD_DISC: "handle all outstanding requests" (proto.md), then close (with close_notify under TLS). */
    private void disconnect() {
        closing = true;
        releaseInput();
        updateReading();
        whenIdle(() -> {
            if (!gone) ctx.writeAndFlush(Unpooled.EMPTY_BUFFER).addListener(ChannelFutureListener.CLOSE);
        });
    }

    // ---- validate (nbdkit's validate_request) ----

    /**
     * Checks a request against the spec and what was negotiated; returns 0, or the NBD error to
     * answer with (and sets {@link #invalid}). proto.md "Request types", "Error values".
     */
    private int validate(int type, int flags, long offset, long length) {
        // With NBD_FLAG_SEND_FUA (advertised iff writable) the server "MUST accept all commands
        // with this bit set (even by ignoring the bit)": READ, FLUSH, CACHE, BLOCK_STATUS ignore it.
        int fua = writable ? NBD_CMD_FLAG_FUA : 0;
        switch (type) {
            case NBD_CMD_READ -> {
                if (badFlags(flags, (structured ? NBD_CMD_FLAG_DF : 0) | fua, type)) return NbdError.NBD_EINVAL;
                if (!inRange(offset, length)) return NbdError.NBD_EINVAL;
                if (length > NbdExport.MAX_PAYLOAD) {
                    if ((flags & NBD_CMD_FLAG_DF) != 0) {
                        // DF: we send up to MAX_PAYLOAD in one chunk; beyond that the spec's answer
                        // for "too large to send without fragmentation" is EOVERFLOW.
                        invalid = "read with NBD_CMD_FLAG_DF longer than the " + NbdExport.MAX_PAYLOAD + " bytes sent in one chunk";
                        return NbdError.NBD_EOVERFLOW;
                    }
                    invalid = "read longer than the maximum payload";
                    return NbdError.NBD_EINVAL;
                }
            }
            case NBD_CMD_WRITE -> {
                if (badFlags(flags, NBD_CMD_FLAG_FUA | (extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0), type)) return NbdError.NBD_EINVAL;
                if (!writable) return readOnly();
                if (!inRange(offset, length)) return NbdError.NBD_ENOSPC;
            }
            case NBD_CMD_DISC -> { }
            case NBD_CMD_FLUSH -> {
                if (badFlags(flags, fua, type)) return NbdError.NBD_EINVAL;
            }
            case NBD_CMD_TRIM -> {
                if (badFlags(flags, NBD_CMD_FLAG_FUA, type)) return NbdError.NBD_EINVAL;
                if (!writable) return readOnly();
                if (!inRange(offset, length)) return NbdError.NBD_EINVAL;
            }
            case NBD_CMD_CACHE -> {
                if (badFlags(flags, fua, type)) return NbdError.NBD_EINVAL;
                if (!inRange(offset, length)) return NbdError.NBD_EINVAL;
            }
            case NBD_CMD_WRITE_ZEROES -> {
                if (badFlags(flags, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, type)) return NbdError.NBD_EINVAL;
                if (!writable) return readOnly();
                if (!inRange(offset, length)) return NbdError.NBD_ENOSPC;
            }
            case NBD_CMD_BLOCK_STATUS -> {
                if (badFlags(flags, NBD_CMD_FLAG_REQ_ONE | fua, type)) return NbdError.NBD_EINVAL;
                if (contexts == 0) {
                    invalid = "no metadata context was negotiated";
                    return NbdError.NBD_EINVAL;
                }
                if (!inRange(offset, length)) return NbdError.NBD_EINVAL;
                if (length == 0) {
                    invalid = "block status of length 0";
                    return NbdError.NBD_EINVAL;
                }
            }
            default -> {
                invalid = "unknown command " + NbdCmd.name(type);
                return NbdError.NBD_EINVAL;
            }
        }
        return 0;
    }

    private boolean badFlags(int flags, int allowed, int type) {
        if ((flags & ~allowed) == 0) return false;
        invalid = "flags 0x" + Integer.toHexString(flags) + " not valid for " + NbdCmd.name(type);
        return true;
    }

    private int readOnly() {
        invalid = "export is read-only";
        return NbdError.NBD_EPERM;
    }

    /** Overflow-safe {@code offset + length <= size}; sets the message when not. */
    private boolean inRange(long offset, long length) {
        if (offset < 0 || length < 0 || offset > size || length > size - offset) {
            invalid = "request beyond the end of the export";
            return false;
        }
        return true;
    }

    // ---- handle (nbdkit's handle_request) ----

    /** Runs one valid request whose header was consumed; a WRITE's payload follows in {@link #cum}. */
    private void handle(int type, int flags, long cookie, long offset, long length, long cost, long t0) {
        try {
            switch (type) {
                case NBD_CMD_READ -> read(flags, cookie, offset, (int) length, cost, t0);
                case NBD_CMD_WRITE -> {
                    NbdRequest r = take(type, flags, cookie, offset, length, cost, t0);
                    int payload = (int) length;
                    if (cum != null && cum.readableBytes() >= payload && aligned(cum, cum.readerIndex())) {
                        r.buf = cum.retainedSlice(cum.readerIndex(), payload); // no copy; stays valid until released
                        cum.skipBytes(payload);
                        submit(r);
                    } else if (cum != null && cum.readableBytes() >= payload) {
                        r.buf = alignedBuffer(payload, 0); // O_DIRECT: a payload behind a 28-byte header is not aligned
                        r.buf.writeBytes(cum, payload);
                        submit(r);
                    } else {
                        r.buf = alignedBuffer(payload, 0);
                        if (cum != null) r.buf.writeBytes(cum, cum.readableBytes());
                        assembling = r; // channelRead fills it; process submits it when full
                    }
                }
                case NBD_CMD_FLUSH, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES -> submit(take(type, flags, cookie, offset, length, 0, t0));
                case NBD_CMD_CACHE -> {
                    if (length > 0) driver.prefetch(offset, length); // advisory and synchronous (posix_fadvise)
                    exportStats.otherOps.increment();
                    emit(replies.ok(ctx.alloc(), cookie, offset));
                    answered(t0);
                }
                case NBD_CMD_BLOCK_STATUS -> {
                    blockStatus(cookie, offset, length, (flags & NBD_CMD_FLAG_REQ_ONE) != 0);
                    exportStats.otherOps.increment();
                    answered(t0);
                }
                default -> throw new IllegalStateException("validated command " + NbdCmd.name(type));
            }
        } catch (BlockException e) { // a synchronous step (status, prefetch) failed
            stats.errors.increment();
            LOG.warn("export '{}': {} at offset {} length {} failed: {}", export.name(), NbdCmd.name(type), offset, length, e.getMessage());
            exportStats.inFlight.decrement();
            replyNow(cookie, offset, NbdError.fromErrno(e.errno(), flags), e.getMessage(), t0);
        }
    }

    /** A free slot for a request that goes to the driver; the admission check guarantees one. */
    private NbdRequest take(int type, int flags, long cookie, long offset, long length, long cost, long t0) {
        NbdRequest r = freeCount > 0 ? freeSlots[--freeCount] : new NbdRequest(this);
        r.type = type;
        r.flags = flags;
        r.cookie = cookie;
        r.offset = offset;
        r.length = length;
        r.bytes = cost;
        r.startNanos = t0;
        inFlight++;
        bytesInFlight += cost;
        return r;
    }

    private void recycle(NbdRequest r) {
        r.clear();
        freeSlots[freeCount++] = r;
    }

    /**
     * Hands a request to the driver. {@code pending} holds one extra count while submitting, so a
     * request split in several driver calls (a sparse read), or refused by one, completes exactly
     * once: when its last accepted part completed and the submission is over.
     */
    private void submit(NbdRequest r) {
        r.pending = 1;
        boolean fua = (r.flags & NBD_CMD_FLAG_FUA) != 0;
        try {
            r.pending++;
            switch (r.type) {
                case NBD_CMD_WRITE -> driver.write(r.offset, address(r.buf, r.buf.readerIndex()), (int) r.length, fua, r);
                case NBD_CMD_FLUSH -> driver.flush(r);
                case NBD_CMD_TRIM -> driver.discard(r.offset, r.length, r);
                case NBD_CMD_WRITE_ZEROES -> driver.writeZeroes(r.offset, r.length, (r.flags & NBD_CMD_FLAG_NO_HOLE) == 0,
                        (r.flags & NBD_CMD_FLAG_FAST_ZERO) != 0, fua, r);
                default -> throw new IllegalStateException(NbdCmd.name(r.type));
            }
        } catch (BlockException e) {
            r.pending--;
            refused(r, e);
        }
        arrive(r);
    }

    private static void refused(NbdRequest r, BlockException e) {
        if (r.errno == 0) {
            r.errno = e.errno();
            r.message = e.getMessage();
        }
    }

    /** One part of {@code r} is over (a driver completion, or the end of its submission). */
    private void arrive(NbdRequest r) {
        if (--r.pending == 0) complete(r);
    }

    /** Driver completion of one part of {@code r}; on the home IOThread. */
    void driverDone(NbdRequest r, int errno) {
        if (errno != 0 && r.errno == 0) r.errno = errno;
        arrive(r);
    }

    /** Every part of {@code r} is done: a TRIM with FUA flushes next; everything else is answered. */
    private void complete(NbdRequest r) {
        if (r.type == NBD_CMD_TRIM && r.stage == 0 && r.errno == 0 && (r.flags & NBD_CMD_FLAG_FUA) != 0 && !gone) {
            r.stage = 1; // FUA on TRIM: the discard must be on stable storage before the reply
            r.pending = 1;
            try {
                r.pending++;
                driver.flush(r);
            } catch (BlockException e) {
                r.pending--;
                refused(r, e);
            }
            arrive(r);
            return;
        }
        endRequest(r);
        if (gone) {
            r.releaseBuffer(); // the connection is over: nobody to answer
        } else {
            answer(r);
            if (quiesced) ctx.flush(); else scheduleFlush(); // a move's detach follows the drain: flush before it
        }
        recycle(r);
        if (full && !closing && !quiesced && !gone) process(); // a slot came free
        idleCheck();
    }

    private void endRequest(NbdRequest r) {
        inFlight--;
        bytesInFlight -= r.bytes;
        exportStats.inFlight.decrement();
    }

    private void idleCheck() {
        if (inFlight == 0 && idleWaiters != null) {
            ArrayList<Runnable> w = idleWaiters;
            idleWaiters = null;
            for (Runnable x : w) x.run();
        }
    }

    // ---- READ ----

    private void read(int flags, long cookie, long offset, int length, long cost, long t0) throws BlockException {
        if (length == 0) { // nothing to read: a reply without data, in chunks when they were negotiated
            emit(structured ? replies.none(ctx.alloc(), cookie, offset) : replies.ok(ctx.alloc(), cookie, offset));
            countRead(0);
            answered(t0);
            return;
        }
        boolean df = (flags & NBD_CMD_FLAG_DF) != 0;
        if (structured && length >= SPARSE_READ_MIN && sparseRead(flags, cookie, offset, length, df, cost, t0)) return;
        int fileFd;
        if (SENDFILE && !tls && length >= SENDFILE_MIN && (fileFd = driver.sendfileFd()) >= 0
                && ctx.channel() instanceof io.netty.channel.unix.UnixChannel uc && PageCache.resident(fileFd, offset, length)) {
            ByteBuf h = ctx.alloc().directBuffer(replies.readHeaderSize());
            replies.readHeader(h, cookie, offset, length);
            emit(h);
            ctx.write(new SendfileRegion(uc.fd().intValue(), fileFd, offset, length), ctx.voidPromise());
            countRead(length);
            answered(t0);
            return;
        }
        NbdRequest r = take(NBD_CMD_READ, flags, cookie, offset, length, cost, t0);
        int h = replies.readHeaderSize();
        r.buf = alignedBuffer(h + length, h); // the data, after the reply header, lands O_DIRECT-aligned
        replies.readHeader(r.buf, cookie, offset, length);
        r.buf.writerIndex(h + length); // the data is read into place: capacity h + length by construction
        r.pending = 1;
        readPart(r, offset, h, length);
        arrive(r);
    }

    /** Submits the read of {@code length} bytes at {@code fileOffset} into {@code r.buf} at {@code at}. */
    private void readPart(NbdRequest r, long fileOffset, int at, int length) {
        if (r.errno != 0) return; // an earlier part was refused: the request fails anyway
        try {
            r.pending++;
            driver.read(fileOffset, address(r.buf, at), length, r);
        } catch (BlockException e) {
            r.pending--;
            refused(r, e);
        }
    }

    /**
     * Answers a large read with OFFSET_HOLE chunks for its holes and OFFSET_DATA chunks for the
     * rest, built in one buffer whose data parts the driver fills. Returns false (nothing done)
     * when the range is all data, so the caller sends one chunk. With DF only an all-hole range is
     * answered here, as one OFFSET_HOLE chunk.
     */
    private boolean sparseRead(int flags, long cookie, long offset, int length, boolean df, long cost, long t0) throws BlockException {
        int n = collectExtents(offset, length, MAX_READ_CHUNKS, false, (a, b) -> ((a & BlockStatus.ZERO) != 0) == ((b & BlockStatus.ZERO) != 0));
        if (n == 1 && (extentFlags[0] & BlockStatus.ZERO) == 0) return false; // all data
        if (df && !(n == 1 && extentLength[0] == length)) return false;
        long covered = 0;
        for (int i = 0; i < n; i++) covered += extentLength[i];
        if (covered < length) { // more extents than chunks: the rest goes as one data chunk
            extentLength[n] = length - covered;
            extentFlags[n] = 0;
            n++;
        }
        int hs = replies.chunkHeaderSize;
        int total = 0;
        boolean anyData = false;
        for (int i = 0; i < n; i++) {
            boolean hole = (extentFlags[i] & BlockStatus.ZERO) != 0;
            total += hole ? hs + 12 : hs + 8 + (int) extentLength[i];
            anyData |= !hole;
        }
        ByteBuf b = ctx.alloc().directBuffer(total, total);
        NbdRequest r = anyData ? take(NBD_CMD_READ, flags, cookie, offset, length, cost, t0) : null;
        if (r != null) {
            r.buf = b;
            r.pending = 1;
        }
        long at = offset;
        for (int i = 0; i < n; i++) {
            int len = (int) extentLength[i];
            int done = i == n - 1 ? NbdReplyFlags.NBD_REPLY_FLAG_DONE : 0;
            if ((extentFlags[i] & BlockStatus.ZERO) != 0) {
                replies.chunkHeader(b, done, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, offset, 12);
                b.writeLong(at).writeInt(len);
            } else {
                replies.chunkHeader(b, done, NBD_REPLY_TYPE_OFFSET_DATA, cookie, offset, 8L + len);
                b.writeLong(at);
                int w = b.writerIndex();
                b.writerIndex(w + len); // filled by the driver: capacity counted above
                readPart(r, at, w, len);
            }
            at += len;
        }
        if (r != null) {
            arrive(r);
        } else { // all holes: nothing to read
            emit(b);
            countRead(length);
            answered(t0);
        }
        return true;
    }

    // ---- reply (nbdkit's send_*_reply) ----

    /** Answers a request whose every part completed; {@code r}'s buffer is released or handed over. */
    private void answer(NbdRequest r) {
        if (r.errno != 0) {
            r.releaseBuffer();
            stats.errors.increment();
            String message = r.message != null ? r.message : LibC.describe(r.errno);
            LOG.warn("export '{}': {} at offset {} length {} failed: {}", export.name(), NbdCmd.name(r.type), r.offset, r.length, message);
            emit(replies.error(ctx.alloc(), r.cookie, r.offset, NbdError.fromErrno(r.errno, r.flags), message));
            exportStats.errors.increment();
            recordLatency(r.startNanos);
            return;
        }
        switch (r.type) {
            case NBD_CMD_READ -> {
                ByteBuf b = r.buf; // the whole reply, header and data
                r.buf = null;
                emit(b);
                countRead(r.length);
            }
            case NBD_CMD_WRITE -> {
                r.releaseBuffer();
                countWrite(r.length);
                emit(replies.ok(ctx.alloc(), r.cookie, r.offset));
            }
            case NBD_CMD_FLUSH -> {
                stats.flushOps.increment();
                exportStats.otherOps.increment();
                emit(replies.ok(ctx.alloc(), r.cookie, r.offset));
            }
            case NBD_CMD_TRIM -> {
                stats.discardOps.increment();
                exportStats.otherOps.increment();
                emit(replies.ok(ctx.alloc(), r.cookie, r.offset));
            }
            case NBD_CMD_WRITE_ZEROES -> {
                stats.zeroOps.increment();
                exportStats.otherOps.increment();
                emit(replies.ok(ctx.alloc(), r.cookie, r.offset));
            }
            default -> throw new IllegalStateException(NbdCmd.name(r.type));
        }
        recordLatency(r.startNanos);
    }

    /** An error answered without going to the driver (invalid request, failed synchronous step). */
    private void replyNow(long cookie, long offset, int error, String message, long t0) {
        exportStats.errors.increment();
        if (LOG.isDebugEnabled()) LOG.debug("NBD client {}: error {}: {}", NbdServer.peer(ctx.channel()), NbdError.name(error), message);
        emit(replies.error(ctx.alloc(), cookie, offset, error, message));
        recordLatency(t0);
    }

    /** A request answered at once (not through the driver): latency, and it leaves the in-flight gauge. */
    private void answered(long t0) {
        exportStats.inFlight.decrement();
        recordLatency(t0);
    }

    private void recordLatency(long t0) {
        long ns = System.nanoTime() - t0;
        stats.latency.record(ns);
        exportStats.latency.record(ns);
    }

    /** Queues a reply; it leaves with the next flush (end of the read batch, or the per-iteration flush task). */
    private void emit(ByteBuf b) {
        if (!ctx.channel().isActive()) { // closing: nobody reads it
            b.release();
            return;
        }
        ctx.write(b, ctx.voidPromise());
    }

    /** One flush per event-loop iteration for replies written by completions. */
    private void scheduleFlush() {
        if (!flushScheduled) {
            flushScheduled = true;
            try {
                ctx.executor().execute(flushTask);
            } catch (java.util.concurrent.RejectedExecutionException e) { // the IOThread is shutting down
                flushScheduled = false;
                ctx.flush();
            }
        }
    }

    private void scheduledFlush() {
        // Queued before a move's detach (FIFO behind the completions), so it runs on the loop that
        // queued it; the check keeps a stray one from touching state that moved on.
        if (!ctx.executor().inEventLoop() || !flushScheduled) return;
        flushScheduled = false;
        ctx.flush();
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

    // ---- BLOCK_STATUS (base:allocation, qemu:allocation-depth, qemu:dirty-bitmap:) ----

    /**
     * One chunk per negotiated context in QEMU's order (base:allocation, qemu:allocation-depth,
     * then the dirty bitmaps in the export's order), the last one flagged DONE.
     * qemu:allocation-depth extents carry {@code BlockStatus.depth} as their value.
     */
    private void blockStatus(long cookie, long offset, long length, boolean reqOne) throws BlockException {
        int left = contexts;
        if (baseAllocation) blockStatusChunk(cookie, offset, length, reqOne, false, --left == 0);
        if (allocationDepth) blockStatusChunk(cookie, offset, length, reqOne, true, --left == 0);
        if (bitmaps != null) {
            for (int i = 0; i < bitmaps.length; i++) {
                if (bitmaps[i] != null) bitmapChunk(cookie, offset, length, reqOne, bitmaps[i], HandshakeHandler.FIRST_BITMAP_ID + i, --left == 0);
            }
        }
    }

    /**
     * Most descriptors in one qemu:dirty-bitmap: chunk: QEMU's NBD_MAX_BLOCK_STATUS_EXTENTS
     * (1 MiB / 8), so that a client that does not merge (libnbd's block_status) sees the same
     * extents from us as from QEMU on a fragmented bitmap. proto.md: SHOULD NOT exceed 2^20.
     */
    static final int MAX_BITMAP_EXTENTS = (1 << 20) / 8;
    /** QEMU 7.2 caps one dirty run at INT32_MAX bytes before merging (bitmap_to_extents); compact descriptors only. */
    private static final long MAX_DIRTY_RUN = Integer.MAX_VALUE;
    /** Compact descriptors hold 32-bit lengths: QEMU merges equal neighbours while the sum fits. */
    private static final long MAX_COMPACT_LENGTH = 0xFFFF_FFFFL;

    /**
     * One qemu:dirty-bitmap: chunk for {@code [offset, offset+length)}: alternating clean (0) and
     * dirty ({@link NbdMetaContext#NBD_STATE_DIRTY}) extents from the bitmap's bits, merged where
     * equal, clipped to the request (so at the bitmap's granularity except at the request's ends,
     * and the export's end). QEMU 7.2's {@code bitmap_to_extents} and {@code nbd_extent_array_add},
     * rule for rule, so clients see the same extents: a dirty run is taken at most INT32_MAX bytes
     * at a time and merged with the next while the sum fits 32 bits; with REQ_ONE the first extent
     * alone. With extended headers lengths are 64-bit and not capped. Beyond the bitmap's own size
     * (a bitmap of a smaller backing node) the range reads clean. Home thread: the bits are read here.
     */
    private void bitmapChunk(long cookie, long offset, long length, boolean reqOne, DirtyBitmap bm, int id, boolean last) {
        int hs = replies.chunkHeaderSize;
        int flags = last ? NbdReplyFlags.NBD_REPLY_FLAG_DONE : 0;
        int type = extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT : NBD_REPLY_TYPE_BLOCK_STATUS;
        ByteBuf b = ctx.alloc().directBuffer(hs + 8 + 16 * 16);
        int start = b.writerIndex();
        b.writerIndex(start + hs); // the header goes in last, once the payload length is known
        b.writeInt(id);
        if (extended) b.writeInt(0); // descriptor count, set below
        ExtentSink sink = this.sink.reset(b, reqOne ? 1 : MAX_BITMAP_EXTENTS, extended);
        long end = offset + length;
        long at = offset;
        boolean full = false;
        long areaEnd = Math.min(end, bm.size());
        while (at < areaEnd) {
            long dirty = bm.nextDirty(at, areaEnd);
            if (dirty < 0) break;
            long clean = bm.nextClean(dirty, areaEnd);
            long count = (clean < 0 ? areaEnd : clean) - dirty;
            if (!extended) count = Math.min(count, MAX_DIRTY_RUN);
            if (!sink.add(dirty - at, 0) || !sink.add(count, NbdMetaContext.NBD_STATE_DIRTY)) {
                full = true;
                break;
            }
            at = dirty + count;
        }
        if (!full) sink.add(end - at, 0);
        int payload = b.writerIndex() - start - hs;
        if (extended) b.setInt(start + hs + 4, sink.count);
        int w = b.writerIndex();
        b.writerIndex(start);
        replies.chunkHeader(b, flags, type, cookie, offset, payload);
        b.writerIndex(w);
        sink.reset(null, 0, false);
        emit(b);
    }

    /** Descriptors appended to a status chunk, merging an extent into the previous one when their flags are equal. */
    private static final class ExtentSink {
        private ByteBuf b;
        private int max;
        private boolean wide;
        int count;
        private long lastLength;
        private int lastFlags;
        private int lastAt;

        /** Starts a chunk's descriptors in {@code b} (null: done with it); reused per connection, no allocation per request. */
        ExtentSink reset(ByteBuf b, int max, boolean wide) {
            this.b = b;
            this.max = max;
            this.wide = wide;
            count = 0;
            return this;
        }

        /** False when the chunk is full (QEMU's "can_add" is then over); a zero length adds nothing. */
        boolean add(long length, int flags) {
            if (length == 0) return true;
            if (count > 0 && flags == lastFlags && (wide || lastLength + length <= MAX_COMPACT_LENGTH)) {
                lastLength += length;
                if (wide) b.setLong(lastAt, lastLength); else b.setInt(lastAt, (int) lastLength);
                return true;
            }
            if (count >= max) return false;
            lastAt = b.writerIndex();
            if (wide) b.writeLong(length).writeLong(flags); else b.writeInt((int) length).writeInt(flags);
            lastLength = length;
            lastFlags = flags;
            count++;
            return true;
        }
    }

    private void blockStatusChunk(long cookie, long offset, long length, boolean reqOne, boolean depth, boolean last)
            throws BlockException {
        int n = collectExtents(offset, length, reqOne ? 1 : MAX_EXTENTS, depth, (a, b) -> a == b);
        int hs = replies.chunkHeaderSize;
        int id = depth ? HandshakeHandler.ALLOCATION_DEPTH_ID : HandshakeHandler.BASE_ALLOCATION_ID;
        int flags = last ? NbdReplyFlags.NBD_REPLY_FLAG_DONE : 0;
        ByteBuf b;
        if (extended) {
            b = ctx.alloc().directBuffer(hs + 8 + 16 * n);
            replies.chunkHeader(b, flags, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, cookie, offset, 8L + 16L * n);
            b.writeInt(id).writeInt(n);
            for (int i = 0; i < n; i++) b.writeLong(extentLength[i]).writeLong(extentFlags[i]);
        } else {
            b = ctx.alloc().directBuffer(hs + 4 + 8 * n);
            replies.chunkHeader(b, flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, offset, 4L + 8L * n);
            b.writeInt(id);
            for (int i = 0; i < n; i++) b.writeInt((int) extentLength[i]).writeInt(extentFlags[i]);
        }
        emit(b);
    }

    /**
     * Fills {@link #extentLength}/{@link #extentFlags} with at most {@code max} runs covering a
     * prefix of [offset, offset+length), merging neighbours whose values {@code same} says are
     * alike; the value is the status flags, or with {@code depth} the allocation depth.
     * Without extended headers extent lengths stay below 2^32 so that they fit 32-bit descriptors.
     * Returns the count (>= 1).
     */
    private interface SameRun { boolean same(int valueA, int valueB); }

    private int collectExtents(long offset, long length, int max, boolean depth, SameRun same) throws BlockException {
        int n = 0;
        long at = offset;
        long end = offset + length;
        final long maxRun = extended ? Long.MAX_VALUE : 0xFFFF_F000L; // compact: 32-bit descriptors, kept 4 KiB aligned
        while (at < end) {
            driver.status(at, end - at, status);
            long len = Math.min(status.length, end - at);
            if (len <= 0) len = end - at; // defensive: a driver must report progress
            int value = depth ? status.depth : status.flags;
            if (n > 0 && same.same(extentFlags[n - 1], value) && extentLength[n - 1] + len <= maxRun) {
                extentLength[n - 1] += len;
            } else {
                if (n == max) break;
                len = Math.min(len, maxRun);
                extentLength[n] = len;
                extentFlags[n] = value;
                n++;
            }
            at += len;
        }
        return n;
    }

    /**
     * Native address of {@code index} in a direct buffer. The pooled allocator's buffers (and
     * slices of them) have one (Unsafe is available on the JVMs we run); other direct buffers go
     * through their NIO view.
     */
    /**
     * A direct buffer of {@code length} bytes whose byte {@code at} has an address aligned to the
     * driver's memory alignment (O_DIRECT: 512 on virtio disks), so the data goes to the kernel
     * without the driver's synchronous bounce path. Plain buffers without O_DIRECT.
     */
    private ByteBuf alignedBuffer(int length, int at) {
        if (memAlign <= 1) return ctx.alloc().directBuffer(length, length);
        ByteBuf raw = ctx.alloc().directBuffer(length + memAlign - 1);
        int pad = (int) (-(address(raw, 0) + at) & (memAlign - 1));
        return raw.slice(pad, length).writerIndex(0); // releasing the slice releases raw
    }

    private boolean aligned(ByteBuf b, int index) {
        return memAlign <= 1 || (address(b, index) & (memAlign - 1)) == 0;
    }

    private static long address(ByteBuf b, int index) {
        if (b.hasMemoryAddress()) return b.memoryAddress() + index;
        if (b.nioBufferCount() == 1 && b.isDirect()) {
            return PlatformDependent.directBufferAddress(b.nioBuffer(index, b.capacity() - index));
        }
        throw new IllegalStateException("NBD data path needs a direct buffer with a native address");
    }
}
