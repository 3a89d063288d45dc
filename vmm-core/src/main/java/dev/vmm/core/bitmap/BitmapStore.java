package dev.vmm.core.bitmap;

/**
 * What a format driver that stores persistent dirty bitmaps (qcow2) offers the bitmap commands:
 * QEMU's {@code bdrv_co_can_store_new_dirty_bitmap} and {@code bdrv_co_remove_persistent_dirty_bitmap}.
 * Storing itself happens when the node closes.
 */
public interface BitmapStore {
    /** null when a persistent bitmap `name` of `granularity` can be stored, else QEMU's error message. */
    String checkCanStore(String name, long granularity);

    /** Removes the stored bitmap from the image now (block-dirty-bitmap-remove of a persistent bitmap); done.ioDone(0 or errno). Home thread. */
    void removeStored(String name, dev.vmm.core.block.IoCompletion done);
}
