package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** qemu-io over {@code nbd://} and {@code nbd+unix://}; every effect is checked in the image file. */
@Timeout(120)
class QemuIoTest extends PeerTestBase {

    private static Run.Result qemuIo(String uri, String... commands) {
        List<String> cmd = new ArrayList<>(List.of(Peers.require("qemu-io"), "-f", "raw"));
        for (String c : commands) {
            cmd.add("-c");
            cmd.add(c);
        }
        cmd.add(uri);
        Run.Result r = Run.cmd(cmd).expect(0);
        assertFalse(r.stdout().contains("fail") || r.stderr().contains("fail"), r.describe());
        return r;
    }

    private static byte[] pattern(int b, int length) {
        byte[] a = new byte[length];
        Arrays.fill(a, (byte) b);
        return a;
    }

    @Test
    void writeFuaFlushDiscardWriteZeroesReachTheImageFile() {
        Path img = Images.sparse(tmp.resolve("disk.img"), 16 * MiB);
        Images.fill(img, 0, (int) (16 * MiB), 42); // fully allocated, known content
        String untouchedBefore = Images.sha256(img, 12 * MiB, 4 * MiB);
        Disk d = serveDisk(img, true);

        qemuIo(d.uri(),
                "write -P 0xab 4096 65536",
                "read -P 0xab 4096 65536",
                "write -f -P 0xcd 1M 64k", // FUA
                "read -P 0xcd 1M 64k",
                "flush",
                "discard 2M 1M",
                "write -z 4M 1M",
                "read -P 0 4M 1M",
                "write -z -u 6M 1M",
                "read -P 0 6M 1M",
                "flush");

        assertArrayEquals(pattern(0xab, 65536), Images.read(img, 4096, 65536), "write -P 0xab");
        assertArrayEquals(pattern(0xcd, 65536), Images.read(img, MiB, 65536), "write -f (FUA)");
        assertTrue(Images.isZero(img, 4 * MiB, (int) MiB), "write -z");
        assertTrue(Images.isZero(img, 6 * MiB, (int) MiB), "write -z -u");
        if (!Peers.qsd()) {
            // QSD's file node defaults to discard=ignore; the issue makes discard punch a hole.
            assertTrue(Images.isZero(img, 2 * MiB, (int) MiB), "discard punches a hole");
        }
        assertArrayEquals(Images.read(img, 0, 4096), Arrays.copyOf(Images.data(42, 4096), 4096), "bytes before the write");
        assertEquals(untouchedBefore, Images.sha256(img, 12 * MiB, 4 * MiB), "untouched range");
    }

    @Test
    void writeAndReadBackOverUnixSocket() {
        Path img = Images.sparse(tmp.resolve("disk.img"), 8 * MiB);
        Path sock = socketDir().resolve("nbd.sock");
        serve("--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--nbd-server", Net.unixServer(sock),
                "--export", "type=nbd,id=exp0,node-name=disk0,writable=on");
        qemuIo(Net.unixUri(sock, "disk0"),
                "write -P 0x5a 512 131072", "read -P 0x5a 512 131072", "read -P 0 0 512", "flush");
        assertArrayEquals(pattern(0x5a, 131072), Images.read(img, 512, 131072));
    }

    @Test
    void readOnlyExportRejectsQemuIoWrite() {
        Path img = Images.sparse(tmp.resolve("disk.img"), 4 * MiB);
        Images.fill(img, 0, (int) (4 * MiB), 9);
        String before = Images.sha256(img);
        Disk d = serveDisk(img, false);
        Run.Result r = Run.cmd(Peers.require("qemu-io"), "-f", "raw", "-c", "write -P 0x11 0 4096", d.uri()).expectAny();
        assertTrue(r.exit() != 0 || r.stderr().contains("ermission") || r.stdout().contains("ermission")
                || r.stderr().contains("read-only") || r.stderr().contains("read only"), r.describe());
        assertEquals(before, Images.sha256(img));
    }
}
