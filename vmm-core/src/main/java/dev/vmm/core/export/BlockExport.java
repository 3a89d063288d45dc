package dev.vmm.core.export;

import dev.vmm.core.block.BlockNode;

/**
 * A way users reach a block node: an NBD export, a vhost-user-blk device. Created by an
 * {@link ExportDriver} from {@code --export type=...} or QMP {@code block-export-add}.
 *
 * <p>Thread contract: {@link #start} and {@link #close} are control-plane calls (main loop);
 * the accessors may be called from any thread.
 */
public interface BlockExport {
    /** The export's id ({@code id=}). */
    String id();

    /** The export type as on the command line ({@code nbd}, {@code vhost-user-blk}). */
    String type();

    /** The node it serves. */
    BlockNode node();

    boolean writable();

    /**
     * Users connected now (NBD clients, a vhost-user frontend); monitors read it from any thread.
     * {@code block-export-del mode=safe} refuses to remove an export that has some.
     */
    default int users() { return 0; }

    /**
     * This export's counters (requests, bytes, errors, in flight), counted on the node's home
     * thread; monitors read them from any thread. Each export has its own instance, also one that
     * counts nothing (counters have one writer: the home thread of the export's node).
     */
    dev.vmm.core.stats.ExportStats stats();

    /** Starts serving (listeners are bound, sockets created). */
    void start() throws Exception;

    /** Stops serving and disconnects users after their in-flight requests completed. Idempotent. */
    void close();
}
