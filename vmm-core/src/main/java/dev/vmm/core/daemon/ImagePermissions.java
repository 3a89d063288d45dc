package dev.vmm.core.daemon;

import static dev.vmm.core.block.ImageLock.BLK_PERM_ALL;
import static dev.vmm.core.block.ImageLock.BLK_PERM_CONSISTENT_READ;
import static dev.vmm.core.block.ImageLock.BLK_PERM_RESIZE;
import static dev.vmm.core.block.ImageLock.BLK_PERM_WRITE;
import static dev.vmm.core.block.ImageLock.BLK_PERM_WRITE_UNCHANGED;

import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.ImageLock;
import dev.vmm.core.block.RawFileDriver;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The permissions each node's users take on it, computed from the graph as QEMU 7.2's block
 * layer does ({@code bdrv_get_cumulative_perm}, {@code bdrv_default_perms}), and applied to the
 * image locks of the file nodes ({@link ImageLock}). A node's cumulative permissions are the union
 * of what its users hold and the intersection of what they share; a node nobody uses holds
 * nothing and shares everything (QEMU: a lone {@code --blockdev driver=file} locks no byte).
 *
 * <ul>
 *   <li>An export (QEMU's BlockBackend of a block export): holds consistent read, and write when
 *       writable; shares everything except resize for NBD (QSD 7.2's NBD export), everything
 *       for vhost-user-blk.
 *   <li>A {@code raw} node passes its users' permissions through to its file child (a filter).
 *   <li>A {@code qcow2} node on its file child: its users' permissions plus consistent read, plus
 *       write and resize when the node is writable (metadata); never shares write or resize.
 *   <li>A {@code qcow2} node on its backing child: consistent read if its users need it; shares
 *       write and resize only if its users share write; always shares consistent read and write
 *       unchanged ({@code bdrv_default_perms_for_cow}).
 *   <li>A node opened with {@code force-share=on}: its parents share everything with others.
 * </ul>
 *
 * These rules reproduce, byte for byte, the OFD locks qemu-storage-daemon 7.2 takes for the same
 * command line (checked in /proc/locks; see docs/locking.md).
 *
 * <p>Thread contract: called with the daemon's lock held (one graph change at a time), from a
 * control thread or the main loop; it makes a few fcntl calls per file node, no I/O.
 */
final class ImagePermissions {
    /** A user that is not a node: an export (existing, or one being added). */
    record Root(BlockNode node, String type, boolean writable) {
        int perm() { return BLK_PERM_CONSISTENT_READ | (writable ? BLK_PERM_WRITE : 0); }

        int shared() { return type.equals("nbd") ? BLK_PERM_ALL & ~BLK_PERM_RESIZE : BLK_PERM_ALL; }
    }

    /** A failed permission change: QEMU's message and, for a lock held by another process, its hint. */
    static DaemonException failure(String prefix, Exception e) {
        String hint = e instanceof ImageLock.ConflictException c ? c.hint() : null;
        return new DaemonException(prefix + e.getMessage(), hint, e);
    }

    private final Map<BlockNode, int[]> memo = new HashMap<>();
    private final Collection<Root> roots;

    private ImagePermissions(Collection<Root> roots) {
        this.roots = roots;
    }

    /**
     * Gives every file node in {@code nodes} the locks its users' permissions need. All or
     * nothing: when one image conflicts with another process, every lock goes back to what it was.
     *
     * @throws DaemonException QEMU's {@code Failed to get "write" lock} (with its hint) and the like
     */
    static void apply(Collection<BlockNode> nodes, Collection<Root> roots) throws DaemonException {
        ImagePermissions p = new ImagePermissions(roots);
        List<ImageLock> prepared = new ArrayList<>();
        for (BlockNode n : nodes) {
            if (!(n.driver() instanceof RawFileDriver f) || f.imageLock() == null) continue;
            int[] ps = p.cumulative(n);
            try {
                f.imageLock().prepare(ps[0], ps[1]);
            } catch (BlockException | ImageLock.ConflictException e) {
                for (ImageLock l : prepared) l.abort();
                throw failure("", e);
            }
            prepared.add(f.imageLock());
        }
        for (ImageLock l : prepared) l.commit();
    }

    /** {perm, shared} that all users of {@code n} together take. */
    int[] cumulative(BlockNode n) {
        int[] known = memo.get(n);
        if (known != null) return known;
        memo.put(n, new int[] {0, BLK_PERM_ALL}); // a cycle cannot happen in a graph; this only ends recursion
        int perm = 0;
        int shared = BLK_PERM_ALL;
        for (Root r : roots) {
            if (r.node() != n) continue;
            perm |= r.perm();
            shared &= r.shared();
        }
        for (BlockNode p : n.parents()) {
            int[] pp = cumulative(p);
            for (BlockNode.Child c : p.children()) {
                if (c.node() != n) continue;
                int[] cp = childPerm(p, c.role(), pp[0], pp[1]);
                perm |= cp[0];
                shared &= n.forceShare() ? BLK_PERM_ALL : cp[1];
            }
        }
        int[] result = {perm & BLK_PERM_ALL, shared & BLK_PERM_ALL};
        memo.put(n, result);
        return result;
    }

    /** What {@code parent}, whose users take {@code perm}/{@code shared}, asks of its child in {@code role}. */
    static int[] childPerm(BlockNode parent, String role, int perm, int shared) {
        if (parent.driverName().equals("qcow2")) return childPerm(parent.readOnly(), role, perm, shared);
        return new int[] {perm, shared}; // raw, and filters: bdrv_filter_default_perms
    }

    /** What a qcow2 node ({@code readOnly} or not) whose users take {@code perm}/{@code shared} asks of its child in {@code role}. */
    static int[] childPerm(boolean readOnly, String role, int perm, int shared) {
        if (role.equals(BlockNode.BACKING)) { // bdrv_default_perms_for_cow
            int p = perm & BLK_PERM_CONSISTENT_READ;
            int s = (shared & BLK_PERM_WRITE) != 0 ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0;
            return new int[] {p, s | BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED};
        }
        // bdrv_default_perms_for_storage: metadata must stay consistent and is written when writable
        int p = perm | BLK_PERM_CONSISTENT_READ | (readOnly ? 0 : BLK_PERM_WRITE | BLK_PERM_RESIZE);
        return new int[] {p, shared & ~(BLK_PERM_WRITE | BLK_PERM_RESIZE)};
    }
}
