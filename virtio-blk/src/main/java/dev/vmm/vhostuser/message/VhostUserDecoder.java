package dev.vmm.vhostuser.message;

import static dev.vmm.vhostuser.message.VhostUserRequest.*;

import dev.vmm.core.linux.LibcSocket;
import java.nio.ByteBuffer;

/**
 * Validation of front-end messages in layers, after rust-vmm vhost:
 * <ol>
 *   <li>{@link #checkHeader}: the header alone. A wrong version or a size above
 *       {@link VhostUserHeader#MAX_PAYLOAD_SIZE} means the stream cannot be trusted:
 *       {@link VhostUserException.Kind#CLOSE_CONNECTION}.
 *   <li>{@link #decode} syntax: flags, payload size consistent with the request (fixed sizes,
 *       SET_MEM_TABLE's nregions, GET/SET_CONFIG's size). Framing is intact, so errors are
 *       {@link VhostUserException.Kind#REPLY_ERROR}.
 *   <li>{@link #decode} fd rules: which requests may carry fds and how many. An unexpected or
 *       missing fd is a REPLY_ERROR; every fd of a rejected message is closed here.
 *   <li>Semantics (feature negotiation, ring indices, addresses, ...) are the device layer's.
 * </ol>
 * Nothing but {@link VhostUserException} leaves these methods for any input.
 * Thread contract: stateless, any thread.
 */
public final class VhostUserDecoder {
    private VhostUserDecoder() {}

    /** Layer 0: version and maximum size. */
    public static VhostUserHeader checkHeader(VhostUserHeader h) throws VhostUserException {
        if (h.version() != VhostUserHeader.VERSION) {
            throw VhostUserException.closeConnection(h.request(), "unsupported version " + h.version() + " (flags 0x" + Integer.toHexString(h.flags()) + ")");
        }
        if (h.sizeUnsigned() > VhostUserHeader.MAX_PAYLOAD_SIZE) {
            throw VhostUserException.closeConnection(h.request(), "payload size " + h.sizeUnsigned() + " > " + VhostUserHeader.MAX_PAYLOAD_SIZE);
        }
        return h;
    }

    /**
     * Layers 1 and 2 on a complete message. {@code fds[0..nfds)} are owned by this call: they
     * end up in the returned message, or are closed before the exception is thrown.
     * {@code fdsTruncated}: the kernel reported MSG_CTRUNC or more fds than room came.
     */
    public static VhostUserMessage decode(VhostUserHeader h, byte[] payload, int[] fds, int nfds, boolean fdsTruncated)
            throws VhostUserException {
        int[] own = new int[nfds];
        System.arraycopy(fds, 0, own, 0, nfds);
        try {
            checkHeader(h);
            if (payload.length != h.size()) {
                throw VhostUserException.closeConnection(h.request(), "payload " + payload.length + " bytes, header says " + h.sizeUnsigned());
            }
            checkSyntax(h, payload);
            checkFds(h, payload, nfds, fdsTruncated);
            return new VhostUserMessage(h, payload, own);
        } catch (VhostUserException | RuntimeException e) {
            for (int fd : own) LibcSocket.closeQuietly(fd);
            if (e instanceof RuntimeException re) {
                throw new VhostUserException(VhostUserException.Kind.REPLY_ERROR, h.request(), "malformed payload: " + re, re);
            }
            throw e;
        }
    }

    /**
     * Decodes one whole message as bytes (header + payload), for tests and fuzzing; the fds
     * are owned as in {@link #decode(VhostUserHeader, byte[], int[], int, boolean)}.
     */
    public static VhostUserMessage decode(byte[] message, int[] fds) throws VhostUserException {
        if (message.length < VhostUserHeader.SIZE) {
            for (int fd : fds) LibcSocket.closeQuietly(fd);
            throw VhostUserException.closeConnection(0, "short message: " + message.length + " bytes");
        }
        ByteBuffer b = ByteBuffer.wrap(message).order(VhostUserHeader.ORDER);
        VhostUserHeader h = VhostUserHeader.decode(b);
        byte[] p = new byte[message.length - VhostUserHeader.SIZE];
        b.get(p);
        return decode(h, p, fds, fds.length, false);
    }

    private static void checkSyntax(VhostUserHeader h, byte[] payload) throws VhostUserException {
        int req = h.request();
        if (h.isReply()) throw VhostUserException.replyError(req, "REPLY flag set on a request");
        int unknownFlags = h.flags() & ~(VhostUserHeader.VERSION_MASK | VhostUserHeader.REPLY | VhostUserHeader.NEED_REPLY);
        if (unknownFlags != 0) throw VhostUserException.replyError(req, "reserved flag bits 0x" + Integer.toHexString(unknownFlags));
        int expected = VhostUserRequest.payloadSize(req);
        ByteBuffer b = ByteBuffer.wrap(payload).order(VhostUserHeader.ORDER);
        if (expected != SIZE_VARIABLE) {
            if (payload.length != expected) {
                throw VhostUserException.replyError(req, "payload size " + payload.length + ", expected " + expected);
            }
            return;
        }
        switch (req) {
            case VHOST_USER_SET_MEM_TABLE -> {
                if (payload.length < MemoryTable.HEADER_SIZE) throw VhostUserException.replyError(req, "payload size " + payload.length + " < 8");
                long n = Integer.toUnsignedLong(b.getInt(0));
                if (n < 1 || n > MemoryTable.MAX_REGIONS) throw VhostUserException.replyError(req, "nregions " + n + " not in 1..8");
                if (payload.length != MemoryTable.sizeFor((int) n)) {
                    throw VhostUserException.replyError(req, "payload size " + payload.length + " for " + n + " regions, expected " + MemoryTable.sizeFor((int) n));
                }
            }
            case VHOST_USER_GET_CONFIG, VHOST_USER_SET_CONFIG -> {
                if (payload.length < DeviceConfig.HEADER_SIZE) throw VhostUserException.replyError(req, "payload size " + payload.length + " < 12");
                long size = Integer.toUnsignedLong(b.getInt(4));
                if (size > DeviceConfig.MAX_SIZE) throw VhostUserException.replyError(req, "config size " + size + " > " + DeviceConfig.MAX_SIZE);
                if (payload.length != DeviceConfig.HEADER_SIZE + size) {
                    throw VhostUserException.replyError(req, "payload size " + payload.length + " for config size " + size);
                }
            }
            default -> {
                // crypto sessions and unknown requests: any size up to the maximum (checked in layer 0)
            }
        }
    }

    private static void checkFds(VhostUserHeader h, byte[] payload, int nfds, boolean truncated) throws VhostUserException {
        int req = h.request();
        if (truncated) throw VhostUserException.replyError(req, "too many fds (control data truncated)");
        int max = VhostUserRequest.maxFds(req);
        if (nfds > max) throw VhostUserException.replyError(req, nfds + " fds, at most " + max + " allowed");
        ByteBuffer b = ByteBuffer.wrap(payload).order(VhostUserHeader.ORDER);
        switch (req) {
            case VHOST_USER_SET_MEM_TABLE -> {
                int n = b.getInt(0);
                if (nfds != n) throw VhostUserException.replyError(req, nfds + " fds for " + n + " regions");
            }
            case VHOST_USER_SET_VRING_KICK, VHOST_USER_SET_VRING_CALL, VHOST_USER_SET_VRING_ERR -> {
                boolean noFd = (b.getLong(0) & VhostUserMessage.VRING_NOFD_MASK) != 0;
                if (noFd && nfds != 0) throw VhostUserException.replyError(req, "fd sent with the invalid-fd bit set");
                if (!noFd && nfds != 1) throw VhostUserException.replyError(req, "missing fd (invalid-fd bit clear)");
            }
            case VHOST_USER_SET_LOG_FD, VHOST_USER_SET_BACKEND_REQ_FD, VHOST_USER_SET_INFLIGHT_FD,
                 VHOST_USER_GPU_SET_SOCKET, VHOST_USER_ADD_MEM_REG, VHOST_USER_SET_DEVICE_STATE_FD -> {
                if (nfds != 1) throw VhostUserException.replyError(req, "expected exactly one fd, got " + nfds);
            }
            default -> {
                // SET_LOG_BASE and REM_MEM_REG: zero or one (REM_MEM_REG's MUST be closed unused)
            }
        }
    }
}
