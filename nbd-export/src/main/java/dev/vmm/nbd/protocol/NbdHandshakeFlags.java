package dev.vmm.nbd.protocol;

/**
 * Handshake flags (16 bits, server to client) and client flags (32 bits, client to server).
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#handshake-flags">Handshake flags</a>,
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#client-flags">Client flags</a>. The server "MUST drop the TCP connection if
 * the client sets an unknown flag, or a flag that does not match something advertised by the
 * server".
 */
public final class NbdHandshakeFlags {
    private NbdHandshakeFlags() {}

    // --- server handshake flags (16 bits) ---
    /** bit 0: server supports fixed newstyle; MUST be set by such servers. */
    public static final int NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
    /** bit 1: server can omit the 124 zero bytes after NBD_OPT_EXPORT_NAME if the client agrees. */
    public static final int NBD_FLAG_NO_ZEROES = 1 << 1;

    // --- client flags (32 bits) ---
    /** bit 0: client speaks fixed newstyle. */
    public static final int NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
    /** bit 1: client wants no 124 zero bytes after NBD_OPT_EXPORT_NAME; only if server set NBD_FLAG_NO_ZEROES. */
    public static final int NBD_FLAG_C_NO_ZEROES = 1 << 1;

    private static final String[] SERVER = {"NBD_FLAG_FIXED_NEWSTYLE", "NBD_FLAG_NO_ZEROES"};
    private static final String[] CLIENT = {"NBD_FLAG_C_FIXED_NEWSTYLE", "NBD_FLAG_C_NO_ZEROES"};

    /** Log form of a server handshake flags field, e.g. "NBD_FLAG_FIXED_NEWSTYLE|NBD_FLAG_NO_ZEROES". */
    public static String name(int flags) {
        return Names.flags("NBD_FLAG", flags, SERVER);
    }

    /** Log form of a client flags field. */
    public static String clientName(int flags) {
        return Names.flags("NBD_FLAG_C", flags, CLIENT);
    }
}
