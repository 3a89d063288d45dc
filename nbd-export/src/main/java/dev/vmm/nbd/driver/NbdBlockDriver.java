package dev.vmm.nbd.driver;

import static dev.vmm.nbd.protocol.NbdTransmissionFlags.*;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.block.ProtocolDriverFactory;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdCmdFlags;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdReplyFlags;
import dev.vmm.nbd.protocol.NbdReplyType;
import io.netty.buffer.ByteBuf;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.EventLoop;
import io.netty.handler.codec.ByteToMessageDecoder;
import io.netty.handler.ssl.SslHandler;
import io.netty.util.internal.PlatformDependent;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * {@code driver=nbd}: a block node whose image is an export of a remote NBD server.
 *
 * <p>Transmission runs on the node's home IOThread: the connection is a Netty epoll channel
 * registered on the home loop; requests are pipelined (written as they come, flushed once per
 * call), replies decoded by {@link ReplyDecoder} on the same loop and completed there. Requests
 * larger than the server's maximum payload are split; reads take simple or structured replies
 * (OFFSET_DATA, OFFSET_HOLE, error chunks). A reply that breaks the protocol fails the requests
 * sent on that connection with EIO and drops it.
 *
 * <p>Reconnect (QEMU's {@code reconnect-delay}): when the connection drops, requests sent and not
 * answered go back to the queue; a reconnect thread negotiates a new connection (on
 * {@link Connector#connectLoop()}) and hands it to the home, which re-sends the queue. Until
 * {@code reconnect-delay} has passed, requests wait; after it, queued and new requests fail with
 * EIO until a reconnect succeeds. With {@code reconnect-delay=0} they fail at once.
 *
 * <p>Moves: {@link #attach} moves the channel to the new home (deregister, register); requests
 * that arrive meanwhile wait in the queue and leave when it is registered there. The channel's
 * trip is not a request in flight: if the node moves again before it arrives, it follows the
 * newest home (a reconnect hands its channel over the same way).
 *
 * <p>The synchronous methods (control plane, {@link #status}) use a second, blocking connection
 * that stays on the connect loop, opened on first use.
 *
 * <p>Thread contract: as {@link BlockDriver}: the home IOThread, except {@link #attach} (called
 * by a move with nothing in flight, on the thread that runs the move) and {@link #filename()}.
 */
public final class NbdBlockDriver implements BlockDriver, ProtocolDriverFactory.Described {
    static final Logger LOG = LoggerFactory.getLogger(NbdBlockDriver.class);
    /** Longest trim / write-zeroes / status request (no payload, 32-bit length): 1 GiB pieces. */
    static final long MAX_NO_PAYLOAD = 1L << 30;
    /** Largest reply chunk accepted beyond the negotiated payload (headers of error messages etc.). */
    static final int CHUNK_SLACK = 64 << 10;
    /** Longest wait of a synchronous call on the side connection. */
    static final long SYNC_TIMEOUT_MS = 30_000;
    /** Bound of opening the side connection (it blocks the home thread). */
    static final long SIDE_CONNECT_TIMEOUT_MS = 2000;
    /** Pause after a failed side connection before the next try. */
    static final long SIDE_RETRY_SECONDS = 30;
    /** How long an attach from a control thread waits for the channel's move. */
    static final long MOVE_WAIT_MS = 10_000;
    /** Reconnect attempts back off up to this. */
    static final long MAX_BACKOFF_MS = 1000;

    enum State {
        /** A channel on the home loop carries requests. */
        CONNECTED,
        /** The channel is moving to the home loop (first attach, a move, a reconnect): requests queue. */
        MOVING,
        /** The connection dropped; requests queue until the reconnect delay ends. */
        RECONNECTING,
        /** No connection and the delay is over (or 0): requests fail with EIO. */
        FAILED,
        CLOSED
    }

    private final NbdTarget target;
    private final String nodeName;
    private final boolean readOnly;
    private final Function<Channel, SslHandler> tls;
    private final Runnable onClose;
    /** What the first connection said: the node's size and capabilities for its whole life. */
    private final Session first;
    private final int maxPayload;
    private final int minBlock;

    // ---- home thread (and attach, with nothing in flight) ----
    private volatile IOThread home;
    private volatile State state = State.MOVING;
    private volatile Session session;
    private ReplyDecoder decoder;
    private final HashMap<Long, Part> sent = new HashMap<>();
    private final ArrayDeque<Part> queue = new ArrayDeque<>();
    private final ArrayDeque<Runnable> idle = new ArrayDeque<>();
    private long nextCookie = 1;
    /** User requests accepted and not completed. */
    private int ops;
    /**
     * The channel is moving between loops. Not counted in flight: a move that attaches the node
     * elsewhere meanwhile only changes {@link #home}, and the channel, once registered, follows it.
     * Guarded by this (attach and adopt may run on different threads).
     */
    private boolean channelMoving;
    private long reconnectDeadline;
    private boolean warnedDown;

    // ---- reconnect thread ----
    private volatile Thread reconnector;
    private volatile boolean closed;

    // ---- side connection (home thread) ----
    private Session side;
    /** After a failed side connection, none is tried before this ({@link System#nanoTime}). */
    private long sideRetryAfter = System.nanoTime();

    NbdBlockDriver(NbdTarget target, String nodeName, boolean readOnly, Session first, Function<Channel, SslHandler> tls, Runnable onClose) {
        this.target = target;
        this.nodeName = nodeName;
        this.readOnly = readOnly || first.has(NBD_FLAG_READ_ONLY);
        this.first = first;
        this.tls = tls;
        this.onClose = onClose;
        this.maxPayload = first.maxPayload();
        this.minBlock = first.minBlock();
        this.session = first;
    }

    @Override public String filename() { return target.filename(); }

    @Override public long size() { return first.size(); }

    @Override public boolean readOnly() { return readOnly; }

    @Override public int preferredBlockSize() { return Math.max(first.preferredBlock(), minBlock); }

    /** State for tests and log lines. */
    State state() { return state; }

    // ---- moves ----

    @Override
    public void attach(IOThread newHome) {
        IOThread old = home;
        home = newHome;
        Session s;
        synchronized (this) {
            if (closed || channelMoving) return; // a channel on its way follows the new home
            s = session;
            if (s == null) return; // not connected: a reconnect hands its channel to whatever is home then
            if (old != null && s.channel().eventLoop() == newHome.loop()) return;
            channelMoving = true;
        }
        state = State.MOVING;
        java.util.concurrent.CompletableFuture<Void> moved = new java.util.concurrent.CompletableFuture<>();
        boolean wait = !s.channel().eventLoop().inEventLoop() && !newHome.inThread();
        moveChannel(s, () -> {
            try {
                if (old == null) startTransmission(s);
                else resumeAfterMove(s);
            } finally {
                moved.complete(null);
            }
        });
        if (wait) {
            // blockdev-add returns with the node connected on its home, not half-way there
            try {
                moved.get(MOVE_WAIT_MS, TimeUnit.MILLISECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } catch (java.util.concurrent.ExecutionException | java.util.concurrent.TimeoutException e) {
                LOG.warn("NBD node {}: the connection's move to IOThread {} takes long; requests wait for it", nodeName, newHome.id());
            }
        }
    }

    /**
     * Deregisters the channel from its loop and registers it on the home's; if the home changed
     * meanwhile, goes on to the new one. {@code arrived} runs on the home thread once the channel
     * is registered there, with {@link #channelMoving} cleared.
     */
    private void moveChannel(Session s, Runnable arrived) {
        IOThread to = home;
        Channel ch = s.channel();
        ch.config().setAutoRead(false);
        ch.deregister().addListener((ChannelFutureListener) d -> ((EventLoop) to.loop()).register(ch).addListener((ChannelFutureListener) r -> {
            if (!r.isSuccess()) {
                LOG.warn("NBD node {}: cannot register the connection on IOThread {}: {}", nodeName, to.id(), String.valueOf(r.cause()));
                ch.close();
            }
            ch.config().setAutoRead(true);
            // after this listener, as a task of the loop: the channel is this loop's now, and a
            // move's attach (which runs on the old home's loop) is ordered with it
            to.execute(() -> {
                synchronized (this) {
                    if (home != to && r.isSuccess() && !closed) {
                        moveChannel(s, arrived);
                        return;
                    }
                    channelMoving = false;
                }
                arrived.run();
            });
        }));
    }

    /** Home thread: the first channel arrived (or a reconnected one): its decoder replaces the handshake bridge. */
    private void startTransmission(Session s) {
        assert home.inThread();
        if (closed) {
            s.abort();
            return;
        }
        s.bridge().drain();
        if (s.channel().pipeline().get(Connector.Bridge.class) != null) s.channel().pipeline().remove(s.bridge());
        ReplyDecoder d = new ReplyDecoder(s);
        decoder = d;
        session = s;
        s.channel().pipeline().addLast("nbd-replies", d);
        if (!s.channel().isActive()) {
            connectionLost(s, "the connection closed while it was handed over");
            return;
        }
        state = State.CONNECTED;
        sendQueue();
        checkIdle();
    }

    private void resumeAfterMove(Session s) {
        if (closed) return;
        if (session != s || state != State.MOVING) {
            checkIdle();
            return;
        }
        if (!s.channel().isActive()) {
            connectionLost(s, "the connection closed during a move");
            checkIdle();
            return;
        }
        state = State.CONNECTED;
        sendQueue();
        checkIdle();
    }

    // ---- requests ----

    /** One user request. */
    private static final class Op {
        IoCompletion done;
        long address;
        long iovAddress;
        int iovcnt;
        int pending;
        int errno;
        /** Emulated FUA: a flush after the write parts (the server has SEND_FLUSH but not SEND_FUA). */
        boolean flushAfter;
    }

    /** One NBD request of an {@link Op}. */
    private static final class Part {
        final Op op;
        final int cmd;
        final int flags;
        final long offset;
        final int length;
        /** Offset of this part's data within the op's memory. */
        final long rel;
        /** A WRITE of zeros (write-zeroes emulated), no memory behind it. */
        final boolean zeros;
        long cookie;
        long covered;
        int err;

        Part(Op op, int cmd, int flags, long offset, int length, long rel, boolean zeros) {
            this.op = op;
            this.cmd = cmd;
            this.flags = flags;
            this.offset = offset;
            this.length = length;
            this.rel = rel;
            this.zeros = zeros;
        }
    }

    private void checkRange(long offset, long length, boolean write) throws BlockException {
        if (state == State.CLOSED) throw new BlockException(Errno.EIO, "NBD node " + nodeName + " is closed");
        if (write && readOnly) throw new BlockException(Errno.EROFS, "the node is read-only");
        if (offset < 0 || length < 0 || offset > size() - length) {
            throw new BlockException(Errno.EINVAL, "request at " + offset + " of " + length + " bytes beyond the end of " + size() + " bytes");
        }
    }

    private void checkAligned(long offset, long length) throws BlockException {
        if (minBlock > 1 && ((offset | length) & (minBlock - 1)) != 0) {
            throw new BlockException(Errno.EINVAL, "request at " + offset + " of " + length + " bytes is not aligned to the server's minimum block size " + minBlock);
        }
    }

    private Op op(IoCompletion done, long address, long iovAddress, int iovcnt) {
        Op o = new Op();
        o.done = done;
        o.address = address;
        o.iovAddress = iovAddress;
        o.iovcnt = iovcnt;
        return o;
    }

    /** Splits {@code [offset, offset+length)} into parts of at most {@code max} bytes and submits them. */
    private void submit(Op o, int cmd, int flags, long offset, long length, long max, boolean zeros) {
        List<Part> parts = new ArrayList<>();
        long done = 0;
        do {
            int n = (int) Math.min(max, length - done);
            parts.add(new Part(o, cmd, flags, offset + done, n, done, zeros));
            done += n;
        } while (done < length);
        submit(o, parts);
    }

    private void submit(Op o, List<Part> parts) {
        ops++;
        o.pending = parts.size();
        switch (state) {
            case CONNECTED -> {
                for (Part p : parts) send(p);
                session.channel().flush();
            }
            case MOVING, RECONNECTING -> queue.addAll(parts);
            default -> {
                // FAILED: after the delay requests fail until a reconnect succeeds (later: the contract)
                if (!warnedDown) {
                    warnedDown = true;
                    LOG.warn("NBD node {}: no connection to {}: requests fail with EIO until it is back", nodeName, target.describe());
                }
                home.execute(() -> {
                    for (Part p : parts) partDone(p, Errno.EIO);
                });
            }
        }
    }

    /** Completes an op without I/O, from a later task (never inside the submitting call). */
    private void later(IoCompletion done, int errno) {
        Op o = op(done, 0, 0, 0);
        ops++;
        o.pending = 1;
        home.execute(() -> {
            o.pending = 0;
            o.errno = errno;
            opDone(o);
        });
    }

    private void send(Part p) {
        Session s = session;
        long cookie = nextCookie++;
        p.cookie = cookie;
        p.covered = 0;
        p.err = 0;
        sent.put(cookie, p);
        boolean payload = p.cmd == NbdCmd.NBD_CMD_WRITE;
        ByteBuf b = s.channel().alloc().directBuffer(28 + (payload ? p.length : 0));
        // request: magic, 16-bit flags, 16-bit type, 64-bit cookie, 64-bit offset, 32-bit length (big-endian)
        b.writeInt(NbdMagic.NBD_REQUEST_MAGIC).writeShort(p.flags).writeShort(p.cmd).writeLong(cookie).writeLong(p.offset).writeInt(p.length);
        if (payload) {
            if (p.zeros) b.writeZero(p.length);
            else copyIn(p.op, p.rel, b, p.length);
        }
        s.channel().write(b, s.channel().voidPromise());
    }

    private void sendQueue() {
        if (queue.isEmpty()) return;
        while (!queue.isEmpty()) send(queue.poll());
        session.channel().flush();
    }

    private void partDone(Part p, int errno) {
        Op o = p.op;
        if (errno != 0 && o.errno == 0) o.errno = errno;
        if (--o.pending > 0) return;
        if (o.errno == 0 && o.flushAfter) {
            o.flushAfter = false;
            ops--; // submit counts it again
            submit(o, List.of(new Part(o, NbdCmd.NBD_CMD_FLUSH, 0, 0, 0, 0, false)));
            return;
        }
        opDone(o);
    }

    private void opDone(Op o) {
        ops--;
        try {
            o.done.ioDone(o.errno);
        } finally {
            checkIdle();
        }
    }

    private void checkIdle() {
        while (ops == 0 && !idle.isEmpty()) idle.poll().run();
    }

    @Override public int inFlight() { return ops; }

    @Override
    public void whenIdle(Runnable r) {
        if (inFlight() == 0) r.run();
        else idle.add(r);
    }

    // ---- asynchronous requests ----

    @Override
    public void read(long offset, long address, int length, IoCompletion done) throws BlockException {
        checkRange(offset, length, false);
        checkAligned(offset, length);
        if (length == 0) {
            later(done, 0);
            return;
        }
        submit(op(done, address, 0, 0), NbdCmd.NBD_CMD_READ, 0, offset, length, maxPayload, false);
    }

    @Override
    public void readv(long offset, long iovAddress, int iovcnt, long totalLength, IoCompletion done) throws BlockException {
        checkRange(offset, totalLength, false);
        checkAligned(offset, totalLength);
        if (totalLength == 0) {
            later(done, 0);
            return;
        }
        submit(op(done, 0, iovAddress, iovcnt), NbdCmd.NBD_CMD_READ, 0, offset, totalLength, maxPayload, false);
    }

    @Override
    public void write(long offset, long address, int length, boolean fua, IoCompletion done) throws BlockException {
        writeOp(op(done, address, 0, 0), offset, length, fua);
    }

    @Override
    public void writev(long offset, long iovAddress, int iovcnt, long totalLength, boolean fua, IoCompletion done) throws BlockException {
        writeOp(op(done, 0, iovAddress, iovcnt), offset, totalLength, fua);
    }

    private void writeOp(Op o, long offset, long length, boolean fua) throws BlockException {
        checkRange(offset, length, true);
        checkAligned(offset, length);
        if (length == 0) {
            later(o.done, 0);
            return;
        }
        submit(o, NbdCmd.NBD_CMD_WRITE, fuaFlag(o, fua), offset, length, maxPayload, false);
    }

    /** NBD_CMD_FLAG_FUA when the server takes it; else a flush after the request, when it has one. */
    private int fuaFlag(Op o, boolean fua) {
        if (!fua) return 0;
        if (first.has(NBD_FLAG_SEND_FUA)) return NbdCmdFlags.NBD_CMD_FLAG_FUA;
        o.flushAfter = first.has(NBD_FLAG_SEND_FLUSH);
        return 0;
    }

    @Override
    public void flush(IoCompletion done) throws BlockException {
        if (state == State.CLOSED) throw new BlockException(Errno.EIO, "NBD node " + nodeName + " is closed");
        if (!first.has(NBD_FLAG_SEND_FLUSH)) { // the server has no cache to flush (spec: clients MUST NOT send it then)
            later(done, 0);
            return;
        }
        Op o = op(done, 0, 0, 0);
        submit(o, List.of(new Part(o, NbdCmd.NBD_CMD_FLUSH, 0, 0, 0, 0, false)));
    }

    @Override
    public void discard(long offset, long length, IoCompletion done) throws BlockException {
        checkRange(offset, length, true);
        checkAligned(offset, length);
        if (length == 0 || !first.has(NBD_FLAG_SEND_TRIM)) { // advisory: nothing to do
            later(done, 0);
            return;
        }
        submit(op(done, 0, 0, 0), NbdCmd.NBD_CMD_TRIM, 0, offset, length, alignedNoPayloadMax(), false);
    }

    @Override
    public void writeZeroes(long offset, long length, boolean mayUnmap, boolean fastOnly, boolean fua, IoCompletion done) throws BlockException {
        checkRange(offset, length, true);
        checkAligned(offset, length);
        if (length == 0) {
            later(done, 0);
            return;
        }
        Op o = op(done, 0, 0, 0);
        int flags = fuaFlag(o, fua);
        if (!first.has(NBD_FLAG_SEND_WRITE_ZEROES)) {
            if (fastOnly) {
                later(done, Errno.ENOTSUP);
                return;
            }
            submit(o, NbdCmd.NBD_CMD_WRITE, flags, offset, length, maxPayload, true); // zero buffers
            return;
        }
        if (fastOnly) {
            if (!first.has(NBD_FLAG_SEND_FAST_ZERO)) {
                later(done, Errno.ENOTSUP);
                return;
            }
            flags |= NbdCmdFlags.NBD_CMD_FLAG_FAST_ZERO;
        }
        if (!mayUnmap) flags |= NbdCmdFlags.NBD_CMD_FLAG_NO_HOLE;
        submit(o, NbdCmd.NBD_CMD_WRITE_ZEROES, flags, offset, length, alignedNoPayloadMax(), false);
    }

    private long alignedNoPayloadMax() {
        return MAX_NO_PAYLOAD / minBlock * minBlock;
    }

    // ---- replies (home thread, from the decoder) ----

    /**
     * Decodes replies of one connection (simple, structured) and completes their parts. A reply
     * that cannot belong to a request, or a chunk that breaks the spec, is a protocol error.
     * Bounds: every copy into request memory is checked against the part's range first.
     */
    private final class ReplyDecoder extends ByteToMessageDecoder {
        private final Session s;
        private boolean broken;

        ReplyDecoder(Session s) {
            this.s = s;
        }

        @Override
        protected void decode(ChannelHandlerContext ctx, ByteBuf in, List<Object> out) {
            while (!broken && session == s) {
                int ri = in.readerIndex();
                if (in.readableBytes() < 4) return;
                int magic = in.getInt(ri);
                if (magic == NbdMagic.NBD_SIMPLE_REPLY_MAGIC) {
                    // simple reply: magic, 32-bit error, 64-bit cookie, then data for a successful READ
                    if (in.readableBytes() < 16) return;
                    int err = in.getInt(ri + 4);
                    long cookie = in.getLong(ri + 8);
                    Part p = sent.get(cookie);
                    if (p == null) {
                        protocolError(s, "simple reply for unknown cookie " + cookie);
                        return;
                    }
                    if (s.structured() && p.cmd == NbdCmd.NBD_CMD_READ && err == 0) {
                        protocolError(s, "simple reply with data to NBD_CMD_READ after structured replies were negotiated");
                        return;
                    }
                    int data = err == 0 && p.cmd == NbdCmd.NBD_CMD_READ ? p.length : 0;
                    if (in.readableBytes() < 16 + data) return;
                    if (data > 0) copyOut(p.op, p.rel, in, ri + 16, data);
                    in.skipBytes(16 + data);
                    sent.remove(cookie);
                    partDone(p, err == 0 ? 0 : errno(err));
                } else if (magic == NbdMagic.NBD_STRUCTURED_REPLY_MAGIC) {
                    // chunk: magic, 16-bit flags, 16-bit type, 64-bit cookie, 32-bit length, payload
                    if (!s.structured()) {
                        protocolError(s, "structured reply without NBD_OPT_STRUCTURED_REPLY");
                        return;
                    }
                    if (in.readableBytes() < 20) return;
                    int flags = in.getUnsignedShort(ri + 4);
                    int type = in.getUnsignedShort(ri + 6);
                    long cookie = in.getLong(ri + 8);
                    long len = in.getUnsignedInt(ri + 16);
                    Part p = sent.get(cookie);
                    if (p == null) {
                        protocolError(s, NbdReplyType.name(type) + " chunk for unknown cookie " + cookie);
                        return;
                    }
                    if (len > (long) maxPayload + CHUNK_SLACK) {
                        protocolError(s, NbdReplyType.name(type) + " chunk of " + len + " bytes");
                        return;
                    }
                    if (in.readableBytes() < 20 + len) return;
                    String bad = chunk(p, flags, type, in, ri + 20, (int) len);
                    if (bad != null) {
                        protocolError(s, bad);
                        return;
                    }
                    in.skipBytes(20 + (int) len);
                    if ((flags & NbdReplyFlags.NBD_REPLY_FLAG_DONE) != 0) {
                        if (p.err == 0 && p.cmd == NbdCmd.NBD_CMD_READ && p.covered != p.length) {
                            protocolError(s, "NBD_CMD_READ reply covers " + p.covered + " of " + p.length + " bytes");
                            return;
                        }
                        sent.remove(cookie);
                        partDone(p, p.err);
                    }
                } else {
                    protocolError(s, "bad reply magic " + NbdMagic.name(magic));
                    return;
                }
            }
            if (broken || session != s) in.skipBytes(in.readableBytes());
        }

        /** One structured chunk's payload at {@code at}; null when it is fine, else what is wrong. */
        private String chunk(Part p, int flags, int type, ByteBuf in, int at, int len) {
            switch (type) {
                case NbdReplyType.NBD_REPLY_TYPE_NONE -> {
                    if (len != 0 || (flags & NbdReplyFlags.NBD_REPLY_FLAG_DONE) == 0) return "NBD_REPLY_TYPE_NONE of " + len + " bytes or without DONE";
                }
                case NbdReplyType.NBD_REPLY_TYPE_OFFSET_DATA -> {
                    if (p.cmd != NbdCmd.NBD_CMD_READ || len < 9) return "NBD_REPLY_TYPE_OFFSET_DATA of " + len + " bytes to " + NbdCmd.name(p.cmd);
                    long rel = in.getLong(at) - p.offset;
                    int n = len - 8;
                    if (rel < 0 || rel > p.length - n) return "NBD_REPLY_TYPE_OFFSET_DATA outside the request";
                    copyOut(p.op, p.rel + rel, in, at + 8, n);
                    p.covered += n;
                }
                case NbdReplyType.NBD_REPLY_TYPE_OFFSET_HOLE -> {
                    if (p.cmd != NbdCmd.NBD_CMD_READ || len != 12) return "NBD_REPLY_TYPE_OFFSET_HOLE of " + len + " bytes to " + NbdCmd.name(p.cmd);
                    long rel = in.getLong(at) - p.offset;
                    long n = in.getUnsignedInt(at + 8);
                    if (n == 0 || rel < 0 || rel > p.length - n) return "NBD_REPLY_TYPE_OFFSET_HOLE outside the request";
                    zeroOut(p.op, p.rel + rel, n);
                    p.covered += n;
                }
                default -> {
                    if (!NbdReplyType.isError(type)) return "unexpected chunk " + NbdReplyType.name(type) + " to " + NbdCmd.name(p.cmd);
                    // error chunk: 32-bit error, 16-bit message length, message (+ 64-bit offset for ERROR_OFFSET)
                    if (len < 6) return NbdReplyType.name(type) + " of " + len + " bytes";
                    int err = in.getInt(at);
                    int msg = in.getUnsignedShort(at + 4);
                    if (6 + msg > len) return NbdReplyType.name(type) + " with a message longer than the chunk";
                    if (err == 0) return NbdReplyType.name(type) + " with error 0";
                    if (p.err == 0) p.err = errno(err);
                    if (LOG.isDebugEnabled()) {
                        LOG.debug("NBD node {}: {} at {} failed: {} {}", nodeName, NbdCmd.name(p.cmd), p.offset, NbdError.name(err),
                                in.toString(at + 6, msg, java.nio.charset.StandardCharsets.UTF_8));
                    }
                }
            }
            return null;
        }

        @Override
        public void channelInactive(ChannelHandlerContext ctx) throws Exception {
            try {
                super.channelInactive(ctx);
            } finally {
                connectionLost(s, "the server closed the connection");
            }
        }

        @Override
        public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
            LOG.debug("NBD node {}: connection error: {}", nodeName, cause.toString());
            ctx.close();
        }

        void breakIt() {
            broken = true;
        }
    }

    /** The NBD error of a reply as an errno: the spec's values are Linux's; unknown ones count as EINVAL (spec). */
    static int errno(int nbdError) {
        return switch (nbdError) {
            case NbdError.NBD_EPERM, NbdError.NBD_EIO, NbdError.NBD_ENOMEM, NbdError.NBD_EINVAL, NbdError.NBD_ENOSPC,
                    NbdError.NBD_EOVERFLOW, NbdError.NBD_ENOTSUP -> nbdError;
            case NbdError.NBD_ESHUTDOWN -> Errno.EIO;
            default -> Errno.EINVAL;
        };
    }

    /** Home thread: a server that broke the protocol: its requests fail with EIO and the connection goes. */
    private void protocolError(Session s, String what) {
        LOG.warn("NBD node {}: {} broke the protocol: {}; failing its {} request(s) with EIO and dropping the connection",
                nodeName, target.describe(), what, sent.size());
        if (decoder != null && decoder.s == s) decoder.breakIt();
        List<Part> failed = new ArrayList<>(sent.values());
        sent.clear();
        for (Part p : failed) partDone(p, Errno.EIO);
        s.abort();
    }

    /** Home thread (or the thread of a move that found the channel closed): the connection of {@code s} is gone. */
    private void connectionLost(Session s, String why) {
        if (session != s || closed) return;
        session = null;
        decoder = null;
        s.abort();
        List<Part> pending = new ArrayList<>(sent.values());
        pending.sort((a, b) -> Long.compare(a.cookie, b.cookie));
        sent.clear();
        if (target.reconnectDelayNs() > 0) {
            LOG.warn("NBD node {}: lost the connection to {} ({}); reconnecting, {} request(s) wait up to {} s",
                    nodeName, target.describe(), why, pending.size() + queue.size(), target.reconnectDelayNs() / 1_000_000_000L);
            for (int i = pending.size() - 1; i >= 0; i--) queue.addFirst(pending.get(i));
            state = State.RECONNECTING;
            reconnectDeadline = System.nanoTime() + target.reconnectDelayNs();
            home.loop().schedule(this::expire, target.reconnectDelayNs(), TimeUnit.NANOSECONDS);
        } else {
            LOG.warn("NBD node {}: lost the connection to {} ({}); failing {} request(s) with EIO (reconnect-delay=0)",
                    nodeName, target.describe(), why, pending.size() + queue.size());
            state = State.FAILED;
            warnedDown = true;
            pending.addAll(queue);
            queue.clear();
            for (Part p : pending) partDone(p, Errno.EIO);
        }
        startReconnect();
    }

    /** The reconnect delay is over: what still waits fails, and so will new requests. */
    private void expire() {
        IOThread h = home;
        if (!h.inThread()) {
            h.execute(this::expire);
            return;
        }
        if (state != State.RECONNECTING || System.nanoTime() - reconnectDeadline < 0) return;
        LOG.warn("NBD node {}: no connection to {} after reconnect-delay; failing {} request(s) with EIO", nodeName, target.describe(), queue.size());
        state = State.FAILED;
        warnedDown = true;
        List<Part> failed = new ArrayList<>(queue);
        queue.clear();
        for (Part p : failed) partDone(p, Errno.EIO);
    }

    // ---- reconnect thread ----

    private synchronized void startReconnect() {
        if (closed || reconnector != null) return;
        Thread t = new Thread(this::reconnectLoop, "nbd-reconnect-" + nodeName);
        t.setDaemon(true);
        reconnector = t;
        t.start();
    }

    private void reconnectLoop() {
        long backoff = 50;
        int attempts = 0;
        while (!closed) {
            attempts++;
            try {
                Session s = Connector.open(target, tls, target.openTimeoutMs());
                String bad = s.size() != first.size() ? "the export's size changed from " + first.size() + " to " + s.size()
                        : !readOnly && s.has(NBD_FLAG_READ_ONLY) ? "the export became read-only" : null;
                if (bad != null) {
                    s.abort();
                    throw new IOException(bad);
                }
                LOG.info("NBD node {}: reconnected to {} after {} attempt(s)", nodeName, target.describe(), attempts);
                synchronized (this) {
                    reconnector = null;
                }
                home.execute(() -> adopt(s));
                return;
            } catch (IOException | RuntimeException e) {
                if (attempts == 1 || attempts % 100 == 0) LOG.info("NBD node {}: reconnect attempt {} to {} failed: {}", nodeName, attempts, target.describe(), e.getMessage());
            }
            try {
                Thread.sleep(backoff);
            } catch (InterruptedException e) {
                break;
            }
            backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
        }
        synchronized (this) {
            reconnector = null;
        }
    }

    /** A reconnected session reaches the home: it moves to the home loop and takes over. */
    private void adopt(Session s) {
        IOThread h = home;
        if (!h.inThread()) {
            h.execute(() -> adopt(s));
            return;
        }
        synchronized (this) {
            if (closed) {
                s.abort();
                return;
            }
            channelMoving = true;
            session = s;
        }
        boolean wasFailed = state == State.FAILED;
        state = State.MOVING;
        moveChannel(s, () -> {
            if (wasFailed) warnedDown = false;
            startTransmission(s);
        });
    }

    // ---- memory (bounds: callers checked rel + n against the part's range) ----

    private static final int COPY_OUT = 0;
    private static final int ZERO_OUT = 1;
    private static final int COPY_IN = 2;

    /** Copies {@code n} bytes of {@code src} at {@code idx} to the op's memory at {@code rel}. */
    private static void copyOut(Op o, long rel, ByteBuf src, int idx, int n) {
        walk(o, rel, n, COPY_OUT, src, idx);
    }

    private static void zeroOut(Op o, long rel, long n) {
        walk(o, rel, n, ZERO_OUT, null, 0);
    }

    /** Appends {@code n} bytes of the op's memory at {@code rel} to {@code dst}. */
    private static void copyIn(Op o, long rel, ByteBuf dst, int n) {
        walk(o, rel, n, COPY_IN, dst, 0);
    }

    /**
     * One walk over the op's memory (a flat buffer or its iovecs) from byte {@code rel} for
     * {@code n} bytes, doing {@code what} to each piece; an int rather than a lambda so the data
     * path allocates nothing.
     */
    private static void walk(Op o, long rel, long n, int what, ByteBuf buf, int idx) {
        if (o.iovAddress == 0) {
            piece(what, buf, idx, o.address + rel, n);
            return;
        }
        for (int i = 0; i < o.iovcnt && n > 0; i++) {
            long base = RawMemory.getLe64(o.iovAddress + 16L * i);
            long len = RawMemory.getLe64(o.iovAddress + 16L * i + 8);
            if (rel >= len) {
                rel -= len;
                continue;
            }
            long take = Math.min(len - rel, n);
            piece(what, buf, idx, base + rel, take);
            idx += (int) take;
            n -= take;
            rel = 0;
        }
    }

    private static void piece(int what, ByteBuf buf, int idx, long address, long n) {
        switch (what) {
            case COPY_OUT -> toNative(buf, idx, address, (int) n);
            case ZERO_OUT -> PlatformDependent.setMemory(address, n, (byte) 0);
            default -> fromNative(address, buf, (int) n);
        }
    }

    private static void toNative(ByteBuf src, int idx, long dst, int n) {
        if (src.hasMemoryAddress()) {
            PlatformDependent.copyMemory(src.memoryAddress() + idx, dst, n);
        } else if (src.hasArray()) {
            PlatformDependent.copyMemory(src.array(), src.arrayOffset() + idx, dst, n);
        } else {
            src.getBytes(idx, new com.sun.jna.Pointer(dst).getByteBuffer(0, n));
        }
    }

    private static void fromNative(long src, ByteBuf dst, int n) {
        if (dst.hasMemoryAddress()) {
            dst.ensureWritable(n);
            PlatformDependent.copyMemory(src, dst.memoryAddress() + dst.writerIndex(), n);
            dst.writerIndex(dst.writerIndex() + n);
        } else {
            dst.writeBytes(new com.sun.jna.Pointer(src).getByteBuffer(0, n));
        }
    }

    // ---- synchronous calls: a blocking side connection ----

    private NbdClient side() throws BlockException {
        if (state == State.CLOSED) throw new BlockException(Errno.EIO, "NBD node " + nodeName + " is closed");
        if (side == null) {
            if (System.nanoTime() - sideRetryAfter < 0) {
                throw new BlockException(Errno.EIO, "NBD node " + nodeName + ": no side connection to " + target.describe() + " (failed recently)");
            }
            try {
                side = Connector.open(target, tls, Math.min(target.openTimeoutMs(), SIDE_CONNECT_TIMEOUT_MS));
            } catch (IOException e) {
                // a server limited to one connection (qemu-nbd without -e) never answers a second one:
                // do not stall the home thread on every call
                sideRetryAfter = System.nanoTime() + TimeUnit.SECONDS.toNanos(SIDE_RETRY_SECONDS);
                LOG.warn("NBD node {}: cannot open a second connection to {} for synchronous calls (block status): {}; retrying in {} s",
                        nodeName, target.describe(), e.getMessage(), SIDE_RETRY_SECONDS);
                throw new BlockException(Errno.EIO, "NBD node " + nodeName + ": cannot connect to " + target.describe() + ": " + e.getMessage());
            }
        }
        side.bridge().deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(SYNC_TIMEOUT_MS);
        return side.client();
    }

    private interface SideCall<T> {
        T call(NbdClient c) throws IOException;
    }

    private <T> T onSide(String what, SideCall<T> call) throws BlockException {
        NbdClient c = side();
        try {
            return call.call(c);
        } catch (NbdClient.NbdErrorException e) {
            throw new BlockException(errno(e.error), "NBD node " + nodeName + ": " + what + ": " + NbdError.name(e.error));
        } catch (IOException e) {
            side.abort();
            side = null;
            throw new BlockException(Errno.EIO, "NBD node " + nodeName + ": " + what + ": " + e.getMessage());
        }
    }

    private static void check(NbdClient.Reply r, int cmd) throws NbdClient.NbdErrorException {
        int e = r.error();
        if (e != 0) throw new NbdClient.NbdErrorException(e);
    }

    private void simple(int cmd, int flags, long offset, long length) throws BlockException {
        onSide(NbdCmd.name(cmd), c -> {
            check(c.request(flags, cmd, offset, length, null), cmd);
            return null;
        });
    }

    @Override
    public void read(long offset, long address, int length) throws BlockException {
        checkRange(offset, length, false);
        checkAligned(offset, length);
        for (long done = 0; done < length; ) {
            int n = (int) Math.min(maxPayload, length - done);
            long at = offset + done;
            byte[] data = onSide("NBD_CMD_READ", c -> syncRead(c, at, n));
            PlatformDependent.copyMemory(data, 0, address + done, n);
            done += n;
        }
    }

    private static byte[] syncRead(NbdClient c, long offset, int n) throws IOException {
        NbdClient.Reply r = c.request(0, NbdCmd.NBD_CMD_READ, offset, n, null);
        check(r, NbdCmd.NBD_CMD_READ);
        long covered = 0;
        for (NbdClient.Chunk ch : r.chunks()) {
            if (ch.type() == NbdClient.SIMPLE) covered += ch.payload().length;
            else if (ch.type() == NbdReplyType.NBD_REPLY_TYPE_OFFSET_DATA) covered += ch.payload().length - 8;
            else if (ch.type() == NbdReplyType.NBD_REPLY_TYPE_OFFSET_HOLE && ch.payload().length == 12) covered += ByteBuffer.wrap(ch.payload()).getInt(8) & 0xFFFF_FFFFL;
        }
        if (covered != n) throw new NbdClient.ProtocolException("NBD_CMD_READ reply covers " + covered + " of " + n + " bytes");
        return NbdClient.readData(r, offset, n);
    }

    @Override
    public void write(long offset, long address, int length, boolean fua) throws BlockException {
        checkRange(offset, length, true);
        checkAligned(offset, length);
        for (long done = 0; done < length; ) {
            int n = (int) Math.min(maxPayload, length - done);
            byte[] data = new byte[n];
            PlatformDependent.copyMemory(address + done, data, 0, n);
            long at = offset + done;
            int flags = fua && first.has(NBD_FLAG_SEND_FUA) ? NbdCmdFlags.NBD_CMD_FLAG_FUA : 0;
            onSide("NBD_CMD_WRITE", c -> {
                check(c.request(flags, NbdCmd.NBD_CMD_WRITE, at, n, data), NbdCmd.NBD_CMD_WRITE);
                return null;
            });
            done += n;
        }
        if (fua && !first.has(NBD_FLAG_SEND_FUA)) flush();
    }

    @Override
    public void readv(long offset, long iovAddress, int iovcnt, long totalLength) throws BlockException {
        long at = offset;
        for (int i = 0; i < iovcnt; i++) {
            long base = RawMemory.getLe64(iovAddress + 16L * i);
            long len = RawMemory.getLe64(iovAddress + 16L * i + 8);
            for (long d = 0; d < len; d += Integer.MAX_VALUE) {
                int n = (int) Math.min(Integer.MAX_VALUE, len - d);
                read(at, base + d, n);
                at += n;
            }
        }
    }

    @Override
    public void writev(long offset, long iovAddress, int iovcnt, long totalLength, boolean fua) throws BlockException {
        long at = offset;
        for (int i = 0; i < iovcnt; i++) {
            long base = RawMemory.getLe64(iovAddress + 16L * i);
            long len = RawMemory.getLe64(iovAddress + 16L * i + 8);
            for (long d = 0; d < len; d += Integer.MAX_VALUE) {
                int n = (int) Math.min(Integer.MAX_VALUE, len - d);
                write(at, base + d, n, false);
                at += n;
            }
        }
        if (fua) flush();
    }

    @Override
    public void flush() throws BlockException {
        if (first.has(NBD_FLAG_SEND_FLUSH)) simple(NbdCmd.NBD_CMD_FLUSH, 0, 0, 0);
    }

    @Override
    public void discard(long offset, long length) throws BlockException {
        checkRange(offset, length, true);
        if (!first.has(NBD_FLAG_SEND_TRIM)) return;
        for (long d = 0; d < length; d += alignedNoPayloadMax()) {
            simple(NbdCmd.NBD_CMD_TRIM, 0, offset + d, Math.min(alignedNoPayloadMax(), length - d));
        }
    }

    @Override
    public void writeZeroes(long offset, long length, boolean mayUnmap, boolean fastOnly, boolean fua) throws BlockException {
        checkRange(offset, length, true);
        checkAligned(offset, length);
        if (!first.has(NBD_FLAG_SEND_WRITE_ZEROES) || (fastOnly && !first.has(NBD_FLAG_SEND_FAST_ZERO))) {
            if (fastOnly) throw new BlockException(Errno.ENOTSUP, "the NBD server offers no fast zeroing");
            for (long d = 0; d < length; d += maxPayload) {
                int n = (int) Math.min(maxPayload, length - d);
                long at = offset + d;
                onSide("NBD_CMD_WRITE", c -> {
                    check(c.request(0, NbdCmd.NBD_CMD_WRITE, at, n, new byte[n]), NbdCmd.NBD_CMD_WRITE);
                    return null;
                });
            }
            if (fua) flush();
            return;
        }
        int flags = (mayUnmap ? 0 : NbdCmdFlags.NBD_CMD_FLAG_NO_HOLE) | (fastOnly ? NbdCmdFlags.NBD_CMD_FLAG_FAST_ZERO : 0)
                | (fua && first.has(NBD_FLAG_SEND_FUA) ? NbdCmdFlags.NBD_CMD_FLAG_FUA : 0);
        for (long d = 0; d < length; d += alignedNoPayloadMax()) {
            simple(NbdCmd.NBD_CMD_WRITE_ZEROES, flags, offset + d, Math.min(alignedNoPayloadMax(), length - d));
        }
        if (fua && !first.has(NBD_FLAG_SEND_FUA)) flush();
    }

    @Override
    public void prefetch(long offset, long length) throws BlockException {
        checkRange(offset, length, false); // a hint: NBD_CMD_CACHE is not worth a round trip on the home thread
    }

    /**
     * NBD_CMD_BLOCK_STATUS {@code base:allocation} with NBD_CMD_FLAG_REQ_ONE on the side
     * connection; without the context, the whole range is reported as allocated data (what a
     * client may assume, spec "base:allocation").
     */
    @Override
    public void status(long offset, long maxLength, BlockStatus out) throws BlockException {
        checkRange(offset, Math.min(maxLength, size() - offset), false);
        long want = Math.min(maxLength, size() - offset);
        if (want <= 0) throw new BlockException(Errno.EINVAL, "status at the end of the node");
        long len = Math.min(want, alignedNoPayloadMax());
        // Without the context, or while the main connection is down or no side connection can be
        // had: allocated data, which is always a correct answer (it promises nothing about zeros).
        if (first.metaContext() < 0 || state != State.CONNECTED || (side == null && System.nanoTime() - sideRetryAfter < 0)) {
            out.set(want, 0);
            return;
        }
        try {
            side();
        } catch (BlockException e) {
            out.set(want, 0);
            return;
        }
        Session s = side;
        if (s.metaContext() < 0) {
            out.set(want, 0);
            return;
        }
        long[] got = onSide("NBD_CMD_BLOCK_STATUS", c -> {
            NbdClient.Reply r = c.request(NbdCmdFlags.NBD_CMD_FLAG_REQ_ONE, NbdCmd.NBD_CMD_BLOCK_STATUS, offset, len, null);
            check(r, NbdCmd.NBD_CMD_BLOCK_STATUS);
            for (NbdClient.Chunk ch : r.chunks()) {
                if (ch.type() != NbdReplyType.NBD_REPLY_TYPE_BLOCK_STATUS) continue;
                // 32-bit context id, then descriptors of 32-bit length and 32-bit flags
                if (ch.payload().length < 12 || (ch.payload().length - 4) % 8 != 0) {
                    throw new NbdClient.ProtocolException("NBD_REPLY_TYPE_BLOCK_STATUS of " + ch.payload().length + " bytes");
                }
                ByteBuffer b = ByteBuffer.wrap(ch.payload());
                long id = Integer.toUnsignedLong(b.getInt());
                if (id != s.metaContext()) continue;
                long l = Integer.toUnsignedLong(b.getInt());
                int f = b.getInt();
                if (l == 0) throw new NbdClient.ProtocolException("block status extent of 0 bytes");
                return new long[] {Math.min(l, want), f & (NbdMetaContext.NBD_STATE_HOLE | NbdMetaContext.NBD_STATE_ZERO)};
            }
            throw new NbdClient.ProtocolException("NBD_CMD_BLOCK_STATUS reply without base:allocation");
        });
        out.set(got[0], (int) got[1]);
    }

    // ---- close ----

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        state = State.CLOSED;
        Thread t = reconnector;
        if (t != null) t.interrupt();
        Session s = session;
        session = null;
        if (s != null) {
            Channel ch = s.channel();
            if (ch.isActive() && ch.isRegistered()) {
                ByteBuf b = ch.alloc().buffer(28);
                b.writeInt(NbdMagic.NBD_REQUEST_MAGIC).writeShort(0).writeShort(NbdCmd.NBD_CMD_DISC).writeLong(0).writeLong(0).writeInt(0);
                ch.writeAndFlush(b).addListener(ChannelFutureListener.CLOSE);
            } else {
                ch.close();
            }
        }
        if (side != null) {
            try {
                side.client().close();
            } catch (IOException ignored) {
                // the server is gone: nothing to say goodbye to
            }
            side = null;
        }
        List<Part> left = new ArrayList<>(sent.values());
        left.addAll(queue);
        sent.clear();
        queue.clear();
        for (Part p : left) partDone(p, Errno.EIO);
        if (onClose != null) onClose.run();
    }
}
