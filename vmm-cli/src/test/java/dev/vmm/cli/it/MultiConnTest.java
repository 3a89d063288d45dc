package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** CAN_MULTI_CONN: a flush on one connection makes its writes visible on every other. */
@Timeout(120)
class MultiConnTest extends PeerTestBase {

    @Test
    void writeAndFlushOnOneConnectionIsVisibleOnAnother() {
        Disk d = serveDisk(Images.sparse(tmp.resolve("disk.img"), 32 * MiB), true);
        Run.cmd(python("nbd_checks.py", "multiconn", "uri=" + d.uri(), "qsd=" + (Peers.qsd() ? 1 : 0))).expect(0);
    }

    @Test
    void multiConnAdvertisedOnWritableExport() {
        Peers.beyondQsd("QSD 7.2 advertises multi-conn on writable exports only with multi-conn=on");
        Disk d = serveDisk(Images.sparse(tmp.resolve("disk.img"), MiB), true);
        Run.cmd(Peers.require("nbdinfo"), "--can", "multi-conn", d.uri()).expect(0);
    }
}
