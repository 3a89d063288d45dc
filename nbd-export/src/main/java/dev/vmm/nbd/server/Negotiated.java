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
    /** qemu:dirty-bitmap:NAME of the export's bitmap i selected; null when none is. */
    boolean[] bitmaps;
    /** The export name the meta contexts were selected for. */
    String metaContextExport;
    /** The export the meta contexts were selected for ({@link #bitmaps} index its bitmaps); null when none. */
    NbdExport metaContextFor;
    /** NBD_OPT_STARTTLS succeeded: the channel has an SslHandler, its socket carries ciphertext. */
    boolean tls;

    /** Whether any metadata context is selected. */
    boolean anyMetaContext() {
        if (baseAllocation || allocationDepth) return true;
        if (bitmaps != null) for (boolean b : bitmaps) if (b) return true;
        return false;
    }

    /** Forgets the selected metadata contexts (a new SET, or contexts chosen for another export). */
    void clearMetaContexts() {
        baseAllocation = false;
        allocationDepth = false;
        bitmaps = null;
    }

    /** proto.md "TLS support": after STARTTLS the server "MUST NOT preserve any negotiation state". */
    void forgetAfterStartTls() {
        structuredReplies = false;
        extendedHeaders = false;
        clearMetaContexts();
        metaContextExport = null;
        metaContextFor = null;
    }
}
