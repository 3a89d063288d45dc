package dev.vmm.core.daemon;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.qcow2.Qcow2Driver;
import dev.vmm.core.block.qcow2.Qcow2Header;
import dev.vmm.core.block.qcow2.Qcow2Options;

/**
 * How the daemon opens a qcow2 image: {@link Qcow2Driver}'s static API behind an interface, so
 * tests of the graph (backing chains, loops, close order) can open a fake format with the same
 * shape while the real driver is elsewhere.
 *
 * <p>Thread contract: every method runs on the home IOThread of {@code file} (the daemon calls
 * it there).
 */
interface ImageFormat {
    /** True when {@code file} holds this format (its magic). */
    boolean probe(BlockDriver file) throws BlockException;

    Qcow2Header readHeader(BlockDriver file) throws BlockException;

    BlockDriver open(BlockDriver file, Qcow2Header header, BlockDriver backing, Qcow2Options options) throws BlockException;

    /** The real qcow2 driver. */
    ImageFormat QCOW2 = new ImageFormat() {
        @Override
        public boolean probe(BlockDriver file) throws BlockException { return Qcow2Driver.probe(file); }

        @Override
        public Qcow2Header readHeader(BlockDriver file) throws BlockException { return Qcow2Driver.readHeader(file); }

        @Override
        public BlockDriver open(BlockDriver file, Qcow2Header header, BlockDriver backing, Qcow2Options options)
                throws BlockException {
            return Qcow2Driver.open(file, header, backing, options);
        }
    };
}
