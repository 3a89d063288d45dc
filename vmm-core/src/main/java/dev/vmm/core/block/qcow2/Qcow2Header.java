package dev.vmm.core.block.qcow2;

/**
 * What the block graph needs to know of a qcow2 image before opening it: its size and where its
 * backing file is. Read and checked by {@link Qcow2Driver#readHeader}.
 *
 * <p>Thread contract: immutable. The driver's full parse (every field checked) is
 * {@code Qcow2Format.Image}; this is the part the graph needs.
 *
 * @param version        2 or 3
 * @param size           virtual disk size in bytes
 * @param clusterSize    bytes per cluster (512 B to 2 MiB)
 * @param backingFile    the backing file name as stored in the image (relative to the image's
 *                       directory unless absolute), or null for none
 * @param backingFormat  the backing file format extension ("raw", "qcow2"), or null when absent
 */
public record Qcow2Header(int version, long size, int clusterSize, String backingFile, String backingFormat) {
}
