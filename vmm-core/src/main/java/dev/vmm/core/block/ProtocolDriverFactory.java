package dev.vmm.core.block;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;

/**
 * Opens protocol nodes of one {@code driver=} that vmm-core does not know itself (such as
 * {@code nbd}, a network client that lives in the module with the protocol code). Implementations
 * are found with {@link java.util.ServiceLoader}
 * ({@code META-INF/services/dev.vmm.core.block.ProtocolDriverFactory}), as export drivers are, so
 * vmm-core never depends on them.
 *
 * <p>Thread contract: called on the control thread that runs {@code --blockdev} /
 * {@code blockdev-add}, never on the main loop or an IOThread: opening may block (a handshake),
 * bounded by the driver's own timeout.
 */
public interface ProtocolDriverFactory {
    /** The {@code driver=} value this factory handles. */
    String driver();

    /**
     * Opens the driver from its options ({@code driver}, {@code node-name}, {@code read-only} and
     * the generic node keys are consumed by the caller). The caller then builds the node, which
     * attaches the driver to its home; the driver is closed by the caller if that fails.
     *
     * @param nodeName the node's name (for log lines and as the user of shared objects)
     */
    BlockDriver open(Daemon daemon, Options options, String nodeName, boolean readOnly)
            throws OptionException, DaemonException;

    /** A protocol driver that names its image as QEMU's {@code filename} does (e.g. {@code nbd://host:port/export}). */
    interface Described {
        /** The node's {@code file} in {@code query-named-block-nodes}. Any thread. */
        String filename();
    }
}
