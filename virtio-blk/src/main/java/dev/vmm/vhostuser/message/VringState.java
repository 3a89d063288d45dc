package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;

/**
 * Vring state description (struct vhost_vring_state), 8 bytes little-endian:
 * <pre>
 * offset 0  u32 index   vring index
 * offset 4  u32 num     size, base index, enable flag or endianness, by request
 * </pre>
 */
public record VringState(int index, int num) {
    public static final int SIZE = 8;

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putInt(index).putInt(num);
    }

    public static VringState decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        return new VringState(in.getInt(), in.getInt());
    }
}
