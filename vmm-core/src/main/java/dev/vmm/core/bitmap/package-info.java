/**
 * Dirty bitmaps (QEMU's {@code BdrvDirtyBitmap}): which chunks of a disk changed since a point
 * in time. Loaded from qcow2 images ({@code dev.vmm.core.block.qcow2}); see docs/qcow2.md.
 */
package dev.vmm.core.bitmap;
