package dev.vmm.core.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.linux.LibcSocket;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** sd_listen_fds(3)'s rules for LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, and claiming by number and name. */
class SocketActivationTest {
    @TempDir
    Path dir;

    @Test
    void descriptorsStartAtThreeAndTakeTheirNames() {
        SocketActivation a = SocketActivation.parse(Map.of("LISTEN_PID", "42", "LISTEN_FDS", "3", "LISTEN_FDNAMES", "nbd::vhost"), 42);
        assertEquals(List.of(new SocketActivation.Fd(3, "nbd"), new SocketActivation.Fd(4, "unknown"), new SocketActivation.Fd(5, "vhost")), a.fds());
    }

    @Test
    void anotherPidsOrMalformedVariablesHandNothing() {
        assertTrue(SocketActivation.parse(Map.of("LISTEN_PID", "41", "LISTEN_FDS", "1"), 42).fds().isEmpty());
        assertTrue(SocketActivation.parse(Map.of("LISTEN_PID", "x", "LISTEN_FDS", "1"), 42).fds().isEmpty());
        assertTrue(SocketActivation.parse(Map.of("LISTEN_FDS", "1"), 42).fds().isEmpty());
        assertTrue(SocketActivation.parse(Map.of("LISTEN_PID", "42", "LISTEN_FDS", "-1"), 42).fds().isEmpty());
    }

    @Test
    void aNameOrANumberIsClaimedOnceAndMustListen() throws Exception {
        int listening = UnixSocketFiles.listen(dir.resolve("a.sock"), 1);
        int idle = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_STREAM | LibcSocket.SOCK_CLOEXEC, 0);
        try {
            SocketActivation a = new SocketActivation(List.of(new SocketActivation.Fd(listening, "nbd"), new SocketActivation.Fd(idle, "idle")));
            InheritedSocket s = a.claim("nbd");
            assertEquals(listening, s.fd());
            assertTrue(s.unix());
            assertEquals("file descriptor " + listening + " is used by another listener already",
                    assertThrows(IOException.class, () -> a.claim(Integer.toString(listening))).getMessage());
            assertTrue(assertThrows(IOException.class, () -> a.claim("idle")).getMessage().contains("not a listening one"));
            assertTrue(assertThrows(IOException.class, () -> a.claim("qmp")).getMessage().contains("no socket named 'qmp' was passed (LISTEN_FDNAMES: nbd, idle)"));
            assertTrue(assertThrows(IOException.class, () -> a.claim("2")).getMessage().contains("standard"));
            assertTrue(assertThrows(IOException.class, () -> a.claim("999")).getMessage().contains("is not open"));
            assertEquals(List.of(new SocketActivation.Fd(idle, "idle")), a.unclaimed());
        } finally {
            LibcSocket.closeQuietly(listening);
            LibcSocket.closeQuietly(idle);
        }
    }
}
