package dev.vmm.core.daemon;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.DetectZeroes;
import dev.vmm.core.block.DetectZeroesDriver;
import dev.vmm.core.block.ImageLock;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.block.NoDiscardDriver;
import dev.vmm.core.block.ProtocolDriverFactory;
import dev.vmm.core.block.RawFormatDriver;
import dev.vmm.core.block.qcow2.Qcow2Driver;
import dev.vmm.core.block.qcow2.Qcow2Header;
import dev.vmm.core.block.qcow2.Qcow2Options;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.iothread.IOThread;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;

/**
 * One {@code --blockdev} / {@code blockdev-add}: opens the node and whatever it creates with it
 * (inline {@code file}/{@code backing} definitions, the backing chain named in a qcow2 header),
 * children before parents, each on the home of its children. Every node is entered in the daemon's
 * table as soon as it is open (so names are reserved and a later child can refer to it); if a
 * later step fails, {@link #rollback} closes and removes them all again, parents first.
 *
 * <p>Thread contract: one instance per command, on the calling control thread (the CLI thread or
 * the QMP control thread), never on the main loop or an IOThread: it waits for driver calls on the
 * nodes' homes and, when two children live on different IOThreads, for a move.
 */
final class BlockdevOpener {
    /** Longest backing chain opened from image headers (QEMU has no cap; a loop or a hostile image must not recurse forever). */
    static final int MAX_BACKING_CHAIN = 64;
    /** Deepest inline definition ({@code file.file.file...}); JSON input is capped at 64 levels anyway. */
    static final int MAX_INLINE_DEPTH = 32;

    private final Daemon daemon;
    /** Nodes opened so far, in order (children before parents). */
    private final List<BlockNode> created = new ArrayList<>();

    BlockdevOpener(Daemon daemon) {
        this.daemon = daemon;
    }

    /** The top node of {@code o}; on failure everything opened is closed again. */
    BlockNode open(Options o) throws OptionException, DaemonException {
        try {
            BlockNode n = node(o, true, false, false, false);
            daemon.refreshLocks(); // the new nodes' users take their permissions on the images (docs/locking.md)
            return n;
        } catch (OptionException | DaemonException | RuntimeException e) {
            rollback();
            throw e;
        }
    }

    /** Closes and forgets every node this command opened, parents first. */
    private void rollback() {
        List<BlockNode> undo = new ArrayList<>(created);
        if (undo.isEmpty()) return;
        try {
            // Under the gates of their graphs: a node created over an existing one (file=NAME) is
            // flushed through it on its home, which a move must not change meanwhile.
            daemon.withGates(undo, () -> {
                close(undo);
                return null;
            });
        } catch (DaemonException e) {
            Daemon.LOG.warn("after a failed blockdev-add: {}; closing its nodes anyway", e.getMessage());
            close(undo);
        }
    }

    private void close(List<BlockNode> undo) {
        daemon.forget(undo);
        for (BlockNode n : BlockNode.parentsFirst(undo)) {
            try {
                n.flushAndClose(Daemon.CLOSE_TIMEOUT_MS);
            } catch (BlockException e) {
                Daemon.LOG.warn("closing block node {} after a failed blockdev-add: {}", n.name(), e.getMessage());
            }
        }
        daemon.releaseLocks(); // existing nodes the failed command used as children
    }

    // ---- one definition ----

    /**
     * @param top       the command's own definition ({@code node-name} required), else an inline one
     * @param inheritRo a read-only parent makes its inline children read-only unless they say
     *                  otherwise (QEMU's option inheritance)
     * @param inheritFs the same for {@code force-share}
     * @param inheritAro the same for {@code auto-read-only}
     */
    private BlockNode node(Options o, boolean top, boolean inheritRo, boolean inheritFs, boolean inheritAro)
            throws OptionException, DaemonException {
        int depth = o.fullKey("driver").split("\\.").length - 1;
        if (depth > MAX_INLINE_DEPTH) { // hostile input must not recurse until the stack overflows
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("driver"),
                    "inline node definitions nest deeper than " + MAX_INLINE_DEPTH + " levels");
        }
        java.util.Map<String, ProtocolDriverFactory> protocols = protocolDrivers();
        List<String> known = new ArrayList<>(List.of("file", "raw", "qcow2", "copy-before-write", "snapshot-access"));
        known.addAll(protocols.keySet());
        String driver = o.choice("driver", null, known.toArray(new String[0]));
        if (driver == null) {
            throw new OptionException(OptionException.Kind.MISSING, o.optionName(), o.fullKey("driver"),
                    "parameter '" + o.fullKey("driver") + "' is missing (one of " + String.join(", ", known) + ")");
        }
        String name = top ? o.required("node-name") : o.optional("node-name", null);
        if (name != null) checkNewName(o, name);
        boolean readOnly = o.bool("read-only", inheritRo);
        // QEMU's default is ignore (TRIM does nothing); ours is unmap: holes are what users of a
        // sparse image expect. Both values are accepted for drop-in compatibility.
        boolean unmap = o.choice("discard", "unmap", "ignore", "unmap", "off", "on").matches("unmap|on");
        DetectZeroes dz = DetectZeroes.parse(o.choice("detect-zeroes", "off", "off", "on", "unmap"));
        if (dz == DetectZeroes.UNMAP && !unmap) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("detect-zeroes"),
                    "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"); // QEMU's wording
        }
        boolean autoRo = o.bool("auto-read-only", inheritAro);
        boolean forceShare = o.bool("force-share", inheritFs);
        if (forceShare && !readOnly) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("force-share"),
                    "force-share=on can only be used with read-only images"); // QEMU's wording
        }
        BlockNode n = switch (driver) {
            case "file" -> file(o, name, readOnly, autoRo, unmap, dz);
            case "raw" -> raw(o, name, readOnly, forceShare, autoRo, unmap, dz);
            case "qcow2" -> qcow2(o, name, readOnly, forceShare, autoRo, unmap, dz);
            case "copy-before-write" -> copyBeforeWrite(o, name);
            case "snapshot-access" -> snapshotAccess(o, name);
            default -> protocol(protocols.get(driver), o, name, readOnly, unmap, dz);
        };
        n.setForceShare(forceShare);
        n.setDiscardIgnored(!unmap); // issue 13: such discards mark no dirty bitmap, as QEMU's
        return n;
    }

    /** The protocol drivers on the class path ({@link ProtocolDriverFactory}), by {@code driver=} value. */
    static java.util.Map<String, ProtocolDriverFactory> protocolDrivers() {
        java.util.Map<String, ProtocolDriverFactory> m = new java.util.TreeMap<>();
        for (ProtocolDriverFactory f : java.util.ServiceLoader.load(ProtocolDriverFactory.class)) m.put(f.driver(), f);
        return m;
    }

    /** A node of a protocol driver found by ServiceLoader: starts on the main loop, as a file node. */
    private BlockNode protocol(ProtocolDriverFactory f, Options o, String name, boolean readOnly, boolean unmap, DetectZeroes dz)
            throws OptionException, DaemonException {
        String nodeName = name == null ? daemon.implicitName() : name;
        BlockDriver d = f.open(daemon, o, nodeName, readOnly);
        if (!unmap) d = new NoDiscardDriver(d);
        if (dz != DetectZeroes.OFF) d = new DetectZeroesDriver(d, dz);
        BlockNode n;
        try {
            n = new BlockNode(nodeName, f.driver(), d, daemon.mainLoop(), List.of());
        } catch (RuntimeException e) {
            d.close();
            throw e;
        }
        return enter(n, d);
    }

    private void checkNewName(Options o, String name) throws DaemonException, OptionException {
        if (name.isEmpty() || name.startsWith("#") || !name.matches("[A-Za-z][A-Za-z0-9_.+-]{0,127}")) {
            // QEMU: ids start with a letter, then letters, digits, '-', '.', '_' (we also take '+')
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("node-name"), "Invalid node-name: '" + name + "'");
        }
        if (daemon.findNode(name) != null) throw new DaemonException("Duplicate nodes with node-name='" + name + "'"); // QEMU's wording
    }

    private BlockNode file(Options o, String name, boolean readOnly, boolean autoRo, boolean unmap, DetectZeroes dz)
            throws OptionException, DaemonException {
        String filename = o.path("filename");
        boolean direct = o.sub("cache").bool("direct", false);
        boolean noFlush = o.sub("cache").bool("no-flush", false);
        // QEMU's key and rule; our default (no aio=) is io_uring, falling back to threads where refused.
        String aioKey = o.choice("aio", null, "threads", "native", "io_uring");
        dev.vmm.core.aio.AioMode aio = aioKey == null ? dev.vmm.core.aio.IoEngines.defaultMode() : dev.vmm.core.aio.AioMode.parse(aioKey);
        if (aio == dev.vmm.core.aio.AioMode.NATIVE && !direct) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("aio"),
                    "aio=native was specified, but it requires cache.direct=on, which was not specified.");
        }
        ImageLock.Mode locking = ImageLock.Mode.parse(o.choice("locking", "auto", "auto", "on", "off"));
        o.checkAllConsumed();
        return openFile(name, Path.of(filename), readOnly, autoRo, direct, noFlush, aio, unmap, dz, locking, o.optionName());
    }

    private BlockNode openFile(String name, Path filename, boolean readOnly, boolean autoRo, boolean direct, boolean noFlush,
            dev.vmm.core.aio.AioMode aio, boolean unmap, DetectZeroes dz, ImageLock.Mode locking, String option) throws DaemonException {
        RawFileDriver raw;
        try {
            raw = RawFileDriver.open(filename, readOnly, direct, aio);
        } catch (BlockException e) {
            boolean denied = e.errno() == Errno.EACCES || e.errno() == Errno.EROFS || e.errno() == Errno.EPERM;
            if (readOnly || !autoRo || !denied) throw new DaemonException(option + ": " + e.getMessage(), e);
            // auto-read-only=on (libvirt sets it on backing files): QEMU's raw_open_common falls back to read-only
            try {
                raw = RawFileDriver.open(filename, true, direct, aio);
            } catch (BlockException again) {
                throw new DaemonException(option + ": " + e.getMessage(), e);
            }
        }
        raw.setUnmap(unmap);
        raw.setNoFlush(noFlush);
        raw.setDetectZeroes(dz);
        try {
            raw.initLock(locking, filename.toString());
        } catch (BlockException e) {
            raw.close();
            throw new DaemonException(option + ": " + e.getMessage(), e);
        }
        return enter(new BlockNode(name == null ? daemon.implicitName() : name, "file", raw, daemon.mainLoop(), List.of()), raw);
    }

    private BlockNode raw(Options o, String name, boolean askedRo, boolean forceShare, boolean autoRo, boolean unmap, DetectZeroes dz)
            throws OptionException, DaemonException {
        long offset = o.size("offset", 0);
        long size = o.size("size", -1);
        BlockNode.Child file = fileChild(o, askedRo, forceShare, autoRo);
        boolean readOnly = askedRo || (autoRo && file.node().readOnly()); // QEMU's bdrv_apply_auto_read_only
        o.checkAllConsumed();
        return withGates(List.of(file.node()), () -> {
            checkWritableChild(file, name, readOnly, "write");
            BlockDriver d;
            try {
                d = onHome(file.node(), () -> new RawFormatDriver(file.node().io(), offset, size, readOnly, unmap), "");
            } catch (DaemonException e) {
                throw new DaemonException(e.getMessage(), e);
            }
            if (dz != DetectZeroes.OFF) d = new DetectZeroesDriver(d, dz);
            IOThread home = file.node().home();
            return enter(new BlockNode(name == null ? daemon.implicitName() : name, "raw", d, home, List.of(file)), d);
        });
    }

    private BlockNode qcow2(Options o, String name, boolean askedRo, boolean forceShare, boolean autoRo, boolean unmap, DetectZeroes dz)
            throws OptionException, DaemonException {
        if (o.has("data-file") || o.hasGroup("data-file")) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("data-file"),
                    "'" + o.fullKey("data-file") + "': qcow2 images with an external data file are not supported");
        }
        if (o.has("encrypt") || o.hasGroup("encrypt")) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("encrypt"),
                    "'" + o.fullKey("encrypt") + "': encrypted qcow2 images are not supported");
        }
        BlockNode.Child file = fileChild(o, askedRo, forceShare, autoRo);
        boolean readOnly = askedRo || (autoRo && file.node().readOnly()); // QEMU's bdrv_apply_auto_read_only
        Qcow2Options q = qcow2Options(o, readOnly);
        // backing: absent = the header's; "" (QMP null, or backing= on the command line) = none;
        // a name = that node; a group = an inline definition
        boolean backingGiven = o.has("backing") || o.hasGroup("backing");
        BlockNode.Child backing = null;
        if (o.hasGroup("backing")) {
            backing = new BlockNode.Child(BlockNode.BACKING, node(o.sub("backing"), false, true, forceShare, autoRo), true);
        } else if (o.has("backing")) {
            String ref = o.required("backing");
            if (!ref.isEmpty()) {
                BlockNode b = daemon.findNode(ref);
                if (b == null) throw new DaemonException("Could not open backing file: Cannot find device='" + ref + "' nor node-name='" + ref + "'");
                checkNotOwned(b, name == null ? "an implicit node" : "node '" + name + "'");
                backing = new BlockNode.Child(BlockNode.BACKING, b, false);
            }
        }
        o.checkAllConsumed();
        if (backing != null && backing.node().home() != file.node().home()) {
            // QEMU's rule: connected nodes share one AioContext. The new node lives with its file;
            // the backing graph moves there first (with its users, if it has any).
            sameHome(backing.node(), file.node().home());
        }
        BlockNode.Child b = backing;
        List<BlockNode> children = b == null ? List.of(file.node()) : List.of(file.node(), b.node());
        return withGates(children, () -> {
            if (b != null && b.node().home() != file.node().home()) {
                throw new DaemonException("node '" + b.node().name() + "' moved to IOThread '" + b.node().home().id()
                        + "' while node '" + name + "' was being created over it; try again");
            }
            checkWritableChild(file, name, readOnly, "write, resize");
            return openQcow2(name, file, b, backingGiven, q, unmap, dz, forceShare, new ArrayList<>());
        });
    }

    /**
     * {@code copy-before-write} (QEMU 7.2's options; {@code bitmap} is refused): a node over
     * {@code file} whose copy step is put in front of every user of {@code file}, see
     * {@link dev.vmm.core.job.CopyBeforeWriteDriver} and docs/backup.md.
     */
    private BlockNode copyBeforeWrite(Options o, String given) throws OptionException, DaemonException {
        // (the bitmap, if any, is read on the file's home thread at the node's start instant)
        String name = given == null ? daemon.implicitName() : given;
        if (!o.has("file") || o.hasGroup("file")) throw new DaemonException("copy-before-write: 'file' must name an existing node");
        BlockNode.Child file = fileChild(o, false, false, false);
        String targetRef = o.optional("target", null);
        if (o.hasGroup("target") || targetRef == null) throw new DaemonException("copy-before-write: 'target' must name an existing node");
        BlockNode target = daemon.findNode(targetRef);
        if (target == null) throw new DaemonException("Cannot find device='" + targetRef + "' nor node-name='" + targetRef + "'");
        boolean breakSnapshot = o.choice("on-cbw-error", "break-guest-write", "break-guest-write", "break-snapshot").equals("break-snapshot");
        o.number("cbw-timeout", 0, 0, Integer.MAX_VALUE); // accepted; a copy is not timed out here
        dev.vmm.core.bitmap.DirtyBitmap bitmap = null;
        if (o.has("bitmap")) throw new DaemonException("copy-before-write: 'bitmap' must be an object with 'node' and 'name'");
        if (o.hasGroup("bitmap")) { // QEMU's BlockDirtyBitmap {node, name}
            Options b = o.sub("bitmap");
            String bNode = b.required("node");
            String bName = b.required("name");
            BlockNode bn = daemon.findNode(bNode);
            if (bn == null) throw new DaemonException("Cannot find device='" + bNode + "' nor node-name='" + bNode + "'");
            bitmap = bn.dirtyBitmap(bName); // never a backup's anonymous successor
            if (bitmap == null) throw new DaemonException("Dirty bitmap '" + bName + "' not found"); // QEMU's block_dirty_bitmap_lookup
            if (bitmap.inconsistent()) throw new DaemonException("Bitmap '" + bName + "' is inconsistent and cannot be used");
            if (bitmap.size() != file.node().size()) throw new DaemonException("copy-before-write: the bitmap does not cover 'file'");
        }
        o.checkAllConsumed();
        checkNotOwned(target, "node '" + name + "'");
        if (target == file.node()) throw new DaemonException("copy-before-write: 'file' and 'target' must be different nodes");
        if (target.readOnly()) throw new DaemonException("Could not create node: Block node is read-only");
        if (target.size() != file.node().size()) throw new DaemonException("copy-before-write: 'target' must have the size of 'file'");
        if (target.home() != file.node().home()) sameHome(target, file.node().home());
        dev.vmm.core.bitmap.DirtyBitmap bm = bitmap;
        return withGates(List.of(file.node(), target), () -> {
            if (target.home() != file.node().home()) throw new DaemonException("node '" + target.name() + "' moved meanwhile; try again");
            int cluster = Math.max(64 << 10, target.imageInfo().clusterSize());
            BlockDriver d;
            try {
                d = dev.vmm.core.job.CopyBeforeWriteDriver.open(file.node(), target, cluster, breakSnapshot, bm,
                        Daemon.MOVE_TIMEOUT_SECONDS);
            } catch (Exception e) {
                throw new DaemonException("copy-before-write: could not start: " + e.getMessage(), e);
            }
            List<BlockNode.Child> children = List.of(file, new BlockNode.Child("target", target, false));
            return enter(new BlockNode(name, "copy-before-write", d, file.node().home(), children), d);
        });
    }

    /** {@code snapshot-access} over a {@code copy-before-write} node: the point-in-time view, read-only. */
    private BlockNode snapshotAccess(Options o, String given) throws OptionException, DaemonException {
        String name = given == null ? daemon.implicitName() : given;
        BlockNode.Child file = fileChild(o, true, false, false);
        o.checkAllConsumed();
        if (!(file.node().driver() instanceof dev.vmm.core.job.CopyBeforeWriteDriver cbw)) {
            throw new DaemonException("snapshot-access: 'file' must be a copy-before-write node");
        }
        return withGates(List.of(file.node()), () -> {
            BlockDriver d;
            try {
                d = new dev.vmm.core.job.SnapshotAccessDriver(cbw);
            } catch (BlockException e) {
                throw new DaemonException(e.getMessage(), e);
            }
            return enter(new BlockNode(name, "snapshot-access", d, file.node().home(), List.of(file)), d);
        });
    }

    interface GatedWork {
        BlockNode run() throws DaemonException;
    }

    /**
     * Runs {@code work} holding the move gates of every node of the children's graphs (taken as a
     * move takes them: by name), so that no move changes their home while the new node reads
     * them on it and links itself to them. Gated nodes keep serving their users meanwhile.
     */
    private BlockNode withGates(List<BlockNode> children, GatedWork work) throws DaemonException {
        return daemon.withGates(children, work::run);
    }

    /**
     * Opens a qcow2 node over {@code file}; without {@code backingGiven}, opens the chain its
     * header names (implicit, read-only nodes).
     *
     * @param chain the real paths of the images above this one in a chain opened from headers, for
     *              the loop check and the depth cap
     */
    private BlockNode openQcow2(String name, BlockNode.Child file, BlockNode.Child backing, boolean backingGiven,
            Qcow2Options q, boolean unmap, DetectZeroes dz, boolean forceShare, List<Path> chain) throws DaemonException {
        BlockDriver fd = file.node().io();
        if (file.node().driver() instanceof RawFileDriver r && r.imageLock() != null) {
            // QEMU's order: the file child is attached with the format's permissions before the header is read
            int[] want = ImagePermissions.childPerm(q.readOnly(), BlockNode.FILE, 0, ImageLock.BLK_PERM_ALL);
            try {
                r.imageLock().check(want[0], forceShare || file.node().forceShare() ? ImageLock.BLK_PERM_ALL : want[1]);
            } catch (BlockException | ImageLock.ConflictException e) {
                throw ImagePermissions.failure("", e);
            }
        }
        Qcow2Header h = onHome(file.node(), () -> Daemon.qcow2Format.readHeader(fd), "");
        Path image = imagePath(file.node());
        String full = null;
        if (h.backingFile() != null) {
            full = image == null || Path.of(h.backingFile()).isAbsolute() || image.getParent() == null
                    ? h.backingFile() : image.getParent().resolve(h.backingFile()).toString();
        }
        if (!backingGiven && h.backingFile() != null) {
            backing = new BlockNode.Child(BlockNode.BACKING, backingFromHeader(image, Path.of(full), h.backingFormat(), forceShare, chain), true);
        }
        if (backing != null && backing.node().home() != file.node().home()) {
            // the implicit backing chain was opened on the main loop; nobody else knows it yet
            sameHome(backing.node(), file.node().home());
        }
        IOThread home = file.node().home();
        BlockDriver bd = backing == null ? null : backing.node().io();
        BlockDriver d = onHome(file.node(), () -> Daemon.qcow2Format.open(fd, h, bd, q), "");
        BlockDriver d0 = d;
        List<DirtyBitmap> persistent = d instanceof Qcow2Driver qd ? qd.bitmaps() : List.of();
        if (!unmap) d = new NoDiscardDriver(d);
        if (dz != DetectZeroes.OFF) d = new DetectZeroesDriver(d, dz);
        List<BlockNode.Child> children = backing == null ? List.of(file) : List.of(file, backing);
        BlockNode n = new BlockNode(name == null ? daemon.implicitName() : name, "qcow2", d, home, children);
        n.setImageInfo(new BlockNode.ImageInfo(h.clusterSize(), h.backingFile(), full, h.backingFormat()));
        for (DirtyBitmap b : persistent) n.addDirtyBitmap(b);
        if (d0 instanceof Qcow2Driver qd) {
            qd.bindNode(n.name(), n::dirtyBitmaps);
            n.setBeforeClose(qd::storeBitmaps);
        }
        return enter(n, d);
    }

    /** The implicit nodes for a backing file named in a header: a read-only file node and its format node. */
    private BlockNode backingFromHeader(Path image, Path backingPath, String format, boolean forceShare, List<Path> chain)
            throws DaemonException {
        String prefix = "Could not open backing file: ";
        Path real;
        try {
            real = backingPath.toRealPath();
        } catch (IOException e) {
            throw new DaemonException(prefix + "Could not open '" + backingPath + "': No such file or directory"); // QEMU's wording
        }
        List<Path> above = new ArrayList<>(chain);
        if (image != null) {
            try {
                above.add(image.toRealPath());
            } catch (IOException e) {
                above.add(image.toAbsolutePath());
            }
        }
        if (above.contains(real)) {
            throw new DaemonException(prefix + "backing file loop: '" + real + "' is its own backing file"
                    + (above.size() > 1 || !above.get(0).equals(real) ? " (through " + above + ")" : ""));
        }
        if (above.size() >= MAX_BACKING_CHAIN) {
            throw new DaemonException(prefix + "the backing chain of '" + above.get(0) + "' is longer than " + MAX_BACKING_CHAIN + " images");
        }
        BlockNode file = openFile(null, backingPath, true, false, false, false, dev.vmm.core.aio.IoEngines.defaultMode(), true,
                DetectZeroes.OFF, ImageLock.Mode.AUTO, "backing");
        file.setForceShare(forceShare); // implicit nodes inherit it, as QEMU's backing options
        BlockNode.Child fileChild = new BlockNode.Child(BlockNode.FILE, file, true);
        String fmt = format;
        if (fmt == null) fmt = onHome(file, () -> Daemon.qcow2Format.probe(file.driver()), prefix) ? "qcow2" : "raw";
        switch (fmt) {
            case "raw" -> {
                RawFormatDriver d;
                try {
                    d = new RawFormatDriver(file.io(), 0, -1, true, true);
                } catch (BlockException e) {
                    throw new DaemonException(prefix + e.getMessage(), e);
                }
                BlockNode r = enter(new BlockNode(daemon.implicitName(), "raw", d, file.home(), List.of(fileChild)), d);
                r.setForceShare(forceShare);
                return r;
            }
            case "qcow2" -> {
                try {
                    BlockNode q = openQcow2(null, fileChild, null, false, Qcow2Options.defaults(true), true, DetectZeroes.OFF, forceShare, above);
                    q.setForceShare(forceShare);
                    return q;
                } catch (DaemonException e) {
                    throw e.getMessage().startsWith(prefix) ? e : new DaemonException(prefix + e.getMessage(), e);
                }
            }
            default -> throw new DaemonException(prefix + "Unknown driver '" + fmt + "'");
        }
    }

    /** The image file under a node: the filename of the {@code file} node at the bottom of its file children. */
    static Path imagePath(BlockNode n) {
        for (BlockNode x = n; x != null; x = x.child(BlockNode.FILE)) {
            if (x.driver() instanceof RawFileDriver r) return Path.of(r.filename());
        }
        return null;
    }

    private BlockNode.Child fileChild(Options o, boolean readOnly, boolean forceShare, boolean autoRo) throws OptionException, DaemonException {
        if (o.hasGroup("file")) return new BlockNode.Child(BlockNode.FILE, node(o.sub("file"), false, readOnly, forceShare, autoRo), true);
        if (!o.has("file")) throw new DaemonException("A block device must be specified for \"file\""); // QEMU's wording
        String ref = o.required("file");
        BlockNode n = daemon.findNode(ref);
        if (n == null) throw new DaemonException("Cannot find device='" + ref + "' nor node-name='" + ref + "'"); // QEMU's wording
        return new BlockNode.Child(BlockNode.FILE, n, false);
    }

    /**
     * QEMU's permission rule, as far as it matters here: a writable format node needs its file
     * child writable and shares no writer with it, so a node that another writable node or a
     * writable export uses already cannot become the file child of a writable node (two writers of
     * one image's metadata corrupt it); read-only nodes may share a child with anyone. An implicit
     * node that a parent owns is nobody else's child.
     */
    /** An inline or implicit node belongs to the parent it was created with: it is nobody else's child (file or backing). */
    private static void checkNotOwned(BlockNode f, String self) throws DaemonException {
        for (BlockNode p : f.parents()) {
            if (p.children().stream().anyMatch(c -> c.node() == f && c.owned())) {
                throw new DaemonException("Node '" + f.name() + "' is owned by node '" + p.name() + "' (created with it) and cannot be a child of "
                        + self);
            }
        }
    }

    private void checkWritableChild(BlockNode.Child file, String name, boolean readOnly, String perms) throws DaemonException {
        if (file.owned()) return;
        BlockNode f = file.node();
        String self = name == null ? "an implicit node" : "node '" + name + "'";
        if (!readOnly && f.readOnly()) {
            throw new DaemonException("Block node '" + f.name() + "' is read-only: " + self + " over it must be read-only too (read-only=on)");
        }
        checkNotOwned(f, self);
        for (BlockNode p : f.parents()) {
            if (!readOnly && !p.readOnly()) {
                String role = p.children().stream().filter(c -> c.node() == f).findFirst().map(BlockNode.Child::role).orElse("file");
                throw new DaemonException("Permission conflict on node '" + f.name() + "': permissions '" + perms + "' are both required by node '"
                        + p.name() + "' (uses node '" + f.name() + "' as '" + role + "' child) and unshared by " + self + " (uses node '"
                        + f.name() + "' as 'file' child).");
            }
        }
        if (!readOnly) {
            for (BlockExport e : daemon.exports()) {
                if (e.node() == f && e.writable()) {
                    throw new DaemonException("Permission conflict on node '" + f.name() + "': permissions '" + perms
                            + "' are both required by export '" + e.id() + "' (uses node '" + f.name() + "' as 'root' child) and unshared by "
                            + self + " (uses node '" + f.name() + "' as 'file' child).");
                }
            }
        }
    }

    private static Qcow2Options qcow2Options(Options o, boolean readOnly) throws OptionException {
        long l2 = o.size("l2-cache-size", -1);
        long refcount = o.size("refcount-cache-size", -1);
        long cache = o.size("cache-size", -1);
        o.number("cache-clean-interval", 600, 0, Integer.MAX_VALUE); // accepted: caches are not trimmed by time
        Boolean lazy = o.has("lazy-refcounts") ? o.bool("lazy-refcounts", false) : null;
        boolean passDiscard = o.bool("pass-discard-request", true);
        if (cache >= 0) {
            // QEMU's read_cache_sizes(): cache-size splits between the two caches
            if (l2 >= 0 && refcount >= 0) {
                throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("cache-size"),
                        "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time");
            } else if (l2 >= 0) {
                if (l2 > cache) throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("l2-cache-size"), "l2-cache-size may not exceed cache-size");
                refcount = cache - l2;
            } else if (refcount >= 0) {
                if (refcount > cache) throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("refcount-cache-size"), "refcount-cache-size may not exceed cache-size");
                l2 = cache - refcount;
            } else {
                l2 = cache;
            }
        }
        return new Qcow2Options(readOnly, l2, refcount, lazy, passDiscard);
    }

    // ---- helpers ----

    /** Enters an opened node in the daemon's table; a clash (a concurrent command took the name) closes it. */
    private BlockNode enter(BlockNode n, BlockDriver d) throws DaemonException {
        try {
            daemon.enter(n);
        } catch (DaemonException e) {
            n.home().execute(d::close);
            throw e;
        }
        created.add(n);
        return n;
    }

    /** Moves {@code n}'s whole graph to {@code home} and waits for it. */
    private void sameHome(BlockNode n, IOThread home) throws DaemonException {
        if (daemon.mainLoop().inThread()) { // a move needs the main loop: it cannot be waited for there
            throw new DaemonException("block node '" + n.name() + "' lives on IOThread '" + n.home().id() + "', not '" + home.id()
                    + "'; move it there first (x-blockdev-set-iothread)");
        }
        try {
            daemon.moveNode(n.name(), home.id()).get(Daemon.MOVE_TIMEOUT_SECONDS + 5, TimeUnit.SECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            throw new DaemonException("cannot bring block node '" + n.name() + "' to IOThread '" + home.id() + "': " + e.getCause().getMessage(), e);
        } catch (java.util.concurrent.TimeoutException e) {
            throw new DaemonException("bringing block node '" + n.name() + "' to IOThread '" + home.id() + "' takes too long");
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new DaemonException("interrupted");
        }
    }

    interface HomeCall<T> {
        T call() throws BlockException;
    }

    /** A driver call on {@code n}'s home thread, waited for; a driver error becomes a DaemonException with QEMU's text. */
    private static <T> T onHome(BlockNode n, HomeCall<T> call, String prefix) throws DaemonException {
        try {
            return n.home().call(call::call);
        } catch (BlockException e) {
            throw new DaemonException(prefix + e.getMessage(), e);
        } catch (RuntimeException e) {
            throw new DaemonException(prefix + e, e);
        } catch (Exception e) {
            throw new DaemonException(prefix + e.getMessage(), e);
        }
    }

    /** Random two digits, as QEMU's {@code id_generate}. */
    static int randomSuffix() {
        return ThreadLocalRandom.current().nextInt(100);
    }
}
