package dev.vmm.nbd.protocol;

/**
 * Reply flags (16 bits) of structured and extended reply chunks.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#structured-and-extended-header-reply-flags">Structured and extended
 * header reply flags</a>. The server MUST NOT set other flags without negotiating them.
 */
public final class NbdReplyFlags {
    private NbdReplyFlags() {}

    /** bit 0: final chunk of this reply; MUST NOT be set while an error can still be detected. */
    public static final int NBD_REPLY_FLAG_DONE = 1 << 0;

    private static final String[] NAMES = {"NBD_REPLY_FLAG_DONE"};

    /** Log form of a reply flags field. */
    public static String name(int flags) {
        return Names.flags("NBD_REPLY_FLAG", flags, NAMES);
    }
}
