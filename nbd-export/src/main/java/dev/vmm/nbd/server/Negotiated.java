package dev.vmm.nbd.server;

/**
 * What one client negotiated during its handshake; handed from the handshake (main loop) to
 * the transmission phase (IOThread) once, then only read there.
 */
final class Negotiated {
    /** NBD_FLAG_C_NO_ZEROES: omit the 124 zero bytes after NBD_OPT_EXPORT_NAME. */
    boolean noZeroes;
    /** NBD_OPT_STRUCTURED_REPLY (or extended headers, which imply it). */
    boolean structuredReplies;
    /** NBD_OPT_EXTENDED_HEADERS: 32-byte requests and replies with 64-bit lengths. */
    boolean extendedHeaders;
    /** base:allocation selected by NBD_OPT_SET_META_CONTEXT, for {@link #metaContextExport}. */
    boolean baseAllocation;
    /** qemu:allocation-depth selected by NBD_OPT_SET_META_CONTEXT, for {@link #metaContextExport}. */
    boolean allocationDepth;
    /** The export name the meta contexts were selected for. */
    String metaContextExport;
    /** NBD_OPT_STARTTLS succeeded: the channel has an SslHandler, its socket carries ciphertext. */
    boolean tls;

    /** proto.md "TLS support": after STARTTLS the server "MUST NOT preserve any negotiation state". */
    void forgetAfterStartTls() {
        structuredReplies = false;
        extendedHeaders = false;
        baseAllocation = false;
        allocationDepth = false;
        metaContextExport = null;
    }
}
