package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdReplyType.*;

import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdReplyFlags;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.ByteBufAllocator;
import java.nio.charset.StandardCharsets;

/**
 * Encodes the transmission replies of one connection in the form it negotiated (proto.md "Simple
 * reply message", "Structured reply chunk message", extended headers): nbdkit's
 * {@code send_simple_reply}/{@code send_structured_reply_*} family. Big-endian throughout.
 *
 * <p>Layouts: simple reply 16 bytes (magic u32, error u32, cookie u64); structured chunk header
 * 20 bytes (magic u32, flags u16, type u16, cookie u64, length u32); extended chunk header 32
 * bytes (magic u32, flags u16, type u16, cookie u64, offset u64, length u64), where offset MUST
 * echo the request's offset.
 *
 * <p>Thread contract: stateless after construction; used on the connection's event loop.
 */
final class ReplyEncoder {
    static final int SIMPLE_REPLY_SIZE = 16;

    final boolean structured;
    final boolean extended;
    /** 20 for structured replies, 32 for extended ones. */
    final int chunkHeaderSize;

    ReplyEncoder(boolean structured, boolean extended) {
        this.structured = structured || extended;
        this.extended = extended;
        this.chunkHeaderSize = extended ? 32 : 20;
    }

    /** Bytes in front of a READ's data when it goes as one content chunk (or a simple reply). */
    int readHeaderSize() {
        return structured ? chunkHeaderSize + 8 : SIMPLE_REPLY_SIZE;
    }

    void chunkHeader(ByteBuf b, int flags, int type, long cookie, long offset, long payloadLength) {
        if (extended) {
            b.writeInt(NbdMagic.NBD_EXTENDED_REPLY_MAGIC).writeShort(flags).writeShort(type).writeLong(cookie)
                    .writeLong(offset).writeLong(payloadLength);
        } else {
            b.writeInt(NbdMagic.NBD_STRUCTURED_REPLY_MAGIC).writeShort(flags).writeShort(type).writeLong(cookie)
                    .writeInt((int) payloadLength);
        }
    }

    /** What precedes a successful READ's data: one OFFSET_DATA chunk header and its offset, or a simple reply. */
    void readHeader(ByteBuf b, long cookie, long offset, int length) {
        if (structured) {
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, offset, 8L + length);
            b.writeLong(offset);
        } else {
            b.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(0).writeLong(cookie);
        }
    }

    /** Success without data: a simple reply, or a NONE chunk where simple replies do not exist (extended). */
    ByteBuf ok(ByteBufAllocator alloc, long cookie, long offset) {
        ByteBuf b;
        if (extended) {
            b = alloc.directBuffer(chunkHeaderSize);
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, offset, 0);
        } else {
            b = alloc.directBuffer(SIMPLE_REPLY_SIZE);
            b.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(0).writeLong(cookie);
        }
        return b;
    }

    /** A structured reply with nothing in it (a READ of length 0 must still be answered in chunks). */
    ByteBuf none(ByteBufAllocator alloc, long cookie, long offset) {
        ByteBuf b = alloc.directBuffer(chunkHeaderSize);
        chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, offset, 0);
        return b;
    }

    /** An error: an ERROR chunk with the message (at most 4096 bytes, the spec's string limit), or a simple reply. */
    ByteBuf error(ByteBufAllocator alloc, long cookie, long offset, int error, String message) {
        ByteBuf b;
        if (structured) {
            byte[] m = message.getBytes(StandardCharsets.UTF_8);
            int mlen = Math.min(m.length, 4096);
            b = alloc.directBuffer(chunkHeaderSize + 6 + mlen);
            chunkHeader(b, NbdReplyFlags.NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, offset, 6L + mlen);
            b.writeInt(error).writeShort(mlen).writeBytes(m, 0, mlen);
        } else {
            b = alloc.directBuffer(SIMPLE_REPLY_SIZE);
            b.writeInt(NbdMagic.NBD_SIMPLE_REPLY_MAGIC).writeInt(error).writeLong(cookie);
        }
        return b;
    }
}
