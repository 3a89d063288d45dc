package dev.vmm.vhostuser.frontend;

import dev.vmm.core.linux.Errno;

import static dev.vmm.vhostuser.message.VhostUserRequest.*;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.vhostuser.message.DeviceConfig;
import dev.vmm.vhostuser.message.Inflight;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.MemoryTable;
import dev.vmm.vhostuser.message.VhostUserHeader;
import dev.vmm.vhostuser.message.VhostUserMessage;
import dev.vmm.vhostuser.message.VhostUserProtocolFeature;
import dev.vmm.vhostuser.message.VhostUserRequest;
import dev.vmm.vhostuser.message.VringAddr;
import dev.vmm.vhostuser.message.VringState;
import java.io.IOException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.util.Arrays;
import java.util.List;

/**
 * The front-end side of a vhost-user socket, for the Java front-end that drives tests and
 * benchmarks: connects to a back-end, sends every request with typed methods (fds included)
 * and reads replies, blocking, each call bounded by the timeout given to {@link #connect}.
 * {@link #sendRaw} sends any bytes and fds, for malformed messages on purpose.
 *
 * <p>REPLY_ACK: after {@link #setReplyAck(boolean) setReplyAck(true)} (do it once REPLY_ACK is
 * negotiated), requests without a reply body of their own carry NEED_REPLY and the call
 * waits for the u64 and throws {@link VhostUserNackException} when it is not 0.
 *
 * <p>Fds passed in stay the caller's (the kernel duplicates them into the peer); fds received
 * are the caller's to close. Thread contract: one thread at a time.
 */
public final class VhostUserFrontendConnection implements AutoCloseable {
    /** A non-zero REPLY_ACK or an error reply (empty payload) from the back-end. */
    public static final class VhostUserNackException extends IOException {
        private static final long serialVersionUID = 1L;
        private final long code;

        public VhostUserNackException(int request, long code, String what) {
            super(VhostUserRequest.name(request) + ": " + what);
            this.code = code;
        }

        /** The REPLY_ACK value (non-zero), or -1 for an empty reply. */
        public long code() { return code; }
    }

    /** One reply: header, payload and fds (the caller's to close). */
    public record Reply(VhostUserHeader header, byte[] payload, int[] fds) {
        public ByteBuffer buffer() { return ByteBuffer.wrap(payload).order(VhostUserHeader.ORDER); }
    }

    /** GET_INFLIGHT_FD's answer: the area and its fd (the caller's to close). */
    public record InflightReply(Inflight inflight, int fd) {}

    private static final int[] NO_FDS = new int[0];

    private final int fd;
    private final LibcSocket.MsgBuffer buf = new LibcSocket.MsgBuffer(VhostUserHeader.SIZE + VhostUserHeader.MAX_PAYLOAD_SIZE + 64, MemoryTable.MAX_REGIONS);
    private boolean replyAck;
    private boolean closed;

    private VhostUserFrontendConnection(int fd) {
        this.fd = fd;
    }

    /** Connects to the back-end socket at {@code path}; every later send or receive waits at most {@code timeoutMs}. */
    public static VhostUserFrontendConnection connect(String path, long timeoutMs) throws IOException {
        Memory addr = LibcSocket.sockaddrUn(path);
        int fd;
        try {
            fd = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_STREAM | LibcSocket.SOCK_CLOEXEC, 0);
        } catch (LastErrorException e) {
            throw new IOException("socket: " + LibC.describe(e.getErrorCode()));
        }
        try {
            LibcSocket.setTimeouts(fd, timeoutMs);
            LibcSocket.connect(fd, Pointer.nativeValue(addr), LibcSocket.SOCKADDR_UN_SIZEOF);
        } catch (LastErrorException e) {
            LibcSocket.closeQuietly(fd);
            throw new IOException("cannot connect to " + path + ": " + LibC.describe(e.getErrorCode()));
        } finally {
            java.lang.ref.Reference.reachabilityFence(addr);   // native memory in use until connect returns
        }
        return new VhostUserFrontendConnection(fd);
    }

    /** The socket fd (for tests that poke at it). */
    public int fd() { return fd; }

    /** Ask for REPLY_ACK on requests without a reply body (only after REPLY_ACK was negotiated). */
    public void setReplyAck(boolean on) { this.replyAck = on; }

    // ---- raw I/O ----

    /** Sends {@code bytes} as they are, with {@code fds} attached to the first byte. */
    public void sendRaw(byte[] bytes, int... fds) throws IOException {
        int off = 0;
        int nfds = fds.length;
        while (off < bytes.length) {
            int chunk = Math.min(bytes.length - off, buf.dataCapacity());
            buf.dataPointer().write(0, bytes, off, chunk);
            long n;
            try {
                n = buf.send(fd, 0, chunk, fds, nfds, 0);
            } catch (LastErrorException e) {
                if (e.getErrorCode() == Errno.EINTR) continue; // nothing was sent: send the chunk again
                throw new IOException("sendmsg: " + LibC.describe(e.getErrorCode()));
            }
            if (n < 0) throw new SocketTimeoutException("send timed out");
            off += (int) n;
            nfds = 0;
        }
    }

    /** Sends one request message with NEED_REPLY as given. */
    public void send(int request, boolean needReply, byte[] payload, int... fds) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(VhostUserHeader.SIZE + payload.length).order(VhostUserHeader.ORDER);
        VhostUserHeader.request(request, payload.length, needReply).encode(b);
        b.put(payload);
        sendRaw(b.array(), fds);
    }

    /** Reads one message (any header), with the fds that came with it. */
    public Reply receive() throws IOException {
        byte[] hb = readFully(VhostUserHeader.SIZE, fdCollector);
        VhostUserHeader h = VhostUserHeader.decode(ByteBuffer.wrap(hb).order(VhostUserHeader.ORDER));
        if (h.sizeUnsigned() > VhostUserHeader.MAX_PAYLOAD_SIZE) {
            fdCollector.closeAll();
            throw new IOException("reply payload too big: " + h);
        }
        byte[] p = readFully(h.size(), fdCollector);
        return new Reply(h, p, fdCollector.drain());
    }

    /** Reads a reply to {@code request}: REPLY flag and request code checked. */
    public Reply receiveReply(int request) throws IOException {
        Reply r = receive();
        if (!r.header().isReply() || r.header().request() != request) {
            for (int f : r.fds()) LibcSocket.closeQuietly(f);
            throw new IOException("expected a reply to " + VhostUserRequest.name(request) + ", got " + r.header());
        }
        return r;
    }

    private final FdCollector fdCollector = new FdCollector();

    private static final class FdCollector {
        int[] fds = new int[16];
        int n;

        void add(int f) {
            if (n == fds.length) fds = Arrays.copyOf(fds, n * 2);
            fds[n++] = f;
        }

        int[] drain() {
            int[] r = Arrays.copyOf(fds, n);
            n = 0;
            return r;
        }

        void closeAll() {
            for (int i = 0; i < n; i++) LibcSocket.closeQuietly(fds[i]);
            n = 0;
        }
    }

    private byte[] readFully(int len, FdCollector fds) throws IOException {
        int have = 0;
        while (have < len) {
            long n;
            try {
                n = buf.recv(fd, have, len - have, 0);
            } catch (LastErrorException e) {
                // EINTR: a socket with SO_RCVTIMEO is not restarted after a signal, and io_uring's
                // ring teardown signals (task_work) every thread that set up or used the ring,
                // which in tests includes the test thread. Nothing was received: read again.
                if (e.getErrorCode() == Errno.EINTR) continue;
                fds.closeAll();
                throw new IOException("recvmsg: " + LibC.describe(e.getErrorCode()));
            }
            for (int i = 0; i < buf.fdCount(); i++) fds.add(buf.fd(i));
            if (n < 0) {
                fds.closeAll();
                throw new SocketTimeoutException("no reply within the timeout");
            }
            if (n == 0) {
                fds.closeAll();
                throw new IOException("back-end closed the connection");
            }
            have += (int) n;
        }
        return buf.dataPointer().getByteArray(0, len);
    }

    // ---- typed requests ----

    private void noReplyRequest(int request, byte[] payload, int... fds) throws IOException {
        send(request, replyAck, payload, fds);
        if (replyAck) {
            Reply r = receiveReply(request);
            closeAll(r.fds());
            if (r.payload().length != 8) throw new VhostUserNackException(request, -1, "REPLY_ACK of " + r.payload().length + " bytes");
            long code = r.buffer().getLong();
            if (code != 0) throw new VhostUserNackException(request, code, "back-end answered error " + code);
        }
    }

    private Reply replyRequest(int request, byte[] payload, int... fds) throws IOException {
        send(request, false, payload, fds);
        Reply r = receiveReply(request);
        if (r.payload().length == 0) {
            closeAll(r.fds());
            throw new VhostUserNackException(request, -1, "empty reply (error)");
        }
        return r;
    }

    private long u64Reply(int request) throws IOException {
        Reply r = replyRequest(request, new byte[0]);
        closeAll(r.fds());
        if (r.payload().length != 8) throw new IOException(VhostUserRequest.name(request) + ": reply of " + r.payload().length + " bytes");
        return r.buffer().getLong();
    }

    private static void closeAll(int[] fds) {
        for (int f : fds) LibcSocket.closeQuietly(f);
    }

    private static byte[] u64(long v) {
        return ByteBuffer.allocate(8).order(VhostUserHeader.ORDER).putLong(v).array();
    }

    private static byte[] state(int index, int num) {
        ByteBuffer b = ByteBuffer.allocate(VringState.SIZE).order(VhostUserHeader.ORDER);
        new VringState(index, num).encode(b);
        return b.array();
    }

    public long getFeatures() throws IOException { return u64Reply(VHOST_USER_GET_FEATURES); }

    public void setFeatures(long features) throws IOException { noReplyRequest(VHOST_USER_SET_FEATURES, u64(features)); }

    public long getProtocolFeatures() throws IOException { return u64Reply(VHOST_USER_GET_PROTOCOL_FEATURES); }

    /** SET_PROTOCOL_FEATURES; turns REPLY_ACK mode on when that bit is set (after this request). */
    public void setProtocolFeatures(long features) throws IOException {
        noReplyRequest(VHOST_USER_SET_PROTOCOL_FEATURES, u64(features));
        replyAck = (features & VhostUserProtocolFeature.mask(VhostUserProtocolFeature.REPLY_ACK)) != 0;
    }

    public void setOwner() throws IOException { noReplyRequest(VHOST_USER_SET_OWNER, new byte[0]); }

    public void resetOwner() throws IOException { noReplyRequest(VHOST_USER_RESET_OWNER, new byte[0]); }

    /** SET_MEM_TABLE with one fd per region, in order. */
    public void setMemTable(List<MemoryRegion> regions, int[] fds) throws IOException {
        MemoryTable t = new MemoryTable(regions);
        ByteBuffer b = ByteBuffer.allocate(t.size()).order(VhostUserHeader.ORDER);
        t.encode(b);
        noReplyRequest(VHOST_USER_SET_MEM_TABLE, b.array(), fds);
    }

    public long getMaxMemSlots() throws IOException { return u64Reply(VHOST_USER_GET_MAX_MEM_SLOTS); }

    public void addMemReg(MemoryRegion region, int fd) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(MemoryRegion.SINGLE_SIZE).order(VhostUserHeader.ORDER);
        region.encodeSingle(b);
        noReplyRequest(VHOST_USER_ADD_MEM_REG, b.array(), fd);
    }

    public void remMemReg(MemoryRegion region) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(MemoryRegion.SINGLE_SIZE).order(VhostUserHeader.ORDER);
        region.encodeSingle(b);
        noReplyRequest(VHOST_USER_REM_MEM_REG, b.array());
    }

    public long getQueueNum() throws IOException { return u64Reply(VHOST_USER_GET_QUEUE_NUM); }

    public void setVringNum(int index, int num) throws IOException { noReplyRequest(VHOST_USER_SET_VRING_NUM, state(index, num)); }

    public void setVringAddr(VringAddr addr) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(VringAddr.SIZE).order(VhostUserHeader.ORDER);
        addr.encode(b);
        noReplyRequest(VHOST_USER_SET_VRING_ADDR, b.array());
    }

    public void setVringBase(int index, int base) throws IOException { noReplyRequest(VHOST_USER_SET_VRING_BASE, state(index, base)); }

    /** GET_VRING_BASE: stops the ring; returns the next available index. */
    public int getVringBase(int index) throws IOException {
        Reply r = replyRequest(VHOST_USER_GET_VRING_BASE, state(index, 0));
        closeAll(r.fds());
        if (r.payload().length != VringState.SIZE) throw new IOException("GET_VRING_BASE reply of " + r.payload().length + " bytes");
        return VringState.decode(r.buffer()).num();
    }

    private void vringFd(int request, int index, int fd) throws IOException {
        long v = (index & VhostUserMessage.VRING_IDX_MASK) | (fd < 0 ? VhostUserMessage.VRING_NOFD_MASK : 0);
        if (fd < 0) noReplyRequest(request, u64(v)); else noReplyRequest(request, u64(v), fd);
    }

    /** SET_VRING_KICK; {@code fd} -1 sets the invalid-fd bit (polling). */
    public void setVringKick(int index, int fd) throws IOException { vringFd(VHOST_USER_SET_VRING_KICK, index, fd); }

    public void setVringCall(int index, int fd) throws IOException { vringFd(VHOST_USER_SET_VRING_CALL, index, fd); }

    public void setVringErr(int index, int fd) throws IOException { vringFd(VHOST_USER_SET_VRING_ERR, index, fd); }

    public void setVringEnable(int index, boolean enable) throws IOException {
        noReplyRequest(VHOST_USER_SET_VRING_ENABLE, state(index, enable ? 1 : 0));
    }

    /** GET_CONFIG: {@code size} bytes at {@code offset}; a NACK exception on the empty-payload error. */
    public byte[] getConfig(int offset, int size, int flags) throws IOException {
        DeviceConfig q = new DeviceConfig(offset, size, flags, new byte[size]);
        ByteBuffer b = ByteBuffer.allocate(q.payloadSize()).order(VhostUserHeader.ORDER);
        q.encode(b);
        Reply r = replyRequest(VHOST_USER_GET_CONFIG, b.array());
        closeAll(r.fds());
        if (r.payload().length != q.payloadSize()) throw new IOException("GET_CONFIG reply of " + r.payload().length + " bytes, asked " + q.payloadSize());
        return DeviceConfig.decode(r.buffer()).data();
    }

    public void setConfig(int offset, byte[] data, int flags) throws IOException {
        DeviceConfig c = new DeviceConfig(offset, data.length, flags, data);
        ByteBuffer b = ByteBuffer.allocate(c.payloadSize()).order(VhostUserHeader.ORDER);
        c.encode(b);
        noReplyRequest(VHOST_USER_SET_CONFIG, b.array());
    }

    /** GET_INFLIGHT_FD: the returned fd is the caller's to close. */
    public InflightReply getInflightFd(int numQueues, int queueSize) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(Inflight.SIZE).order(VhostUserHeader.ORDER);
        new Inflight(0, 0, numQueues, queueSize).encode(b);
        Reply r = replyRequest(VHOST_USER_GET_INFLIGHT_FD, b.array());
        if (r.payload().length != Inflight.SIZE || r.fds().length != 1) {
            closeAll(r.fds());
            throw new IOException("GET_INFLIGHT_FD reply of " + r.payload().length + " bytes with " + r.fds().length + " fds");
        }
        return new InflightReply(Inflight.decode(r.buffer()), r.fds()[0]);
    }

    public void setInflightFd(Inflight inflight, int fd) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(Inflight.SIZE).order(VhostUserHeader.ORDER);
        inflight.encode(b);
        noReplyRequest(VHOST_USER_SET_INFLIGHT_FD, b.array(), fd);
    }

    public void resetDevice() throws IOException { noReplyRequest(VHOST_USER_RESET_DEVICE, new byte[0]); }

    public void setStatus(int status) throws IOException { noReplyRequest(VHOST_USER_SET_STATUS, u64(Integer.toUnsignedLong(status))); }

    public int getStatus() throws IOException { return (int) u64Reply(VHOST_USER_GET_STATUS); }

    /** Closes the socket (the back-end sees EOF). Idempotent. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        LibcSocket.closeQuietly(fd);
    }
}
