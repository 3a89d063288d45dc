package dev.vmm.core.export;

import dev.vmm.core.block.BlockNode;
import dev.vmm.iothread.IOThread;

/**
 * The keys every export type shares ({@code BlockExportOptions} in QEMU's QAPI schema).
 *
 * @param iothread the IOThread the node is moved to, or null to leave it where it is
 */
public record ExportCommon(String id, BlockNode node, boolean writable, IOThread iothread) { }
