package dev.vmm.vhostuser.message;

import dev.vmm.core.linux.LibcSocket;
import java.nio.ByteBuffer;
import java.util.Arrays;

/**
 * One received front-end message that passed {@link VhostUserDecoder}'s syntax and fd checks:
 * header, payload bytes and the file descriptors that came with it.
 *
 * <p>The message owns its fds until they are taken ({@link #takeFd}); {@link #close()} closes
 * every fd not taken, so each fd is closed exactly once whatever happens. Thread contract:
 * confined to the connection's event-loop thread.
 */
public final class VhostUserMessage implements AutoCloseable {
    /** Bits 0-7 of the u64 of SET_VRING_KICK/CALL/ERR: the vring index. */
    public static final long VRING_IDX_MASK = 0xff;
    /** Bit 8 of the u64 of SET_VRING_KICK/CALL/ERR: no fd, poll instead. */
    public static final long VRING_NOFD_MASK = 0x100;

    private final VhostUserHeader header;
    private final byte[] payload;
    private final int[] fds;

    VhostUserMessage(VhostUserHeader header, byte[] payload, int[] fds) {
        this.header = header;
        this.payload = payload;
        this.fds = fds;
    }

    public VhostUserHeader header() { return header; }

    public int request() { return header.request(); }

    public boolean needReply() { return header.needReply(); }

    /** A read-only little-endian view of the payload, positioned at 0. */
    public ByteBuffer payload() {
        return ByteBuffer.wrap(payload).asReadOnlyBuffer().order(VhostUserHeader.ORDER);
    }

    public int payloadSize() { return payload.length; }

    /** Number of fds that came with the message (taken or not). */
    public int fdCount() { return fds.length; }

    /** Takes ownership of fd {@code i}: the message will no longer close it. Once only. */
    public int takeFd(int i) {
        int fd = fds[i];
        if (fd < 0) throw new IllegalStateException("fd " + i + " of " + header + " already taken");
        fds[i] = -1;
        return fd;
    }

    /**
     * A copy of the fds, still owned by the message (for a handler call that takes them only
     * when it succeeds). Throws when one was already taken.
     */
    public int[] peekFds() {
        int[] out = fds.clone();
        for (int fd : out) if (fd < 0) throw new IllegalStateException("an fd of " + header + " was already taken");
        return out;
    }

    /** Takes all fds (see {@link #takeFd}). */
    public int[] takeFds() {
        int[] out = new int[fds.length];
        for (int i = 0; i < fds.length; i++) out[i] = takeFd(i);
        return out;
    }

    /** Closes every fd not taken. Idempotent. */
    @Override
    public void close() {
        for (int i = 0; i < fds.length; i++) {
            if (fds[i] >= 0) {
                LibcSocket.closeQuietly(fds[i]);
                fds[i] = -1;
            }
        }
    }

    // ---- typed payload views; sizes were checked by the decoder ----

    public long u64() { return payload().getLong(); }

    public VringState vringState() { return VringState.decode(payload()); }

    public VringAddr vringAddr() { return VringAddr.decode(payload()); }

    public MemoryTable memoryTable() { return MemoryTable.decode(payload()); }

    public MemoryRegion singleMemoryRegion() { return MemoryRegion.decodeSingle(payload()); }

    public DeviceConfig deviceConfig() { return DeviceConfig.decode(payload()); }

    public Inflight inflight() { return Inflight.decode(payload()); }

    public LogDescription logDescription() { return LogDescription.decode(payload()); }

    @Override
    public String toString() {
        return header + (fds.length > 0 ? " fds=" + Arrays.toString(fds) : "");
    }
}
