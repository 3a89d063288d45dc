package dev.vmm.nbd.protocol;

/**
 * Structured/extended reply chunk types (16 bits). Error chunk types have bit 15 set and start
 * with a 32-bit error, a 16-bit message length and the message.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-types">Structured reply types</a>.
 */
public final class NbdReplyType {
    private NbdReplyType() {}

    private static final int ERR = 1 << 15;

    /** 0: no payload; MUST carry NBD_REPLY_FLAG_DONE; valid for any request. */
    public static final int NBD_REPLY_TYPE_NONE = 0;
    /** 1: content chunk: 64-bit offset, then data (length &gt;= 9); READ only. */
    public static final int NBD_REPLY_TYPE_OFFSET_DATA = 1;
    /** 2: content chunk: 64-bit offset, 32-bit nonzero hole size (length 12); READ only. */
    public static final int NBD_REPLY_TYPE_OFFSET_HOLE = 2;
    /** 5: status chunk: 32-bit context id, then (32-bit length, 32-bit flags) descriptors. */
    public static final int NBD_REPLY_TYPE_BLOCK_STATUS = 5;
    /** 6: status chunk, extended headers only: id, count, then (64-bit length, 32-bit pad, 32-bit flags). */
    public static final int NBD_REPLY_TYPE_BLOCK_STATUS_EXT = 6;
    /** 2^15+1: error chunk: error, message length, message (length &gt;= 6); any request. */
    public static final int NBD_REPLY_TYPE_ERROR = ERR | 1;
    /** 2^15+2: error chunk with a trailing 64-bit offset inside the request (length &gt;= 14). */
    public static final int NBD_REPLY_TYPE_ERROR_OFFSET = ERR | 2;

    /** True if {@code type} is an error chunk type (bit 15 set), known or not. */
    public static boolean isError(int type) {
        return (type & ERR) != 0;
    }

    /** Log name of a chunk type, e.g. "NBD_REPLY_TYPE_ERROR" or "NBD_REPLY_TYPE_UNKNOWN(3)". */
    public static String name(int type) {
        return switch (type) {
            case NBD_REPLY_TYPE_NONE -> "NBD_REPLY_TYPE_NONE";
            case NBD_REPLY_TYPE_OFFSET_DATA -> "NBD_REPLY_TYPE_OFFSET_DATA";
            case NBD_REPLY_TYPE_OFFSET_HOLE -> "NBD_REPLY_TYPE_OFFSET_HOLE";
            case NBD_REPLY_TYPE_BLOCK_STATUS -> "NBD_REPLY_TYPE_BLOCK_STATUS";
            case NBD_REPLY_TYPE_BLOCK_STATUS_EXT -> "NBD_REPLY_TYPE_BLOCK_STATUS_EXT";
            case NBD_REPLY_TYPE_ERROR -> "NBD_REPLY_TYPE_ERROR";
            case NBD_REPLY_TYPE_ERROR_OFFSET -> "NBD_REPLY_TYPE_ERROR_OFFSET";
            default -> Names.unknown("NBD_REPLY_TYPE", type);
        };
    }
}
