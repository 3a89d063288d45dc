package dev.vmm.nbd.protocol;

/**
 * Magic numbers of the NBD handshake and transmission phases.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#newstyle-negotiation">Newstyle negotiation</a>,
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#fixed-newstyle-negotiation">Fixed newstyle negotiation</a>,
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#request-message">Request message</a>,
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#simple-reply-message">Simple reply message</a>,
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-reply-chunk-message">Structured reply chunk message</a>,
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#extended-reply-chunk-message">Extended reply chunk message</a>.
 * The 64-bit magics are {@code long}, the 32-bit ones {@code int}; all are sent big-endian.
 * A peer sending a wrong magic has broken framing: the connection cannot be resynchronised.
 */
public final class NbdMagic {
    private NbdMagic() {}

    /** S: 64 bits, ASCII "NBDMAGIC" (a.k.a. INIT_PASSWD), first field of every handshake. */
    public static final long NBDMAGIC = 0x4e42444d41474943L;
    /** S: 64 bits, ASCII "IHAVEOPT", newstyle server magic; also prefixes every client option. */
    public static final long IHAVEOPT = 0x49484156454F5054L;
    /** S: 64 bits, magic at the start of every fixed-newstyle option reply. */
    public static final long NBD_REP_MAGIC = 0x3e889045565a9L;
    /** C: 32 bits, compact request header magic. */
    public static final int NBD_REQUEST_MAGIC = 0x25609513;
    /** C: 32 bits, extended (32-byte) request header magic; only after NBD_OPT_EXTENDED_HEADERS. */
    public static final int NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;
    /** S: 32 bits, simple reply magic (formerly NBD_REPLY_MAGIC). */
    public static final int NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
    /** S: 32 bits, structured reply chunk magic; only after NBD_OPT_STRUCTURED_REPLY. */
    public static final int NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
    /** S: 32 bits, extended reply chunk magic; only after NBD_OPT_EXTENDED_HEADERS. */
    public static final int NBD_EXTENDED_REPLY_MAGIC = 0x6e8a278c;

    /** Log name of a 32-bit transmission magic. */
    public static String name(int magic) {
        return switch (magic) {
            case NBD_REQUEST_MAGIC -> "NBD_REQUEST_MAGIC";
            case NBD_EXTENDED_REQUEST_MAGIC -> "NBD_EXTENDED_REQUEST_MAGIC";
            case NBD_SIMPLE_REPLY_MAGIC -> "NBD_SIMPLE_REPLY_MAGIC";
            case NBD_STRUCTURED_REPLY_MAGIC -> "NBD_STRUCTURED_REPLY_MAGIC";
            case NBD_EXTENDED_REPLY_MAGIC -> "NBD_EXTENDED_REPLY_MAGIC";
            default -> "NBD_MAGIC_UNKNOWN(0x" + Integer.toHexString(magic) + ")";
        };
    }

    /** Log name of a 64-bit handshake magic. */
    public static String name(long magic) {
        if (magic == NBDMAGIC) {
            return "NBDMAGIC";
        } else if (magic == IHAVEOPT) {
            return "IHAVEOPT";
        } else if (magic == NBD_REP_MAGIC) {
            return "NBD_REP_MAGIC";
        }
        return "NBD_MAGIC_UNKNOWN(0x" + Long.toHexString(magic) + ")";
    }
}
