package dev.vmm.nbd.protocol;

/**
 * Option types (32 bits) sent by the client during fixed-newstyle option haggling.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-types">Option types</a>. A server "MUST reply" to options it
 * does not implement "with NBD_REP_ERR_UNSUP, and MUST NOT fail to parse the next message"
 * (<a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#baseline">Baseline</a>).
 */
public final class NbdOpt {
    private NbdOpt() {}

    /** 1: choose export and enter transmission; no option reply, failure = terminate session. */
    public static final int NBD_OPT_EXPORT_NAME = 1;
    /** 2: client aborts negotiation; server MUST reply NBD_REP_ACK. */
    public static final int NBD_OPT_ABORT = 2;
    /** 3: list exports: NBD_REP_SERVER per export, then NBD_REP_ACK. */
    public static final int NBD_OPT_LIST = 3;
    /** 4: withdrawn PEEK_EXPORT extension; not in use. */
    public static final int NBD_OPT_PEEK_EXPORT = 4;
    /** 5: upgrade the connection to TLS. */
    public static final int NBD_OPT_STARTTLS = 5;
    /** 6: describe an export (NBD_REP_INFO*) without entering transmission. */
    public static final int NBD_OPT_INFO = 6;
    /** 7: like NBD_OPT_INFO, then enter transmission on NBD_REP_ACK. */
    public static final int NBD_OPT_GO = 7;
    /** 8: negotiate structured replies. */
    public static final int NBD_OPT_STRUCTURED_REPLY = 8;
    /** 9: list metadata contexts matching queries. */
    public static final int NBD_OPT_LIST_META_CONTEXT = 9;
    /** 10: select the metadata contexts used by NBD_CMD_BLOCK_STATUS. */
    public static final int NBD_OPT_SET_META_CONTEXT = 10;
    /** 11: negotiate extended (32-byte) request and reply headers. */
    public static final int NBD_OPT_EXTENDED_HEADERS = 11;

    /** Log name of an option type, e.g. "NBD_OPT_GO" or "NBD_OPT_UNKNOWN(42)". */
    public static String name(int opt) {
        return switch (opt) {
            case NBD_OPT_EXPORT_NAME -> "NBD_OPT_EXPORT_NAME";
            case NBD_OPT_ABORT -> "NBD_OPT_ABORT";
            case NBD_OPT_LIST -> "NBD_OPT_LIST";
            case NBD_OPT_PEEK_EXPORT -> "NBD_OPT_PEEK_EXPORT";
            case NBD_OPT_STARTTLS -> "NBD_OPT_STARTTLS";
            case NBD_OPT_INFO -> "NBD_OPT_INFO";
            case NBD_OPT_GO -> "NBD_OPT_GO";
            case NBD_OPT_STRUCTURED_REPLY -> "NBD_OPT_STRUCTURED_REPLY";
            case NBD_OPT_LIST_META_CONTEXT -> "NBD_OPT_LIST_META_CONTEXT";
            case NBD_OPT_SET_META_CONTEXT -> "NBD_OPT_SET_META_CONTEXT";
            case NBD_OPT_EXTENDED_HEADERS -> "NBD_OPT_EXTENDED_HEADERS";
            default -> Names.unknown("NBD_OPT", Integer.toUnsignedLong(opt));
        };
    }
}
