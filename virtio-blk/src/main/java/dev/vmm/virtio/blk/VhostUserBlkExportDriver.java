package dev.vmm.virtio.blk;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.export.ExportCommon;
import dev.vmm.core.export.ExportDriver;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.vhostuser.connection.VhostUserListener;
import java.io.IOException;

/**
 * {@code --export type=vhost-user-blk}: a virtio-blk device on a vhost-user unix socket, as
 * qemu-storage-daemon's export of the same name. Control plane only.
 */
public final class VhostUserBlkExportDriver implements ExportDriver {
    /** Most queues we offer (a frontend asks for at most its vCPU count by default). */
    public static final int MAX_QUEUES = 64;

    @Override
    public String type() { return "vhost-user-blk"; }

    /** QEMU's {@code BlockExportOptionsVhostUserBlk}; {@code addr} must be a unix socket here. */
    static final dev.vmm.core.qmp.QmpType QMP_OPTIONS = dev.vmm.core.qmp.QmpType.object("BlockExportOptionsVhostUserBlk")
            .required("addr", dev.vmm.core.qmp.CoreTypes.SOCKET_ADDRESS).optional("logical-block-size", dev.vmm.core.qmp.QmpType.INT)
            .optional("num-queues", dev.vmm.core.qmp.QmpType.INT).build();

    @Override
    public dev.vmm.core.qmp.QmpType qmpOptions() { return QMP_OPTIONS; }

    @Override
    public String helpKeys() {
        return """
                  addr.type=unix             the socket kind (unix only)
                  addr.path=PATH             vhost-user socket (created mode 0600; a stale socket is replaced)
                  num-queues=N               virtqueues offered (default 1; QEMU's device asks for its vCPU count)
                  logical-block-size=512|4096  block size the guest sees (default 512)""";
    }

    @Override
    public BlockExport create(Daemon daemon, ExportCommon common, Options o) throws OptionException {
        Options addr = o.sub("addr");
        addr.choice("type", "unix", "unix");
        String path = addr.socketPath("path");
        int numQueues = (int) o.number("num-queues", 1, 1, MAX_QUEUES);
        long lbs = o.number("logical-block-size", 512, 512, 4096);
        if (lbs != 512 && lbs != 4096) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "logical-block-size",
                    "'logical-block-size' must be 512 or 4096, got " + lbs);
        }
        BlockNode node = common.node();
        if (node.size() % lbs != 0) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "logical-block-size",
                    "the image size " + node.size() + " is not a multiple of logical-block-size " + lbs);
        }
        VhostUserBlkDevice device = new VhostUserBlkDevice(common.id(), node, common.writable(), numQueues, (int) lbs);
        return new BlockExport() {
            private VhostUserListener listener;

            @Override public String id() { return common.id(); }
            @Override public String type() { return "vhost-user-blk"; }
            @Override public BlockNode node() { return node; }
            @Override public boolean writable() { return common.writable(); }
            @Override public dev.vmm.core.stats.ExportStats stats() { return device.stats(); }
            @Override public int users() { return device.stats().frontend() == null ? 0 : 1; }

            @Override
            public void start() throws IOException {
                // Not the main loop: the device's handlers may wait for a move, which may need main.
                listener = VhostUserListener.open(path, daemon.controlLoop().loop(), device);
                node.addUser(device); // its rings follow the node when it moves
            }

            @Override
            public void close() {
                if (listener != null) {
                    listener.close(); // disconnects the front-end: the device stops its rings
                    listener = null;
                    node.removeUser(device);
                }
            }
        };
    }
}
