package dev.vmm.nbd.protocol;

/**
 * Information types (16 bits) requested in NBD_OPT_INFO/NBD_OPT_GO and carried by NBD_REP_INFO.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#option-reply-types">Option reply types, NBD_REP_INFO</a>. The reply
 * header length includes the 2-byte type.
 */
public final class NbdInfo {
    private NbdInfo() {}

    /** 0: mandatory before NBD_REP_ACK; length 12: type, 64-bit size, 16-bit transmission flags. */
    public static final int NBD_INFO_EXPORT = 0;
    /** 1: canonical export name; length &gt;= 2: type, name. */
    public static final int NBD_INFO_NAME = 1;
    /** 2: human-readable description; length &gt;= 2: type, text. */
    public static final int NBD_INFO_DESCRIPTION = 2;
    /** 3: block size constraints; length 14: type, 32-bit minimum, preferred, maximum payload. */
    public static final int NBD_INFO_BLOCK_SIZE = 3;

    /** Log name of an info type, e.g. "NBD_INFO_EXPORT" or "NBD_INFO_UNKNOWN(9)". */
    public static String name(int info) {
        return switch (info) {
            case NBD_INFO_EXPORT -> "NBD_INFO_EXPORT";
            case NBD_INFO_NAME -> "NBD_INFO_NAME";
            case NBD_INFO_DESCRIPTION -> "NBD_INFO_DESCRIPTION";
            case NBD_INFO_BLOCK_SIZE -> "NBD_INFO_BLOCK_SIZE";
            default -> Names.unknown("NBD_INFO", info);
        };
    }
}
