package dev.vmm.cli.guest;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * The vhost-user-blk backend a guest test runs against. Both implementations take the same
 * qemu-storage-daemon command line, so a failing test can be rerun against the reference with
 * {@code -Dvmm.guest.server=qsd}. Not thread-safe; one test owns one server.
 */
public interface VhostUserBlkServer extends AutoCloseable {
    /** The system property choosing the implementation: {@code qsd} or {@code vmm}. */
    String PROPERTY = "vmm.guest.server";
    /** Used when the property is unset. Becomes {@code vmm} once our vhost-user-blk export exists. */
    String DEFAULT = "vmm";

    /**
     * What to serve.
     *
     * @param id               the export id (also the disk's serial: virtio-blk GET_ID)
     * @param logicalBlockSize {@code logical-block-size=}, or null for the default (512)
     * @param blockdevOptions  extra {@code key=value} options of the {@code --blockdev}
     */
    record Export(Path image, Path socket, boolean writable, Integer numQueues, String id, Integer logicalBlockSize,
            List<String> blockdevOptions) {
        public Export {
            blockdevOptions = List.copyOf(blockdevOptions);
        }

        public Export(Path image, Path socket, boolean writable, Integer numQueues) {
            this(image, socket, writable, numQueues, "vub0", null, List.of());
        }

        public static Export writable(Path image, Path socket) {
            return new Export(image, socket, true, null);
        }

        public Export withId(String newId) {
            return new Export(image, socket, writable, numQueues, newId, logicalBlockSize, blockdevOptions);
        }

        public Export withLogicalBlockSize(int size) {
            return new Export(image, socket, writable, numQueues, id, size, blockdevOptions);
        }

        public Export withBlockdevOptions(String... options) {
            return new Export(image, socket, writable, numQueues, id, logicalBlockSize, List.of(options));
        }

        /** The qemu-storage-daemon arguments (also {@code vmm serve}'s). */
        public List<String> args() {
            List<String> a = new ArrayList<>(List.of(
                    "--blockdev", "driver=file,node-name=disk0,filename=" + image.toString().replace(",", ",,")
                            + (blockdevOptions.isEmpty() ? "" : "," + String.join(",", blockdevOptions)),
                    "--object", "iothread,id=iot0"));
            a.add("--export");
            a.add("type=vhost-user-blk,id=" + id + ",node-name=disk0,addr.type=unix,addr.path="
                    + socket.toString().replace(",", ",,") + ",writable=" + (writable ? "on" : "off")
                    + (numQueues == null ? "" : ",num-queues=" + numQueues)
                    + (logicalBlockSize == null ? "" : ",logical-block-size=" + logicalBlockSize) + ",iothread=iot0");
            return a;
        }
    }

    /** {@code qsd} or {@code vmm}. */
    String name();

    /** Starts serving and returns once the socket accepts connections; fails the test otherwise. */
    void start(Export export);

    /** Stops the server (SIGTERM, then SIGKILL); it may be started again. */
    void stop();

    /** What the server printed, for failure messages. */
    String log();

    @Override
    default void close() {
        stop();
    }

    /** The implementation {@code -Dvmm.guest.server} names ({@value #DEFAULT} by default); logs go to {@code logDir}. */
    static VhostUserBlkServer fromProperty(Path logDir) {
        String which = System.getProperty(PROPERTY, DEFAULT).strip();
        switch (which) {
            case "qsd":
                return new QsdServer(logDir);
            case "vmm":
                return new VmmServer(logDir);
            default:
                throw new IllegalArgumentException("-D" + PROPERTY + "=" + which + ": expected qsd or vmm");
        }
    }
}
