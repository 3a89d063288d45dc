package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Peers;
import dev.vmm.cli.it.Run;
import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Fast checks of the guest tooling that need no QEMU run. */
class GuestToolingTest {
    @TempDir
    Path dir;

    @Test
    void cpioIsReadableByGnuCpio() throws Exception {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        CpioWriter w = new CpioWriter(bytes);
        w.directory("bin", 0755);
        w.charDevice("dev/console", 0600, 5, 1);
        w.file("bin/hello", 0755, "odd length!".getBytes(StandardCharsets.UTF_8));
        w.symlink("bin/sh", "busybox");
        w.finish();
        Path archive = Files.write(dir.resolve("a.cpio"), bytes.toByteArray());
        String cpio = Peers.require("cpio");
        Run.Result r = Run.cmd(cpio, "-itv", "-F", archive.toString()).expect(0);
        assertTrue(r.stdout().matches("(?s).*drwxr-xr-x.*bin\n.*"), r.describe());
        assertTrue(r.stdout().matches("(?s).*crw-------.*5,\\s*1.*dev/console\n.*"), r.describe());
        assertTrue(r.stdout().matches("(?s).*-rwxr-xr-x.* 11 .*bin/hello\n.*"), r.describe());
        assertTrue(r.stdout().contains("bin/sh -> busybox"), r.describe());
        Path out = Files.createDirectories(dir.resolve("x"));
        Run.cmd(cpio, "-id", "--no-absolute-filenames", "-F", archive.toString(), "bin/hello").dir(out).expect(0);
        assertEquals("odd length!", Files.readString(out.resolve("bin/hello")));
    }

    @Test
    void parsesResultLinesEvenAfterKernelNoise() {
        Map<String, String> m = GuestRun.parseResults(
                "Booting\r\nVMMTEST:boot=ok\r\n[    1.2] virtio_blk virtio0: x VMMTEST:size=512\nVMMTEST:bad\nVMMTEST:w0=a=b\n");
        assertEquals(Map.of("boot", "ok", "size", "512", "w0", "a=b"), m);
        GuestRun run = new GuestRun(0, false, java.time.Duration.ZERO, null, "VMMTEST:exit=3\n", GuestRun.parseResults("VMMTEST:exit=3\n"));
        assertEquals(3, run.workloadExit());
        assertTrue(!run.succeeded());
    }

    @Test
    void parsesAptCacheDepends() {
        assertEquals("linux-image-6.1.0-57-cloud-amd64", GuestKernel.parseDepends(
                "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n"));
        assertNull(GuestKernel.parseDepends("W: No packages found\n"));
        assertEquals("virtio_pci_modern_dev", GuestKernel.moduleName("virtio_pci_modern_dev.ko.xz"));
        assertEquals("virtio_blk", GuestKernel.moduleName("virtio-blk.ko"));
        assertNull(GuestKernel.moduleName("modules.dep"));
    }

    @Test
    void qemuCommandLine() throws Exception {
        Peers.require(HostTools.QEMU);
        Path k = Files.writeString(dir.resolve("k"), "");
        List<String> c = GuestLauncher.of(k, k).socket(dir.resolve("a,b.sock")).smp(2).numQueues(2).memory("1g")
                .reconnect(true).deviceOption("queue-size=128").command();
        String s = String.join(" ", c);
        assertTrue(s.contains(" -accel tcg -m 1G -smp 2 "), s);
        assertTrue(s.contains("memory-backend-memfd,id=mem,size=1G,share=on"), s);
        assertTrue(s.contains("path=" + dir.resolve("a,,b.sock") + ",reconnect=1"), s);
        assertTrue(s.endsWith("vhost-user-blk-pci,chardev=c0,num-queues=2,queue-size=128"), s);
    }
}
