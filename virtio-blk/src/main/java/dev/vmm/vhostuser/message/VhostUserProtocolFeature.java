package dev.vmm.vhostuser.message;

/**
 * Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES) and the virtio feature bit that
 * announces them. A mask is {@code 1L << bit}.
 *
 * <p>Spec: QEMU docs/interop/vhost-user.rst, "Protocol features".
 */
public final class VhostUserProtocolFeature {
    private VhostUserProtocolFeature() {}

    /** Virtio feature bit 30: the back-end understands GET/SET_PROTOCOL_FEATURES. */
    public static final int VHOST_USER_F_PROTOCOL_FEATURES = 30;

    /** 0: several queues; GET_QUEUE_NUM. */
    public static final int MQ = 0;
    /** 1: the dirty log is shared memory passed with SET_LOG_BASE. */
    public static final int LOG_SHMFD = 1;
    /** 2: SEND_RARP (net). */
    public static final int RARP = 2;
    /** 3: NEED_REPLY on any request is answered with a u64 (0 success). */
    public static final int REPLY_ACK = 3;
    /** 4: NET_SET_MTU (net). */
    public static final int MTU = 4;
    /** 5: back-end to front-end channel (SET_BACKEND_REQ_FD); formerly SLAVE_REQ. */
    public static final int BACKEND_REQ = 5;
    /** 6: SET_VRING_ENDIAN for legacy devices. */
    public static final int CROSS_ENDIAN = 6;
    /** 7: crypto sessions. */
    public static final int CRYPTO_SESSION = 7;
    /** 8: postcopy migration with userfaultfd. */
    public static final int PAGEFAULT = 8;
    /** 9: GET/SET_CONFIG; QEMU's vhost-user-blk requires it. */
    public static final int CONFIG = 9;
    /** 10: the back-end may send fds on its channel; formerly SLAVE_SEND_FD. */
    public static final int BACKEND_SEND_FD = 10;
    /** 11: host notifiers mapped into the guest. */
    public static final int HOST_NOTIFIER = 11;
    /** 12: GET/SET_INFLIGHT_FD: in-flight tracking shared with the front-end. */
    public static final int INFLIGHT_SHMFD = 12;
    /** 13: RESET_DEVICE. */
    public static final int RESET_DEVICE = 13;
    /** 14: in-band kick/call/err messages. */
    public static final int INBAND_NOTIFICATIONS = 14;
    /** 15: GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG. */
    public static final int CONFIGURE_MEM_SLOTS = 15;
    /** 16: SET/GET_STATUS. */
    public static final int STATUS = 16;
    /** 17: Xen foreign memory mapping. */
    public static final int XEN_MMAP = 17;
    /** 18: shared objects (GET_SHARED_OBJECT). */
    public static final int SHARED_OBJECT = 18;
    /** 19: device state transfer (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE). */
    public static final int DEVICE_STATE = 19;

    /** Log name of a protocol feature bit. */
    public static String name(int bit) {
        return switch (bit) {
            case MQ -> "MQ";
            case LOG_SHMFD -> "LOG_SHMFD";
            case RARP -> "RARP";
            case REPLY_ACK -> "REPLY_ACK";
            case MTU -> "MTU";
            case BACKEND_REQ -> "BACKEND_REQ";
            case CROSS_ENDIAN -> "CROSS_ENDIAN";
            case CRYPTO_SESSION -> "CRYPTO_SESSION";
            case PAGEFAULT -> "PAGEFAULT";
            case CONFIG -> "CONFIG";
            case BACKEND_SEND_FD -> "BACKEND_SEND_FD";
            case HOST_NOTIFIER -> "HOST_NOTIFIER";
            case INFLIGHT_SHMFD -> "INFLIGHT_SHMFD";
            case RESET_DEVICE -> "RESET_DEVICE";
            case INBAND_NOTIFICATIONS -> "INBAND_NOTIFICATIONS";
            case CONFIGURE_MEM_SLOTS -> "CONFIGURE_MEM_SLOTS";
            case STATUS -> "STATUS";
            case XEN_MMAP -> "XEN_MMAP";
            case SHARED_OBJECT -> "SHARED_OBJECT";
            case DEVICE_STATE -> "DEVICE_STATE";
            default -> "PROTOCOL_F_UNKNOWN(" + bit + ")";
        };
    }

    /** Mask of one bit. */
    public static long mask(int bit) {
        return 1L << bit;
    }

    /** "MQ|REPLY_ACK|CONFIG" for a mask, for log lines. */
    public static String describe(long mask) {
        StringBuilder sb = new StringBuilder();
        for (int b = 0; b < 64; b++) {
            if ((mask & (1L << b)) != 0) {
                if (sb.length() > 0) sb.append('|');
                sb.append(name(b));
            }
        }
        return sb.length() == 0 ? "none" : sb.toString();
    }
}
