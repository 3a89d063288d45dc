package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;

/**
 * Virtio device config space access (VhostUserConfig), little-endian:
 * <pre>
 * offset 0   u32 offset   offset in the device's config space
 * offset 4   u32 size     bytes accessed, at most {@link #MAX_SIZE}
 * offset 8   u32 flags    0 writable fields, 1 live migration
 * offset 12  size bytes   contents (GET_CONFIG request: ignored; reply: the config bytes)
 * </pre>
 * The payload size is exactly 12 + size; a GET_CONFIG reply with size 0 means error.
 */
public record DeviceConfig(int offset, int size, int flags, byte[] data) {
    public static final int HEADER_SIZE = 12;
    /** VHOST_USER_MAX_CONFIG_SIZE. */
    public static final int MAX_SIZE = 256;
    /** flags: the front-end writes fields the driver may write. */
    public static final int VHOST_SET_CONFIG_TYPE_FRONTEND = 0;
    /** flags: the front-end restores the config space during live migration. */
    public static final int VHOST_SET_CONFIG_TYPE_MIGRATION = 1;

    public DeviceConfig {
        if (data.length != size) throw new IllegalArgumentException("data length " + data.length + " != size " + size);
    }

    public int payloadSize() { return HEADER_SIZE + size; }

    public void encode(ByteBuffer out) {
        VhostUserHeader.checkOrder(out);
        out.putInt(offset).putInt(size).putInt(flags).put(data);
    }

    /** Decodes a payload whose size was checked to be 12 + size (see {@link VhostUserDecoder}). */
    public static DeviceConfig decode(ByteBuffer in) {
        VhostUserHeader.checkOrder(in);
        int off = in.getInt();
        int size = in.getInt();
        int flags = in.getInt();
        if (size < 0 || size > MAX_SIZE || size > in.remaining()) throw new IllegalArgumentException("config size " + size);
        byte[] d = new byte[size];
        in.get(d);
        return new DeviceConfig(off, size, flags, d);
    }
}
