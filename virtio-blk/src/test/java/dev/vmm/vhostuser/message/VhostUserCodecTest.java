package dev.vmm.vhostuser.message;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.linux.LibcSocket;
import java.nio.ByteBuffer;
import java.util.HexFormat;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Byte layouts against hand-written bytes, round trips, and the validation layers. */
class VhostUserCodecTest {
    private static final HexFormat HEX = HexFormat.of();

    private static ByteBuffer le(int n) { return ByteBuffer.allocate(n).order(VhostUserHeader.ORDER); }

    @Test
    void headerLayout() {
        ByteBuffer b = le(12);
        VhostUserHeader.request(VhostUserRequest.VHOST_USER_SET_MEM_TABLE, 0x28, true).encode(b);
        assertEquals("05000000" + "09000000" + "28000000", HEX.formatHex(b.array()));
        VhostUserHeader h = VhostUserHeader.decode(ByteBuffer.wrap(b.array()).order(VhostUserHeader.ORDER));
        assertEquals(5, h.request());
        assertTrue(h.needReply());
        assertFalse(h.isReply());
        assertEquals(1, h.version());
        ByteBuffer r = le(12);
        VhostUserHeader.reply(1, 8).encode(r);
        assertEquals("01000000" + "05000000" + "08000000", HEX.formatHex(r.array()));
    }

    @Test
    void vringAddrLayout() {
        ByteBuffer b = le(VringAddr.SIZE);
        new VringAddr(1, 0, 0x1000, 0x2000, 0x3000, 0x4000).encode(b);
        assertEquals("01000000" + "00000000" + "0010000000000000" + "0020000000000000" + "0030000000000000" + "0040000000000000",
                HEX.formatHex(b.array()));
        assertEquals(new VringAddr(1, 0, 0x1000, 0x2000, 0x3000, 0x4000), VringAddr.decode(ByteBuffer.wrap(b.array()).order(VhostUserHeader.ORDER)));
    }

    @Test
    void memoryTableLayout() {
        MemoryTable t = new MemoryTable(List.of(new MemoryRegion(0x1, 0x2, 0x3, 0x4)));
        ByteBuffer b = le(t.size());
        t.encode(b);
        assertEquals(40, t.size());
        assertEquals("01000000" + "00000000" + "0100000000000000" + "0200000000000000" + "0300000000000000" + "0400000000000000",
                HEX.formatHex(b.array()));
        assertEquals(t, MemoryTable.decode(ByteBuffer.wrap(b.array()).order(VhostUserHeader.ORDER)));
        ByteBuffer s = le(MemoryRegion.SINGLE_SIZE);
        t.regions().get(0).encodeSingle(s);
        assertEquals("0000000000000000" + "0100000000000000", HEX.formatHex(s.array(), 0, 16));
    }

    @Test
    void configAndInflightAndStateLayouts() {
        DeviceConfig c = new DeviceConfig(0x10, 2, 1, new byte[] {(byte) 0xaa, (byte) 0xbb});
        ByteBuffer b = le(c.payloadSize());
        c.encode(b);
        assertEquals("10000000" + "02000000" + "01000000" + "aabb", HEX.formatHex(b.array()));
        DeviceConfig d = DeviceConfig.decode(ByteBuffer.wrap(b.array()).order(VhostUserHeader.ORDER));
        assertArrayEquals(c.data(), d.data());

        ByteBuffer i = le(Inflight.SIZE);
        new Inflight(0x1000, 0x20, 2, 256).encode(i);
        assertEquals("0010000000000000" + "2000000000000000" + "0200" + "0001" + "00000000", HEX.formatHex(i.array()));
        assertEquals(new Inflight(0x1000, 0x20, 2, 256), Inflight.decode(ByteBuffer.wrap(i.array()).order(VhostUserHeader.ORDER)));

        ByteBuffer s = le(8);
        new VringState(3, 128).encode(s);
        assertEquals("03000000" + "80000000", HEX.formatHex(s.array()));

        ByteBuffer a = le(VringArea.SIZE);
        new VringArea(0x101, 4096, 0).encode(a);
        assertEquals(new VringArea(0x101, 4096, 0), VringArea.decode(ByteBuffer.wrap(a.array()).order(VhostUserHeader.ORDER)));
        ByteBuffer l = le(LogDescription.SIZE);
        new LogDescription(8, 16).encode(l);
        assertEquals(new LogDescription(8, 16), LogDescription.decode(ByteBuffer.wrap(l.array()).order(VhostUserHeader.ORDER)));
    }

    @Test
    void namesAndFeatures() {
        assertEquals("VHOST_USER_GET_FEATURES", VhostUserRequest.name(1));
        assertEquals("VHOST_USER_GET_SHARED_OBJECT", VhostUserRequest.name(41));
        assertEquals("VHOST_USER_UNKNOWN(99)", VhostUserRequest.name(99));
        assertEquals(9, VhostUserProtocolFeature.CONFIG);
        assertEquals(15, VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS);
        assertEquals("MQ|REPLY_ACK|CONFIG", VhostUserProtocolFeature.describe(0b1000001001));
        for (int r = 1; r <= VhostUserRequest.MAX_KNOWN; r++) assertFalse(VhostUserRequest.name(r).contains("UNKNOWN"), "code " + r);
    }

    // ---- validation layers ----

    static byte[] message(int request, int flags, byte[] payload) {
        ByteBuffer b = le(12 + payload.length);
        new VhostUserHeader(request, flags, payload.length).encode(b);
        b.put(payload);
        return b.array();
    }

    static byte[] u64(long v) { return le(8).putLong(v).array(); }

    private static VhostUserException.Kind rejected(byte[] msg, int... fds) {
        VhostUserException e = assertThrows(VhostUserException.class, () -> VhostUserDecoder.decode(msg, fds));
        for (int fd : fds) assertFalse(LibcSocket.isOpen(fd), "fd " + fd + " of a rejected message must be closed");
        return e.kind();
    }

    @Test
    void syntaxLayerRejectsWrongSizes() throws Exception {
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_SET_FEATURES, 1, new byte[4])));
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_GET_FEATURES, 1, new byte[8])));
        // nregions says 2, payload has 1 region
        ByteBuffer t = le(40).putInt(2).putInt(0);
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_SET_MEM_TABLE, 1, t.array())));
        // config size 300 > 256
        ByteBuffer c = le(12).putInt(0).putInt(300).putInt(0);
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_GET_CONFIG, 1, c.array())));
        // version 2, size too big: framing lost
        assertEquals(VhostUserException.Kind.CLOSE_CONNECTION, rejected(message(VhostUserRequest.VHOST_USER_GET_FEATURES, 2, new byte[0])));
        ByteBuffer big = le(12);
        new VhostUserHeader(1, 1, 4097).encode(big);
        assertThrows(VhostUserException.class, () -> VhostUserDecoder.checkHeader(VhostUserHeader.decode(ByteBuffer.wrap(big.array()).order(VhostUserHeader.ORDER))));
        // a reply flag on a request
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(1, 1 | VhostUserHeader.REPLY, new byte[0])));
        // good ones pass
        try (VhostUserMessage m = VhostUserDecoder.decode(message(VhostUserRequest.VHOST_USER_SET_FEATURES, 1, u64(0x42)), new int[0])) {
            assertEquals(0x42, m.u64());
        }
    }

    @Test
    void fdLayerClosesUnexpectedAndRejectsMissingFds() throws Exception {
        int e1 = LibcSocket.eventfd();
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_SET_FEATURES, 1, u64(1)), e1));
        // bit 8 set and an fd anyway
        int e2 = LibcSocket.eventfd();
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_SET_VRING_KICK, 1, u64(0x100)), e2));
        // kick without fd and without bit 8
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_SET_VRING_KICK, 1, u64(0))));
        // two fds for a one-fd request
        int e3 = LibcSocket.eventfd();
        int e4 = LibcSocket.eventfd();
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_SET_VRING_CALL, 1, u64(0)), e3, e4));
        // mem table with 1 region and 2 fds
        ByteBuffer t = le(40).putInt(1).putInt(0);
        int e5 = LibcSocket.eventfd();
        int e6 = LibcSocket.eventfd();
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(VhostUserRequest.VHOST_USER_SET_MEM_TABLE, 1, t.array()), e5, e6));
        // unknown request with an fd
        int e7 = LibcSocket.eventfd();
        assertEquals(VhostUserException.Kind.REPLY_ERROR, rejected(message(200, 1, new byte[0]), e7));
        // valid kick: the message owns the fd, close() closes it once
        int e8 = LibcSocket.eventfd();
        VhostUserMessage m = VhostUserDecoder.decode(message(VhostUserRequest.VHOST_USER_SET_VRING_KICK, 1, u64(3)), new int[] {e8});
        assertTrue(LibcSocket.isOpen(e8));
        m.close();
        assertFalse(LibcSocket.isOpen(e8));
        m.close();
    }
}
