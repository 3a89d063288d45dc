package dev.vmm.core.qmp;

import static dev.vmm.core.qmp.QmpType.BOOL;
import static dev.vmm.core.qmp.QmpType.INT;
import static dev.vmm.core.qmp.QmpType.STR;

import dev.vmm.core.bitmap.BitmapStore;
import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.options.Options;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;

/**
 * The dirty bitmap commands of QEMU 7.2 (qapi/block-core.json): {@code block-dirty-bitmap-add},
 * {@code -remove}, {@code -clear}, {@code -enable}, {@code -disable}, {@code -merge},
 * {@code x-debug-block-dirty-bitmap-sha256}, and the same six as {@code transaction} actions,
 * plus {@code abort}. Checks, their order and their words are QEMU's (block/monitor/bitmap-qmp-cmds.c,
 * block/dirty-bitmap.c), compared with qemu-storage-daemon 7.2 by BitmapCommandsTest.
 *
 * <p>A command is a transaction of one action ({@link TransactionCommand#run}): its node is held
 * (no request in flight, new ones wait) while the bitmap changes, so a change never splits a
 * write (see {@link dev.vmm.core.block.NodeIo}). Bits are touched on the node's home thread.
 * Deliberate differences: an empty {@code bitmaps} list of a merge is a no-op (QEMU 7.2 crashes).
 *
 * <p>Thread contract: the commands run on the monitor's control thread; each hands the work on
 * bits to the node's home thread and waits.
 */
public final class BitmapCommands {
    private BitmapCommands() {}

    /** QEMU's default granularity without a cluster size, and its upper clamp (bdrv_get_default_bitmap_granularity). */
    static final long DEFAULT_GRANULARITY = 64 << 10;
    /** The lower clamp of the default: a 512-byte-cluster qcow2 gets 4 KiB. */
    static final long MIN_DEFAULT_GRANULARITY = 4 << 10;

    // ---- declarations (QEMU 7.2 names) ----
    static final QmpType ADD = QmpType.object("BlockDirtyBitmapAdd").required("node", STR).required("name", STR)
            .optional("granularity", INT).optional("persistent", BOOL).optional("disabled", BOOL).build();
    static final QmpType BITMAP = QmpType.object("BlockDirtyBitmap").required("node", STR).required("name", STR).build();
    static final QmpType BITMAP_OR_STR = QmpType.alternate("BlockDirtyBitmapOrStr", STR, BITMAP);
    static final QmpType MERGE = QmpType.object("BlockDirtyBitmapMerge").required("node", STR).required("target", STR)
            .required("bitmaps", QmpType.arrayOf(BITMAP_OR_STR)).build();
    static final QmpType SHA256 = QmpType.object("BlockDirtyBitmapSha256").required("sha256", STR).build();
    static final QmpType ABORT = QmpType.object("Abort").build();

    /** Registers the commands and the transaction kinds (before {@link TransactionCommand#register}). */
    public static void register(QmpCommands t, Daemon daemon) {
        kind(t, daemon, "block-dirty-bitmap-add", ADD, BitmapCommands::add);
        kind(t, daemon, "block-dirty-bitmap-remove", BITMAP, BitmapCommands::remove);
        kind(t, daemon, "block-dirty-bitmap-clear", BITMAP, BitmapCommands::clear);
        kind(t, daemon, "block-dirty-bitmap-enable", BITMAP, (o, d, s) -> enable(o, d, true));
        kind(t, daemon, "block-dirty-bitmap-disable", BITMAP, (o, d, s) -> enable(o, d, false));
        kind(t, daemon, "block-dirty-bitmap-merge", MERGE, BitmapCommands::merge);
        TransactionAction.register("abort", ABORT, (o, d, s) -> {
            throw QmpException.generic("Transaction aborted using Abort action");
        });
        t.register("x-debug-block-dirty-bitmap-sha256", BITMAP, SHA256, QmpCommand.blocking(c -> {
            Options o = c.options();
            String node = o.required("node");
            String name = o.required("name");
            o.checkAllConsumed();
            BlockNode n = lookupNode(daemon, node);
            DirtyBitmap b = lookup(n, name);
            Object[] hash = new Object[1];
            // under the gate: the home cannot change while the bits are read there
            daemon.withGates(List.of(n), () -> {
                try {
                    hash[0] = onHome(n, b::sha256);
                } catch (Exception e) {
                    throw new DaemonException("cannot read bitmap '" + name + "': " + e.getMessage());
                }
                return null;
            });
            return Map.of("sha256", hash[0]);
        }));
    }

    private static void kind(QmpCommands t, Daemon daemon, String type, QmpType args, TransactionAction.Kind kind) {
        TransactionAction.register(type, args, kind);
        t.register(type, args, QmpType.EMPTY, QmpCommand.blocking(c -> {
            TransactionCommand.run(daemon, c.server(), List.of(new TransactionCommand.Step(type, kind, c.options())), false);
            return Map.of();
        }));
    }

    // ---- lookups, QEMU's words ----

    /** block_dirty_bitmap_lookup's node lookup. */
    static BlockNode lookupNode(Daemon daemon, String node) throws QmpException {
        try {
            return daemon.node(node);
        } catch (DaemonException e) {
            throw QmpException.generic("Node '" + node + "' not found");
        }
    }

    /** block_dirty_bitmap_lookup's bitmap lookup. */
    static DirtyBitmap lookup(BlockNode n, String name) throws QmpException {
        DirtyBitmap b = n.dirtyBitmap(name);
        if (b == null) throw QmpException.generic("Dirty bitmap '" + name + "' not found");
        return b;
    }

    /** QEMU's bdrv_dirty_bitmap_check flags. */
    static final int BUSY = 1, RO = 2, INCONSISTENT = 4, DEFAULT = BUSY | RO | INCONSISTENT, ALLOW_RO = BUSY | INCONSISTENT;

    /** bdrv_dirty_bitmap_check: busy, then read-only, then inconsistent (its hint goes to HMP only). */
    static void check(DirtyBitmap b, int flags) throws QmpException {
        if ((flags & BUSY) != 0 && b.busy()) {
            throw QmpException.generic("Bitmap '" + b.name() + "' is currently in use by another operation and cannot be used");
        }
        if ((flags & RO) != 0 && b.readOnly()) {
            throw QmpException.generic("Bitmap '" + b.name() + "' is readonly and cannot be modified");
        }
        if ((flags & INCONSISTENT) != 0 && b.inconsistent()) {
            throw QmpException.generic("Bitmap '" + b.name() + "' is inconsistent and cannot be used");
        }
    }

    /** Work on a node's home thread, waited for (the caller holds the node's gate). */
    interface HomeWork<T> {
        T run() throws Exception;
    }

    static <T> T onHome(BlockNode n, HomeWork<T> work) throws Exception {
        return n.home().call(work::run);
    }

    // ---- the actions ----

    /** block-dirty-bitmap-add: made in prepare; abort takes it away again (QEMU's block_dirty_bitmap_add_prepare). */
    static TransactionAction add(Options o, Daemon daemon, QmpServer server) throws Exception {
        String node = o.required("node");
        String name = o.required("name");
        boolean hasGranularity = o.has("granularity");
        long granularity = o.number("granularity", 0, Long.MIN_VALUE, Long.MAX_VALUE);
        boolean persistent = o.bool("persistent", false);
        boolean disabled = o.bool("disabled", false);
        if (hasGranularity && (granularity < 0 || granularity > 0xFFFF_FFFFL)) {
            throw QmpException.generic("Parameter 'granularity' expects uint32_t");
        }
        if (name.isEmpty()) throw QmpException.generic("Bitmap name cannot be empty");
        BlockNode n;
        try {
            n = daemon.node(node);
        } catch (DaemonException e) {
            throw QmpException.generic("Cannot find device='" + node + "' nor node-name='" + node + "'");
        }
        if (hasGranularity) {
            if (granularity < DirtyBitmap.MIN_GRANULARITY || Long.bitCount(granularity) != 1) {
                throw QmpException.generic("Granularity must be power of 2 and at least 512");
            }
        } else {
            int cluster = n.imageInfo().clusterSize();
            granularity = cluster > 0 ? Math.min(DEFAULT_GRANULARITY, Math.max(MIN_DEFAULT_GRANULARITY, cluster)) : DEFAULT_GRANULARITY;
        }
        long g = granularity;
        DirtyBitmap b = onHome(n, () -> {
            if (persistent) {
                BitmapStore store = n.bitmapStore();
                String refused = store == null ? "Can't store persistent bitmaps to " + n.name() + ": Operation not supported"
                        : store.checkCanStore(name, g);
                if (refused != null) throw QmpException.generic(refused);
            }
            if (n.dirtyBitmap(name) != null) throw QmpException.generic("Bitmap already exists: " + name);
            if (name.length() > DirtyBitmap.MAX_NAME_SIZE) throw QmpException.generic("Bitmap name too long: " + name);
            DirtyBitmap nb;
            try {
                nb = new DirtyBitmap(name, n.size(), g);
            } catch (IllegalArgumentException e) {
                throw QmpException.generic("Cannot create bitmap '" + name + "': " + e.getMessage());
            }
            nb.setPersistent(persistent);
            nb.setRecording(!disabled);
            n.addBitmap(nb);
            return nb;
        });
        return new TransactionAction() {
            @Override public void commit() {}

            @Override
            public void abort() {
                home(n, () -> n.removeBitmap(b));
            }
        };
    }

    /**
     * block-dirty-bitmap-remove: a persistent bitmap leaves the image in prepare (as QEMU's); the
     * bitmap is busy until commit takes it off the node, or abort gives it back.
     */
    static TransactionAction remove(Options o, Daemon daemon, QmpServer server) throws Exception {
        String node = o.required("node");
        String name = o.required("name");
        BlockNode n = lookupNode(daemon, node);
        DirtyBitmap b = lookup(n, name);
        check(b, BUSY | RO);
        if (b.persistent()) {
            BitmapStore store = n.bitmapStore();
            if (store != null) {
                CompletableFuture<Integer> done = new CompletableFuture<>();
                n.home().execute(() -> store.removeStored(name, done::complete));
                int errno = done.get(TransactionCommand.DRAIN_TIMEOUT_SECONDS, TimeUnit.SECONDS);
                if (errno != 0) {
                    throw QmpException.generic("Failed to remove bitmap '" + name + "' from the image of node '" + n.name() + "': "
                            + LibC.describe(errno));
                }
            }
        }
        home(n, () -> b.setBusy(true));
        return new TransactionAction() {
            @Override
            public void commit() {
                home(n, () -> {
                    b.setBusy(false);
                    n.removeBitmap(b);
                });
            }

            @Override
            public void abort() {
                home(n, () -> b.setBusy(false));
            }
        };
    }

    /** block-dirty-bitmap-clear: cleared in prepare, the old bits kept for abort. */
    static TransactionAction clear(Options o, Daemon daemon, QmpServer server) throws Exception {
        String node = o.required("node");
        String name = o.required("name");
        BlockNode n = lookupNode(daemon, node);
        DirtyBitmap b = lookup(n, name);
        check(b, DEFAULT);
        DirtyBitmap backup = onHome(n, () -> {
            DirtyBitmap copy = b.copy(name);
            b.clear();
            return copy;
        });
        return new TransactionAction() {
            @Override public void commit() {}

            @Override
            public void abort() {
                home(n, () -> b.restore(backup));
            }
        };
    }

    /** block-dirty-bitmap-enable and -disable: the flag changes in prepare, abort puts it back. */
    static TransactionAction enable(Options o, Daemon daemon, boolean on) throws Exception {
        String node = o.required("node");
        String name = o.required("name");
        BlockNode n = lookupNode(daemon, node);
        DirtyBitmap b = lookup(n, name);
        check(b, ALLOW_RO);
        boolean was = b.recording();
        home(n, () -> b.setRecording(on));
        return new TransactionAction() {
            @Override public void commit() {}

            @Override
            public void abort() {
                home(n, () -> b.setRecording(was));
            }
        };
    }

    /**
     * block-dirty-bitmap-merge: every source ORed into a scratch bitmap of the target's geometry,
     * then into the target (unchanged when a source fails), the target's old bits kept for abort
     * (QEMU's block_dirty_bitmap_merge).
     */
    static TransactionAction merge(Options o, Daemon daemon, QmpServer server) throws Exception {
        String node = o.required("node");
        String target = o.required("target");
        List<Object> sources = new ArrayList<>(); // a bitmap name of node, or {node, name}
        for (int i = 0; o.has("bitmaps." + i) || o.hasGroup("bitmaps." + i); i++) {
            if (o.has("bitmaps." + i)) {
                sources.add(o.required("bitmaps." + i));
            } else {
                Options s = o.sub("bitmaps." + i);
                sources.add(new String[] {s.required("node"), s.required("name")});
            }
        }
        BlockNode n = lookupNode(daemon, node);
        DirtyBitmap dst = lookup(n, target);
        DirtyBitmap scratch = new DirtyBitmap(target + "#merge", dst.size(), dst.granularity());
        for (Object src : sources) {
            BlockNode sn;
            DirtyBitmap sb;
            if (src instanceof String name) {
                sn = n;
                sb = n.dirtyBitmap(name);
                if (sb == null) throw QmpException.generic("Dirty bitmap '" + name + "' not found");
            } else {
                String[] ref = (String[]) src;
                sn = lookupNode(daemon, ref[0]);
                sb = lookup(sn, ref[1]);
            }
            check(sb, ALLOW_RO);
            if (sb.size() != scratch.size()) throw QmpException.generic("Bitmaps are incompatible and can't be merged");
            DirtyBitmap from = sb;
            // the source's bits belong to its home: scratch is ours, so ORing it there is safe
            onHome(sn, () -> {
                scratch.merge(from);
                return null;
            });
        }
        check(dst, DEFAULT);
        DirtyBitmap backup = onHome(n, () -> {
            DirtyBitmap copy = dst.copy(target);
            dst.merge(scratch);
            return copy;
        });
        return new TransactionAction() {
            @Override public void commit() {}

            @Override
            public void abort() {
                home(n, () -> dst.restore(backup));
            }
        };
    }

    /** A change on the node's home thread, waited for; an abort or commit cannot fail (it is logged). */
    private static void home(BlockNode n, Runnable r) {
        try {
            n.home().call(() -> {
                r.run();
                return null;
            });
        } catch (Exception e) {
            throw new IllegalStateException("bitmap change on " + n.name() + " failed", e);
        }
    }
}
