package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * libnbd (python bindings) against the server: option negotiation, structured replies and
 * base:allocation after trim/zero, and the spec's error replies with the connection staying
 * usable. The checks themselves live in {@code nbd_checks.py}.
 */
@Timeout(120)
class NbdshProtocolTest extends PeerTestBase {
    static final long SIZE = 16 * MiB;
    static final long RO_SIZE = 3 * MiB;

    private int port;
    private Path roImage;

    private void serveTwoExports() {
        Path img = Images.sparse(tmp.resolve("disk.img"), SIZE);
        roImage = Images.sparse(tmp.resolve("ro.img"), RO_SIZE);
        Images.fill(roImage, 0, (int) RO_SIZE, 3);
        port = Net.freePort();
        serve("--blockdev", "driver=file,node-name=disk0,filename=" + img,
                "--blockdev", "driver=file,node-name=rnode,filename=" + roImage + ",read-only=on",
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=disk0,writable=on,description=writable disk",
                "--export", "type=nbd,id=exp1,node-name=rnode,name=ro");
    }

    private Run.Result check(String name, String... kv) {
        String[] all = new String[kv.length + 2];
        all[0] = name;
        System.arraycopy(kv, 0, all, 1, kv.length);
        all[kv.length + 1] = "qsd=" + (Peers.qsd() ? 1 : 0);
        return Run.cmd(python("nbd_checks.py", all)).expect(0);
    }

    @Test
    void optionNegotiationListInfoMetaContextGoAndAbort() {
        serveTwoExports();
        check("negotiation", "base=nbd://127.0.0.1:" + port, "size=" + SIZE, "rosize=" + RO_SIZE);
    }

    @Test
    void blockStatusAfterTrimAndZeroAndHoleChunksInStructuredReads() {
        serveTwoExports();
        check("blockstatus", "uri=" + Net.uri(port, "disk0"));
    }

    @Test
    void errorRepliesEinvalEnospcEpermKeepTheConnectionUsable() {
        serveTwoExports();
        String before = Images.sha256(roImage);
        check("errors", "uri=" + Net.uri(port, "disk0"), "rouri=" + Net.uri(port, "ro"));
        assertEquals(before, Images.sha256(roImage), "read-only image changed");
    }
}
