package dev.vmm.core.bitmap;

/**
 * A format driver that can keep persistent dirty bitmaps in its image (qcow2's bitmaps
 * extension). {@code block-dirty-bitmap-add persistent=true} asks it first; a node whose driver
 * chain has no {@code BitmapStore} refuses as QEMU does for a format without
 * {@code bdrv_co_can_store_new_dirty_bitmap} ("Can't store persistent bitmaps to NODE: Operation
 * not supported"). The bits themselves are written when the node closes.
 *
 * <p>Thread contract: {@link #checkCanStore} any thread; {@link #removeStored} the node's home IOThread.
 */
public interface BitmapStore {
    /** null when a persistent bitmap {@code name} of {@code granularity} can be stored, else QEMU's error message. */
    String checkCanStore(String name, long granularity);

    /**
     * Removes the stored bitmap from the image now (block-dirty-bitmap-remove of a persistent
     * bitmap); {@code done.ioDone(0 or errno)}. Home thread.
     */
    void removeStored(String name, dev.vmm.core.block.IoCompletion done);
}
