package dev.vmm.nbd.protocol;

/**
 * Option reply types (32 bits) in fixed-newstyle option replies. Error replies have bit 31 set
 * and MAY carry a human-readable UTF-8 message as their data.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types">Option reply types</a>.
 */
public final class NbdRep {
    private NbdRep() {}

    private static final int ERR = 1 << 31;

    /** 1: option accepted / list finished; no data. */
    public static final int NBD_REP_ACK = 1;
    /** 2: one export for NBD_OPT_LIST: 32-bit name length, name, optional description. */
    public static final int NBD_REP_SERVER = 2;
    /** 3: one NBD_INFO_* item for NBD_OPT_INFO/NBD_OPT_GO: 16-bit info type, payload. */
    public static final int NBD_REP_INFO = 3;
    /** 4: one metadata context: 32-bit context id, name. */
    public static final int NBD_REP_META_CONTEXT = 4;
    /** 2^31+1: option unknown to this server. */
    public static final int NBD_REP_ERR_UNSUP = ERR | 1;
    /** 2^31+2: option known and valid but forbidden by server policy. */
    public static final int NBD_REP_ERR_POLICY = ERR | 2;
    /** 2^31+3: option known but syntactically or semantically invalid. */
    public static final int NBD_REP_ERR_INVALID = ERR | 3;
    /** 2^31+4: option not supported on this platform/build (e.g. no TLS compiled in). */
    public static final int NBD_REP_ERR_PLATFORM = ERR | 4;
    /** 2^31+5: TLS must be initiated first. */
    public static final int NBD_REP_ERR_TLS_REQD = ERR | 5;
    /** 2^31+6: requested export not available. */
    public static final int NBD_REP_ERR_UNKNOWN = ERR | 6;
    /** 2^31+7: server is shutting down. */
    public static final int NBD_REP_ERR_SHUTDOWN = ERR | 7;
    /** 2^31+8: client must request NBD_INFO_BLOCK_SIZE before entering transmission. */
    public static final int NBD_REP_ERR_BLOCK_SIZE_REQD = ERR | 8;
    /** 2^31+9: request or reply too large to process. */
    public static final int NBD_REP_ERR_TOO_BIG = ERR | 9;
    /** 2^31+10: extended headers required, or cannot downgrade to structured replies. */
    public static final int NBD_REP_ERR_EXT_HEADER_REQD = ERR | 10;

    /** True if {@code rep} is an error reply type (bit 31 set), known or not. */
    public static boolean isError(int rep) {
        return (rep & ERR) != 0;
    }

    /** Log name of a reply type, e.g. "NBD_REP_ERR_UNSUP" or "NBD_REP_UNKNOWN(5)". */
    public static String name(int rep) {
        return switch (rep) {
            case NBD_REP_ACK -> "NBD_REP_ACK";
            case NBD_REP_SERVER -> "NBD_REP_SERVER";
            case NBD_REP_INFO -> "NBD_REP_INFO";
            case NBD_REP_META_CONTEXT -> "NBD_REP_META_CONTEXT";
            case NBD_REP_ERR_UNSUP -> "NBD_REP_ERR_UNSUP";
            case NBD_REP_ERR_POLICY -> "NBD_REP_ERR_POLICY";
            case NBD_REP_ERR_INVALID -> "NBD_REP_ERR_INVALID";
            case NBD_REP_ERR_PLATFORM -> "NBD_REP_ERR_PLATFORM";
            case NBD_REP_ERR_TLS_REQD -> "NBD_REP_ERR_TLS_REQD";
            case NBD_REP_ERR_UNKNOWN -> "NBD_REP_ERR_UNKNOWN";
            case NBD_REP_ERR_SHUTDOWN -> "NBD_REP_ERR_SHUTDOWN";
            case NBD_REP_ERR_BLOCK_SIZE_REQD -> "NBD_REP_ERR_BLOCK_SIZE_REQD";
            case NBD_REP_ERR_TOO_BIG -> "NBD_REP_ERR_TOO_BIG";
            case NBD_REP_ERR_EXT_HEADER_REQD -> "NBD_REP_ERR_EXT_HEADER_REQD";
            default -> Names.unknown("NBD_REP", Integer.toUnsignedLong(rep));
        };
    }
}
