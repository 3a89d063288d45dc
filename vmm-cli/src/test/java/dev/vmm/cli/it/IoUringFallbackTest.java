package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.testing.Tools;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A host that refuses io_uring (what a container's seccomp profile does): the server starts,
 * says in one line why it uses aio=threads, and serves correctly. io_uring is refused for real,
 * through {@code kernel.io_uring_disabled=2} (needs root, as CI has), only while the server starts;
 * the old value is put back whatever happens.
 */
@Timeout(120)
class IoUringFallbackTest {
    static final Path SYSCTL = Path.of("/proc/sys/kernel/io_uring_disabled");

    @TempDir Path dir;
    VmmProcess server;

    @AfterEach
    void stop() {
        if (server != null) server.close();
    }

    @Test
    void withoutIoUringTheServerFallsBackToThreadsAndSaysWhy() throws Exception {
        String qemuIo = Peers.require("qemu-io");
        if (!Files.isWritable(SYSCTL)) {
            Tools.missing("a writable " + SYSCTL + " (root on Linux 6.6+) to refuse io_uring", "procps");
            return;
        }
        Path img = Images.sparse(dir.resolve("disk.img"), 16 * MiB);
        Path sock = dir.resolve("nbd.sock");
        String old = Files.readString(SYSCTL).trim();
        try {
            Files.writeString(SYSCTL, "2");
            server = VmmProcess.start(dir, "no-uring", List.of(
                    "--blockdev", "driver=file,node-name=disk0,filename=" + img + ",cache.direct=on",
                    "--object", "iothread,id=iot0",
                    "--nbd-server", "addr.type=unix,addr.path=" + sock,
                    "--export", "type=nbd,id=nbd0,node-name=disk0,writable=on,iothread=iot0"));
        } finally {
            restore(old);
        }
        String uri = "nbd+unix:///disk0?socket=" + sock;
        Run.Result r = Run.cmd(qemuIo, "-f", "raw", "-c", "write -P 0x5a 1M 2M", "-c", "flush", "-c", "read -P 0x5a 1M 2M",
                "-c", "read -P 0 0 1M", uri).expect(0);
        assertFalse(r.stdout().contains("fail") || r.stderr().contains("fail"), r.describe());
        server.assertAlive();
        String log = server.stderr();
        assertTrue(log.contains("io_uring is not available here (io_uring_setup: Operation not permitted (errno 1)): file I/O uses aio=threads"), log);
        byte[] file = Files.readAllBytes(img);
        for (int i = (int) MiB; i < 3 * MiB; i++) {
            if (file[i] != 0x5a) throw new AssertionError("byte " + i + " of the image is " + file[i]);
        }
    }

    private static void restore(String old) throws IOException {
        Files.writeString(SYSCTL, old);
    }
}
