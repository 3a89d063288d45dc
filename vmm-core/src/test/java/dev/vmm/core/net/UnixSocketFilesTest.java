package dev.vmm.core.net;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.vmm.core.linux.LibC;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.ServerSocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class UnixSocketFilesTest {
    @TempDir
    Path dir;

    @Test
    void aSocketIsBornOwnerOnlyWhateverTheUmaskAndTheUmaskIsRestored() throws Exception {
        int saved = LibC.umask(0); // the most permissive umask: a plain bind makes the socket 0777
        try {
            Path p = dir.resolve("s.sock");
            try (ServerSocketChannel s = UnixSocketFiles.bindPrivately(() -> {
                ServerSocketChannel c = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
                c.bind(UnixDomainSocketAddress.of(p)); // bound and listening: connectable from here on
                return c;
            })) {
                assertEquals("rw-------", PosixFilePermissions.toString(Files.getPosixFilePermissions(p)));
            }
            assertEquals(0, LibC.umask(0), "the umask is put back");
            assertThrows(IOException.class, () -> UnixSocketFiles.bindPrivately(() -> {
                throw new IOException("bind failed");
            }));
            assertEquals(0, LibC.umask(0), "the umask is put back after a failed bind too");
        } finally {
            LibC.umask(saved);
        }
    }

    @Test
    void aStaleSocketIsReplacedAndOtherFilesAreRefused() throws Exception {
        Path stale = dir.resolve("stale.sock");
        ServerSocketChannel c = ServerSocketChannel.open(StandardProtocolFamily.UNIX);
        c.bind(UnixDomainSocketAddress.of(stale));
        c.close(); // the file stays, nobody listens: what a killed server leaves
        UnixSocketFiles.prepare(stale);
        assertEquals(false, Files.exists(stale));
        Path regular = Files.writeString(dir.resolve("file"), "x");
        IOException e = assertThrows(IOException.class, () -> UnixSocketFiles.prepare(regular));
        assertEquals(regular + " exists and is not a socket", e.getMessage());
    }
}
