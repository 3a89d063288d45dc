package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Several --blockdev and --export in one process; an export homed on a named IOThread. */
@Timeout(120)
class MultiExportTest extends PeerTestBase {

    @Test
    void severalBlockdevsAndExportsServeTheirOwnImages() {
        Path a = Images.sparse(tmp.resolve("a.img"), 4 * MiB);
        Path b = Images.sparse(tmp.resolve("b.img"), 6 * MiB);
        Path c = Images.sparse(tmp.resolve("c.img"), 2 * MiB);
        Images.fill(a, 0, (int) MiB, 1);
        Images.fill(b, 0, (int) MiB, 2);
        Images.fill(c, 0, (int) MiB, 3);
        String cBefore = Images.sha256(c);
        int port = Net.freePort();
        serve("--blockdev", "driver=file,node-name=na,filename=" + a,
                "--blockdev", "driver=file,node-name=nb,filename=" + b,
                "--blockdev", "driver=file,node-name=nc,filename=" + c + ",read-only=on",
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=ea,node-name=na,writable=on",
                "--export", "type=nbd,id=eb,node-name=nb,name=bee,writable=on",
                "--export", "type=nbd,id=ec,node-name=nc");
        String nbdinfo = Peers.require("nbdinfo");
        assertEquals(String.valueOf(4 * MiB), Run.cmd(nbdinfo, "--size", Net.uri(port, "na")).expect(0).stdout().strip());
        assertEquals(String.valueOf(6 * MiB), Run.cmd(nbdinfo, "--size", Net.uri(port, "bee")).expect(0).stdout().strip());
        assertEquals(String.valueOf(2 * MiB), Run.cmd(nbdinfo, "--size", Net.uri(port, "nc")).expect(0).stdout().strip());
        // a write to one export lands in its own file only
        String qemuIo = Peers.require("qemu-io");
        Run.cmd(qemuIo, "-f", "raw", "-c", "write -P 0x61 0 65536", "-c", "flush", Net.uri(port, "na")).expect(0);
        Run.cmd(qemuIo, "-f", "raw", "-c", "write -P 0x62 65536 65536", "-c", "flush", Net.uri(port, "bee")).expect(0);
        assertEquals(0x61, Images.read(a, 0, 1)[0]);
        assertEquals(0x62, Images.read(b, 65536, 1)[0]);
        Path out = tmp.resolve("c.out");
        Run.cmd(Peers.require("nbdcopy"), Net.uri(port, "nc"), out.toString()).expect(0);
        assertEquals(cBefore, Images.sha256(out));
        assertEquals(cBefore, Images.sha256(c));
    }

    @Test
    void exportOnNamedIothreadServesVerifiedIo() {
        Peers.beyondQsd("QSD 7.2 aborts when an NBD client disconnects from an export with iothread=");
        Path img = Images.sparse(tmp.resolve("disk.img"), 32 * MiB);
        Path other = Images.sparse(tmp.resolve("other.img"), 8 * MiB);
        int port = Net.freePort();
        serve("--object", "iothread,id=iot0",
                "--object", "iothread,id=iot1",
                "--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--blockdev", "driver=file,node-name=disk1,filename=" + other,
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=disk0,writable=on,iothread=iot0",
                "--export", "type=nbd,id=exp1,node-name=disk1,writable=on,iothread=iot1");
        Run.cmd(python("nbd_checks.py", "multiconn", "uri=" + Net.uri(port, "disk0"))).expect(0);
        Run.cmd(python("nbd_checks.py", "goodclient", "uri=" + Net.uri(port, "disk1"), "stop=/nonexistent",
                "seconds=2")).expect(0);
        Path src = Images.sparse(tmp.resolve("src.img"), 32 * MiB);
        Images.fill(src, 3 * MiB, (int) (5 * MiB), 5);
        Run.cmd(Peers.require("nbdcopy"), "--connections=4", "--flush", src.toString(), Net.uri(port, "disk0")).expect(0);
        assertEquals(Images.sha256(src), Images.sha256(img));
    }
}
