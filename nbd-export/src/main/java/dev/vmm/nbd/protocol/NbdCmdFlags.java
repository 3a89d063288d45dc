package dev.vmm.nbd.protocol;

/**
 * Command flags (16 bits) of a transmission request.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#command-flags">Command flags</a>. "Clients MUST NOT set a command
 * flag bit that is not documented for the particular command"; the server "SHOULD return
 * NBD_EINVAL if it receives an unknown command flag" (<a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#error-values">Error
 * values</a>).
 */
public final class NbdCmdFlags {
    private NbdCmdFlags() {}

    /** bit 0: force unit access; reply only once written data is persisted (needs SEND_FUA). */
    public static final int NBD_CMD_FLAG_FUA = 1 << 0;
    /** bit 1: WRITE_ZEROES must fully provision, not punch a hole. */
    public static final int NBD_CMD_FLAG_NO_HOLE = 1 << 1;
    /** bit 2: "don't fragment": READ reply has at most one content chunk (needs SEND_DF). */
    public static final int NBD_CMD_FLAG_DF = 1 << 2;
    /** bit 3: BLOCK_STATUS reply has exactly one extent per context, not beyond length. */
    public static final int NBD_CMD_FLAG_REQ_ONE = 1 << 3;
    /** bit 4: WRITE_ZEROES must fail fast with NBD_ENOTSUP unless faster than WRITE (needs SEND_FAST_ZERO). */
    public static final int NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
    /** bit 5: extended headers only: length is a payload length and the payload follows. */
    public static final int NBD_CMD_FLAG_PAYLOAD_LEN = 1 << 5;

    private static final String[] NAMES = {
        "NBD_CMD_FLAG_FUA", "NBD_CMD_FLAG_NO_HOLE", "NBD_CMD_FLAG_DF", "NBD_CMD_FLAG_REQ_ONE",
        "NBD_CMD_FLAG_FAST_ZERO", "NBD_CMD_FLAG_PAYLOAD_LEN",
    };

    /** Log form of a command flags field, bits joined with '|'. */
    public static String name(int flags) {
        return Names.flags("NBD_CMD_FLAG", flags, NAMES);
    }
}
