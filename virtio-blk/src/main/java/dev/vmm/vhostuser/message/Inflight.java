package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;

/**
 * Inflight description (VhostUserInflight), 24 bytes little-endian (C alignment pads the end):
 * <pre>
 * offset 0   u64 mmapSize     size of the area tracking in-flight I/O
 * offset 8   u64 mmapOffset   offset of the area in the fd
 * offset 16  u16 numQueues    virtqueues
 * offset 18  u16 queueSize    descriptors per virtqueue
 * offset 20  4 bytes padding
 * </pre>
 * GET_INFLIGHT_FD sends numQueues and queueSize; the reply fills mmapSize and mmapOffset and
 * carries the fd. SET_INFLIGHT_FD sends all four with the fd.
 */
public record Inflight(long mmapSize, long mmapOffset, int numQueues, int queueSize) {
    public static final int SIZE = 24;

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putLong(mmapSize).putLong(mmapOffset).putShort((short) numQueues).putShort((short) queueSize).putInt(0);
    }

    public static Inflight decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        Inflight r = new Inflight(in.getLong(), in.getLong(), Short.toUnsignedInt(in.getShort()), Short.toUnsignedInt(in.getShort()));
        in.getInt();
        return r;
    }
}
