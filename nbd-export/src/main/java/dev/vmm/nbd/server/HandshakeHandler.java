package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdHandshakeFlags.*;
import static dev.vmm.nbd.protocol.NbdOpt.*;
import static dev.vmm.nbd.protocol.NbdRep.*;

import dev.vmm.nbd.protocol.NbdInfo;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import io.netty.buffer.ByteBuf;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import io.netty.handler.codec.ByteToMessageDecoder;
import io.netty.handler.ssl.SslHandler;
import io.netty.handler.ssl.SslHandshakeCompletionEvent;
import dev.vmm.core.tls.TlsCredentials;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The fixed-newstyle handshake and option haggling of one client (proto.md, "Handshake" and
 * "Option types"). Ends by handing the channel to {@link TransmissionHandler} on the export's
 * home IOThread (NBD_OPT_GO / NBD_OPT_EXPORT_NAME), or by closing it.
 *
 * <p>Thread contract: runs on the main loop only (every method is a Netty callback of a channel
 * registered there). Framing violations (bad magic, unknown client flags) close the connection;
 * everything else gets the spec's error reply and the client may go on.
 *
 * <p>TLS (proto.md "TLS support"): when the server has credentials it is in FORCEDTLS mode.
 * Before NBD_OPT_STARTTLS every option but ABORT gets NBD_REP_ERR_TLS_REQD and
 * NBD_OPT_EXPORT_NAME closes the connection, so a plain client learns nothing, not even the
 * export names. STARTTLS is acknowledged in plain text, then an {@link SslHandler} goes to the
 * head of the pipeline and haggling continues over TLS with a fresh negotiation state. The
 * handler stays in the pipeline for the life of the channel, through its moves between loops.
 */
final class HandshakeHandler extends ChannelInboundHandlerAdapter {
    private static final Logger LOG = LoggerFactory.getLogger(HandshakeHandler.class);

    /** Largest option payload we read: NBD names are at most 4096 bytes, so 64 KiB leaves room for many meta-context queries. */
    static final int MAX_OPTION_LENGTH = 64 * 1024;
    /** Limit for a string inside an option (proto.md: names SHOULD be at most 4096 bytes). */
    static final int MAX_STRING = 4096;
    /** Context id we give base:allocation (any value the server chooses). */
    static final int BASE_ALLOCATION_ID = 1;
    /** Context id we give qemu:allocation-depth. */
    static final int ALLOCATION_DEPTH_ID = 2;
    /** Context id of the export's first qemu:dirty-bitmap: context; bitmap i has FIRST_BITMAP_ID + i. */
    static final int FIRST_BITMAP_ID = 3;

    private enum State { CLIENT_FLAGS, OPTION_HEADER, OPTION_DATA, SKIP_OPTION, DONE }

    private final NbdServer server;
    /** Non-null: TLS is required (FORCEDTLS). */
    private final TlsCredentials tls;
    private final Negotiated negotiated = new Negotiated();
    private ByteBuf cum;
    private State state = State.CLIENT_FLAGS;
    private int option;
    private int optionLength;
    private long skipRemaining;

    HandshakeHandler(NbdServer server) {
        this.server = server;
        this.tls = server.config().tls();
    }

    @Override
    public void channelActive(ChannelHandlerContext ctx) {
        ByteBuf b = ctx.alloc().buffer(18);
        b.writeLong(NbdMagic.NBDMAGIC).writeLong(NbdMagic.IHAVEOPT)
                .writeShort(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        ctx.writeAndFlush(b, ctx.voidPromise());
        ctx.fireChannelActive();
    }

    @Override
    public void channelRead(ChannelHandlerContext ctx, Object msg) {
        ByteBuf in = (ByteBuf) msg;
        cum = cum == null ? in : ByteToMessageDecoder.MERGE_CUMULATOR.cumulate(ctx.alloc(), cum, in);
        if (state == State.DONE) return; // bytes after GO, before the move: kept for the transmission phase
        try {
            process(ctx);
        } catch (ProtocolViolation e) {
            server.log().info("NBD client {}: {}; closing", NbdServer.peer(ctx.channel()), e.getMessage());
            ctx.close();
        }
        if (cum != null && !cum.isReadable() && state != State.DONE) {
            cum.release();
            cum = null;
        }
    }

    @Override
    public void channelReadComplete(ChannelHandlerContext ctx) {
        ctx.flush();
    }

    @Override
    public void channelWritabilityChanged(ChannelHandlerContext ctx) {
        if (ctx.channel().isWritable() && state != State.DONE && cum != null) {
            try {
                process(ctx);
            } catch (ProtocolViolation e) {
                server.log().info("NBD client {}: {}; closing", NbdServer.peer(ctx.channel()), e.getMessage());
                ctx.close();
                return;
            }
            ctx.flush();
            if (state != State.DONE && ctx.channel().isWritable()) ctx.channel().config().setAutoRead(true);
        } else if (ctx.channel().isWritable() && state != State.DONE) {
            ctx.channel().config().setAutoRead(true);
        }
        ctx.fireChannelWritabilityChanged();
    }

    @Override
    public void channelInactive(ChannelHandlerContext ctx) {
        releaseCumulation();
        ctx.fireChannelInactive();
    }

    @Override
    public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
        LOG.debug("NBD client {} during handshake: {}", NbdServer.peer(ctx.channel()), cause.toString());
        ctx.close();
    }

    @Override
    public void userEventTriggered(ChannelHandlerContext ctx, Object evt) {
        if (evt instanceof SslHandshakeCompletionEvent e) {
            if (e.isSuccess()) {
                if (LOG.isDebugEnabled()) {
                    var session = ctx.pipeline().get(SslHandler.class).engine().getSession();
                    LOG.debug("NBD client {}: TLS established ({}, {})", NbdServer.peer(ctx.channel()), session.getProtocol(), session.getCipherSuite());
                }
            } else {
                // One line for the operator: a refused certificate is the usual cause. SslHandler closes the channel.
                server.log().info("NBD client {}: TLS handshake failed: {}; closing", NbdServer.peer(ctx.channel()), rootMessage(e.cause()));
            }
        }
        ctx.fireUserEventTriggered(evt);
    }

    private static String rootMessage(Throwable t) {
        while (t.getCause() != null && t.getCause() != t) t = t.getCause();
        return t.getMessage() == null ? t.toString() : t.getMessage();
    }

    /** True until the handshake ended (GO, EXPORT_NAME or ABORT). */
    boolean inHandshake() { return state != State.DONE; }

    void releaseCumulation() {
        if (cum != null) {
            cum.release();
            cum = null;
        }
    }

    /** Leftover bytes the client sent after the handshake ended (owned by the caller), or null. */
    ByteBuf takeLeftover() {
        ByteBuf b = cum;
        cum = null;
        return b;
    }

    private void process(ChannelHandlerContext ctx) throws ProtocolViolation {
        while (state != State.DONE && ctx.channel().isActive()) {
            if (!ctx.channel().isWritable()) {
                // The client does not read our replies: stop reading its options until it does,
                // so option replies cannot pile up in memory.
                ctx.channel().config().setAutoRead(false);
                ctx.flush();
                return;
            }
            switch (state) {
                case CLIENT_FLAGS -> {
                    if (cum.readableBytes() < 4) return;
                    int flags = cum.readInt();
                    if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) != 0) {
                        throw new ProtocolViolation("unknown client flags 0x" + Integer.toHexString(flags));
                    }
                    if ((flags & NBD_FLAG_C_FIXED_NEWSTYLE) == 0) {
                        throw new ProtocolViolation("client does not speak fixed newstyle");
                    }
                    negotiated.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) != 0;
                    state = State.OPTION_HEADER;
                }
                case OPTION_HEADER -> {
                    if (cum.readableBytes() < 16) return;
                    long magic = cum.readLong();
                    if (magic != NbdMagic.IHAVEOPT) throw new ProtocolViolation("bad option magic 0x" + Long.toHexString(magic));
                    option = cum.readInt();
                    long len = cum.readUnsignedInt();
                    if (len > MAX_OPTION_LENGTH) {
                        if (option == NBD_OPT_EXPORT_NAME) throw new ProtocolViolation("export name of " + len + " bytes");
                        skipRemaining = len;
                        state = State.SKIP_OPTION;
                    } else {
                        optionLength = (int) len;
                        state = State.OPTION_DATA;
                    }
                }
                case SKIP_OPTION -> {
                    int n = (int) Math.min(skipRemaining, cum.readableBytes());
                    cum.skipBytes(n);
                    skipRemaining -= n;
                    if (skipRemaining > 0) return;
                    if (tlsRequired(option)) {
                        replyError(ctx, option, NBD_REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first");
                    } else {
                        replyError(ctx, option, NBD_REP_ERR_TOO_BIG, "option data longer than " + MAX_OPTION_LENGTH + " bytes");
                    }
                    state = State.OPTION_HEADER;
                }
                case OPTION_DATA -> {
                    if (cum.readableBytes() < optionLength) return;
                    ByteBuf data = cum.readSlice(optionLength);
                    state = State.OPTION_HEADER;
                    handleOption(ctx, option, data);
                }
                default -> throw new IllegalStateException(state.name());
            }
        }
    }

    private void handleOption(ChannelHandlerContext ctx, int opt, ByteBuf data) throws ProtocolViolation {
        if (LOG.isDebugEnabled()) LOG.debug("NBD client {}: {} ({} bytes)", NbdServer.peer(ctx.channel()), NbdOpt.name(opt), data.readableBytes());
        if (tlsRequired(opt)) {
            // FORCEDTLS: nothing but STARTTLS and ABORT before TLS (proto.md "TLS support").
            if (opt == NBD_OPT_EXPORT_NAME) throw new ProtocolViolation("NBD_OPT_EXPORT_NAME without TLS");
            replyError(ctx, opt, NBD_REP_ERR_TLS_REQD, "TLS is required: send NBD_OPT_STARTTLS first");
            return;
        }
        switch (opt) {
            case NBD_OPT_EXPORT_NAME -> exportName(ctx, data);
            case NBD_OPT_ABORT -> {
                replyAck(ctx, opt);
                state = State.DONE;
                ctx.writeAndFlush(ctx.alloc().buffer(0)).addListener(ChannelFutureListener.CLOSE);
            }
            case NBD_OPT_LIST -> list(ctx, data);
            case NBD_OPT_STARTTLS -> startTls(ctx, data);
            case NBD_OPT_INFO, NBD_OPT_GO -> infoOrGo(ctx, opt, data);
            case NBD_OPT_STRUCTURED_REPLY -> {
                if (data.isReadable()) {
                    replyError(ctx, opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
                } else if (negotiated.extendedHeaders) {
                    replyError(ctx, opt, NBD_REP_ERR_EXT_HEADER_REQD, "extended headers already negotiated");
                } else {
                    negotiated.structuredReplies = true;
                    replyAck(ctx, opt);
                }
            }
            case NBD_OPT_EXTENDED_HEADERS -> {
                if (data.isReadable()) {
                    replyError(ctx, opt, NBD_REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS takes no data");
                } else {
                    negotiated.extendedHeaders = true;
                    negotiated.structuredReplies = true;
                    replyAck(ctx, opt);
                }
            }
            case NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT -> metaContext(ctx, opt, data);
            default -> replyError(ctx, opt, NBD_REP_ERR_UNSUP, "unsupported option " + NbdOpt.name(opt));
        }
    }

    /** FORCEDTLS before STARTTLS: every option but STARTTLS and ABORT "MUST" get NBD_REP_ERR_TLS_REQD. */
    private boolean tlsRequired(int opt) {
        return tls != null && !negotiated.tls && opt != NBD_OPT_STARTTLS && opt != NBD_OPT_ABORT;
    }

    /**
     * NBD_OPT_STARTTLS: ACK in plain text, then TLS from the next byte on. Without credentials the
     * server is in NOTLS mode and answers NBD_REP_ERR_POLICY ("supports TLS but has been
     * configured not to use it"; never TLS_REQD there). A second STARTTLS is invalid.
     */
    private void startTls(ChannelHandlerContext ctx, ByteBuf data) throws ProtocolViolation {
        if (tls == null) {
            replyError(ctx, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, "TLS is not configured on this server");
            return;
        }
        if (data.isReadable()) {
            replyError(ctx, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
            return;
        }
        if (negotiated.tls) {
            replyError(ctx, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, "TLS is already negotiated");
            return;
        }
        if (cum.isReadable()) {
            // The client may not send anything before our reply: what it sent cannot be a TLS hello.
            throw new ProtocolViolation("data after NBD_OPT_STARTTLS before its reply");
        }
        // The ACK reaches the socket's outbound buffer before the SslHandler exists, so it goes out in clear.
        ctx.writeAndFlush(ackBuffer(ctx, NBD_OPT_STARTTLS), ctx.voidPromise());
        negotiated.tls = true;
        negotiated.forgetAfterStartTls();
        ctx.pipeline().addFirst("tls", tls.newHandler(ctx.alloc()));
    }

    private void exportName(ChannelHandlerContext ctx, ByteBuf data) throws ProtocolViolation {
        if (negotiated.extendedHeaders) {
            // proto.md: a client MUST NOT use EXPORT_NAME after extended headers (it has no way to say so).
            throw new ProtocolViolation("NBD_OPT_EXPORT_NAME after NBD_OPT_EXTENDED_HEADERS");
        }
        String name = data.toString(StandardCharsets.UTF_8);
        NbdExport export = server.lookup(name);
        if (export == null) {
            // proto.md: there is no way to report an error for NBD_OPT_EXPORT_NAME; the server closes.
            throw new ProtocolViolation("NBD_OPT_EXPORT_NAME for unknown export");
        }
        if (negotiated.metaContextFor != export) negotiated.clearMetaContexts(); // selected for another export: does not carry over
        ByteBuf b = ctx.alloc().buffer(10 + 124);
        b.writeLong(export.node().size());
        b.writeShort(export.transmissionFlags(negotiated.structuredReplies));
        if (!negotiated.noZeroes) b.writeZero(124);
        enterTransmission(ctx, export, b);
    }

    private void list(ChannelHandlerContext ctx, ByteBuf data) {
        if (data.isReadable()) {
            replyError(ctx, NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
            return;
        }
        for (NbdExport e : server.exports()) {
            // u32 name length, name, then optional free text: we send the description there.
            byte[] name = e.name().getBytes(StandardCharsets.UTF_8);
            byte[] details = e.description() == null ? new byte[0] : e.description().getBytes(StandardCharsets.UTF_8);
            ByteBuf b = replyHeader(ctx, NBD_OPT_LIST, NBD_REP_SERVER, 4 + name.length + details.length);
            b.writeInt(name.length).writeBytes(name).writeBytes(details);
            ctx.write(b, ctx.voidPromise());
        }
        replyAck(ctx, NBD_OPT_LIST);
    }

    private void infoOrGo(ChannelHandlerContext ctx, int opt, ByteBuf data) {
        // u32 name length, name, u16 number of requests, u16 each
        if (data.readableBytes() < 6) {
            replyError(ctx, opt, NBD_REP_ERR_INVALID, "option data too short");
            return;
        }
        long nameLen = data.readUnsignedInt();
        if (nameLen > data.readableBytes() - 2) {
            replyError(ctx, opt, NBD_REP_ERR_INVALID, "export name length beyond the option data");
            return;
        }
        if (nameLen > MAX_STRING) {
            replyError(ctx, opt, NBD_REP_ERR_TOO_BIG, "export name longer than " + MAX_STRING + " bytes");
            return;
        }
        String name = data.readCharSequence((int) nameLen, StandardCharsets.UTF_8).toString();
        int count = data.readUnsignedShort();
        if (data.readableBytes() != count * 2) {
            replyError(ctx, opt, NBD_REP_ERR_INVALID, "information request count does not match the option length");
            return;
        }
        boolean wantName = false, wantDescription = false;
        for (int i = 0; i < count; i++) {
            int info = data.readUnsignedShort();
            if (info == NbdInfo.NBD_INFO_NAME) wantName = true;
            if (info == NbdInfo.NBD_INFO_DESCRIPTION) wantDescription = true;
        }
        NbdExport export = server.lookup(name);
        if (export == null) {
            replyError(ctx, opt, NBD_REP_ERR_UNKNOWN, "no such export");
            return;
        }
        ByteBuf b = replyHeader(ctx, opt, NBD_REP_INFO, 12);
        b.writeShort(NbdInfo.NBD_INFO_EXPORT).writeLong(export.node().size())
                .writeShort(export.transmissionFlags(negotiated.structuredReplies));
        ctx.write(b, ctx.voidPromise());
        if (wantName) {
            byte[] n = export.name().getBytes(StandardCharsets.UTF_8);
            ByteBuf nb = replyHeader(ctx, opt, NBD_REP_INFO, 2 + n.length);
            nb.writeShort(NbdInfo.NBD_INFO_NAME).writeBytes(n);
            ctx.write(nb, ctx.voidPromise());
        }
        if (wantDescription && export.description() != null) {
            byte[] d = export.description().getBytes(StandardCharsets.UTF_8);
            ByteBuf db = replyHeader(ctx, opt, NBD_REP_INFO, 2 + d.length);
            db.writeShort(NbdInfo.NBD_INFO_DESCRIPTION).writeBytes(d);
            ctx.write(db, ctx.voidPromise());
        }
        // Sent unasked too: clients ignore it or learn our limits (proto.md allows extra info).
        ByteBuf bs = replyHeader(ctx, opt, NBD_REP_INFO, 14);
        bs.writeShort(NbdInfo.NBD_INFO_BLOCK_SIZE).writeInt(1).writeInt(NbdExport.PREFERRED_BLOCK_SIZE)
                .writeInt(NbdExport.MAX_PAYLOAD);
        ctx.write(bs, ctx.voidPromise());
        if (opt == NBD_OPT_INFO) {
            replyAck(ctx, opt);
            return;
        }
        // Contexts selected for another export (or for an export of this name since replaced) do not carry over.
        if (negotiated.metaContextFor != export) negotiated.clearMetaContexts();
        enterTransmission(ctx, export, ackBuffer(ctx, opt));
    }

    private void metaContext(ChannelHandlerContext ctx, int opt, ByteBuf data) {
        if (opt == NBD_OPT_SET_META_CONTEXT) {
            // proto.md: SET replaces the previous selection, even when it fails.
            negotiated.clearMetaContexts();
            negotiated.metaContextExport = null;
            negotiated.metaContextFor = null;
        }
        if (!negotiated.structuredReplies) {
            replyError(ctx, opt, NBD_REP_ERR_INVALID, "negotiate structured replies first");
            return;
        }
        // u32 export name length, name, u32 number of queries, (u32 length, query)*
        if (data.readableBytes() < 8) {
            replyError(ctx, opt, NBD_REP_ERR_INVALID, "option data too short");
            return;
        }
        long nameLen = data.readUnsignedInt();
        if (nameLen > data.readableBytes() - 4 || nameLen > MAX_STRING) {
            replyError(ctx, opt, NBD_REP_ERR_INVALID, "bad export name length");
            return;
        }
        String name = data.readCharSequence((int) nameLen, StandardCharsets.UTF_8).toString();
        long count = data.readUnsignedInt();
        List<String> queries = new ArrayList<>();
        for (long i = 0; i < count; i++) {
            if (data.readableBytes() < 4) {
                replyError(ctx, opt, NBD_REP_ERR_INVALID, "query count beyond the option data");
                return;
            }
            long qlen = data.readUnsignedInt();
            if (qlen > data.readableBytes()) {
                replyError(ctx, opt, NBD_REP_ERR_INVALID, "bad query length");
                return;
            }
            if (qlen > MAX_STRING) { // longer than any context name: matches nothing (QEMU skips it too)
                data.skipBytes((int) qlen);
                continue;
            }
            queries.add(data.readCharSequence((int) qlen, StandardCharsets.UTF_8).toString());
        }
        if (data.isReadable()) {
            replyError(ctx, opt, NBD_REP_ERR_INVALID, "trailing bytes after the queries");
            return;
        }
        NbdExport export = server.lookup(name);
        if (export == null) {
            replyError(ctx, opt, NBD_REP_ERR_UNKNOWN, "no such export");
            return;
        }
        Selection sel = select(export, opt == NBD_OPT_LIST_META_CONTEXT, queries);
        if (opt == NBD_OPT_SET_META_CONTEXT) {
            negotiated.baseAllocation = sel.base();
            negotiated.allocationDepth = sel.depth();
            negotiated.bitmaps = sel.bitmaps();
            negotiated.metaContextExport = name;
            negotiated.metaContextFor = export;
        }
        // proto.md: ids in a LIST reply SHOULD be 0; SET gives the id used in transmission.
        // Order as QEMU's: base:allocation, qemu:allocation-depth, then the bitmaps in export order.
        if (sel.base()) metaContextReply(ctx, opt, NbdMetaContext.BASE_ALLOCATION, BASE_ALLOCATION_ID);
        if (sel.depth()) metaContextReply(ctx, opt, NbdMetaContext.QEMU_ALLOCATION_DEPTH, ALLOCATION_DEPTH_ID);
        for (int i = 0; i < sel.bitmaps().length; i++) {
            if (sel.bitmaps()[i]) metaContextReply(ctx, opt, export.bitmapContext(i), FIRST_BITMAP_ID + i);
        }
        replyAck(ctx, opt);
    }

    /** The contexts a LIST or SET option's queries match on {@code export}. */
    record Selection(boolean base, boolean depth, boolean[] bitmaps) {}

    /**
     * QEMU 7.2's query matching ({@code nbd_negotiate_meta_queries}): no query (LIST only) matches
     * every context; a namespace alone ({@code base:}, {@code qemu:}, {@code qemu:dirty-bitmap:})
     * matches all of its contexts for LIST and nothing for SET (proto.md: SET "MUST ignore" it);
     * otherwise a query matches the context of exactly its name. Unknown namespaces and leaves
     * match nothing. Contexts the export does not offer are never matched.
     */
    static Selection select(NbdExport export, boolean list, List<String> queries) {
        int nb = export.bitmaps().size();
        boolean[] bitmaps = new boolean[nb];
        if (list && queries.isEmpty()) {
            java.util.Arrays.fill(bitmaps, true);
            return new Selection(true, export.allocationDepth(), bitmaps);
        }
        boolean base = false;
        boolean depth = false;
        for (String q : queries) {
            if (q.equals(NbdMetaContext.BASE_ALLOCATION) || (list && q.equals(NbdMetaContext.BASE_NAMESPACE))) {
                base = true;
            } else if (q.equals(NbdMetaContext.QEMU_ALLOCATION_DEPTH)) {
                depth |= export.allocationDepth();
            } else if (list && q.equals(NbdMetaContext.QEMU_NAMESPACE)) {
                depth |= export.allocationDepth();
                java.util.Arrays.fill(bitmaps, true);
            } else if (q.startsWith(NbdMetaContext.QEMU_DIRTY_BITMAP)) {
                if (q.length() == NbdMetaContext.QEMU_DIRTY_BITMAP.length()) {
                    if (list) java.util.Arrays.fill(bitmaps, true);
                    continue;
                }
                String bm = q.substring(NbdMetaContext.QEMU_DIRTY_BITMAP.length());
                for (int i = 0; i < nb; i++) {
                    if (export.bitmaps().get(i).name().equals(bm)) {
                        bitmaps[i] = true; // the first of a repeated name, as QEMU
                        break;
                    }
                }
            }
        }
        return new Selection(base, depth, bitmaps);
    }

    private static void metaContextReply(ChannelHandlerContext ctx, int opt, String context, int id) {
        byte[] n = context.getBytes(StandardCharsets.UTF_8);
        ByteBuf b = replyHeader(ctx, opt, NBD_REP_META_CONTEXT, 4 + n.length);
        b.writeInt(opt == NBD_OPT_LIST_META_CONTEXT ? 0 : id).writeBytes(n);
        ctx.write(b, ctx.voidPromise());
    }

    /** Sends {@code lastReply} and moves the channel to the export's home IOThread. */
    private void enterTransmission(ChannelHandlerContext ctx, NbdExport export, ByteBuf lastReply) {
        state = State.DONE;
        server.handOff(ctx.channel(), this, export, negotiated, lastReply);
    }

    // ---- option replies: u64 magic, u32 option, u32 reply type, u32 length, data ----

    private static ByteBuf replyHeader(ChannelHandlerContext ctx, int opt, int type, int length) {
        ByteBuf b = ctx.alloc().buffer(20 + length);
        b.writeLong(NbdMagic.NBD_REP_MAGIC).writeInt(opt).writeInt(type).writeInt(length);
        return b;
    }

    private static ByteBuf ackBuffer(ChannelHandlerContext ctx, int opt) {
        return replyHeader(ctx, opt, NBD_REP_ACK, 0);
    }

    private static void replyAck(ChannelHandlerContext ctx, int opt) {
        ctx.write(ackBuffer(ctx, opt), ctx.voidPromise());
    }

    private void replyError(ChannelHandlerContext ctx, int opt, int error, String message) {
        LOG.debug("NBD client {}: {} -> {}: {}", NbdServer.peer(ctx.channel()), NbdOpt.name(opt), dev.vmm.nbd.protocol.NbdRep.name(error), message);
        byte[] m = message.getBytes(StandardCharsets.UTF_8);
        ByteBuf b = replyHeader(ctx, opt, error, m.length);
        b.writeBytes(m);
        ctx.write(b, ctx.voidPromise());
    }

    /** A framing violation: the stream cannot be trusted any more, so the connection is closed. */
    static final class ProtocolViolation extends Exception {
        private static final long serialVersionUID = 1L;

        ProtocolViolation(String message) {
            super(message, null, false, false);
        }
    }
}
