package dev.vmm.nbd.server;

import dev.vmm.core.block.IoCompletion;
import io.netty.buffer.ByteBuf;

/**
 * One request slot of a {@link TransmissionHandler}: the parsed header, the buffer the request
 * owns until it is answered, and the completion the block driver calls. Slots are pooled per
 * connection (at most {@link TransmissionHandler#MAX_IN_FLIGHT}), so a request allocates no
 * object of its own on the hot path.
 *
 * <p>Thread contract: confined to the node's home IOThread, like its handler; the driver calls
 * {@link #ioDone} there.
 *
 * <p>Buffer ownership ({@link #buf}): a WRITE's payload (a retained slice of the cumulation
 * buffer, or a buffer of its own filled as the payload arrives), or a READ's whole reply (chunk
 * headers and data, read into place by the driver). The slot releases it, or hands it to the
 * channel, exactly once when the request is answered or abandoned; never while the driver may
 * still touch it.
 */
final class NbdRequest implements IoCompletion {
    private final TransmissionHandler owner;

    // ---- the request header (proto.md "Request message") ----
    int type;
    int flags;
    long cookie;
    long offset;
    long length;

    // ---- execution state ----
    ByteBuf buf;
    /** Driver requests accepted and not completed, plus one while submitting (see TransmissionHandler#submit). */
    int pending;
    /** First errno reported by any of its driver requests, 0 if none. */
    int errno;
    /** Message for {@link #errno} when it came from a synchronous refusal; null: the errno's own words. */
    String message;
    /** TRIM with FUA: 0 while discarding, 1 while flushing after it. */
    int stage;
    /** Bytes counted against {@link TransmissionHandler#MAX_IN_FLIGHT_BYTES}. */
    long bytes;
    long startNanos;

    NbdRequest(TransmissionHandler owner) {
        this.owner = owner;
    }

    /** Driver completion: runs later on the home IOThread, once per driver request accepted. */
    @Override
    public void ioDone(int errno) {
        owner.driverDone(this, errno);
    }

    /** Releases what the slot still owns; safe to call twice. */
    void releaseBuffer() {
        if (buf != null) {
            buf.release();
            buf = null;
        }
    }

    void clear() {
        buf = null;
        pending = 0;
        errno = 0;
        message = null;
        stage = 0;
        bytes = 0;
    }
}
