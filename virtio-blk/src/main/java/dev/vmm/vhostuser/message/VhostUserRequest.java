package dev.vmm.vhostuser.message;

/**
 * Front-end to back-end request codes (the 32-bit "request" header field), with the payload
 * size and the file descriptors each request may carry.
 *
 * <p>Spec: QEMU docs/interop/vhost-user.rst, "Front-end message types". Unknown codes are not
 * an exception: {@link #name(int)} gives {@code VHOST_USER_UNKNOWN(n)}, {@link #isKnown} is
 * false, and the dispatcher answers them with an error (see {@code VhostUserDispatcher}).
 */
public final class VhostUserRequest {
    private VhostUserRequest() {}

    /** 1: get the device's virtio feature bits; reply u64. */
    public static final int VHOST_USER_GET_FEATURES = 1;
    /** 2: set the negotiated virtio feature bits; payload u64. */
    public static final int VHOST_USER_SET_FEATURES = 2;
    /** 3: the sender becomes the owner of the session ("session start"); no payload. */
    public static final int VHOST_USER_SET_OWNER = 3;
    /** 4: deprecated; back-ends ignore it or disable all rings; no payload. */
    public static final int VHOST_USER_RESET_OWNER = 4;
    /** 5: memory regions description; one fd per region (1..8). */
    public static final int VHOST_USER_SET_MEM_TABLE = 5;
    /** 6: dirty log description (size, offset); one fd with LOG_SHMFD; reply u64 then. */
    public static final int VHOST_USER_SET_LOG_BASE = 6;
    /** 7: eventfd signalling log changes; one fd, no payload. */
    public static final int VHOST_USER_SET_LOG_FD = 7;
    /** 8: vring state (index, size of the queue). */
    public static final int VHOST_USER_SET_VRING_NUM = 8;
    /** 9: vring address description (descriptor, used, available, log). */
    public static final int VHOST_USER_SET_VRING_ADDR = 9;
    /** 10: vring state (index, next available index the back-end reads). */
    public static final int VHOST_USER_SET_VRING_BASE = 10;
    /** 11: stop the ring; reply vring state (index, next available index). */
    public static final int VHOST_USER_GET_VRING_BASE = 11;
    /** 12: u64 (bits 0-7 index, bit 8 no-fd); kick eventfd unless bit 8. */
    public static final int VHOST_USER_SET_VRING_KICK = 12;
    /** 13: u64 (bits 0-7 index, bit 8 no-fd); call eventfd unless bit 8. */
    public static final int VHOST_USER_SET_VRING_CALL = 13;
    /** 14: u64 (bits 0-7 index, bit 8 no-fd); error eventfd unless bit 8. */
    public static final int VHOST_USER_SET_VRING_ERR = 14;
    /** 15: get the protocol feature bits; reply u64. */
    public static final int VHOST_USER_GET_PROTOCOL_FEATURES = 15;
    /** 16: set the negotiated protocol feature bits; payload u64. */
    public static final int VHOST_USER_SET_PROTOCOL_FEATURES = 16;
    /** 17: how many queues the back-end supports (MQ); reply u64. */
    public static final int VHOST_USER_GET_QUEUE_NUM = 17;
    /** 18: vring state (index, 1 enable / 0 disable). */
    public static final int VHOST_USER_SET_VRING_ENABLE = 18;
    /** 19: u64 whose first 6 bytes are a MAC address (net only). */
    public static final int VHOST_USER_SEND_RARP = 19;
    /** 20: u64 MTU (net only). */
    public static final int VHOST_USER_NET_SET_MTU = 20;
    /** 21: socket for back-end initiated requests; one fd, no payload (was SET_SLAVE_REQ_FD). */
    public static final int VHOST_USER_SET_BACKEND_REQ_FD = 21;
    /** 22: struct vhost_iotlb_msg; reply u64. */
    public static final int VHOST_USER_IOTLB_MSG = 22;
    /** 23: vring state (index, 0 little / 1 big endian), legacy devices. */
    public static final int VHOST_USER_SET_VRING_ENDIAN = 23;
    /** 24: device config space (offset, size, flags, size bytes); reply the same, size 0 = error. */
    public static final int VHOST_USER_GET_CONFIG = 24;
    /** 25: device config space write (offset, size, flags, bytes). */
    public static final int VHOST_USER_SET_CONFIG = 25;
    /** 26: crypto session description; reply the same (crypto only). */
    public static final int VHOST_USER_CREATE_CRYPTO_SESSION = 26;
    /** 27: u64 session id (crypto only). */
    public static final int VHOST_USER_CLOSE_CRYPTO_SESSION = 27;
    /** 28: postcopy starts; reply a userfaultfd. */
    public static final int VHOST_USER_POSTCOPY_ADVISE = 28;
    /** 29: postcopy mode entered; no payload. */
    public static final int VHOST_USER_POSTCOPY_LISTEN = 29;
    /** 30: postcopy finished; reply u64. */
    public static final int VHOST_USER_POSTCOPY_END = 30;
    /** 31: inflight description (queues, queue size); reply inflight description plus one fd. */
    public static final int VHOST_USER_GET_INFLIGHT_FD = 31;
    /** 32: inflight description plus the inflight buffer's fd. */
    public static final int VHOST_USER_SET_INFLIGHT_FD = 32;
    /** 33: GPU protocol socket; one fd, no payload. */
    public static final int VHOST_USER_GPU_SET_SOCKET = 33;
    /** 34: disable all rings and reset the device state; no payload. */
    public static final int VHOST_USER_RESET_DEVICE = 34;
    /** 35: in-band kick, vring state (index, 0). */
    public static final int VHOST_USER_VRING_KICK = 35;
    /** 36: maximum memory slots (CONFIGURE_MEM_SLOTS); reply u64. */
    public static final int VHOST_USER_GET_MAX_MEM_SLOTS = 36;
    /** 37: single memory region description plus exactly one fd. */
    public static final int VHOST_USER_ADD_MEM_REG = 37;
    /** 38: single memory region description; an fd MAY come and MUST be closed unused. */
    public static final int VHOST_USER_REM_MEM_REG = 38;
    /** 39: u64 virtio device status (STATUS). */
    public static final int VHOST_USER_SET_STATUS = 39;
    /** 40: virtio device status; reply u64. */
    public static final int VHOST_USER_GET_STATUS = 40;
    /** 41: 16-byte UUID of a shared object; reply u64 plus one fd. */
    public static final int VHOST_USER_GET_SHARED_OBJECT = 41;
    /** 42: transfer direction and phase (2 x u32) plus a pipe fd; reply u64 (and maybe an fd). */
    public static final int VHOST_USER_SET_DEVICE_STATE_FD = 42;
    /** 43: did the state transfer succeed; reply u64. */
    public static final int VHOST_USER_CHECK_DEVICE_STATE = 43;

    /** Highest request code this table knows. */
    public static final int MAX_KNOWN = VHOST_USER_CHECK_DEVICE_STATE;

    /** The request's payload may be any size up to {@link VhostUserHeader#MAX_PAYLOAD_SIZE}; checked later. */
    public static final int SIZE_VARIABLE = -1;

    /** True for a request code in this table. */
    public static boolean isKnown(int request) {
        return request >= VHOST_USER_GET_FEATURES && request <= MAX_KNOWN;
    }

    /** Log name of a request, e.g. "VHOST_USER_SET_MEM_TABLE" or "VHOST_USER_UNKNOWN(99)". */
    public static String name(int request) {
        return switch (request) {
            case VHOST_USER_GET_FEATURES -> "VHOST_USER_GET_FEATURES";
            case VHOST_USER_SET_FEATURES -> "VHOST_USER_SET_FEATURES";
            case VHOST_USER_SET_OWNER -> "VHOST_USER_SET_OWNER";
            case VHOST_USER_RESET_OWNER -> "VHOST_USER_RESET_OWNER";
            case VHOST_USER_SET_MEM_TABLE -> "VHOST_USER_SET_MEM_TABLE";
            case VHOST_USER_SET_LOG_BASE -> "VHOST_USER_SET_LOG_BASE";
            case VHOST_USER_SET_LOG_FD -> "VHOST_USER_SET_LOG_FD";
            case VHOST_USER_SET_VRING_NUM -> "VHOST_USER_SET_VRING_NUM";
            case VHOST_USER_SET_VRING_ADDR -> "VHOST_USER_SET_VRING_ADDR";
            case VHOST_USER_SET_VRING_BASE -> "VHOST_USER_SET_VRING_BASE";
            case VHOST_USER_GET_VRING_BASE -> "VHOST_USER_GET_VRING_BASE";
            case VHOST_USER_SET_VRING_KICK -> "VHOST_USER_SET_VRING_KICK";
            case VHOST_USER_SET_VRING_CALL -> "VHOST_USER_SET_VRING_CALL";
            case VHOST_USER_SET_VRING_ERR -> "VHOST_USER_SET_VRING_ERR";
            case VHOST_USER_GET_PROTOCOL_FEATURES -> "VHOST_USER_GET_PROTOCOL_FEATURES";
            case VHOST_USER_SET_PROTOCOL_FEATURES -> "VHOST_USER_SET_PROTOCOL_FEATURES";
            case VHOST_USER_GET_QUEUE_NUM -> "VHOST_USER_GET_QUEUE_NUM";
            case VHOST_USER_SET_VRING_ENABLE -> "VHOST_USER_SET_VRING_ENABLE";
            case VHOST_USER_SEND_RARP -> "VHOST_USER_SEND_RARP";
            case VHOST_USER_NET_SET_MTU -> "VHOST_USER_NET_SET_MTU";
            case VHOST_USER_SET_BACKEND_REQ_FD -> "VHOST_USER_SET_BACKEND_REQ_FD";
            case VHOST_USER_IOTLB_MSG -> "VHOST_USER_IOTLB_MSG";
            case VHOST_USER_SET_VRING_ENDIAN -> "VHOST_USER_SET_VRING_ENDIAN";
            case VHOST_USER_GET_CONFIG -> "VHOST_USER_GET_CONFIG";
            case VHOST_USER_SET_CONFIG -> "VHOST_USER_SET_CONFIG";
            case VHOST_USER_CREATE_CRYPTO_SESSION -> "VHOST_USER_CREATE_CRYPTO_SESSION";
            case VHOST_USER_CLOSE_CRYPTO_SESSION -> "VHOST_USER_CLOSE_CRYPTO_SESSION";
            case VHOST_USER_POSTCOPY_ADVISE -> "VHOST_USER_POSTCOPY_ADVISE";
            case VHOST_USER_POSTCOPY_LISTEN -> "VHOST_USER_POSTCOPY_LISTEN";
            case VHOST_USER_POSTCOPY_END -> "VHOST_USER_POSTCOPY_END";
            case VHOST_USER_GET_INFLIGHT_FD -> "VHOST_USER_GET_INFLIGHT_FD";
            case VHOST_USER_SET_INFLIGHT_FD -> "VHOST_USER_SET_INFLIGHT_FD";
            case VHOST_USER_GPU_SET_SOCKET -> "VHOST_USER_GPU_SET_SOCKET";
            case VHOST_USER_RESET_DEVICE -> "VHOST_USER_RESET_DEVICE";
            case VHOST_USER_VRING_KICK -> "VHOST_USER_VRING_KICK";
            case VHOST_USER_GET_MAX_MEM_SLOTS -> "VHOST_USER_GET_MAX_MEM_SLOTS";
            case VHOST_USER_ADD_MEM_REG -> "VHOST_USER_ADD_MEM_REG";
            case VHOST_USER_REM_MEM_REG -> "VHOST_USER_REM_MEM_REG";
            case VHOST_USER_SET_STATUS -> "VHOST_USER_SET_STATUS";
            case VHOST_USER_GET_STATUS -> "VHOST_USER_GET_STATUS";
            case VHOST_USER_GET_SHARED_OBJECT -> "VHOST_USER_GET_SHARED_OBJECT";
            case VHOST_USER_SET_DEVICE_STATE_FD -> "VHOST_USER_SET_DEVICE_STATE_FD";
            case VHOST_USER_CHECK_DEVICE_STATE -> "VHOST_USER_CHECK_DEVICE_STATE";
            default -> "VHOST_USER_UNKNOWN(" + Integer.toUnsignedString(request) + ")";
        };
    }

    /**
     * Payload size the request must have, or {@link #SIZE_VARIABLE} when it depends on the
     * payload (SET_MEM_TABLE: 8 + 32 * nregions; GET/SET_CONFIG: 12 + size; crypto sessions) or
     * the request is unknown. Sizes are QEMU's {@code sizeof} of the C payload struct.
     */
    public static int payloadSize(int request) {
        return switch (request) {
            case VHOST_USER_GET_FEATURES, VHOST_USER_SET_OWNER, VHOST_USER_RESET_OWNER,
                 VHOST_USER_SET_LOG_FD, VHOST_USER_GET_PROTOCOL_FEATURES, VHOST_USER_GET_QUEUE_NUM,
                 VHOST_USER_SET_BACKEND_REQ_FD, VHOST_USER_POSTCOPY_ADVISE, VHOST_USER_POSTCOPY_LISTEN,
                 VHOST_USER_POSTCOPY_END, VHOST_USER_GPU_SET_SOCKET, VHOST_USER_RESET_DEVICE,
                 VHOST_USER_GET_MAX_MEM_SLOTS, VHOST_USER_GET_STATUS, VHOST_USER_CHECK_DEVICE_STATE -> 0;
            case VHOST_USER_SET_FEATURES, VHOST_USER_SET_VRING_KICK, VHOST_USER_SET_VRING_CALL,
                 VHOST_USER_SET_VRING_ERR, VHOST_USER_SET_PROTOCOL_FEATURES, VHOST_USER_SEND_RARP,
                 VHOST_USER_NET_SET_MTU, VHOST_USER_CLOSE_CRYPTO_SESSION, VHOST_USER_SET_STATUS -> 8;
            case VHOST_USER_SET_VRING_NUM, VHOST_USER_SET_VRING_BASE, VHOST_USER_GET_VRING_BASE,
                 VHOST_USER_SET_VRING_ENABLE, VHOST_USER_SET_VRING_ENDIAN, VHOST_USER_VRING_KICK -> VringState.SIZE;
            case VHOST_USER_SET_DEVICE_STATE_FD -> 8;
            case VHOST_USER_SET_VRING_ADDR -> VringAddr.SIZE;
            case VHOST_USER_SET_LOG_BASE -> LogDescription.SIZE;
            case VHOST_USER_IOTLB_MSG -> 32;
            case VHOST_USER_GET_INFLIGHT_FD, VHOST_USER_SET_INFLIGHT_FD -> Inflight.SIZE;
            case VHOST_USER_ADD_MEM_REG, VHOST_USER_REM_MEM_REG -> MemoryRegion.SINGLE_SIZE;
            case VHOST_USER_GET_SHARED_OBJECT -> 16;
            default -> SIZE_VARIABLE;
        };
    }

    /**
     * Most fds the request may carry: 8 for SET_MEM_TABLE (exactly one per region), 1 for
     * the requests that pass one (exactly one, except REM_MEM_REG and SET_LOG_BASE which MAY
     * carry one, and SET_VRING_KICK/CALL/ERR which carry none when bit 8 of the u64 is set),
     * 0 for all others, unknown ones included.
     */
    public static int maxFds(int request) {
        return switch (request) {
            case VHOST_USER_SET_MEM_TABLE -> MemoryTable.MAX_REGIONS;
            case VHOST_USER_SET_LOG_BASE, VHOST_USER_SET_LOG_FD, VHOST_USER_SET_VRING_KICK,
                 VHOST_USER_SET_VRING_CALL, VHOST_USER_SET_VRING_ERR, VHOST_USER_SET_BACKEND_REQ_FD,
                 VHOST_USER_SET_INFLIGHT_FD, VHOST_USER_GPU_SET_SOCKET, VHOST_USER_ADD_MEM_REG,
                 VHOST_USER_REM_MEM_REG, VHOST_USER_SET_DEVICE_STATE_FD -> 1;
            default -> 0;
        };
    }

    /**
     * True when the request has a reply body of its own (the spec's "reply payload"), so the
     * REPLY_ACK u64 is not sent for it. SET_LOG_BASE's reply exists only with LOG_SHMFD and
     * is handled by the dispatcher.
     */
    public static boolean hasReply(int request) {
        return switch (request) {
            case VHOST_USER_GET_FEATURES, VHOST_USER_GET_PROTOCOL_FEATURES, VHOST_USER_GET_VRING_BASE,
                 VHOST_USER_GET_QUEUE_NUM, VHOST_USER_IOTLB_MSG, VHOST_USER_GET_CONFIG,
                 VHOST_USER_CREATE_CRYPTO_SESSION, VHOST_USER_POSTCOPY_ADVISE, VHOST_USER_POSTCOPY_END,
                 VHOST_USER_GET_INFLIGHT_FD, VHOST_USER_GET_MAX_MEM_SLOTS, VHOST_USER_GET_STATUS,
                 VHOST_USER_GET_SHARED_OBJECT, VHOST_USER_SET_DEVICE_STATE_FD,
                 VHOST_USER_CHECK_DEVICE_STATE -> true;
            default -> false;
        };
    }
}
