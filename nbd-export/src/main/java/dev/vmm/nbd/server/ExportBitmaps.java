package dev.vmm.nbd.server;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;

/**
 * The dirty bitmaps an NBD export publishes ({@code bitmaps=[NAME,...]}) found and checked as
 * QEMU 7.2's {@code nbd_export_create} does, with its error wording:
 *
 * <ul>
 *   <li>each name is looked up on the export's node, then down its chain of filters and COW
 *       backing nodes ({@code bdrv_filter_or_cow_bs}): a format node's {@code backing} child, a
 *       filter's filtered child. A {@code raw} node is not a filter and {@code snapshot-access} is
 *       not one either (checked with qemu-storage-daemon 7.2: a bitmap of their {@code file} child
 *       is "not found"); {@code copy-before-write} is;
 *   <li>busy (another export, a job) or inconsistent bitmaps are refused
 *       ({@code bdrv_dirty_bitmap_check(BDRV_BITMAP_ALLOW_RO)});
 *   <li>a read-only export refuses a recording bitmap of a writable node: the bits could change
 *       under a reader that believes the export frozen;
 *   <li>a name may repeat (QEMU accepts it; the context then names the first).
 * </ul>
 *
 * Once the export starts its bitmaps are {@linkplain #claim busy} until it is removed, so
 * {@code block-dirty-bitmap-remove}, {@code -clear}, {@code -disable} and {@code -merge} into them
 * are refused meanwhile.
 *
 * <p>Thread contract: control plane (the threads that add or remove exports); reads and writes
 * only the bitmaps' volatile flags.
 */
public final class ExportBitmaps {
    private ExportBitmaps() {}

    /**
     * QEMU's filter drivers ({@code is_filter}): their one data child is looked through. Nodes of
     * other drivers only pass the lookup on through {@code backing}.
     */
    static final Set<String> FILTER_DRIVERS = Set.of("copy-before-write", "copy-on-read", "throttle", "preallocate",
            "compress", "blkdebug", "blklogwrites", "blkreplay", "blkverify", "mirror_top", "commit_top");

    /** A bitmap that cannot be exported; the message is QEMU's. */
    public static final class Refused extends Exception {
        private static final long serialVersionUID = 1L;

        Refused(String message) {
            super(message, null, false, false);
        }
    }

    /**
     * The bitmaps named, in the order given, found from {@code node} and checked for an export
     * that is {@code writable} or not.
     */
    public static List<DirtyBitmap> resolve(BlockNode node, List<String> names, boolean writable) throws Refused {
        List<DirtyBitmap> out = new ArrayList<>(names.size());
        for (String name : names) {
            BlockNode owner = null;
            DirtyBitmap bm = null;
            for (BlockNode n = node; n != null && bm == null; n = filterOrCow(n)) {
                bm = find(n, name);
                owner = n;
            }
            if (bm == null) throw new Refused("Bitmap '" + shown(name) + "' is not found");
            if (bm.busy()) throw new Refused("Bitmap '" + name + "' is currently in use by another operation and cannot be used");
            if (bm.inconsistent()) throw new Refused("Bitmap '" + name + "' is inconsistent and cannot be used");
            if (!writable && !owner.readOnly() && bm.recording()) {
                throw new Refused("Enabled bitmap '" + name + "' incompatible with readonly export");
            }
            out.add(bm);
        }
        return out;
    }

    /**
     * Marks the bitmaps busy for an export that starts, unless one became busy since
     * {@link #resolve} (two exports added at once from two monitors): check and mark are one step
     * among exports. A repeated bitmap is one flag.
     */
    public static synchronized void claim(List<DirtyBitmap> bitmaps) throws Refused {
        for (DirtyBitmap b : bitmaps) {
            if (b.busy()) throw new Refused("Bitmap '" + b.name() + "' is currently in use by another operation and cannot be used");
        }
        for (DirtyBitmap b : bitmaps) b.setBusy(true);
    }

    /** Releases what {@link #claim} marked (the export is removed). */
    public static synchronized void release(List<DirtyBitmap> bitmaps) {
        for (DirtyBitmap b : bitmaps) b.setBusy(false);
    }

    /**
     * {@code name} as errors show it: whole, as QEMU, up to the longest name a bitmap can have
     * (1023 bytes); a longer one cannot exist and is cut, so that the error stays one readable line.
     */
    static String shown(String name) {
        if (name.length() <= DirtyBitmap.MAX_NAME_SIZE) return name;
        return name.substring(0, 80) + "... (" + name.length() + " characters)";
    }

    private static DirtyBitmap find(BlockNode n, String name) {
        if (name.isEmpty()) return null; // a backup's anonymous successor is not a bitmap one can name
        for (DirtyBitmap b : n.dirtyBitmaps()) {
            if (b.name().equals(name)) return b;
        }
        return null;
    }

    /** QEMU's {@code bdrv_filter_or_cow_bs}: the backing child of a non-filter, the filtered child of a filter, or null. */
    static BlockNode filterOrCow(BlockNode n) {
        if (FILTER_DRIVERS.contains(n.driverName())) {
            BlockNode f = n.child(BlockNode.FILE);
            return f != null ? f : n.child(BlockNode.BACKING);
        }
        return n.child(BlockNode.BACKING);
    }
}
