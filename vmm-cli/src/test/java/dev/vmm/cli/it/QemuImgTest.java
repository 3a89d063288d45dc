package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** qemu-img over {@code nbd://} and {@code nbd+unix://}: convert out, convert in, info. */
@Timeout(120)
class QemuImgTest extends PeerTestBase {

    private Path imageWithIslands(String name, long size) {
        Path img = Images.sparse(tmp.resolve(name), size);
        Images.fill(img, 0, 65536, 1);
        Images.fill(img, 5 * MiB + 512, 300_000, 2);
        Images.fill(img, size - 4096, 4096, 3);
        return img;
    }

    @Test
    void convertFromTcpExportEqualsSourceImage() {
        String qemuImg = Peers.require("qemu-img");
        Path src = imageWithIslands("src.img", 16 * MiB);
        Disk d = serveDisk(src, false);
        Path out = tmp.resolve("out.img");
        Run.cmd(qemuImg, "convert", "-f", "raw", "-O", "raw", d.uri(), out.toString()).expect(0);
        Run.cmd(qemuImg, "compare", "-f", "raw", "-F", "raw", src.toString(), out.toString()).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(out));
    }

    @Test
    void convertFromUnixSocketExportEqualsSourceImage() {
        String qemuImg = Peers.require("qemu-img");
        Path src = imageWithIslands("src.img", 8 * MiB);
        Path sock = socketDir().resolve("nbd.sock");
        serve("--blockdev", "driver=file,node-name=disk0,filename=" + src,
                "--nbd-server", Net.unixServer(sock),
                "--export", "type=nbd,id=exp0,node-name=disk0");
        Path out = tmp.resolve("out.img");
        Run.cmd(qemuImg, "convert", "-f", "raw", "-O", "raw", Net.unixUri(sock, "disk0"), out.toString()).expect(0);
        Run.cmd(qemuImg, "compare", "-f", "raw", "-F", "raw", src.toString(), out.toString()).expect(0);
    }

    @Test
    void convertIntoWritableExportWritesTheImageFile() {
        String qemuImg = Peers.require("qemu-img");
        Path src = imageWithIslands("src.img", 16 * MiB);
        Path target = Images.sparse(tmp.resolve("target.img"), 16 * MiB);
        Images.fill(target, 9 * MiB, 1_000_000, 77); // stale data that must be overwritten by zeroes
        Disk d = serveDisk(target, true);
        Run.cmd(qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", src.toString(), d.uri()).expect(0);
        Run.cmd(qemuImg, "compare", "-f", "raw", "-F", "raw", src.toString(), d.uri()).expect(0);
        assertEquals(0, d.server().stop(), "exit code after SIGTERM");
        Run.cmd(qemuImg, "compare", "-f", "raw", "-F", "raw", src.toString(), target.toString()).expect(0);
    }

    @Test
    void infoShowsExactVirtualSize() {
        String qemuImg = Peers.require("qemu-img");
        long size = 16 * MiB + 4096 * 3;
        Disk d = serveDisk(Images.sparse(tmp.resolve("disk.img"), size), false);
        Run.Result r = Run.cmd(qemuImg, "info", "--output=json", d.uri()).expect(0);
        assertTrue(r.stdout().replaceAll("\\s", "").contains("\"virtual-size\":" + size), r.describe());
    }
}
