package dev.vmm.vhostuser.message;

import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.linux.LibcSocket;
import java.io.File;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * Random and mutated messages through the decoder and the typed payload views: nothing but
 * VhostUserException escapes and no fd leaks (issue 5, "fuzz the message parser").
 */
class VhostUserDecoderFuzzTest {
    static final int CASES = 20_000;

    static int openFds() {
        String[] l = new File("/proc/self/fd").list();
        return l == null ? -1 : l.length;
    }

    private static byte[] seed(Random rnd) {
        int req = 1 + rnd.nextInt(VhostUserRequest.MAX_KNOWN + 2);
        int size = VhostUserRequest.payloadSize(req);
        if (size == VhostUserRequest.SIZE_VARIABLE) {
            if (req == VhostUserRequest.VHOST_USER_SET_MEM_TABLE) size = MemoryTable.sizeFor(1 + rnd.nextInt(8));
            else if (req == VhostUserRequest.VHOST_USER_GET_CONFIG || req == VhostUserRequest.VHOST_USER_SET_CONFIG) size = 12 + rnd.nextInt(257);
            else size = rnd.nextInt(64);
        }
        ByteBuffer b = ByteBuffer.allocate(12 + size).order(VhostUserHeader.ORDER);
        new VhostUserHeader(req, 1 | (rnd.nextBoolean() ? VhostUserHeader.NEED_REPLY : 0), size).encode(b);
        byte[] p = new byte[size];
        rnd.nextBytes(p);
        b.put(p);
        byte[] m = b.array();
        ByteBuffer w = ByteBuffer.wrap(m).order(VhostUserHeader.ORDER);
        if (req == VhostUserRequest.VHOST_USER_SET_MEM_TABLE) w.putInt(12, (size - 8) / 32);
        if ((req == VhostUserRequest.VHOST_USER_GET_CONFIG || req == VhostUserRequest.VHOST_USER_SET_CONFIG)) w.putInt(16, size - 12);
        return m;
    }

    private static byte[] mutate(byte[] m, Random rnd) {
        switch (rnd.nextInt(6)) {
            case 0 -> { return m; }
            case 1 -> { if (m.length > 0) m[rnd.nextInt(m.length)] ^= (byte) (1 << rnd.nextInt(8)); return m; }
            case 2 -> { ByteBuffer.wrap(m).order(VhostUserHeader.ORDER).putInt(8, rnd.nextInt()); return m; }
            case 3 -> { return java.util.Arrays.copyOf(m, rnd.nextInt(m.length + 16)); }
            case 4 -> { if (m.length >= 16) ByteBuffer.wrap(m).order(VhostUserHeader.ORDER).putInt(12, rnd.nextInt(12) - 2); return m; }
            default -> { byte[] r = new byte[rnd.nextInt(300)]; rnd.nextBytes(r); return r; }
        }
    }

    @Test
    void randomAndMutatedMessages() throws Exception {
        Random rnd = new Random(0x5eed);
        int accepted = 0;
        int rejected = 0;
        int before = -1;
        // the first cases warm up class loading (the JVM opens jars lazily), then fds are counted
        for (int i = -500; i < CASES; i++) {
            if (i == 0) {
                before = openFds();
                accepted = 0;
                rejected = 0;
            }
            byte[] m = mutate(seed(rnd), rnd);
            int[] fds = new int[rnd.nextInt(10) < 7 ? rnd.nextInt(2) : rnd.nextInt(10)];
            for (int k = 0; k < fds.length; k++) fds[k] = LibcSocket.eventfd();
            try (VhostUserMessage msg = VhostUserDecoder.decode(m, fds)) {
                accepted++;
                touch(msg);
            } catch (VhostUserException e) {
                rejected++;
                assertNotNull(e.kind());
            }
        }
        // Every case opens 0-8 eventfds: a leak leaves more open than before (other test threads may
        // close fds meanwhile, so fewer is not an error).
        int after = openFds();
        assertTrue(after <= before, "fd leak: " + before + " open before, " + after + " after");
        assertEquals(CASES, accepted + rejected);
        assertTrue(accepted > 1000, "accepted only " + accepted);
        assertTrue(rejected > 1000, "rejected only " + rejected);
    }

    /** Every typed view a dispatcher could use on an accepted message must work. */
    private static void touch(VhostUserMessage msg) {
        int s = msg.payloadSize();
        switch (msg.request()) {
            case VhostUserRequest.VHOST_USER_SET_MEM_TABLE -> {
                List<MemoryRegion> r = msg.memoryTable().regions();
                assertEquals(msg.fdCount(), r.size());
            }
            case VhostUserRequest.VHOST_USER_GET_CONFIG, VhostUserRequest.VHOST_USER_SET_CONFIG -> assertEquals(s - 12, msg.deviceConfig().size());
            case VhostUserRequest.VHOST_USER_SET_VRING_ADDR -> msg.vringAddr();
            case VhostUserRequest.VHOST_USER_ADD_MEM_REG, VhostUserRequest.VHOST_USER_REM_MEM_REG -> msg.singleMemoryRegion();
            case VhostUserRequest.VHOST_USER_GET_INFLIGHT_FD, VhostUserRequest.VHOST_USER_SET_INFLIGHT_FD -> msg.inflight();
            case VhostUserRequest.VHOST_USER_SET_LOG_BASE -> msg.logDescription();
            default -> {
                if (s == 8) { msg.u64(); msg.vringState(); }
            }
        }
    }
}
