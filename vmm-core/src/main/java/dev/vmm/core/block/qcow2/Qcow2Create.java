package dev.vmm.core.block.qcow2;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;

/**
 * Creates an empty qcow2 version 3 image, as {@code qemu-img create -f qcow2 -o cluster_size=64k}
 * would: header in cluster 0, refcount table in cluster 1, one refcount block (16-bit refcounts)
 * in cluster 2, the L1 table from cluster 3. Everything else is allocated on write. Used by
 * {@code ./vmm demo}, so a first run needs no qemu-img.
 *
 * <p>Thread contract: stateless; any thread.
 */
public final class Qcow2Create {
    static final int CLUSTER_BITS = 16;
    static final int CLUSTER_SIZE = 1 << CLUSTER_BITS;
    /** Header length of a version 3 header without the optional compression type field. */
    static final int HEADER_LENGTH_V3 = 104;
    static final int REFCOUNT_ORDER = 4;

    private Qcow2Create() {}

    /**
     * Writes a new image of {@code size} virtual bytes; fails if {@code file} exists.
     *
     * @throws IllegalArgumentException for a size that is not a positive multiple of 512 or that
     *     needs more than the one refcount block this layout has room for (1 TiB and more)
     */
    public static void create(Path file, long size) throws IOException {
        if (size <= 0 || size % 512 != 0) throw new IllegalArgumentException("qcow2 size must be a positive multiple of 512, got " + size);
        long bytesPerL2 = (long) CLUSTER_SIZE * (CLUSTER_SIZE / 8);
        long l1Size = (size + bytesPerL2 - 1) / bytesPerL2;
        long l1Clusters = Math.max(1, (l1Size * 8 + CLUSTER_SIZE - 1) / CLUSTER_SIZE);
        long metadataClusters = 3 + l1Clusters;
        long refcountsPerBlock = (long) CLUSTER_SIZE * 8 / (1 << REFCOUNT_ORDER);
        if (metadataClusters > refcountsPerBlock) throw new IllegalArgumentException("qcow2 size too large for Qcow2Create: " + size);

        ByteBuffer header = ByteBuffer.allocate(CLUSTER_SIZE); // big-endian, as qcow2
        header.putInt(0, Qcow2Driver.QCOW_MAGIC);
        header.putInt(4, 3);                          // version
        header.putLong(8, 0);                         // backing_file_offset
        header.putInt(16, 0);                         // backing_file_size
        header.putInt(20, CLUSTER_BITS);
        header.putLong(24, size);
        header.putInt(32, 0);                         // crypt_method
        header.putInt(36, (int) l1Size);
        header.putLong(40, 3L * CLUSTER_SIZE);        // l1_table_offset
        header.putLong(48, 1L * CLUSTER_SIZE);        // refcount_table_offset
        header.putInt(56, 1);                         // refcount_table_clusters
        header.putInt(60, 0);                         // nb_snapshots
        header.putLong(64, 0);                        // snapshots_offset
        header.putLong(72, 0);                        // incompatible_features
        header.putLong(80, 0);                        // compatible_features
        header.putLong(88, 0);                        // autoclear_features
        header.putInt(96, REFCOUNT_ORDER);
        header.putInt(100, HEADER_LENGTH_V3);
        // Header extension area: only the end marker (type 0, length 0), already zero at 104.

        ByteBuffer reftable = ByteBuffer.allocate(CLUSTER_SIZE);
        reftable.putLong(0, 2L * CLUSTER_SIZE);       // refcount block 0 lives in cluster 2
        ByteBuffer refblock = ByteBuffer.allocate(CLUSTER_SIZE);
        for (int i = 0; i < metadataClusters; i++) refblock.putShort(i * 2, (short) 1);

        FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
        try (ch) {
            writeFully(ch, header, 0);
            writeFully(ch, reftable, CLUSTER_SIZE);
            writeFully(ch, refblock, 2L * CLUSTER_SIZE);
            writeFully(ch, ByteBuffer.allocate(CLUSTER_SIZE), (metadataClusters - 1) * CLUSTER_SIZE); // L1: zeros, file length
            ch.force(true);
        } catch (IOException | RuntimeException e) {
            Files.deleteIfExists(file); // ours: created above
            throw e;
        }
    }

    private static void writeFully(FileChannel ch, ByteBuffer b, long at) throws IOException {
        b.clear();
        while (b.hasRemaining()) at += ch.write(b, at);
    }
}
