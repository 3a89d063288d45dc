/**
 * The qcow2 format driver: a format node over a protocol node (its {@code file} child) with an
 * optional {@code backing} node. See docs/qcow2.md.
 */
package dev.vmm.core.block.qcow2;
