package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;

/**
 * Vring address description (struct vhost_vring_addr), 40 bytes little-endian:
 * <pre>
 * offset 0   u32 index   vring index
 * offset 4   u32 flags   bit 0 VHOST_VRING_F_LOG: log used-ring writes
 * offset 8   u64 desc    descriptor table, front-end user address (IOVA with IOMMU_PLATFORM)
 * offset 16  u64 used    used ring
 * offset 24  u64 avail   available ring
 * offset 32  u64 log     guest address for logging used-ring writes
 * </pre>
 * Note the descriptor / used / available order on the wire.
 */
public record VringAddr(int index, int flags, long descUserAddr, long usedUserAddr, long availUserAddr, long logGuestAddr) {
    public static final int SIZE = 40;
    /** flags bit: log writes to the used ring. */
    public static final int VHOST_VRING_F_LOG = 0x1;

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putInt(index).putInt(flags).putLong(descUserAddr).putLong(usedUserAddr).putLong(availUserAddr).putLong(logGuestAddr);
    }

    public static VringAddr decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        return new VringAddr(in.getInt(), in.getInt(), in.getLong(), in.getLong(), in.getLong(), in.getLong());
    }
}
