package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;

/**
 * Log description (VhostUserLog) of SET_LOG_BASE, 16 bytes little-endian:
 * <pre>
 * offset 0  u64 mmapSize     size of the dirty log
 * offset 8  u64 mmapOffset   where the log starts in the fd
 * </pre>
 */
public record LogDescription(long mmapSize, long mmapOffset) {
    public static final int SIZE = 16;

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putLong(mmapSize).putLong(mmapOffset);
    }

    public static LogDescription decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        return new LogDescription(in.getLong(), in.getLong());
    }
}
