package dev.vmm.nbd.protocol;

/**
 * Request types (16-bit "type" field of a transmission request).
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-types">Request types</a>. The server "SHOULD return
 * NBD_EINVAL if it receives an unknown command" (<a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#error-values">Error values</a>).
 */
public final class NbdCmd {
    private NbdCmd() {}

    /** 0: read length bytes at offset. */
    public static final int NBD_CMD_READ = 0;
    /** 1: write; the request carries a payload (compact: length bytes; extended: PAYLOAD_LEN). */
    public static final int NBD_CMD_WRITE = 1;
    /** 2: soft disconnect; no reply; offset and length MUST be zero. */
    public static final int NBD_CMD_DISC = 2;
    /** 3: flush completed writes to non-volatile storage; offset and length MUST be zero. */
    public static final int NBD_CMD_FLUSH = 3;
    /** 4: discard hint for the range. */
    public static final int NBD_CMD_TRIM = 4;
    /** 5: prefetch hint for the range. */
    public static final int NBD_CMD_CACHE = 5;
    /** 6: zero the range without a payload. */
    public static final int NBD_CMD_WRITE_ZEROES = 6;
    /** 7: query the selected metadata contexts for the range. */
    public static final int NBD_CMD_BLOCK_STATUS = 7;
    /** 8: resize the export; experimental RESIZE extension. */
    public static final int NBD_CMD_RESIZE = 8;

    /** Log name of a command, e.g. "NBD_CMD_READ" or "NBD_CMD_UNKNOWN(42)". */
    public static String name(int cmd) {
        return switch (cmd) {
            case NBD_CMD_READ -> "NBD_CMD_READ";
            case NBD_CMD_WRITE -> "NBD_CMD_WRITE";
            case NBD_CMD_DISC -> "NBD_CMD_DISC";
            case NBD_CMD_FLUSH -> "NBD_CMD_FLUSH";
            case NBD_CMD_TRIM -> "NBD_CMD_TRIM";
            case NBD_CMD_CACHE -> "NBD_CMD_CACHE";
            case NBD_CMD_WRITE_ZEROES -> "NBD_CMD_WRITE_ZEROES";
            case NBD_CMD_BLOCK_STATUS -> "NBD_CMD_BLOCK_STATUS";
            case NBD_CMD_RESIZE -> "NBD_CMD_RESIZE";
            default -> Names.unknown("NBD_CMD", cmd);
        };
    }
}
