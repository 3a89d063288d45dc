package dev.vmm.vhostuser.message;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * The 12-byte message header, native byte order (little-endian on x86_64):
 * <pre>
 * offset 0  u32 request   request code ({@link VhostUserRequest})
 * offset 4  u32 flags     bits 0-1 version (0x1), bit 2 REPLY, bit 3 NEED_REPLY
 * offset 8  u32 size      payload bytes that follow
 * </pre>
 * Spec: QEMU docs/interop/vhost-user.rst, "Header".
 */
public record VhostUserHeader(int request, int flags, int size) {
    /** Header length. */
    public static final int SIZE = 12;
    /** Mask of the version bits. */
    public static final int VERSION_MASK = 0x3;
    /** The only protocol version. */
    public static final int VERSION = 0x1;
    /** Set on every back-end reply. */
    public static final int REPLY = 0x4;
    /** The front-end asks for a REPLY_ACK u64 (when that protocol feature is negotiated). */
    public static final int NEED_REPLY = 0x8;
    /** Largest payload accepted (rust-vmm's MAX_MSG_SIZE; QEMU's biggest payload is 268 bytes). */
    public static final int MAX_PAYLOAD_SIZE = 4096;

    /** Byte order of every vhost-user field. */
    public static final ByteOrder ORDER = ByteOrder.LITTLE_ENDIAN;

    public int version() { return flags & VERSION_MASK; }

    public boolean isReply() { return (flags & REPLY) != 0; }

    public boolean needReply() { return (flags & NEED_REPLY) != 0; }

    /** A request header from the front-end: version 1, NEED_REPLY as asked. */
    public static VhostUserHeader request(int request, int size, boolean needReply) {
        return new VhostUserHeader(request, VERSION | (needReply ? NEED_REPLY : 0), size);
    }

    /** A reply header from the back-end: version 1 and REPLY. */
    public static VhostUserHeader reply(int request, int size) {
        return new VhostUserHeader(request, VERSION | REPLY, size);
    }

    /** Writes the 12 bytes at the buffer's position (the buffer must be little-endian). */
    public void encode(ByteBuffer out) {
        checkOrder(out);
        out.putInt(request).putInt(flags).putInt(size);
    }

    /** Reads 12 bytes at the buffer's position; no validation (see {@link VhostUserDecoder}). */
    public static VhostUserHeader decode(ByteBuffer in) {
        checkOrder(in);
        return new VhostUserHeader(in.getInt(), in.getInt(), in.getInt());
    }

    /** The payload size as an unsigned value. */
    public long sizeUnsigned() { return Integer.toUnsignedLong(size); }

    static void checkOrder(ByteBuffer b) {
        if (b.order() != ORDER) throw new IllegalArgumentException("vhost-user buffers are little-endian");
    }

    @Override
    public String toString() {
        return VhostUserRequest.name(request) + "[flags=0x" + Integer.toHexString(flags) + ", size=" + sizeUnsigned() + "]";
    }
}
