package dev.vmm.core.qmp;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.BlockStats;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.options.Options;
import dev.vmm.core.stats.LatencyCopies;
import dev.vmm.core.stats.LatencyHistogram;
import dev.vmm.iothread.IOThread;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.function.BiFunction;

/**
 * The QMP commands of the daemon model: QEMU's names, argument names and return shapes
 * (QAPI schema of QEMU 7.2: qapi/control.json, qom.json, misc.json, block-core.json,
 * block-export.json), plus our extra members where noted. Blocking work (opening and flushing
 * images, starting and stopping threads, starting exports) runs on the control thread, never
 * on the main loop.
 *
 * <p>Events: {@code BLOCK_EXPORT_DELETED {"id"}} (QEMU's) after {@code block-export-del};
 * {@value #NODE_MOVED} {@code {"node-name", "from", "to", "pause-ns"}} (ours) after a node
 * actually changed IOThread.
 */
public final class CoreCommands {
    /** Our event for a finished handoff. */
    public static final String NODE_MOVED = "VMM_NODE_MOVED";
    /** QEMU's event for a removed export. */
    public static final String BLOCK_EXPORT_DELETED = "BLOCK_EXPORT_DELETED";

    private CoreCommands() {}

    /**
     * Registers every core command.
     *
     * @param mover  moves a node to an IOThread, completing with the pause in ns
     *               ({@code daemon::moveNode}; tests substitute their own)
     * @param onQuit starts the orderly shutdown (the SIGTERM path); run after {@code quit}'s reply is written
     */
    public static void register(QmpCommands t, Daemon daemon, BiFunction<String, String, CompletableFuture<Long>> mover,
            Runnable onQuit) {
        t.event(BLOCK_EXPORT_DELETED, CoreTypes.BLOCK_EXPORT_DELETED);
        t.event(NODE_MOVED, CoreTypes.NODE_MOVED);
        t.register("query-version", QmpType.EMPTY, CoreTypes.VERSION_INFO, QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            Map<String, Object> v = new LinkedHashMap<>();
            v.put("qemu", c.server().qemuVersion());
            v.put("package", c.server().version().pkg());
            return v;
        }));
        t.register("query-commands", QmpType.EMPTY, QmpType.arrayOf(CoreTypes.COMMAND_INFO), QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (String n : c.server().commands().names()) out.add(Map.of("name", n));
            return out;
        }));
        t.register("query-qmp-schema", QmpType.EMPTY, QmpType.arrayOf(CoreTypes.SCHEMA_INFO), QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            return c.server().commands().schema();
        }));
        t.register("quit", QmpType.EMPTY, QmpType.EMPTY, QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            c.afterReply(onQuit);
            return Map.of();
        }));

        // ---- IOThreads ----
        t.register("object-add", CoreTypes.OBJECT_ADD_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            daemon.objectAdd(c.options());
            return Map.of();
        }));
        t.register("object-del", CoreTypes.OBJECT_DEL_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            Options o = c.options();
            String id = o.required("id");
            o.checkAllConsumed();
            daemon.objectDel(id);
            return Map.of();
        }));
        t.register("query-iothreads", QmpType.EMPTY, QmpType.arrayOf(CoreTypes.IOTHREAD_INFO), QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            List<BlockNode> nodes = daemon.nodes();
            List<Object> out = new ArrayList<>();
            for (IOThread it : daemon.iothreads()) {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("id", it.id());
                m.put("thread-id", it.nativeThreadId());
                // Epoll loops never busy-poll: QEMU's polling knobs are accepted and shown as 0.
                m.put("poll-max-ns", 0);
                m.put("poll-grow", 0);
                m.put("poll-shrink", 0);
                m.put("aio-max-batch", 0);
                List<String> homed = new ArrayList<>();
                for (BlockNode n : nodes) if (n.home() == it) homed.add(n.name());
                m.put("nodes", homed);
                m.put("requests", it.requests());
                // Ours: CPU time of the thread; two samples give its busy fraction (vmm top).
                m.put("x-cpu-ns", it.cpuTimeNanos());
                out.add(m);
            }
            return out;
        }));

        // ---- block nodes ----
        t.register("blockdev-add", CoreTypes.BLOCKDEV_OPTIONS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            daemon.blockdevAdd(c.options()); // "backing": null flattens to backing="" (Options.of)
            return Map.of();
        }));
        t.register("blockdev-del", CoreTypes.BLOCKDEV_DEL_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            Options o = c.options();
            String name = o.required("node-name");
            o.checkAllConsumed();
            daemon.blockdevDel(name);
            return Map.of();
        }));
        t.register("query-named-block-nodes", CoreTypes.QUERY_NAMED_BLOCK_NODES_ARGS, QmpType.arrayOf(CoreTypes.BLOCK_DEVICE_INFO), QmpCommand.sync(c -> {
            Options o = c.options();
            boolean flat = o.bool("flat", false); // QEMU: without backing-image, backing_file_depth 0
            o.checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (BlockNode n : daemon.nodes()) out.add(nodeInfo(n, flat));
            return out;
        }));
        // blocking, not sync: the latency histogram is copied on each node's home thread, and
        // the main loop must not wait for that (LatencyCopies bounds the wait per IOThread)
        t.register("query-blockstats", CoreTypes.QUERY_BLOCKSTATS_ARGS, QmpType.arrayOf(CoreTypes.BLOCK_STATS), QmpCommand.blocking(c -> {
            Options o = c.options();
            o.bool("query-nodes", false); // no BlockBackends: every node is listed either way
            o.checkAllConsumed();
            List<Object> out = new ArrayList<>();
            List<BlockExport> exports = daemon.exports();
            for (BlockNode n : daemon.nodes()) out.add(blockStats(n, exports));
            return out;
        }));
        t.register("x-query-export-stats", QmpType.EMPTY, QmpType.arrayOf(CoreTypes.X_EXPORT_STATS), QmpCommand.blocking(c -> { // waits for each home thread's histogram copy
            c.options().checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (BlockExport e : daemon.exports()) out.add(exportStats(e));
            return out;
        }));
        t.register("x-query-handoffs", QmpType.EMPTY, CoreTypes.X_HANDOFFS, QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            return handoffs(daemon.handoffs());
        }));
        t.register("x-blockdev-set-iothread", CoreTypes.SET_IOTHREAD_ARGS, QmpType.EMPTY, call -> setIothread(call, daemon, mover));

        // ---- exports ----
        t.register("block-export-add", CoreTypes.blockExportOptions(Daemon.exportDrivers()), QmpType.EMPTY, QmpCommand.blocking(c -> {
            daemon.exportAdd(c.options());
            return Map.of();
        }));
        t.register("block-export-del", CoreTypes.BLOCK_EXPORT_DEL_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            Options o = c.options();
            String id = o.required("id");
            boolean hard = "hard".equals(o.choice("mode", "safe", "safe", "hard"));
            o.checkAllConsumed();
            daemon.exportDel(id, hard);
            c.server().emit(BLOCK_EXPORT_DELETED, Map.of("id", id));
            return Map.of();
        }));
        t.register("query-block-exports", QmpType.EMPTY, QmpType.arrayOf(CoreTypes.BLOCK_EXPORT_INFO), QmpCommand.sync(c -> {
            c.options().checkAllConsumed();
            List<Object> out = new ArrayList<>();
            for (BlockExport e : daemon.exports()) {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("type", e.type());
                m.put("id", e.id());
                m.put("node-name", e.node().name());
                m.put("shutting-down", false); // a deleted export leaves the table at once
                out.add(m);
            }
            return out;
        }));
    }

    /**
     * {@code x-blockdev-set-iothread node-name iothread [force]}: {@code iothread} null (JSON)
     * means the main loop, as in QEMU. QEMU refuses nodes in use unless {@code force}; moving
     * nodes with their users is what we are for, so {@code force} is accepted and not required.
     * Replies {@code {}} when the move completed, after {@value #NODE_MOVED}.
     */
    private static CompletableFuture<Object> setIothread(QmpCall c, Daemon daemon,
            BiFunction<String, String, CompletableFuture<Long>> mover) throws Exception {
        Map<String, Object> args = c.arguments();
        Options o;
        if (args.containsKey("iothread") && args.get("iothread") == null) {
            Map<String, Object> copy = new LinkedHashMap<>(args);
            copy.put("iothread", IOThread.MAIN_ID);
            o = Options.of(c.name(), copy);
        } else {
            o = c.options();
        }
        String node = o.required("node-name");
        String target = o.required("iothread");
        o.bool("force", false);
        o.checkAllConsumed();
        String from = daemon.node(node).home().id();
        daemon.iothread(target); // unknown IOThread: error now, with the daemon's words
        CompletableFuture<Long> move;
        try {
            move = mover.apply(node, target);
        } catch (RuntimeException e) {
            move = CompletableFuture.failedFuture(e);
        }
        return move.thenApply(pauseNs -> {
            if (!from.equals(target)) {
                Map<String, Object> ev = new LinkedHashMap<>();
                ev.put("node-name", node);
                ev.put("from", from);
                ev.put("to", target);
                ev.put("pause-ns", pauseNs);
                c.server().emit(NODE_MOVED, ev);
            }
            return Map.of();
        });
    }

    /** The file name QEMU shows for a node: the image file under it (a {@code raw} window: QEMU's {@code json:} form). */
    static String filename(BlockNode n) {
        if (n.driver() instanceof RawFileDriver r) return r.filename();
        dev.vmm.core.block.BlockDriver d = n.driver();
        while (d instanceof dev.vmm.core.block.ForwardingBlockDriver f) d = f.forwardsTo(); // discard=ignore, detect-zeroes
        if (d instanceof dev.vmm.core.block.ProtocolDriverFactory.Described p) return p.filename();
        if (n.driver() instanceof dev.vmm.core.block.RawFormatDriver w && w.windowed()) {
            BlockNode f = n.child(BlockNode.FILE);
            // QEMU's member order and spacing (qobject_to_json with ", " and ": ")
            return "json:{\"offset\": " + w.offset() + ", \"driver\": \"raw\", \"size\": " + n.size() + ", \"file\": {\"driver\": "
                    + dev.vmm.core.json.Json.write(f.driverName()) + ", \"filename\": " + dev.vmm.core.json.Json.write(filename(f)) + "}}";
        }
        BlockNode f = n.child(BlockNode.FILE);
        return f == null ? n.name() : filename(f);
    }

    /**
     * QEMU's {@code actual-size}: the bytes the image file under {@code n} takes on disk
     * ({@code st_blocks * 512}, statx(2) on its path: a metadata read, no I/O on the node), or -1
     * when unknown.
     */
    static long actualSize(BlockNode n) {
        BlockNode leaf = n;
        while (!(leaf.driver() instanceof RawFileDriver) && leaf.child(BlockNode.FILE) != null) leaf = leaf.child(BlockNode.FILE);
        if (!(leaf.driver() instanceof RawFileDriver r)) return -1;
        try (com.sun.jna.Memory stx = new com.sun.jna.Memory(dev.vmm.core.linux.LibC.STATX_SIZEOF)) {
            stx.clear();
            dev.vmm.core.linux.LibC.statx(dev.vmm.core.linux.LibC.AT_FDCWD, r.filename(), 0, dev.vmm.core.linux.LibC.STATX_BLOCKS,
                    com.sun.jna.Pointer.nativeValue(stx));
            if ((stx.getInt(dev.vmm.core.linux.LibC.STATX_OFF_MASK) & dev.vmm.core.linux.LibC.STATX_BLOCKS) == 0) return -1;
            return stx.getLong(dev.vmm.core.linux.LibC.STATX_OFF_BLOCKS) * 512;
        } catch (com.sun.jna.LastErrorException e) {
            return -1; // the file was removed behind our back: QEMU leaves the member out too
        }
    }

    /** The backing chain's length below {@code n} (QEMU's {@code backing_file_depth}). */
    static int backingDepth(BlockNode n) {
        int d = 0;
        for (BlockNode b = n.child(BlockNode.BACKING); b != null && d < 1000; b = b.child(BlockNode.BACKING)) d++;
        return d;
    }

    /** QEMU's {@code ImageInfo} of a node; with {@code backing-image} down the chain unless {@code flat}. */
    static Map<String, Object> imageInfo(BlockNode n, boolean flat, int depth) {
        BlockNode.ImageInfo info = n.imageInfo();
        Map<String, Object> image = new LinkedHashMap<>();
        if (!flat && depth < 1000) {
            BlockNode b = n.child(BlockNode.BACKING);
            if (b != null) image.put("backing-image", imageInfo(b, false, depth + 1));
        }
        if (info.backingFormat() != null) image.put("backing-filename-format", info.backingFormat());
        image.put("virtual-size", n.size());
        image.put("filename", filename(n));
        if (info.clusterSize() > 0) image.put("cluster-size", info.clusterSize());
        image.put("format", n.driverName());
        long actual = actualSize(n);
        if (actual >= 0) image.put("actual-size", actual);
        if (info.fullBackingFilename() != null) image.put("full-backing-filename", info.fullBackingFilename());
        if (info.backingFilename() != null) image.put("backing-filename", info.backingFilename());
        image.put("dirty-flag", false);
        return image;
    }

    /** QEMU's {@code BlockDeviceInfo} for a node, plus {@code iothread} (ours). */
    static Map<String, Object> nodeInfo(BlockNode n, boolean flat) {
        String file = filename(n);
        BlockNode leaf = n;
        while (!(leaf.driver() instanceof RawFileDriver) && leaf.child(BlockNode.FILE) != null) leaf = leaf.child(BlockNode.FILE);
        boolean direct = leaf.driver() instanceof RawFileDriver r && r.direct();
        Map<String, Object> cache = new LinkedHashMap<>();
        cache.put("no-flush", false);
        cache.put("direct", direct);
        cache.put("writeback", true);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("node-name", n.name());
        m.put("drv", n.driverName());
        m.put("file", file);
        m.put("ro", n.readOnly());
        m.put("encrypted", false);
        m.put("detect_zeroes", "off");
        BlockNode backing = n.child(BlockNode.BACKING);
        if (backing != null) {
            String full = n.imageInfo().fullBackingFilename();
            m.put("backing_file", full != null ? full : filename(backing));
        }
        // QEMU 7.2 counts the chain only when it also shows it (not with flat)
        m.put("backing_file_depth", flat ? 0 : backingDepth(n));
        for (String k : new String[] {"bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr", "write_threshold"}) m.put(k, 0);
        m.put("image", imageInfo(n, flat, 0));
        m.put("cache", cache);
        List<Object> bitmaps = dirtyBitmaps(n);
        if (!bitmaps.isEmpty()) m.put("dirty-bitmaps", bitmaps);
        m.put("iothread", n.home().id());
        return m;
    }

    /** QEMU's {@code BlockDirtyInfo} list (absent when empty; {@code inconsistent} only when true). */
    static List<Object> dirtyBitmaps(BlockNode n) {
        List<Object> out = new ArrayList<>();
        for (DirtyBitmap b : n.dirtyBitmaps()) {
            Map<String, Object> d = new LinkedHashMap<>();
            if (!b.name().isEmpty()) d.put("name", b.name()); // an anonymous one (a backup's successor) has none, as in QEMU
            d.put("recording", b.recording());
            d.put("persistent", b.persistent());
            d.put("busy", b.busy());
            d.put("granularity", b.granularity());
            d.put("count", b.count());
            if (b.inconsistent()) d.put("inconsistent", true);
            out.add(d);
        }
        return out;
    }

    /**
     * QEMU's {@code BlockStats} for one node. {@link BlockStats} counts failures in one counter,
     * so the per-kind {@code failed_*} members are absent and {@code failed_operations} (ours)
     * holds the total; {@code write_zeroes_operations} is ours too.
     */
    static Map<String, Object> blockStats(BlockNode n, List<BlockExport> exports) {
        BlockStats s = n.stats();
        Map<String, Object> st = new LinkedHashMap<>();
        st.put("rd_bytes", s.readBytes.sum());
        st.put("wr_bytes", s.writeBytes.sum());
        st.put("rd_operations", s.readOps.sum());
        st.put("wr_operations", s.writeOps.sum());
        st.put("flush_operations", s.flushOps.sum());
        st.put("unmap_operations", s.discardOps.sum());
        st.put("write_zeroes_operations", s.zeroOps.sum());
        st.put("failed_operations", s.errors.sum());
        // Our extension: service time of every request on the home thread (parse to completion).
        putLatency(st, n, s.latency);
        long inFlight = 0;
        for (BlockExport e : exports) if (e.node() == n) inFlight += e.stats().inFlightNow();
        st.put("x-in-flight", inFlight);
        st.put("x-iothread", n.home().id());
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("device", "");
        m.put("node-name", n.name());
        m.put("stats", st);
        return m;
    }

    /**
     * {@code x-query-export-stats} (ours): one entry per export with QEMU's BlockStats counter
     * names where they apply; {@code clients} is connected users, {@code frontend} the connected
     * vhost-user front-end (absent when none).
     */
    static Map<String, Object> exportStats(BlockExport e) {
        dev.vmm.core.stats.ExportStats s = e.stats();
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", e.id());
        m.put("type", e.type());
        m.put("node-name", e.node().name());
        m.put("iothread", e.node().home().id());
        m.put("clients", e.users());
        m.put("connections", s.connections.sum());
        if (s.frontend() != null) m.put("frontend", s.frontend());
        m.put("rd_operations", s.readOps.sum());
        m.put("wr_operations", s.writeOps.sum());
        m.put("rd_bytes", s.readBytes.sum());
        m.put("wr_bytes", s.writeBytes.sum());
        m.put("other_operations", s.otherOps.sum());
        m.put("failed_operations", s.errors.sum());
        m.put("in-flight", s.inFlightNow());
        putLatency(m, e.node(), s.latency);
        return m;
    }

    /**
     * {@code x-latency}: a histogram's count, mean and percentiles in ns, copied on {@code n}'s
     * home thread (its one writer). Absent when that thread does not answer within
     * {@link LatencyCopies#WAIT_MS} (stuck; logged once) or the node is being removed. Not on the
     * main loop or an IOThread: it waits for the copy.
     */
    static void putLatency(Map<String, Object> into, BlockNode n, LatencyHistogram live) {
        LatencyHistogram h = LatencyCopies.copy(n.home(), live);
        if (h != null) into.put("x-latency", latency(h));
    }

    static Map<String, Object> latency(LatencyHistogram h) {
        Map<String, Object> lat = new LinkedHashMap<>();
        lat.put("count", h.count());
        lat.put("mean-ns", Math.round(h.mean()));
        lat.put("p50-ns", h.percentile(50));
        lat.put("p99-ns", h.percentile(99));
        lat.put("p99.9-ns", h.percentile(99.9));
        lat.put("max-ns", h.max());
        return lat;
    }

    /** {@code x-query-handoffs} (ours): totals since start and the most recent moves, oldest first. */
    static Map<String, Object> handoffs(dev.vmm.core.stats.HandoffLog log) {
        dev.vmm.core.stats.LatencyHistogram h = log.pauses();
        List<Object> recent = new ArrayList<>();
        for (dev.vmm.core.stats.HandoffLog.Handoff x : log.recent()) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("node-name", x.node());
            m.put("from", x.from());
            m.put("to", x.to());
            m.put("pause-ns", x.pauseNs());
            m.put("time-ms", x.epochMillis());
            recent.add(m);
        }
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("total", h.count());
        m.put("pause-p50-ns", h.percentile(50));
        m.put("pause-p99-ns", h.percentile(99));
        m.put("pause-max-ns", h.max());
        m.put("recent", recent);
        return m;
    }

}
