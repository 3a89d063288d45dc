package dev.vmm.core.block.qcow2;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;

/**
 * SKELETON (API fixed for the block graph; the implementation is being written).
 *
 * <p>The qcow2 format over a {@code file} child driver and an optional {@code backing} driver.
 * The children are nodes of the graph: this driver never closes them, and they share its home.
 */
public abstract class Qcow2Driver implements BlockDriver {
    /** The qcow2 magic {@code QFI\xfb}, big-endian at offset 0. */
    public static final int QCOW_MAGIC = 0x514649fb;

    /** True when the file starts with the qcow2 magic (format probing, as QEMU's). Home thread. */
    public static boolean probe(BlockDriver file) throws BlockException {
        throw new BlockException(dev.vmm.core.linux.Errno.ENOTSUP, "qcow2 is not implemented yet");
    }

    /**
     * Reads and checks the header and its extensions; refuses what the driver does not support
     * (encryption, external data files, unknown incompatible features) with QEMU's wording. Home
     * thread (synchronous: the control plane opens images).
     */
    public static Qcow2Header readHeader(BlockDriver file) throws BlockException {
        throw new BlockException(dev.vmm.core.linux.Errno.ENOTSUP, "qcow2 is not implemented yet");
    }

    /**
     * Opens the image: loads and checks L1 and refcount tables, repairs a dirty image when
     * writable (as QEMU). {@code backing} is null for none. Home thread.
     */
    public static Qcow2Driver open(BlockDriver file, Qcow2Header header, BlockDriver backing, Qcow2Options options)
            throws BlockException {
        throw new BlockException(dev.vmm.core.linux.Errno.ENOTSUP, "qcow2 is not implemented yet");
    }
}
