package dev.vmm.nbd.protocol;

/**
 * Transmission flags (16 bits), sent per export after NBD_OPT_EXPORT_NAME or inside
 * NBD_INFO_EXPORT.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#transmission-flags">Transmission flags</a>. The server "MUST NOT set
 * the flag for features it does not support".
 */
public final class NbdTransmissionFlags {
    private NbdTransmissionFlags() {}

    /** bit 0: MUST always be 1. */
    public static final int NBD_FLAG_HAS_FLAGS = 1 << 0;
    /** bit 1: export is read-only; the server MUST error write operations. */
    public static final int NBD_FLAG_READ_ONLY = 1 << 1;
    /** bit 2: exposes NBD_CMD_FLUSH. */
    public static final int NBD_FLAG_SEND_FLUSH = 1 << 2;
    /** bit 3: exposes NBD_CMD_FLAG_FUA. */
    public static final int NBD_FLAG_SEND_FUA = 1 << 3;
    /** bit 4: export behaves like a rotational medium (scheduling hint). */
    public static final int NBD_FLAG_ROTATIONAL = 1 << 4;
    /** bit 5: exposes NBD_CMD_TRIM. */
    public static final int NBD_FLAG_SEND_TRIM = 1 << 5;
    /** bit 6: exposes NBD_CMD_WRITE_ZEROES and NBD_CMD_FLAG_NO_HOLE. */
    public static final int NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
    /** bit 7: NBD_CMD_FLAG_DF supported on READ; MUST be clear without structured replies/extended headers. */
    public static final int NBD_FLAG_SEND_DF = 1 << 7;
    /** bit 8: cache is shared (or absent) across connections; FLUSH/FUA effects visible on all. */
    public static final int NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
    /** bit 9: NBD_CMD_RESIZE, experimental RESIZE extension. */
    public static final int NBD_FLAG_SEND_RESIZE = 1 << 9;
    /** bit 10: server understands NBD_CMD_CACHE. */
    public static final int NBD_FLAG_SEND_CACHE = 1 << 10;
    /** bit 11: NBD_CMD_FLAG_FAST_ZERO supported on WRITE_ZEROES; MUST be 0 without SEND_WRITE_ZEROES. */
    public static final int NBD_FLAG_SEND_FAST_ZERO = 1 << 11;
    /** bit 12: NBD_CMD_BLOCK_STATUS accepts a payload (NBD_CMD_FLAG_PAYLOAD_LEN); extended headers only. */
    public static final int NBD_FLAG_BLOCK_STAT_PAYLOAD = 1 << 12;

    private static final String[] NAMES = {
        "NBD_FLAG_HAS_FLAGS", "NBD_FLAG_READ_ONLY", "NBD_FLAG_SEND_FLUSH", "NBD_FLAG_SEND_FUA",
        "NBD_FLAG_ROTATIONAL", "NBD_FLAG_SEND_TRIM", "NBD_FLAG_SEND_WRITE_ZEROES",
        "NBD_FLAG_SEND_DF", "NBD_FLAG_CAN_MULTI_CONN", "NBD_FLAG_SEND_RESIZE",
        "NBD_FLAG_SEND_CACHE", "NBD_FLAG_SEND_FAST_ZERO", "NBD_FLAG_BLOCK_STAT_PAYLOAD",
    };

    /** Log form of a transmission flags field, bits joined with '|'. */
    public static String name(int flags) {
        return Names.flags("NBD_FLAG", flags, NAMES);
    }
}
