package dev.vmm.vhostuser.connection;

import static dev.vmm.vhostuser.message.VhostUserRequest.*;

import dev.vmm.vhostuser.message.DeviceConfig;
import dev.vmm.vhostuser.message.Inflight;
import dev.vmm.vhostuser.message.MemoryTable;
import dev.vmm.vhostuser.message.VhostUserException;
import dev.vmm.vhostuser.message.VhostUserHeader;
import dev.vmm.vhostuser.message.VhostUserMessage;
import dev.vmm.vhostuser.message.VhostUserProtocolFeature;
import dev.vmm.vhostuser.message.VhostUserRequest;
import dev.vmm.vhostuser.message.VringState;
import java.nio.ByteBuffer;
import java.util.HashSet;
import java.util.Set;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Turns validated messages into typed {@link VhostUserBackendHandler} calls and writes the
 * replies; one per connection (it remembers the negotiated protocol features).
 *
 * <p>Replies:
 * <ul>
 *   <li>requests with a reply body of their own ({@link VhostUserRequest#hasReply}) get it; on
 *       error they get a reply with an empty payload (the spec's error for GET_CONFIG; for the
 *       others a size the front-end rejects, so it fails at once instead of waiting);
 *   <li>other requests with NEED_REPLY, once REPLY_ACK is negotiated, get a u64: 0 on success,
 *       1 on error (REPLY_ACK section of the spec);
 *   <li>otherwise an error is only logged (first time per request code at WARN, then DEBUG).
 * </ul>
 * Unknown request codes are not fatal: the spec lets the front-end ask for a reply on any
 * request, so they are answered like any failed request (error ack if asked, else logged once
 * and ignored); rust-vmm closes the connection instead, which would turn a newer front-end's
 * optional message into a lost disk.
 *
 * <p>Thread contract: the connection's event-loop thread only.
 */
public final class VhostUserDispatcher {
    private static final Logger log = LoggerFactory.getLogger(VhostUserDispatcher.class);

    /** Where replies go (the connection's socket). */
    @FunctionalInterface
    public interface ReplySender {
        /** Sends one reply message; failure to send is a CLOSE_CONNECTION. */
        void sendReply(int request, byte[] payload, int[] fds) throws VhostUserException;
    }

    private static final int[] NO_FDS = new int[0];

    private final VhostUserBackendHandler handler;
    private final ReplySender out;
    private long ackedProtocolFeatures;
    private long errors;
    private final Set<Integer> logged = new HashSet<>();

    public VhostUserDispatcher(VhostUserBackendHandler handler, ReplySender out) {
        this.handler = handler;
        this.out = out;
    }

    /** Protocol features the front-end set (SET_PROTOCOL_FEATURES accepted by the handler). */
    public long ackedProtocolFeatures() { return ackedProtocolFeatures; }

    /** Requests that failed so far on this connection. */
    public long errors() { return errors; }

    private boolean replyAck() {
        return (ackedProtocolFeatures & VhostUserProtocolFeature.mask(VhostUserProtocolFeature.REPLY_ACK)) != 0;
    }

    private boolean hasReplyBody(int request) {
        if (request == VHOST_USER_SET_LOG_BASE) {
            return (ackedProtocolFeatures & VhostUserProtocolFeature.mask(VhostUserProtocolFeature.LOG_SHMFD)) != 0;
        }
        return VhostUserRequest.hasReply(request);
    }

    /**
     * Handles one message (the message is closed on return: fds not taken are closed).
     * Throws only CLOSE_CONNECTION exceptions; REPLY_ERRORs are answered here.
     */
    public void dispatch(VhostUserMessage msg) throws VhostUserException {
        try (msg) {
            call(msg);
            if (msg.needReply() && replyAck() && !hasReplyBody(msg.request())) {
                out.sendReply(msg.request(), u64(0), NO_FDS);
            }
        } catch (VhostUserException e) {
            if (e.kind() == VhostUserException.Kind.CLOSE_CONNECTION) throw e;
            answerError(msg.header(), e);
        }
    }

    /**
     * Answers a message the decoder rejected with REPLY_ERROR (its fds are already closed),
     * or rethrows a CLOSE_CONNECTION.
     */
    public void reject(VhostUserHeader header, VhostUserException e) throws VhostUserException {
        if (e.kind() == VhostUserException.Kind.CLOSE_CONNECTION) throw e;
        answerError(header, e);
    }

    private void answerError(VhostUserHeader h, VhostUserException e) throws VhostUserException {
        errors++;
        int req = h.request();
        if (logged.add(req)) {
            log.warn("{}: rejected {}", handler, e.getMessage()); // the message starts with the wire name
        } else {
            log.debug("{}: rejected {}", handler, e.getMessage());
        }
        if (hasReplyBody(req)) {
            out.sendReply(req, new byte[0], NO_FDS);
        } else if (h.needReply() && replyAck()) {
            out.sendReply(req, u64(1), NO_FDS);
        }
    }

    private void call(VhostUserMessage msg) throws VhostUserException {
        int req = msg.request();
        switch (req) {
            case VHOST_USER_GET_FEATURES -> out.sendReply(req, u64(handler.getFeatures()), NO_FDS);
            case VHOST_USER_SET_FEATURES -> handler.setFeatures(msg.u64());
            case VHOST_USER_GET_PROTOCOL_FEATURES -> out.sendReply(req, u64(handler.getProtocolFeatures()), NO_FDS);
            case VHOST_USER_SET_PROTOCOL_FEATURES -> {
                long f = msg.u64();
                handler.setProtocolFeatures(f);
                ackedProtocolFeatures = f;
            }
            case VHOST_USER_SET_OWNER -> handler.setOwner();
            case VHOST_USER_RESET_OWNER -> handler.resetOwner();
            case VHOST_USER_SET_MEM_TABLE -> {
                MemoryTable t = msg.memoryTable();
                int[] fds = peekFds(msg);
                handler.setMemTable(t.regions(), fds);
                msg.takeFds();
            }
            case VHOST_USER_GET_MAX_MEM_SLOTS -> out.sendReply(req, u64(handler.getMaxMemSlots()), NO_FDS);
            case VHOST_USER_ADD_MEM_REG -> {
                handler.addMemReg(msg.singleMemoryRegion(), peekFds(msg)[0]);
                msg.takeFd(0);
            }
            // an fd on REM_MEM_REG MUST be closed unused: msg.close() does it
            case VHOST_USER_REM_MEM_REG -> handler.remMemReg(msg.singleMemoryRegion());
            case VHOST_USER_GET_QUEUE_NUM -> out.sendReply(req, u64(handler.getQueueNum()), NO_FDS);
            case VHOST_USER_SET_VRING_NUM -> {
                VringState s = msg.vringState();
                handler.setVringNum(s.index(), s.num());
            }
            case VHOST_USER_SET_VRING_ADDR -> handler.setVringAddr(msg.vringAddr());
            case VHOST_USER_SET_VRING_BASE -> {
                VringState s = msg.vringState();
                handler.setVringBase(s.index(), s.num());
            }
            case VHOST_USER_GET_VRING_BASE -> {
                int index = msg.vringState().index();
                int base = handler.getVringBase(index);
                ByteBuffer b = buffer(VringState.SIZE);
                new VringState(index, base).encode(b);
                out.sendReply(req, b.array(), NO_FDS);
            }
            case VHOST_USER_SET_VRING_KICK, VHOST_USER_SET_VRING_CALL, VHOST_USER_SET_VRING_ERR -> {
                long v = msg.u64();
                int index = (int) (v & VhostUserMessage.VRING_IDX_MASK);
                int fd = msg.fdCount() == 1 ? peekFds(msg)[0] : -1;
                switch (req) {
                    case VHOST_USER_SET_VRING_KICK -> handler.setVringKick(index, fd);
                    case VHOST_USER_SET_VRING_CALL -> handler.setVringCall(index, fd);
                    default -> handler.setVringErr(index, fd);
                }
                if (fd >= 0) msg.takeFd(0);
            }
            case VHOST_USER_SET_VRING_ENABLE -> {
                VringState s = msg.vringState();
                if (s.num() != 0 && s.num() != 1) throw VhostUserException.replyError(req, "enable must be 0 or 1, got " + s.num());
                handler.setVringEnable(s.index(), s.num() == 1);
            }
            case VHOST_USER_GET_CONFIG -> {
                DeviceConfig c = msg.deviceConfig();
                byte[] data = handler.getConfig(c.offset(), c.size(), c.flags());
                if (data == null || data.length != c.size()) {
                    throw VhostUserException.replyError(req, "handler returned " + (data == null ? "null" : data.length + " bytes") + " for " + c.size());
                }
                DeviceConfig r = new DeviceConfig(c.offset(), c.size(), c.flags(), data);
                ByteBuffer b = buffer(r.payloadSize());
                r.encode(b);
                out.sendReply(req, b.array(), NO_FDS);
            }
            case VHOST_USER_SET_CONFIG -> {
                DeviceConfig c = msg.deviceConfig();
                handler.setConfig(c.offset(), c.data(), c.flags());
            }
            case VHOST_USER_GET_INFLIGHT_FD -> {
                Inflight q = msg.inflight();
                VhostUserBackendHandler.InflightFd r = handler.getInflightFd(q.numQueues(), q.queueSize());
                ByteBuffer b = buffer(Inflight.SIZE);
                r.description().encode(b);
                out.sendReply(req, b.array(), new int[] {r.fd()});
            }
            case VHOST_USER_SET_INFLIGHT_FD -> {
                handler.setInflightFd(msg.inflight(), peekFds(msg)[0]);
                msg.takeFd(0);
            }
            case VHOST_USER_SET_LOG_BASE -> {
                int fd = msg.fdCount() == 1 ? peekFds(msg)[0] : -1;
                handler.setLogBase(msg.logDescription(), fd);
                if (fd >= 0) msg.takeFd(0);
                if (hasReplyBody(req)) out.sendReply(req, u64(0), NO_FDS);
            }
            case VHOST_USER_RESET_DEVICE -> handler.resetDevice();
            case VHOST_USER_SET_STATUS -> handler.setStatus((int) msg.u64());
            case VHOST_USER_GET_STATUS -> out.sendReply(req, u64(Integer.toUnsignedLong(handler.getStatus())), NO_FDS);
            default -> throw VhostUserException.replyError(req, "request not supported");
        }
    }

    /** The message's fds without taking them (taken only once the handler returned normally). */
    private static int[] peekFds(VhostUserMessage msg) {
        return msg.peekFds();
    }

    private static ByteBuffer buffer(int size) {
        return ByteBuffer.allocate(size).order(VhostUserHeader.ORDER);
    }

    private static byte[] u64(long v) {
        ByteBuffer b = buffer(8);
        b.putLong(v);
        return b.array();
    }
}
