package dev.vmm.core.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.linux.LibcSocket;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class UnixSocketFilesTest {
    @TempDir
    Path dir;

    @Test
    void aListeningSocketIsOwnerOnlyAndAcceptsConnections() throws Exception {
        Path p = dir.resolve("s.sock");
        int fd = UnixSocketFiles.listen(p, 4);
        try {
            assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(p)));
            try (SocketChannel c = SocketChannel.open(UnixDomainSocketAddress.of(p))) {
                assertTrue(c.isConnected());
            }
            IOException inUse = assertThrows(IOException.class, () -> UnixSocketFiles.listen(p, 4));
            assertEquals(p + " is in use by another server", inUse.getMessage());
        } finally {
            LibcSocket.closeQuietly(fd);
        }
        // What a killed server leaves: the file, nobody listening. The next start replaces it.
        int again = UnixSocketFiles.listen(p, 4);
        LibcSocket.closeQuietly(again);
        UnixSocketFiles.removeQuietly(p);
        assertFalse(Files.exists(p));
    }

    @Test
    @org.junit.jupiter.api.Timeout(20)
    void aLiveServerWithAFullBacklogIsInUseAndDoesNotHangTheProbe() throws Exception {
        Path p = dir.resolve("busy.sock");
        try (ServerSocketChannel busy = ServerSocketChannel.open(StandardProtocolFamily.UNIX)) {
            busy.bind(UnixDomainSocketAddress.of(p), 1); // never accepts
            java.util.List<SocketChannel> queued = new java.util.ArrayList<>();
            try {
                for (int i = 0; i < 8; i++) { // fill the backlog: a blocking connect would now wait
                    SocketChannel c = SocketChannel.open(StandardProtocolFamily.UNIX);
                    queued.add(c);
                    c.configureBlocking(false);
                    try {
                        c.connect(UnixDomainSocketAddress.of(p));
                    } catch (java.net.SocketException full) {
                        break; // EAGAIN: the backlog is full
                    }
                }
                IOException e = assertThrows(IOException.class, () -> UnixSocketFiles.prepare(p));
                assertEquals(p + " is in use by another server", e.getMessage());
                assertTrue(Files.exists(p), "a live server's socket is left alone");
            } finally {
                for (SocketChannel c : queued) c.close();
            }
        }
    }

    @Test
    void aStaleSocketIsReplacedAndOtherFilesAreRefused() throws Exception {
        Path stale = dir.resolve("stale.sock");
        ServerSocketChannel c = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        c.bind(UnixDomainSocketAddress.of(stale));
        c.close(); // the file stays, nobody listens
        UnixSocketFiles.prepare(stale);
        assertFalse(Files.exists(stale));
        Path regular = Files.writeString(dir.resolve("file"), "x");
        IOException e = assertThrows(IOException.class, () -> UnixSocketFiles.listen(regular, 1));
        assertEquals(regular + " exists and is not a socket", e.getMessage());
        assertEquals("x", Files.readString(regular), "the file is left alone");
        IOException tooLong = assertThrows(IOException.class, () -> UnixSocketFiles.listen(dir.resolve("x".repeat(120)), 1));
        assertTrue(tooLong.getMessage().contains("must be 1..107 bytes"), tooLong.getMessage());
    }

    /** --socket-mode 0660 --socket-group G: exactly that mode whatever the umask (bind applies it), and that group. */
    @Test
    void aConfiguredModeAndGroupAreSetExactlyBeforeListening() throws Exception {
        Path p = dir.resolve("g.sock");
        java.nio.file.attribute.GroupPrincipal group = Files.readAttributes(dir, java.nio.file.attribute.PosixFileAttributes.class).group();
        UnixSocketFiles.setAccess(new UnixSocketFiles.Access(0660, group));
        int fd = -1;
        try {
            fd = UnixSocketFiles.listen(p, 4);
            assertEquals("rw-rw----", PosixFilePermissions.toString(Files.getPosixFilePermissions(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)));
            assertEquals(group, Files.readAttributes(p, java.nio.file.attribute.PosixFileAttributes.class, java.nio.file.LinkOption.NOFOLLOW_LINKS).group());
        } finally {
            UnixSocketFiles.setAccess(UnixSocketFiles.Access.PRIVATE);
            LibcSocket.closeQuietly(fd);
        }
        assertThrows(IllegalArgumentException.class, () -> new UnixSocketFiles.Access(0066, null), "the owner keeps read-write");
        assertThrows(IllegalArgumentException.class, () -> new UnixSocketFiles.Access(04777, null));
    }
}
