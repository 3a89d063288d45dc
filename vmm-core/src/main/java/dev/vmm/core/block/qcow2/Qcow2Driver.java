package dev.vmm.core.block.qcow2;

import static dev.vmm.core.block.qcow2.Qcow2Format.*;
import static dev.vmm.core.linux.Errno.EBUSY;
import static dev.vmm.core.linux.Errno.EINVAL;
import static dev.vmm.core.linux.Errno.EIO;
import static dev.vmm.core.linux.Errno.ENOSPC;
import static dev.vmm.core.linux.Errno.ENOTSUP;
import static dev.vmm.core.linux.Errno.EROFS;

import com.sun.jna.Pointer;
import dev.vmm.core.block.qcow2.Qcow2Format.Image;
import dev.vmm.core.block.qcow2.Qcow2Format.Snapshot;
import dev.vmm.core.bitmap.BitmapStore;
import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStatus;
import dev.vmm.core.block.IoCompletion;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.iothread.IOThread;
import java.nio.ByteBuffer;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Supplier;
import java.util.zip.DataFormatException;
import java.util.zip.Inflater;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The qcow2 format over a {@code file} child driver and an optional {@code backing} driver
 * (QEMU's docs/interop/qcow2.txt; design in docs/qcow2.md). The children are nodes of the
 * graph: this driver never closes or attaches them, and they share its home thread.
 *
 * <p>Data path: every guest request is a pooled {@link Req} state machine. Reads map runs of
 * clusters (subclusters with extended L2) of one kind and issue one child request per run;
 * in-place writes go straight to the child; allocating writes lock their guest cluster,
 * allocate a host cluster, copy-on-write what the request does not cover, write, and then
 * update the cached L2 entry. L2 tables and refcount blocks live in write-back caches of
 * cluster-sized aligned native buffers; a miss starts an asynchronous child read and parks the
 * request on the table. Metadata reaches the disk only through the writeback chain (see
 * {@link #startWriteback}), in an order that leaves at most leaked clusters after a crash:
 * refcount blocks, flush, refcount table, flush, header, flush, L2 tables, flush, L1, flush,
 * and only then are refcounts of clusters that the written tables no longer reference
 * decremented (they are written by the next writeback). Lazy refcounts are never used.
 *
 * <p>The synchronous data methods ({@code read(o, a, l)} and friends without a completion) are
 * not used on qcow2 nodes: they fail with {@code ENOTSUP} ("qcow2 nodes serve asynchronous
 * requests only"). {@link #flush()} works while nothing is in flight (the final close), and
 * {@link #status} is synchronous (an L2 miss is read with the child's synchronous read).
 *
 * <p>Thread contract: NOT thread-safe. Every method MUST be called on the node's home IOThread
 * (the static {@link #probe}, {@link #readHeader} and {@link #open} too: they read through the
 * child); {@link #size()} and {@link #readOnly()} are immutable and may be read anywhere;
 * {@link #checkCanStore} may be called from any thread, {@link #bindNode} by the daemon before
 * the node serves.
 *
 * <p>Persistent bitmaps (write side, docs/qcow2.md "Bitmaps"): a writable open marks them in_use,
 * {@link #storeBitmaps} (the node's close hook) stores the node's persistent bitmaps,
 * {@link #removeStored} drops one from the image.
 */
public final class Qcow2Driver implements BlockDriver, BitmapStore {
    private static final Logger LOG = LoggerFactory.getLogger(Qcow2Driver.class);

    /** The qcow2 magic {@code QFI\xfb}, big-endian at offset 0. */
    public static final int QCOW_MAGIC = 0x514649fb;

    /** Alignment of every native buffer handed to the child (O_DIRECT safe). */
    private static final int ALIGN = 4096;
    private static final int IOV_MAX = 1024;
    private static final int IOVEC = 16;
    /** The file grows in chunks of this many bytes (or one cluster when bigger). */
    private static final long GROW_CHUNK = 1L << 20;
    /** Most whole clusters one allocating write takes at once (one child write, one pass of L2 updates). */
    static final int MAX_BATCH = 32;

    // ---- kinds of a mapped run ----
    static final int K_UNALLOC = 0;
    static final int K_ZERO = 1;
    static final int K_DATA = 2;
    static final int K_COMPRESSED = 3;

    // ---- request types ----
    private static final int T_READ = 0;
    private static final int T_WRITE = 1;
    private static final int T_ZERO = 2;
    private static final int T_DISCARD = 3;
    private static final int T_FLUSH = 4;

    // ---- slow (allocating) write states ----
    private static final int S_NONE = 0;
    private static final int S_BEGIN = 1;
    private static final int S_FILL = 2;
    private static final int S_FILL_COMPRESSED = 3;
    private static final int S_WRITE = 4;
    private static final int S_UPDATE = 5;
    /** Read state: the compressed bytes of the current run are in the bounce buffer. */
    private static final int R_COMPRESSED = 10;

    // ================================================================ immutable after open
    private final BlockDriver file;
    private final BlockDriver backing;
    private final boolean readOnly;
    private final Qcow2Options options;
    private final int version;
    private final long size;
    private final int clusterBits;
    private final int clusterSize;
    private final long csMask;
    private final boolean extL2;
    private final int l2Bits;
    private final int l2Entries;
    private final int entryShift;
    private final int l1Shift;
    private final int subBits;
    private final int refcountOrder;
    private final int rbBits;
    private final int rbEntries;
    private final long maxRefcount;
    private final int csizeShift;
    private final long csizeMask;
    private final long l1Size;
    private final long l1Offset;
    /** Granularity of L1/reftable/header writes (a sector or the file's block, at most a cluster). */
    private final int ioUnit;
    private final int headerLength;

    // ================================================================ home thread only
    private IOThread home;
    private boolean closed;
    private boolean corrupt;
    /** Native memory to free at close. */
    private final ArrayList<Long> allocations = new ArrayList<>();
    private final long hdr;
    private final int hdrLen;
    private final long l1;
    private long l1DirtyLo = Long.MAX_VALUE;
    private long l1DirtyHi = -1;
    private long rt;
    private long rtBase;
    private long rtEntries;
    private long reftableOffset;
    private long reftableClusters;
    private long rtDirtyLo = Long.MAX_VALUE;
    private long rtDirtyHi = -1;
    /** The reftable moved (grew): the next writeback writes it whole, then the header. */
    private boolean rtRelocated;
    private final long zeroBuf;
    private final long statusBuf;
    private final Cache l2Cache;
    private final Cache rbCache;
    /** Active L2 tables and refcount blocks, by cluster index (overlap checks). */
    private final LongSet l2Set = new LongSet();
    private final LongSet rbSet = new LongSet();
    /** Fixed metadata ranges (header, L1, reftable, snapshot table, snapshot L1s): start, end, name. */
    private final ArrayList<long[]> ranges = new ArrayList<>();
    private final ArrayList<String> rangeNames = new ArrayList<>();
    private int reftableRange;
    /** Persistent bitmaps loaded at open (directory order); immutable list. */
    private List<DirtyBitmap> bitmaps = List.of();
    /**
     * The image's bitmap directory as it is on disk (writable opens of v3 images; every entry
     * in_use while the node is open), with the extension's offset and size (0 when none).
     */
    private List<Qcow2Bitmaps.Entry> bmDir = List.of();
    private long bmDirOffset;
    private long bmDirSize;

    // ---- set once by the daemon before the node serves (volatile: written on the main loop) ----
    /** The node's bitmaps (BlockNode.dirtyBitmaps): the persistent ones are stored at close. */
    private volatile Supplier<List<DirtyBitmap>> nodeBitmaps;
    private volatile String nodeName = "";
    private long freeClusterIndex;
    private final Inflater inflater = new Inflater(true);
    private long dcKey = -1;
    private final long dcBuf;
    /** The old table while an L2 table shared with a snapshot is copied. */
    private final long cowBuf;

    private int guestInFlight;
    private int metaInFlight;
    private final ArrayList<Runnable> idleWaiters = new ArrayList<>();
    private final ArrayDeque<Req> freeReqs = new ArrayDeque<>();
    private final ArrayList<Req> allReqs = new ArrayList<>();
    /** Requests holding a guest-cluster lock (few: linear scans). */
    private final ArrayList<Req> lockers = new ArrayList<>();
    /** Nesting depth of public submit calls: completions inside them are deferred. */
    private int submitting;
    private final ArrayDeque<Waiter> ready = new ArrayDeque<>();
    private boolean draining;

    // ---- writeback ----
    private boolean wbActive;
    private boolean wbAgain;
    private int wbPhase;
    private int wbPending;
    private int wbErr;
    private boolean wbPhaseWrote;
    private int wbFreeIdx;
    private final Wb wb = new Wb();
    private final ArrayList<Waiter> wbWaiters = new ArrayList<>();
    private ArrayList<Req> flushers = new ArrayList<>();
    private ArrayList<Req> nextFlushers = new ArrayList<>();
    private long[] pendingFrees = new long[64];
    private int pendingFreeCount;
    private long[] wbFrees = new long[64];
    private int wbFreeCount;
    private final ArrayList<Long> punches = new ArrayList<>();
    /** Sticky: once metadata writeback or a child flush failed, every later flush fails. */
    private int flushErrno;

    // ================================================================ probing and opening

    /** True when the file starts with the qcow2 magic (format probing, as QEMU's). Home thread. */
    public static boolean probe(BlockDriver file) throws BlockException {
        if (file.size() < 4) return false;
        byte[] m = readBytes(file, 0, 4);
        return ByteBuffer.wrap(m).getInt() == QCOW_MAGIC;
    }

    /**
     * Reads and checks the header and its extensions; refuses what the driver does not support
     * (encryption, external data files, zstd, unknown incompatible features) with QEMU's wording.
     * Home thread (synchronous: the control plane opens images).
     */
    public static Qcow2Header readHeader(BlockDriver file) throws BlockException {
        try {
            return parse(file).toRecord();
        } catch (RuntimeException e) {
            throw unexpected("reading the header", e);
        }
    }

    /**
     * Failures that are bugs, not bad input (every check is meant to throw BlockException first):
     * counted for tests, logged, and still reported as a BlockException to the caller.
     */
    static final java.util.concurrent.atomic.AtomicInteger UNEXPECTED = new java.util.concurrent.atomic.AtomicInteger();

    private static BlockException unexpected(String what, RuntimeException e) {
        UNEXPECTED.incrementAndGet();
        LOG.error("qcow2: unexpected failure {}", what, e);
        return new BlockException(EIO, "qcow2: malformed image (" + what + "): " + e);
    }

    /**
     * Opens the image: loads and checks L1 and refcount tables and the snapshot table. A dirty
     * image (lazy refcounts, not closed cleanly) opens read-only only: this driver does not
     * repair refcounts yet ({@code qemu-img check -r all} does). Home thread.
     */
    public static Qcow2Driver open(BlockDriver file, Qcow2Header header, BlockDriver backing, Qcow2Options options)
            throws BlockException {
        try {
            return doOpen(file, backing, options);
        } catch (RuntimeException e) {
            throw unexpected("opening", e);
        }
    }

    private static Qcow2Driver doOpen(BlockDriver file, BlockDriver backing, Qcow2Options options) throws BlockException {
        Image h = parse(file);
        boolean ro = options.readOnly();
        if (!ro && file.readOnly()) throw new BlockException(EROFS, "qcow2: the file child is read-only");
        if (!ro) checkCorruptForWrite(h);
        List<Snapshot> snaps = readSnapshots(file, h);
        Qcow2Driver d = new Qcow2Driver(file, backing, h, ro, options);
        try {
            d.load(h, snaps);
            if (!ro && (h.incompat & QCOW2_INCOMPAT_DIRTY) != 0) d.repairDirty(h, snaps);
        } catch (BlockException | RuntimeException e) {
            d.close();
            throw e;
        }
        return d;
    }

    private Qcow2Driver(BlockDriver file, BlockDriver backing, Image h, boolean readOnly, Qcow2Options options) {
        this.file = file;
        this.backing = backing;
        this.readOnly = readOnly;
        this.options = options;
        this.version = h.version;
        this.size = h.size;
        this.clusterBits = h.clusterBits;
        this.clusterSize = h.clusterSize;
        this.csMask = clusterSize - 1L;
        this.extL2 = h.extL2;
        this.entryShift = extL2 ? 4 : 3;
        this.l2Bits = clusterBits - entryShift;
        this.l2Entries = 1 << l2Bits;
        this.l1Shift = clusterBits + l2Bits;
        this.subBits = extL2 ? clusterBits - 5 : clusterBits;
        this.refcountOrder = h.refcountOrder;
        this.rbBits = clusterBits + 3 - refcountOrder;
        this.rbEntries = 1 << rbBits;
        this.maxRefcount = refcountOrder == 6 ? Long.MAX_VALUE : (1L << (1 << refcountOrder)) - 1;
        this.csizeShift = 62 - (clusterBits - 8);
        this.csizeMask = (1L << (clusterBits - 8)) - 1;
        this.l1Size = h.l1Size;
        this.l1Offset = h.l1Offset;
        this.ioUnit = Math.min(clusterSize, Math.max(512, file.preferredBlockSize()));
        this.headerLength = h.headerLength;
        this.hdrLen = h.headerCluster.length;
        this.hdr = alloc(clusterSize);
        for (int i = 0; i < hdrLen; i++) RawMemory.putByte(hdr + i, h.headerCluster[i]);
        long l1Bytes = Math.max(clusterSize, (l1Size * 8 + csMask) & ~csMask);
        this.l1 = alloc(l1Bytes);
        this.zeroBuf = alloc(clusterSize);
        this.statusBuf = alloc(clusterSize);
        this.dcBuf = alloc(clusterSize);
        this.cowBuf = alloc(clusterSize);
        long coverTables = Math.max(1, (size + (1L << l1Shift) - 1) >>> l1Shift);
        long l2Bytes = options.l2CacheSize() > 0 ? options.l2CacheSize()
                : Math.min(32L << 20, coverTables * clusterSize);
        int l2Slots = (int) Math.max(4, Math.min(l2Bytes / clusterSize, 1 << 16));
        long rbBytes = options.refcountCacheSize() > 0 ? options.refcountCacheSize() : 4L * clusterSize;
        int rbSlots = (int) Math.max(4, Math.min(rbBytes / clusterSize, 1 << 16));
        this.l2Cache = new Cache("L2", l2Slots);
        this.rbCache = new Cache("refcount", rbSlots);
    }

    private long alloc(long bytes) {
        long base = NativeAlloc.allocate(bytes, ALIGN);
        allocations.add(base);
        long a = NativeAlloc.aligned(base, ALIGN);
        RawMemory.fill(a, bytes, 0);
        return a;
    }

    private void load(Image h, List<Snapshot> snaps) throws BlockException {
        if (l1Size > 0) file.read(l1Offset, l1, (int) (l1Size * 8));
        reftableOffset = h.reftableOffset;
        reftableClusters = h.reftableClusters;
        rtEntries = (reftableClusters << clusterBits) / 8;
        rtBase = NativeAlloc.allocate(reftableClusters << clusterBits, ALIGN);
        rt = NativeAlloc.aligned(rtBase, ALIGN);
        file.read(reftableOffset, rt, (int) (reftableClusters << clusterBits));
        addRange("qcow2 header", 0, clusterSize);
        if (l1Size > 0) addRange("active L1 table", l1Offset, l1Offset + l1Size * 8);
        reftableRange = ranges.size();
        addRange("refcount table", reftableOffset, reftableOffset + (reftableClusters << clusterBits));
        if (h.nbSnapshots > 0) {
            addRange("snapshot table", h.snapshotsOffset, snapshotTableEnd(h));
        }
        for (int i = 0; i < snaps.size(); i++) {
            Snapshot s = snaps.get(i);
            if (s.l1Size() > 0) addRange("inactive L1 table (snapshot " + i + ")", s.l1Offset(), s.l1Offset() + s.l1Size() * 8);
        }
        // Fixed structures may not overlap each other (inactive L1 tables may share nothing either).
        for (int i = 0; i < ranges.size(); i++) {
            for (int j = i + 1; j < ranges.size(); j++) {
                long[] a = ranges.get(i);
                long[] b = ranges.get(j);
                if (clusterOf(a[0]) <= clusterOf(b[1] - 1) && clusterOf(b[0]) <= clusterOf(a[1] - 1)) {
                    throw invalid(rangeNames.get(i) + " overlaps " + rangeNames.get(j));
                }
            }
        }
        for (long i = 0; i < l1Size; i++) {
            long e = be64(l1 + i * 8) & L1E_OFFSET_MASK;
            if (e == 0) continue;
            String what = rangeAt(e, clusterSize);
            if (what != null) throw invalid("L2 table (L1 index " + i + ") overlaps " + what);
            l2Set.add(e >>> clusterBits);
        }
        for (long i = 0; i < rtEntries; i++) {
            long e = be64(rt + i * 8) & REFT_OFFSET_MASK;
            if (e == 0) continue;
            String what = rangeAt(e, clusterSize);
            if (what != null) throw invalid("refcount block (reftable index " + i + ") overlaps " + what);
            if (l2Set.contains(e >>> clusterBits)) throw invalid("refcount block (reftable index " + i + ") overlaps an L2 table");
            rbSet.add(e >>> clusterBits);
        }
        if (h.hasBitmaps && h.nbBitmaps == 0) {
            LOG.warn("qcow2: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent");
        }
        List<Qcow2Bitmaps.Entry> entries = new ArrayList<>();
        bitmaps = List.copyOf(Qcow2Bitmaps.load(file, h, (off, len) -> {
            String what = rangeAt(off, len);
            for (long c = clusterOf(off), end = clusterOf(off + len - 1); what == null && c <= end; c++) {
                if (l2Set.contains(c)) what = "an L2 table";
                else if (rbSet.contains(c)) what = "a refcount block";
            }
            return what;
        }, entries));
        if (!readOnly && h.version == 3) openBitmapsForWrite(h, entries);
    }

    /**
     * A dirty image (lazy refcounts, not closed cleanly) opened writable: recounts every
     * reference (header, L1 tables, L2 tables and their clusters for the active layer and each
     * snapshot, the refcount structures, the snapshot table), rewrites the refcounts that differ,
     * then clears the dirty bit, as QEMU does on open. Images whose repair would need new
     * refcount blocks, or that carry bitmaps, are refused with a pointer to qemu-img check.
     */
    private void repairDirty(Image h, List<Snapshot> snaps) throws BlockException {
        String refuse = "qcow2: the image is dirty and ";
        String hint = "; repair it with 'qemu-img check -r all' or open it read-only";
        if (h.hasBitmaps) throw new BlockException(ENOTSUP, refuse + "has persistent bitmaps" + hint);
        long fileClusters = (file.size() + csMask) >>> clusterBits;
        if (fileClusters > (64L << 20)) throw new BlockException(ENOTSUP, refuse + "too large to recount in memory" + hint);
        long[] count = new long[(int) fileClusters + 1];
        RefCounter rc = new RefCounter(count, fileClusters);
        rc.range(0, clusterSize);
        rc.range(l1Offset, l1Size * 8);
        rc.range(reftableOffset, reftableClusters << clusterBits);
        if (h.nbSnapshots > 0) rc.range(h.snapshotsOffset, snapshotTableEnd(h) - h.snapshotsOffset);
        countL1(rc, l1, l1Size);
        for (Snapshot s : snaps) {
            if (s.l1Size() == 0) continue;
            rc.range(s.l1Offset(), s.l1Size() * 8);
            long bytes = (s.l1Size() * 8 + csMask) & ~csMask;
            long buf = alloc(bytes);
            file.read(s.l1Offset(), buf, (int) (s.l1Size() * 8));
            countL1(rc, buf, s.l1Size());
        }
        for (long i = 0; i < rtEntries; i++) {
            long off = rbOffset(i);
            if (off != 0) rc.range(off, clusterSize);
        }
        int fixed = 0;
        for (long c = 0; c < count.length; c++) {
            long rbi = c >>> rbBits;
            long rbOff = rbi < rtEntries ? rbOffset(rbi) : 0;
            if (rbOff == 0) {
                if (count[(int) c] != 0) throw new BlockException(ENOTSUP, refuse + "needs new refcount blocks" + hint);
                continue;
            }
            if (count[(int) c] > maxRefcount) throw new BlockException(ENOTSUP, refuse + "has a refcount above the maximum" + hint);
            Table t = rbCache.getSync(rbOff);
            int i = (int) (c & (rbEntries - 1));
            if (getRc(t.addr, i) != count[(int) c]) {
                setRc(t.addr, i, count[(int) c]);
                t.dirty = true;
                fixed++;
            }
        }
        // Clusters past the end of the file that still have a refcount: leaked, drop them.
        for (long rbi = 0; rbi < rtEntries; rbi++) {
            if (((rbi + 1) << rbBits) <= count.length) continue;
            long rbOff = rbOffset(rbi);
            if (rbOff == 0) continue;
            for (int i = 0; i < rbEntries; i++) {
                long c = (rbi << rbBits) | i;
                if (c < count.length) continue;
                Table t = rbCache.getSync(rbOff);
                if (getRc(t.addr, i) != 0) {
                    setRc(t.addr, i, 0);
                    t.dirty = true;
                    fixed++;
                }
            }
        }
        flush();
        putBe64(hdr + HDR_INCOMPATIBLE_FEATURES, be64(hdr + HDR_INCOMPATIBLE_FEATURES) & ~QCOW2_INCOMPAT_DIRTY);
        file.write(0, hdr, headerWriteLen(), false);
        file.flush();
        LOG.info("qcow2: repaired the refcounts of a dirty image ({} corrected)", fixed);
    }

    /** Counts references while recounting a dirty image; rejects anything outside the file. */
    private final class RefCounter {
        final long[] count;
        final long clusters;

        RefCounter(long[] count, long clusters) {
            this.count = count;
            this.clusters = clusters;
        }

        void range(long off, long len) throws BlockException {
            if (len <= 0) return;
            long c0 = off >>> clusterBits;
            long c1 = (off + len - 1) >>> clusterBits;
            if (off < 0 || c1 >= clusters + 1) throw invalid("reference to host offset " + off + " beyond the end of the file");
            for (long c = c0; c <= c1; c++) count[(int) c]++;
        }
    }

    private void countL1(RefCounter rc, long table, long entries) throws BlockException {
        for (long i = 0; i < entries; i++) {
            long l2off = l2Offset(i, be64(table + i * 8));
            if (l2off == 0) continue;
            rc.range(l2off, clusterSize);
            file.read(l2off, statusBuf, clusterSize);
            for (int j = 0; j < l2Entries; j++) {
                long e = l2e(statusBuf, j);
                if ((e & QCOW_OFLAG_COMPRESSED) != 0) {
                    long coff = e & ((1L << csizeShift) - 1);
                    long nb = ((e >>> csizeShift) & csizeMask) + 1;
                    rc.range(coff & ~511L, nb * 512);
                } else {
                    long ho = checkStandard(e, 0);
                    if (ho != 0) rc.range(ho, clusterSize);
                }
            }
        }
    }

    private long snapshotTableEnd(Image h) throws BlockException {
        long pos = h.snapshotsOffset;
        for (long i = 0; i < h.nbSnapshots; i++) {
            byte[] e = readBytes(file, pos, SNAPSHOT_ENTRY_FIXED);
            ByteBuffer b = ByteBuffer.wrap(e);
            pos += SNAPSHOT_ENTRY_FIXED + Integer.toUnsignedLong(b.getInt(36)) + (b.getShort(12) & 0xFFFF) + (b.getShort(14) & 0xFFFF);
            pos = (pos + 7) & ~7L;
        }
        return pos;
    }

    private void addRange(String name, long start, long end) {
        ranges.add(new long[] {start, end});
        rangeNames.add(name);
    }

    private long clusterOf(long off) { return off >>> clusterBits; }

    /** The fixed structure overlapping the clusters of {@code [off, off+len)}, or null. */
    private String rangeAt(long off, long len) {
        long c0 = clusterOf(off);
        long c1 = clusterOf(off + len - 1);
        for (int i = 0; i < ranges.size(); i++) {
            long[] r = ranges.get(i);
            if (r[1] <= r[0]) continue;
            if (c0 <= clusterOf(r[1] - 1) && clusterOf(r[0]) <= c1) return rangeNames.get(i);
        }
        return null;
    }

    /** QEMU's "cached" overlap check before a data write to host clusters {@code [off, off+len)}. */
    private void checkDataWrite(long off, long len) throws BlockException {
        for (long c = clusterOf(off), end = clusterOf(off + len - 1); c <= end; c++) {
            String what = rangeAt(c << clusterBits, clusterSize);
            if (what == null && l2Set.contains(c)) what = "active L2 table";
            if (what == null && rbSet.contains(c)) what = "refcount block";
            if (what != null) {
                throw corruption("Preventing invalid write on metadata (overlaps with " + what + ") at host offset " + (c << clusterBits));
            }
        }
    }

    // ================================================================ contract basics

    @Override public long size() { return size; }

    @Override public boolean readOnly() { return readOnly; }

    /**
     * The image's persistent dirty bitmaps, loaded at open in directory order (an in_use bitmap is
     * {@code inconsistent} and empty). The list is immutable; the bitmaps belong to the node's
     * home thread (see {@link DirtyBitmap}).
     */
    public List<DirtyBitmap> bitmaps() { return bitmaps; }

    /** True once a run-time inconsistency was found (or the image came with the corrupt bit). */
    public boolean corrupt() { return corrupt; }

    @Override public int memoryAlignment() { return file.memoryAlignment(); }

    @Override public int preferredBlockSize() { return file.preferredBlockSize(); }

    @Override public int sendfileFd() { return -1; }

    @Override public int inFlight() { return guestInFlight + metaInFlight + (wbActive ? 1 : 0); }

    @Override
    public void whenIdle(Runnable idle) {
        if (inFlight() == 0) idle.run(); else idleWaiters.add(idle);
    }

    private void checkIdle() {
        if (inFlight() == 0 && !idleWaiters.isEmpty()) {
            List<Runnable> w = List.copyOf(idleWaiters);
            idleWaiters.clear();
            w.forEach(Runnable::run);
        }
    }

    @Override
    public void attach(IOThread newHome) {
        if (inFlight() != 0) throw new IllegalStateException("qcow2: attached to " + newHome.id() + " with requests in flight");
        home = newHome;
    }

    private static BlockException syncUnsupported() {
        return new BlockException(ENOTSUP, "qcow2 nodes serve asynchronous requests only");
    }

    @Override public void read(long o, long a, int l) throws BlockException { throw syncUnsupported(); }
    @Override public void write(long o, long a, int l, boolean fua) throws BlockException { throw syncUnsupported(); }
    @Override public void readv(long o, long iov, int n, long t) throws BlockException { throw syncUnsupported(); }
    @Override public void writev(long o, long iov, int n, long t, boolean fua) throws BlockException { throw syncUnsupported(); }
    @Override public void discard(long o, long l) throws BlockException { throw syncUnsupported(); }
    @Override public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua) throws BlockException { throw syncUnsupported(); }

    @Override
    public void prefetch(long offset, long length) throws BlockException {
        checkRange(offset, length);
    }

    private void checkOpen() throws BlockException {
        if (closed) throw new BlockException(EIO, "qcow2: node is closed");
    }

    private void checkRange(long offset, long length) throws BlockException {
        checkOpen();
        if (offset < 0 || length < 0 || offset > size - length) {
            throw new BlockException(EINVAL, "request at " + offset + " (+" + length + ") outside image of size " + size);
        }
    }

    private void checkWritable() throws BlockException {
        if (readOnly) throw new BlockException(EROFS, "qcow2: image is read-only");
        if (corrupt) throw new BlockException(EIO, "qcow2: image is marked corrupt; writes are refused");
    }

    private static void checkIovecs(long iov, int n, long total) throws BlockException {
        if (n < 0 || n > IOV_MAX) throw new BlockException(EINVAL, "iovec count " + n + " out of range");
        long sum = 0;
        for (int i = 0; i < n; i++) {
            long len = RawMemory.getLe64(iov + (long) i * IOVEC + 8);
            if (len < 0) throw new BlockException(EINVAL, "iovec length overflow");
            sum += len;
            if (sum < 0) throw new BlockException(EINVAL, "iovec length overflow");
        }
        if (sum != total) throw new BlockException(EINVAL, "iovec lengths add up to " + sum + ", not " + total);
    }

    // ================================================================ asynchronous entry points

    @Override
    public void read(long offset, long address, int length, IoCompletion done) throws BlockException {
        checkRange(offset, length);
        Req r = take(T_READ, offset, length, done, 1);
        r.single(address, length);
        submit(r);
    }

    @Override
    public void readv(long offset, long iovAddress, int iovcnt, long totalLength, IoCompletion done) throws BlockException {
        checkRange(offset, totalLength);
        checkIovecs(iovAddress, iovcnt, totalLength);
        Req r = take(T_READ, offset, totalLength, done, iovcnt);
        r.iov = iovAddress;
        r.iovcnt = iovcnt;
        submit(r);
    }

    @Override
    public void write(long offset, long address, int length, boolean fua, IoCompletion done) throws BlockException {
        checkRange(offset, length);
        checkWritable();
        Req r = take(T_WRITE, offset, length, done, 1);
        r.single(address, length);
        r.fua = fua;
        submit(r);
    }

    @Override
    public void writev(long offset, long iovAddress, int iovcnt, long totalLength, boolean fua, IoCompletion done)
            throws BlockException {
        checkRange(offset, totalLength);
        checkWritable();
        checkIovecs(iovAddress, iovcnt, totalLength);
        Req r = take(T_WRITE, offset, totalLength, done, iovcnt);
        r.iov = iovAddress;
        r.iovcnt = iovcnt;
        r.fua = fua;
        submit(r);
    }

    @Override
    public void writeZeroes(long offset, long length, boolean mayUnmap, boolean fastOnly, boolean fua, IoCompletion done)
            throws BlockException {
        checkRange(offset, length);
        checkWritable();
        if (fastOnly) {
            boolean aligned = (offset & csMask) == 0 && ((length & csMask) == 0 || offset + length == size);
            if (!aligned || (version < 3 && backing != null)) {
                throw new BlockException(ENOTSUP, "qcow2: fast zeroing needs whole clusters (and a version 3 image with a backing file)");
            }
        }
        Req r = take(T_ZERO, offset, length, done, 0);
        r.mayUnmap = mayUnmap;
        r.fua = fua;
        submit(r);
    }

    @Override
    public void discard(long offset, long length, IoCompletion done) throws BlockException {
        checkRange(offset, length);
        checkWritable();
        Req r = take(T_DISCARD, offset, length, done, 0);
        r.mayUnmap = true;
        submit(r);
    }

    @Override
    public void flush(IoCompletion done) throws BlockException {
        checkOpen();
        Req r = take(T_FLUSH, 0, 0, done, 0);
        submitting++;
        try {
            if (readOnly) {
                finish(r, 0);
            } else {
                nextFlushers.add(r);
                startWriteback();
            }
        } finally {
            submitting--;
        }
    }

    private Req take(int type, long offset, long length, IoCompletion done, int iovcnt) throws BlockException {
        if (home == null) throw new BlockException(EIO, "qcow2: node is not attached to an IOThread");
        assert home.inThread() : "qcow2 request submitted off its home IOThread";
        Req r = freeReqs.poll();
        if (r == null) {
            r = new Req();
            allReqs.add(r);
        }
        r.type = type;
        r.offset = offset;
        r.length = length;
        r.done = done;
        r.pos = 0;
        r.state = S_NONE;
        r.pending = 0;
        r.err = 0;
        r.fua = false;
        r.fuaDone = false;
        r.mayUnmap = false;
        r.lockCluster = -1;
        r.sCount = 1;
        r.ensureScratch(Math.max(iovcnt, 1) + 2);
        guestInFlight++;
        return r;
    }

    private void submit(Req r) {
        submitting++;
        try {
            r.resume();
        } finally {
            submitting--;
        }
    }

    /** Completes a request: its completion runs now, or as a task when still inside the submitting call. */
    private void finish(Req r, int err) {
        if (r.lockCluster >= 0) unlock(r);
        unpin(r);
        if (err == 0 && r.fua && !r.fuaDone) {
            r.fuaDone = true; // FUA: the request completes with the next writeback's flush
            nextFlushers.add(r);
            startWriteback();
            return;
        }
        IoCompletion done = r.done;
        r.done = null;
        freeReqs.add(r);
        if (submitting > 0) {
            home.execute(() -> {
                guestInFlight--;
                try {
                    done.ioDone(err);
                } finally {
                    checkIdle();
                }
            });
        } else {
            guestInFlight--;
            try {
                done.ioDone(err);
            } finally {
                checkIdle();
            }
        }
    }

    /** Runs parked waiters iteratively (no deep recursion through chains of wake-ups). */
    private void wake(Waiter w) {
        ready.add(w);
        if (draining) return;
        draining = true;
        try {
            Waiter x;
            while ((x = ready.poll()) != null) x.resume();
        } finally {
            draining = false;
        }
    }

    private void wakeAll(List<? extends Waiter> list) {
        if (list.isEmpty()) return;
        List<Waiter> copy = new ArrayList<>(list);
        list.clear();
        for (Waiter w : copy) wake(w);
    }

    // ================================================================ request state machines

    /** Something that can park on a table load, a cluster lock or the writeback. */
    interface Waiter {
        void resume();

        void fail(int errno);
    }

    /** The result of mapping a guest range. */
    static class Mapping {
        int kind;
        /** Host offset of the first byte (K_DATA), or the L2 entry (K_COMPRESSED). */
        long host;
        long runLen;
    }

    /** One guest request (pooled). */
    final class Req extends Mapping implements Waiter {
        int type;
        long offset;
        long length;
        long iov;
        int iovcnt;
        boolean fua;
        boolean fuaDone;
        boolean mayUnmap;
        IoCompletion done;
        long pos;
        int state;
        int pending;
        int err;
        long scratch;
        int scratchCap;
        private long scratchBase;
        long bounce;
        long cbuf;
        // allocating write of one cluster
        long lockCluster = -1;
        /** A lock-free data transfer at a mapped host offset is in the kernel (see {@link #startMapped}). */
        boolean mapped;
        long mappedEpoch;
        /** The L2 table this request holds across parks (slow path), or null. */
        Table pinned;
        final ArrayList<Waiter> lockWaiters = new ArrayList<>(2);
        long sG;
        int sLen;
        int sA;
        int sB;
        int sFrom;
        int sTo;
        long sHost;
        boolean sNew;
        long sOldE;
        long sOldBm;
        /** Clusters allocated together (whole clusters of one request, contiguous on the host), locked together. */
        int sCount = 1;
        final long[] bOldE = new long[MAX_BATCH];
        final long[] bOldBm = new long[MAX_BATCH];
        final IoCompletion ioDone = this::onIo;

        void ensureScratch(int entries) {
            if (scratchCap >= entries) return;
            if (scratchBase != 0) RawMemory.free(scratchBase);
            scratchBase = RawMemory.allocate((long) (entries + 1) * IOVEC);
            scratch = scratchBase;
            scratchCap = entries;
        }

        /** A single buffer request: its one iovec is the last scratch entry. */
        void single(long address, long len) {
            iov = scratch + (long) scratchCap * IOVEC;
            RawMemory.putLe64(iov, address);
            RawMemory.putLe64(iov + 8, len);
            iovcnt = 1;
        }

        void ensureBounce() {
            if (bounce == 0) bounce = alloc(clusterSize);
        }

        void ensureCbuf() {
            if (cbuf == 0) cbuf = alloc(2L * clusterSize + 512);
        }

        void onIo(int errno) {
            if (mapped) endMapped(this);
            if (errno != 0 && err == 0) err = errno;
            if (--pending > 0) return;
            if (err != 0) {
                finish(this, err);
            } else {
                wake(this);
            }
        }

        @Override
        public void resume() {
            try {
                switch (type) {
                    case T_READ -> stepRead(this);
                    default -> stepWrite(this);
                }
            } catch (BlockException e) {
                finish(this, e.errno());
            } catch (RuntimeException e) {
                unexpected("serving a request at " + offset + " (+" + length + ")", e);
                finish(this, EIO);
            }
        }

        @Override
        public void fail(int errno) { finish(this, errno); }

        void free() {
            if (scratchBase != 0) RawMemory.free(scratchBase);
            scratchBase = 0;
        }
    }

    // ---- iovec helpers (the caller's iovecs were checked at submit) ----

    /** Writes iovecs for bytes {@code [skip, skip+len)} of the request into scratch from entry {@code at}; returns the count. */
    private int slice(Req r, long skip, long len, int at) {
        if (r.type == T_ZERO) { // zero writes take their data from the zero cluster (len <= cluster)
            RawMemory.putLe64(r.scratch + (long) at * IOVEC, zeroBuf);
            RawMemory.putLe64(r.scratch + (long) at * IOVEC + 8, len);
            return 1;
        }
        int n = 0;
        for (int i = 0; i < r.iovcnt && len > 0; i++) {
            long base = RawMemory.getLe64(r.iov + (long) i * IOVEC);
            long l = RawMemory.getLe64(r.iov + (long) i * IOVEC + 8);
            if (skip >= l) {
                skip -= l;
                continue;
            }
            long take = Math.min(l - skip, len);
            long e = r.scratch + (long) (at + n) * IOVEC;
            RawMemory.putLe64(e, base + skip);
            RawMemory.putLe64(e + 8, take);
            n++;
            len -= take;
            skip = 0;
        }
        return n;
    }

    /** Copies {@code len} bytes from {@code src} (or zeros when src is 0) into request bytes {@code [skip, skip+len)}. */
    private static void copyOut(Req r, long skip, long len, long src) {
        for (int i = 0; i < r.iovcnt && len > 0; i++) {
            long base = RawMemory.getLe64(r.iov + (long) i * IOVEC);
            long l = RawMemory.getLe64(r.iov + (long) i * IOVEC + 8);
            if (skip >= l) {
                skip -= l;
                continue;
            }
            long take = Math.min(l - skip, len);
            if (src == 0) {
                RawMemory.fill(base + skip, take, 0);
            } else {
                RawMemory.copy(src, base + skip, take);
                src += take;
            }
            len -= take;
            skip = 0;
        }
    }

    /** Copies request bytes {@code [skip, skip+len)} (its iovecs, or zeros for zero writes) to {@code dst}. */
    private void copyIn(Req r, long skip, long len, long dst) {
        if (r.type == T_ZERO) {
            RawMemory.fill(dst, len, 0);
            return;
        }
        for (int i = 0; i < r.iovcnt && len > 0; i++) {
            long base = RawMemory.getLe64(r.iov + (long) i * IOVEC);
            long l = RawMemory.getLe64(r.iov + (long) i * IOVEC + 8);
            if (skip >= l) {
                skip -= l;
                continue;
            }
            long take = Math.min(l - skip, len);
            RawMemory.copy(base + skip, dst, take);
            dst += take;
            len -= take;
            skip = 0;
        }
    }

    // ---- read ----

    private void stepRead(Req r) throws BlockException {
        for (;;) {
            if (r.state == R_COMPRESSED) {
                r.state = S_NONE;
                long e = r.host;
                inflateCluster(e, r.cbuf, r.bounce);
                long g = r.offset + r.pos;
                copyOut(r, r.pos, r.runLen, r.bounce + (g & csMask));
                r.pos += r.runLen;
            }
            if (r.pos >= r.length) {
                finish(r, 0);
                return;
            }
            long g = r.offset + r.pos;
            if (!map(r, r, g, r.length - r.pos, false)) return;
            long len = r.runLen;
            switch (r.kind) {
                case K_ZERO -> {
                    copyOut(r, r.pos, len, 0);
                    r.pos += len;
                }
                case K_UNALLOC -> {
                    long part = backingPart(g, len);
                    if (part < len) copyOut(r, r.pos + part, len - part, 0);
                    if (part == 0) {
                        r.pos += len;
                        continue;
                    }
                    int n = slice(r, r.pos, part, 0);
                    r.pos += len;
                    r.pending = 1;
                    backing.readv(g, r.scratch, n, part, r.ioDone);
                    return;
                }
                case K_DATA -> {
                    checkInsideFile(r.host, len);
                    int n = slice(r, r.pos, len, 0);
                    r.pos += len;
                    r.pending = 1;
                    file.readv(r.host, r.scratch, n, len, r.ioDone);
                    startMapped(r);
                    return;
                }
                default -> { // compressed: one cluster at most
                    r.ensureBounce();
                    if (r.host == dcKey) {
                        copyOut(r, r.pos, len, dcBuf + (g & csMask));
                        r.pos += len;
                        continue;
                    }
                    r.ensureCbuf();
                    r.state = R_COMPRESSED;
                    readCompressed(r, r.host);
                    return;
                }
            }
        }
    }

    /** Bytes of {@code [g, g+len)} the backing file covers (0 without backing). */
    private long backingPart(long g, long len) {
        if (backing == null) return 0;
        long bs = backing.size();
        return g >= bs ? 0 : Math.min(len, bs - g);
    }

    private void checkInsideFile(long host, long len) throws BlockException {
        if (host + len > file.size()) {
            throw new BlockException(EIO, "qcow2: data cluster at host offset " + host + " lies beyond the end of the image file ("
                    + file.size() + " bytes)");
        }
    }

    /** Starts reading the compressed bytes of L2 entry {@code e} into {@code r.cbuf}. */
    private void readCompressed(Req r, long e) throws BlockException {
        long coff = e & ((1L << csizeShift) - 1);
        long nbSectors = ((e >>> csizeShift) & csizeMask) + 1;
        long start = coff & ~511L;
        long len = nbSectors * 512;
        long fs = file.size();
        if (start >= fs) throw new BlockException(EIO, "qcow2: compressed cluster at host offset " + coff + " lies beyond the end of the image file");
        len = Math.min(len, fs - start);
        r.pending = 1;
        file.read(start, r.cbuf, (int) len, r.ioDone);
    }

    /** Inflates the compressed cluster of entry {@code e} (its bytes read to {@code cbuf}) into {@code out}. */
    private void inflateCluster(long e, long cbuf, long out) throws BlockException {
        long coff = e & ((1L << csizeShift) - 1);
        long nbSectors = ((e >>> csizeShift) & csizeMask) + 1;
        long start = coff & ~511L;
        long avail = Math.min(nbSectors * 512, file.size() - start) - (coff & 511);
        if (avail <= 0) throw new BlockException(EIO, "qcow2: compressed cluster at host offset " + coff + " is empty");
        inflater.reset();
        ByteBuffer in = new Pointer(cbuf + (coff & 511)).getByteBuffer(0, avail);
        ByteBuffer dst = new Pointer(out).getByteBuffer(0, clusterSize);
        inflater.setInput(in);
        try {
            while (dst.hasRemaining()) {
                if (inflater.inflate(dst) == 0 && (inflater.finished() || inflater.needsInput() || inflater.needsDictionary())) break;
            }
        } catch (DataFormatException ex) {
            throw new BlockException(EIO, "qcow2: compressed cluster at host offset " + coff + " is not valid deflate data: " + ex.getMessage());
        }
        if (dst.hasRemaining()) {
            throw new BlockException(EIO, "qcow2: compressed cluster at host offset " + coff + " does not inflate to a whole cluster");
        }
        RawMemory.copy(out, dcBuf, clusterSize);
        dcKey = e;
    }

    // ---- mapping ----

    private long l1Entry(long i) { return be64(l1 + i * 8); }

    private void setL1(long i, long v) {
        putBe64(l1 + i * 8, v);
        long u = i * 8 / ioUnit;
        l1DirtyLo = Math.min(l1DirtyLo, u);
        l1DirtyHi = Math.max(l1DirtyHi, u + 1);
    }

    private long l2e(long t, int idx) { return be64(t + ((long) idx << entryShift)); }

    private long l2bm(long t, int idx) { return extL2 ? be64(t + ((long) idx << entryShift) + 8) : 0; }

    private void setL2(long t, int idx, long e, long bm) {
        putBe64(t + ((long) idx << entryShift), e);
        if (extL2) putBe64(t + ((long) idx << entryShift) + 8, bm);
    }

    /** The L2 table offset of an L1 entry, checked (0 for none). */
    private long l2Offset(long l1i, long e1) throws BlockException {
        long off = e1 & L1E_OFFSET_MASK;
        if (off == 0) return 0;
        if ((e1 & L1E_RESERVED_MASK) != 0 || (off & csMask) != 0) {
            throw corruption("L2 table offset " + Long.toHexString(off) + " unaligned or reserved bits set (L1 index " + l1i + ")");
        }
        if (off + clusterSize > file.size()) {
            throw corruption("L2 table offset " + off + " beyond the end of the image file (L1 index " + l1i + ")");
        }
        String what = rangeAt(off, clusterSize);
        if (what != null) throw corruption("L2 table (L1 index " + l1i + ") at " + off + " overlaps " + what);
        return off;
    }

    /** The table's address: cached, or (sync) read now. 0 when parked. */
    private long l2Table(Waiter w, long off, boolean sync) throws BlockException {
        Table t = l2Cache.lookup(off);
        if (t != null && !t.loading) {
            t.lastUse = ++l2Cache.clock;
            if (!sync) t.fresh = false;
            return t.addr;
        }
        if (sync) {
            file.read(off, statusBuf, clusterSize); // status: no parking, no cache slot needed
            return statusBuf;
        }
        t = l2Cache.get(off, w, false);
        return t == null ? 0 : t.addr;
    }

    /**
     * Maps {@code [g, g+max)} to its first run of one kind (stops at the end of the L2 table).
     * Returns false when {@code w} was parked on an L2 load.
     */
    private boolean map(Waiter w, Mapping m, long g, long max, boolean sync) throws BlockException {
        long l1i = g >>> l1Shift;
        long inL2 = (1L << l1Shift) - (g & ((1L << l1Shift) - 1));
        long end = g + Math.min(max, inL2);
        if (l1i >= l1Size) {
            m.kind = K_UNALLOC;
            m.runLen = end - g;
            return true;
        }
        long l2off = l2Offset(l1i, l1Entry(l1i));
        if (l2off == 0) {
            m.kind = K_UNALLOC;
            m.runLen = end - g;
            return true;
        }
        long t = l2Table(w, l2off, sync);
        if (t == 0) return false;
        long pos = g;
        int kind = -1;
        long host0 = 0;
        long expect = 0;
        long unitMask = (1L << subBits) - 1;
        while (pos < end) {
            int idx = (int) ((pos >>> clusterBits) & (l2Entries - 1));
            long e = l2e(t, idx);
            long bm = l2bm(t, idx);
            int k;
            long h = 0;
            long step;
            if ((e & QCOW_OFLAG_COMPRESSED) != 0) {
                checkCompressed(e, bm, pos);
                k = K_COMPRESSED;
                h = e;
                step = Math.min(end - pos, clusterSize - (pos & csMask));
            } else {
                long ho = checkStandard(e, pos);
                if (extL2) {
                    int sc = (int) ((pos >>> subBits) & 31);
                    boolean a = ((bm >>> sc) & 1) != 0;
                    boolean z = ((bm >>> (32 + sc)) & 1) != 0;
                    if (a && z) throw corruption("subcluster " + sc + " of the cluster at guest offset " + (pos & ~csMask) + " is both allocated and zero");
                    if (ho == 0 && (bm & 0xFFFFFFFFL) != 0) throw corruption("allocated subclusters without a host cluster at guest offset " + (pos & ~csMask));
                    k = a ? K_DATA : z ? K_ZERO : K_UNALLOC;
                    h = ho + (pos & csMask);
                    step = Math.min(end - pos, (1L << subBits) - (pos & unitMask));
                } else {
                    if ((e & QCOW_OFLAG_ZERO) != 0) {
                        if (version < 3) throw corruption("zero cluster flag in a version 2 image at guest offset " + (pos & ~csMask));
                        k = K_ZERO;
                    } else {
                        k = ho != 0 ? K_DATA : K_UNALLOC;
                    }
                    h = ho + (pos & csMask);
                    step = Math.min(end - pos, clusterSize - (pos & csMask));
                }
            }
            if (kind < 0) {
                kind = k;
                host0 = h;
            } else if (k != kind || k == K_COMPRESSED || (k == K_DATA && h != expect)) {
                break;
            }
            pos += step;
            expect = h + step;
            if (k == K_COMPRESSED) break;
        }
        m.kind = kind;
        m.host = host0;
        m.runLen = pos - g;
        return true;
    }

    /** Checks a standard L2 entry; returns its host cluster offset. */
    private long checkStandard(long e, long guest) throws BlockException {
        long ho = e & L2E_OFFSET_MASK;
        if ((e & L2E_STD_RESERVED_MASK) != 0 || (ho & csMask) != 0 || (extL2 && (e & QCOW_OFLAG_ZERO) != 0)) {
            throw corruption("Cluster allocation offset " + Long.toHexString(ho) + " unaligned or reserved bits set (L2 entry "
                    + Long.toHexString(e) + " for guest offset " + (guest & ~csMask) + ")");
        }
        return ho;
    }

    private void checkCompressed(long e, long bm, long guest) throws BlockException {
        long coff = e & ((1L << csizeShift) - 1);
        if (coff >= MAX_HOST_OFFSET || (extL2 && bm != 0) || (e & QCOW_OFLAG_COPIED) != 0) {
            throw corruption("invalid compressed cluster descriptor " + Long.toHexString(e) + " for guest offset " + (guest & ~csMask));
        }
    }

    // ---- write, zero, discard ----

    private void stepWrite(Req r) throws BlockException {
        for (;;) {
            if (corrupt) throw new BlockException(EIO, "qcow2: image is marked corrupt; writes are refused");
            if (r.state != S_NONE) {
                if (!slow(r)) return;
                continue;
            }
            if (r.pos >= r.length) {
                finish(r, 0);
                return;
            }
            long g = r.offset + r.pos;
            int len = (int) Math.min(r.length - r.pos, clusterSize - (g & csMask));
            if (r.type != T_WRITE) {
                boolean full = (g & csMask) == 0 && (len == clusterSize || g + len == size);
                if (full) {
                    int res = zeroCluster(r, g);
                    if (res < 0) return;
                    if (res == 0) {
                        r.pos += len;
                        continue;
                    }
                } else if (r.type == T_DISCARD) {
                    r.pos += len; // advisory: partial clusters keep their data
                    continue;
                }
            }
            int res = fastWrite(r, g, r.type == T_WRITE ? r.length - r.pos : len);
            if (res != 0) return;
            r.state = S_BEGIN;
            r.sG = g;
            r.sLen = len;
        }
    }

    private Req lockHolder(long gc) {
        for (int i = 0; i < lockers.size(); i++) {
            Req h = lockers.get(i);
            if (gc >= h.lockCluster && gc < h.lockCluster + h.sCount) return h;
        }
        return null;
    }

    /** Takes the lock of guest cluster {@code gc}, or parks {@code r} on its holder. */
    private boolean lock(Req r, long gc) {
        if (r.lockCluster == gc) return true;
        Req h = lockHolder(gc);
        if (h != null) {
            h.lockWaiters.add(r);
            return false;
        }
        r.lockCluster = gc;
        lockers.add(r);
        return true;
    }

    /** Pins the cached table at {@code off} for {@code r} (one at a time). */
    private void pin(Req r, long off) {
        Table t = l2Cache.lookup(off);
        if (t == r.pinned) return;
        unpin(r);
        if (t != null) {
            t.pins++;
            r.pinned = t;
        }
    }

    private static void unpin(Req r) {
        if (r.pinned != null) {
            r.pinned.pins--;
            r.pinned = null;
        }
    }

    private void unlock(Req r) {
        unpin(r);
        lockers.remove(r);
        r.lockCluster = -1;
        r.sCount = 1;
        wakeAll(r.lockWaiters);
    }

    /**
     * In-place write of a run of clusters that are allocated, COPIED (refcount 1) and fully
     * allocated in the touched subclusters. Returns 1 when the write was issued, -1 when parked,
     * 0 when the first cluster needs the allocating path.
     */
    private int fastWrite(Req r, long g, long max) throws BlockException {
        long l1i = g >>> l1Shift;
        if (l1i >= l1Size) return 0;
        long e1 = l1Entry(l1i);
        long l2off = l2Offset(l1i, e1);
        if (l2off == 0 || (e1 & QCOW_OFLAG_COPIED) == 0) return 0;
        long t = l2Table(r, l2off, false);
        if (t == 0) return -1;
        long inL2 = (1L << l1Shift) - (g & ((1L << l1Shift) - 1));
        long end = g + Math.min(max, inL2);
        long pos = g;
        long host0 = -1;
        long expect = 0;
        while (pos < end) {
            long gc = pos >>> clusterBits;
            Req holder = lockHolder(gc);
            if (holder != null && holder != r) {
                if (pos == g) {
                    holder.lockWaiters.add(r);
                    return -1;
                }
                break;
            }
            int idx = (int) (gc & (l2Entries - 1));
            long e = l2e(t, idx);
            if ((e & QCOW_OFLAG_COMPRESSED) != 0 || (e & QCOW_OFLAG_COPIED) == 0) break;
            long ho = checkStandard(e, pos);
            if (ho == 0 || (!extL2 && (e & QCOW_OFLAG_ZERO) != 0)) break;
            long step = Math.min(end - pos, clusterSize - (pos & csMask));
            if (extL2) {
                long bm = l2bm(t, idx);
                int s0 = (int) ((pos & csMask) >>> subBits);
                int s1 = (int) (((pos & csMask) + step - 1) >>> subBits);
                long need = ((1L << (s1 - s0 + 1)) - 1) << s0;
                if ((bm & need) != need) break;
            }
            long h = ho + (pos & csMask);
            if (host0 < 0) {
                host0 = h;
            } else if (h != expect) {
                break;
            }
            pos += step;
            expect = h + step;
        }
        if (pos == g) return 0;
        long len = pos - g;
        checkDataWrite(host0, len);
        checkInsideFile(host0, len);
        int n = slice(r, r.pos, len, 0);
        r.pos += len;
        r.pending = 1;
        file.writev(host0, r.scratch, n, len, false, r.ioDone);
        startMapped(r);
        return 1;
    }

    /**
     * The allocating write of one cluster (r.sG, r.sLen). Returns true when the cluster is done
     * (state back to S_NONE), false when parked or waiting for I/O.
     */
    private boolean slow(Req r) throws BlockException {
        long gc = r.sG >>> clusterBits;
        long l1i = r.sG >>> l1Shift;
        int idx = (int) (gc & (l2Entries - 1));
        switch (r.state) {
            case S_BEGIN -> {
                if (!lock(r, gc)) return false;
                if (wbActive) {
                    wbWaiters.add(r);
                    return false;
                }
                long t = l2ForWrite(r, l1i);
                if (t == 0) return false;
                long e = l2e(t, idx);
                long bm = l2bm(t, idx);
                boolean compressed = (e & QCOW_OFLAG_COMPRESSED) != 0;
                long ho = 0;
                if (compressed) checkCompressed(e, bm, r.sG); else ho = checkStandard(e, r.sG);
                int a = (int) (r.sG & csMask);
                int b = a + r.sLen;
                boolean inPlace = extL2 && !compressed && (e & QCOW_OFLAG_COPIED) != 0 && ho != 0;
                int from = 0;
                int to = clusterSize;
                if (extL2) {
                    int s0 = a >>> subBits;
                    int s1 = (b - 1) >>> subBits;
                    if (!inPlace) {
                        long old = compressed ? 0xFFFFFFFFL : ho != 0 ? bm & 0xFFFFFFFFL : 0;
                        if (old != 0) {
                            s0 = Math.min(s0, Long.numberOfTrailingZeros(old));
                            s1 = Math.max(s1, 63 - Long.numberOfLeadingZeros(old));
                        }
                    }
                    from = s0 << subBits;
                    to = (s1 + 1) << subBits;
                }
                long host;
                if (inPlace) {
                    host = ho;
                } else {
                    host = allocCluster(r);
                    if (host < 0) return false;
                }
                r.sOldE = e;
                r.sOldBm = bm;
                r.sA = a;
                r.sB = b;
                r.sFrom = from;
                r.sTo = to;
                r.sHost = host;
                r.sNew = !inPlace;
                r.bOldE[0] = e;
                r.bOldBm[0] = bm;
                if (r.sNew && a == 0 && b == clusterSize && r.type == T_WRITE) extendBatch(r, t, idx);
                r.ensureBounce();
                r.state = S_FILL;
                startFill(r, compressed);
                return r.pending == 0 && slow(r);
            }
            case S_FILL_COMPRESSED -> {
                inflateCluster(r.sOldE, r.cbuf, r.bounce);
                r.state = S_FILL;
                return slow(r);
            }
            case S_FILL -> {
                long batch = (long) (r.sCount - 1) * clusterSize;
                checkDataWrite(r.sHost, clusterSize + batch);
                checkInsideFile(r.sHost + r.sFrom, r.sTo - r.sFrom + batch);
                int n = 0;
                if (r.sA > r.sFrom) n += putIov(r, n, r.bounce + r.sFrom, r.sA - r.sFrom);
                n += slice(r, r.pos, r.sLen, n);
                if (r.sTo > r.sB) n += putIov(r, n, r.bounce + r.sB, r.sTo - r.sB);
                if (n > IOV_MAX) {
                    // head + caller iovecs + tail exceed what one writev takes: the caller's bytes go
                    // into the bounce buffer too (one cluster, so sCount is 1 here)
                    copyIn(r, r.pos, r.sLen, r.bounce + r.sA);
                    n = putIov(r, 0, r.bounce + r.sFrom, r.sTo - r.sFrom);
                }
                r.state = S_WRITE;
                r.pending = 1;
                file.writev(r.sHost + r.sFrom, r.scratch, n, r.sTo - r.sFrom + batch, false, r.ioDone);
                return false;
            }
            case S_WRITE, S_UPDATE -> {
                r.state = S_UPDATE;
                if (wbActive) {
                    wbWaiters.add(r);
                    return false;
                }
                long t = l2ForWrite(r, l1i);
                if (t == 0) return false;
                for (int i = 0; i < r.sCount; i++) {
                    long e = l2e(t, idx + i);
                    long bm = l2bm(t, idx + i);
                    if (e != r.bOldE[i] || bm != r.bOldBm[i]) {
                        throw corruption("L2 entry for guest offset " + ((r.sG & ~csMask) + (long) i * clusterSize)
                                + " changed under an allocating write");
                    }
                }
                for (int i = 0; i < r.sCount; i++) {
                    long old = r.bOldE[i];
                    long bm = r.bOldBm[i];
                    long ne = (r.sHost + (long) i * clusterSize) | QCOW_OFLAG_COPIED;
                    long nbm = 0;
                    if (extL2) {
                        int s0 = r.sFrom >>> subBits;
                        int s1 = (r.sTo >>> subBits) - 1;
                        long span = ((1L << (s1 - s0 + 1)) - 1) << s0;
                        long alloc = ((r.sNew ? 0 : bm) | span) & 0xFFFFFFFFL;
                        long zero = (((old & QCOW_OFLAG_COMPRESSED) != 0 ? 0 : bm) >>> 32) & ~span & 0xFFFFFFFFL;
                        nbm = alloc | (zero << 32);
                    }
                    setL2(t, idx + i, ne, nbm);
                    if (r.sNew) freeEntry(old);
                }
                markL2Dirty(l1i);
                r.pos += r.sLen;
                r.state = S_NONE;
                unlock(r);
                return true;
            }
            default -> throw new IllegalStateException("slow write state " + r.state);
        }
    }

    /**
     * Extends an allocating write of a whole new cluster to the following whole clusters of the
     * request in the same L2 table, while their next host cluster is free right after the previous
     * one (one child write for all) and they are not in-place clusters or locked by others.
     */
    private void extendBatch(Req r, long t, int idx) throws BlockException {
        long c = r.sHost >>> clusterBits;
        long gc0 = r.sG >>> clusterBits;
        while (r.sCount < MAX_BATCH && idx + r.sCount < l2Entries
                && r.length - r.pos - (long) r.sCount * clusterSize >= clusterSize) {
            long gc = gc0 + r.sCount;
            if (lockHolder(gc) != null) break;
            int i = idx + r.sCount;
            long e = l2e(t, i);
            long bm = l2bm(t, i);
            if ((e & QCOW_OFLAG_COMPRESSED) != 0) {
                checkCompressed(e, bm, gc << clusterBits);
            } else {
                long ho = checkStandard(e, gc << clusterBits);
                if (ho != 0 && (e & QCOW_OFLAG_COPIED) != 0) break; // written in place
            }
            if (!tryAllocAt(c + r.sCount)) break;
            r.bOldE[r.sCount] = e;
            r.bOldBm[r.sCount] = bm;
            r.sCount++;
        }
        r.sLen = r.sCount * clusterSize;
    }

    /** Allocates host cluster {@code c} when it is the next free one and its refcount block is cached. */
    private boolean tryAllocAt(long c) throws BlockException {
        if (c != freeClusterIndex) return false;
        long rbi = c >>> rbBits;
        if (rbi >= rtEntries) return false;
        long rbOff = rbOffset(rbi);
        if (rbOff == 0) return false;
        Table t = rbCache.lookup(rbOff);
        if (t == null || t.loading) return false;
        int i = (int) (c & (rbEntries - 1));
        if (getRc(t.addr, i) != 0) return false;
        setRc(t.addr, i, 1);
        t.dirty = true;
        t.lastUse = ++rbCache.clock;
        freeClusterIndex = c + 1;
        ensureFile(c + 1);
        return true;
    }

    private static int putIov(Req r, int at, long base, long len) {
        long e = r.scratch + (long) at * IOVEC;
        RawMemory.putLe64(e, base);
        RawMemory.putLe64(e + 8, len);
        return 1;
    }

    /** Fills the parts of the span the request does not cover from their current source. */
    private void startFill(Req r, boolean compressed) throws BlockException {
        r.pending = 0;
        r.err = 0;
        if (r.sFrom >= r.sA && r.sTo <= r.sB) return;
        if (compressed) {
            if (r.sOldE == dcKey) {
                RawMemory.copy(dcBuf, r.bounce, clusterSize);
                return;
            }
            r.ensureCbuf();
            r.state = S_FILL_COMPRESSED;
            readCompressed(r, r.sOldE);
            return;
        }
        r.pending = 1; // guard: completions of the reads below cannot finish the fill early
        fillSegment(r, r.sFrom, r.sA);
        fillSegment(r, r.sB, r.sTo);
        r.pending--;
    }

    private void fillSegment(Req r, int from, int to) throws BlockException {
        long e = r.sOldE;
        long ho = e & L2E_OFFSET_MASK;
        long clusterStart = r.sG & ~csMask;
        int p = from;
        while (p < to) {
            int k = subKind(e, r.sOldBm, p);
            int q = p;
            while (q < to && subKind(e, r.sOldBm, q) == k) q = Math.min(to, ((q >>> subBits) + 1) << subBits);
            int len = q - p;
            switch (k) {
                case K_DATA -> {
                    checkInsideFile(ho + p, len);
                    r.pending++;
                    file.read(ho + p, r.bounce + p, len, r.ioDone);
                }
                case K_UNALLOC -> {
                    long part = backingPart(clusterStart + p, len);
                    if (part < len) RawMemory.fill(r.bounce + p + part, len - part, 0);
                    if (part > 0) {
                        r.pending++;
                        backing.read(clusterStart + p, r.bounce + p, (int) part, r.ioDone);
                    }
                }
                default -> RawMemory.fill(r.bounce + p, len, 0);
            }
            p = q;
        }
    }

    /** Kind of the (sub)cluster holding byte {@code p} of a cluster with entry {@code e}. */
    private int subKind(long e, long bm, int p) {
        long ho = e & L2E_OFFSET_MASK;
        if (extL2) {
            int sc = p >>> subBits;
            if (((bm >>> sc) & 1) != 0) return K_DATA;
            if (((bm >>> (32 + sc)) & 1) != 0) return K_ZERO;
            return K_UNALLOC;
        }
        if ((e & QCOW_OFLAG_ZERO) != 0) return K_ZERO;
        return ho != 0 ? K_DATA : K_UNALLOC;
    }

    /**
     * Zeroes or discards the whole cluster at {@code g} in metadata. Returns 0 when done, -1
     * when parked, 1 when zeros must be written as data (version 2 with a backing file).
     */
    private int zeroCluster(Req r, long g) throws BlockException {
        long gc = g >>> clusterBits;
        if (!lock(r, gc)) return -1;
        boolean discard = r.type == T_DISCARD;
        if (version < 3 && backing != null) {
            // Version 2 cannot say "zero" over a backing file: zeroes are written as data, and a
            // discard keeps the data (as QEMU: unallocating would expose the backing file's data).
            unlock(r);
            return discard ? 0 : 1;
        }
        long l1i = g >>> l1Shift;
        if (l1i >= l1Size) {
            unlock(r);
            return 0;
        }
        long l2off = l2Offset(l1i, l1Entry(l1i));
        // Target: reads as zeros (zero flag / zero bits) with a backing file, unallocated without.
        boolean wantZero = backing != null && version >= 3;
        if (l2off == 0 && !wantZero) {
            unlock(r);
            return 0;
        }
        if (wbActive) {
            wbWaiters.add(r);
            return -1;
        }
        long t = l2ForWrite(r, l1i);
        if (t == 0) return -1;
        int idx = (int) (gc & (l2Entries - 1));
        long e = l2e(t, idx);
        long bm = l2bm(t, idx);
        boolean compressed = (e & QCOW_OFLAG_COMPRESSED) != 0;
        long ho = 0;
        if (compressed) checkCompressed(e, bm, g); else ho = checkStandard(e, g);
        boolean keepHost = version >= 3 && !discard && !r.mayUnmap && !compressed && ho != 0 && (e & QCOW_OFLAG_COPIED) != 0;
        long ne;
        long nbm = 0;
        if (keepHost) {
            if (extL2) {
                ne = ho | QCOW_OFLAG_COPIED;
                nbm = 0xFFFFFFFF00000000L;
            } else {
                ne = ho | QCOW_OFLAG_COPIED | QCOW_OFLAG_ZERO;
            }
        } else if (wantZero) {
            ne = extL2 ? 0 : QCOW_OFLAG_ZERO;
            nbm = extL2 ? 0xFFFFFFFF00000000L : 0;
        } else {
            ne = 0;
        }
        if (ne != e || nbm != bm) {
            setL2(t, idx, ne, nbm);
            markL2Dirty(l1i);
            if (!keepHost) freeEntry(e);
        }
        unlock(r);
        return 0;
    }

    // ================================================================ L2 tables for writing

    /**
     * The L2 table of L1 index {@code l1i}, made writable: allocated (zeroed) when absent, copied
     * to a new cluster when shared with a snapshot (not COPIED). Returns its address, 0 when parked.
     * Callers checked that no writeback runs (this mutates metadata).
     */
    private long l2ForWrite(Req r, long l1i) throws BlockException {
        if (l1i >= l1Size) throw new BlockException(EIO, "qcow2: guest offset beyond the L1 table");
        long e1 = l1Entry(l1i);
        long off = l2Offset(l1i, e1);
        if (off != 0 && (e1 & QCOW_OFLAG_COPIED) != 0) {
            long a = l2Table(r, off, false);
            if (a != 0) pin(r, off);
            return a;
        }
        long old = 0;
        if (off != 0) {
            old = l2Table(r, off, false);
            if (old == 0) return 0;
            pin(r, off); // kept while the allocation below may park
        }
        long h = allocCluster(r);
        if (h < 0) return 0;
        if (off != 0) {
            // Copy before create(): with every other slot dirty, the old table's slot is the victim.
            old = l2Table(r, off, false); // still cached: allocation only touches the refcount cache
            RawMemory.copy(old, cowBuf, clusterSize);
        }
        Table t = l2Cache.create(h);
        if (off != 0) {
            RawMemory.copy(cowBuf, t.addr, clusterSize);
            pendingFree(off); // the snapshot keeps the old table
        }
        pin(r, h);
        l2Set.add(h >>> clusterBits);
        setL1(l1i, h | QCOW_OFLAG_COPIED);
        return t.addr;
    }

    /** Marks the (cached, just modified) L2 table of L1 index {@code l1i} dirty. */
    private void markL2Dirty(long l1i) {
        l2Cache.lookup(l1Entry(l1i) & L1E_OFFSET_MASK).dirty = true;
    }

    // ================================================================ refcounts

    private long rtEntry(long i) { return be64(rt + i * 8); }

    private void setRt(long i, long v) {
        putBe64(rt + i * 8, v);
        long u = i * 8 / ioUnit;
        rtDirtyLo = Math.min(rtDirtyLo, u);
        rtDirtyHi = Math.max(rtDirtyHi, u + 1);
    }

    private long getRc(long t, int i) {
        switch (refcountOrder) {
            case 0: return (RawMemory.getByte(t + (i >>> 3)) >>> (i & 7)) & 1;
            case 1: return (RawMemory.getByte(t + (i >>> 2)) >>> ((i & 3) * 2)) & 3;
            case 2: return (RawMemory.getByte(t + (i >>> 1)) >>> ((i & 1) * 4)) & 15;
            case 3: return RawMemory.getByte(t + i);
            case 4: return be16(t + 2L * i);
            case 5: return be32(t + 4L * i);
            default: return be64(t + 8L * i);
        }
    }

    private void setRc(long t, int i, long v) {
        switch (refcountOrder) {
            case 0, 1, 2 -> {
                int bits = 1 << refcountOrder;
                int per = 8 / bits;
                long a = t + i / per;
                int sh = (i % per) * bits;
                int mask = ((1 << bits) - 1) << sh;
                RawMemory.putByte(a, (RawMemory.getByte(a) & ~mask) | (((int) v << sh) & mask));
            }
            case 3 -> RawMemory.putByte(t + i, (int) v);
            case 4 -> putBe16(t + 2L * i, (int) v);
            case 5 -> putBe32(t + 4L * i, v);
            default -> putBe64(t + 8L * i, v);
        }
    }

    /** The refcount block offset of reftable index {@code rbi}, checked (0 for none). */
    private long rbOffset(long rbi) throws BlockException {
        long e = rtEntry(rbi);
        long off = e & REFT_OFFSET_MASK;
        if (off == 0) return 0;
        if ((e & REFT_RESERVED_MASK) != 0 || (off & csMask) != 0 || off >= MAX_HOST_OFFSET) {
            throw corruption("Refblock offset " + Long.toHexString(off) + " unaligned (reftable index " + rbi + ")");
        }
        if (off + clusterSize > file.size()) {
            throw corruption("Refblock offset " + off + " beyond the end of the image file (reftable index " + rbi + ")");
        }
        return off;
    }

    /**
     * Allocates one host cluster (refcount 0 -> 1, lowest free first, as QEMU's
     * free_cluster_index). Returns its offset, or -1 when {@code w} was parked on a refcount
     * block load. New refcount blocks describe themselves (the spec's rule for a block covering
     * its own cluster); the reftable grows when full.
     */
    private long allocCluster(Waiter w) throws BlockException {
        return allocCluster(w, false);
    }

    /** As {@link #allocCluster(Waiter)}; {@code sync}: refcount blocks are read synchronously (idle node only). */
    private long allocCluster(Waiter w, boolean sync) throws BlockException {
        long maxClusters = MAX_HOST_OFFSET >>> clusterBits;
        for (;;) {
            long c = freeClusterIndex;
            if (c >= maxClusters) throw new BlockException(ENOSPC, "qcow2: no free cluster below the maximum host offset");
            long rbi = c >>> rbBits;
            if (rbi >= rtEntries) {
                growReftable(c);
                continue;
            }
            long rbOff = rbOffset(rbi);
            if (rbOff == 0) {
                checkMetaAlloc(c, "new refcount block");
                Table t = rbCache.create(c << clusterBits);
                setRc(t.addr, (int) (c & (rbEntries - 1)), 1);
                setRt(rbi, c << clusterBits);
                rbSet.add(c);
                ensureFile(c + 1);
                freeClusterIndex = c + 1;
                continue;
            }
            Table t = sync ? rbCache.getSync(rbOff) : rbCache.get(rbOff, w, false);
            if (t == null) return -1;
            int i = (int) (c & (rbEntries - 1));
            while (i < rbEntries && getRc(t.addr, i) != 0) i++;
            if (i == rbEntries) {
                freeClusterIndex = (rbi + 1) << rbBits;
                continue;
            }
            c = (rbi << rbBits) | i;
            setRc(t.addr, i, 1);
            rbCache.markDirty(t);
            freeClusterIndex = c + 1;
            ensureFile(c + 1);
            return c << clusterBits;
        }
    }

    private void checkMetaAlloc(long c, String what) throws BlockException {
        String o = rangeAt(c << clusterBits, clusterSize);
        if (o == null && l2Set.contains(c)) o = "active L2 table";
        if (o == null && rbSet.contains(c)) o = "refcount block";
        if (o != null) throw corruption("free cluster " + c + " chosen for a " + what + " overlaps " + o + " (refcount 0 on metadata)");
    }

    /** Grows the file to hold {@code clusters} clusters (in chunks, so most allocations do not truncate). */
    private void ensureFile(long clusters) throws BlockException {
        long need = clusters << clusterBits;
        long have = file.size();
        if (need <= have) return;
        long chunk = Math.max(GROW_CHUNK, clusterSize);
        file.grow((need + chunk - 1) / chunk * chunk);
    }

    /**
     * A bigger reftable at the first uncovered cluster {@code c}: k new refcount blocks at
     * {@code [c, c+k)} covering themselves and the table at {@code [c+k, c+k+n)}. Written whole
     * by the next writeback, then the header points to it, then the old table is freed.
     */
    private void growReftable(long c) throws BlockException {
        long entries = Math.max(rtEntries * 3 / 2 + 1, (c >>> rbBits) + 1);
        long n;
        long k;
        for (;;) {
            n = (entries * 8 + csMask) >>> clusterBits;
            entries = (n << clusterBits) / 8;
            k = 1;
            for (;;) {
                long need = ((c + k + n - 1) >>> rbBits) - (c >>> rbBits) + 1;
                if (need <= k) break;
                k = need;
            }
            if (((c + k + n - 1) >>> rbBits) < entries) break;
            entries = ((c + k + n - 1) >>> rbBits) + 2;
        }
        if ((n << clusterBits) > QCOW_MAX_REFTABLE_SIZE) {
            throw new BlockException(ENOSPC, "qcow2: the refcount table would exceed " + QCOW_MAX_REFTABLE_SIZE + " bytes");
        }
        for (long x = c; x < c + k + n; x++) checkMetaAlloc(x, "refcount structure");
        long base = NativeAlloc.allocate(n << clusterBits, ALIGN);
        long nt = NativeAlloc.aligned(base, ALIGN);
        RawMemory.fill(nt, n << clusterBits, 0);
        RawMemory.copy(rt, nt, rtEntries * 8);
        long firstRbi = c >>> rbBits;
        for (long j = 0; j < k; j++) {
            long bc = c + j;
            putBe64(nt + (firstRbi + j) * 8, bc << clusterBits);
            rbSet.add(bc);
            rbCache.create(bc << clusterBits);
        }
        for (long x = c; x < c + k + n; x++) {
            Table t = rbCache.lookup((c + ((x >>> rbBits) - firstRbi)) << clusterBits);
            setRc(t.addr, (int) (x & (rbEntries - 1)), 1);
        }
        for (long x = 0; x < reftableClusters; x++) pendingFree(reftableOffset + (x << clusterBits));
        RawMemory.free(rtBase);
        rtBase = base;
        rt = nt;
        rtEntries = entries;
        reftableOffset = (c + k) << clusterBits;
        reftableClusters = n;
        ranges.set(reftableRange, new long[] {reftableOffset, reftableOffset + (n << clusterBits)});
        rtRelocated = true;
        ensureFile(c + k + n);
        freeClusterIndex = c + k + n;
    }

    /** Frees what an L2 entry referenced (deferred until the entry's change is on disk). */
    private void freeEntry(long e) {
        if ((e & QCOW_OFLAG_COMPRESSED) != 0) {
            long coff = e & ((1L << csizeShift) - 1);
            long nbSectors = ((e >>> csizeShift) & csizeMask) + 1;
            long start = coff & ~511L;
            long last = start + nbSectors * 512 - 1;
            for (long c = start >>> clusterBits; c <= last >>> clusterBits; c++) pendingFree(c << clusterBits);
            return;
        }
        long ho = e & L2E_OFFSET_MASK;
        if (ho != 0) pendingFree(ho);
    }

    private void pendingFree(long off) {
        if (pendingFreeCount == pendingFrees.length) pendingFrees = java.util.Arrays.copyOf(pendingFrees, pendingFreeCount * 2);
        pendingFrees[pendingFreeCount++] = off;
    }

    // ================================================================ persistent bitmaps: write side
    // QEMU's block/qcow2-bitmap.c. While a writable node is open every bitmap of the image's
    // directory is in_use (set at open, before any guest write): a crash leaves them in_use and the
    // next open reports them inconsistent. At close the persistent, consistent bitmaps of the node
    // are written to new clusters (data, tables, directory), the refcounts flushed, and only then
    // does the header point at the new directory; the old clusters are freed after that, so a
    // crash at any point leaves at most leaked clusters.

    /**
     * Binds the driver to its node (the daemon, once, before the node serves): {@code bitmaps}
     * lists the node's bitmaps, whose persistent ones {@link #storeBitmaps} writes at close;
     * {@code name} words QEMU's messages.
     */
    public void bindNode(String name, Supplier<List<DirtyBitmap>> bitmaps) {
        this.nodeName = java.util.Objects.requireNonNull(name);
        this.nodeBitmaps = java.util.Objects.requireNonNull(bitmaps);
    }

    /**
     * QEMU's qcow2_load_dirty_bitmaps for a writable open: unknown autoclear bits are cleared, an
     * ignored (invalid) bitmaps extension is dropped, and every bitmap not yet in_use is marked
     * in_use in place (update_ext_header_and_dir_in_place: autoclear bit cleared while the
     * directory changes, so a torn update loses the bitmaps rather than corrupting them).
     */
    private void openBitmapsForWrite(Image h, List<Qcow2Bitmaps.Entry> entries) throws BlockException {
        long autoclear = h.autoclear & QCOW2_AUTOCLEAR_MASK;
        if (h.nbBitmaps == 0) {
            autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
            if (h.hasBitmaps || autoclear != h.autoclear) {
                putBe64(hdr + HDR_AUTOCLEAR_FEATURES, autoclear);
                writeHeaderWhole(0, 0, 0);
                file.flush();
            }
            return;
        }
        bmDirOffset = h.bitmapDirectoryOffset;
        bmDirSize = h.bitmapDirectorySize;
        ArrayList<Qcow2Bitmaps.Entry> dir = new ArrayList<>(entries);
        boolean update = false;
        for (int i = 0; i < dir.size(); i++) {
            Qcow2Bitmaps.Entry e = dir.get(i);
            if ((e.flags() & Qcow2Bitmaps.BME_FLAG_IN_USE) == 0) {
                dir.set(i, new Qcow2Bitmaps.Entry(e.name(), e.tableOffset(), e.tableSize(), e.flags() | Qcow2Bitmaps.BME_FLAG_IN_USE, e.granularityBits()));
                update = true;
            }
        }
        bmDir = List.copyOf(dir);
        if (!update) {
            if (autoclear != h.autoclear) {
                putBe64(hdr + HDR_AUTOCLEAR_FEATURES, autoclear);
                writeHeaderWhole(dir.size(), bmDirSize, bmDirOffset);
                file.flush();
            }
            return;
        }
        putBe64(hdr + HDR_AUTOCLEAR_FEATURES, autoclear & ~QCOW2_AUTOCLEAR_BITMAPS);
        writeHeaderWhole(dir.size(), bmDirSize, bmDirOffset);
        file.flush();
        byte[] d = Qcow2Bitmaps.encodeDirectory(dir);
        writeBytesSync(bmDirOffset, d);
        file.flush();
        bmDirSize = d.length;
        putBe64(hdr + HDR_AUTOCLEAR_FEATURES, autoclear | QCOW2_AUTOCLEAR_BITMAPS);
        writeHeaderWhole(dir.size(), bmDirSize, bmDirOffset);
        file.flush();
    }

    /**
     * QEMU's qcow2_co_can_store_new_dirty_bitmap with its wording: v2 images, granularity,
     * the bitmap's size, the name's length, the number of persistent bitmaps and the directory
     * size (those of the node plus the new one). Read-only nodes accept, as QEMU (the bitmap is
     * then lost at close, with an error line). Any thread (reads immutable fields and the node's
     * concurrent list).
     */
    @Override
    public String checkCanStore(String name, long granularity) {
        String err = canStore(name, granularity);
        return err == null ? null : "Can't make bitmap '" + name + "' persistent in '" + nodeName + "': " + err;
    }

    private String canStore(String name, long granularity) {
        if (version < 3) return "Cannot store dirty bitmaps in qcow2 v2 files";
        int gbits = Long.numberOfTrailingZeros(granularity);
        if (gbits > Qcow2Bitmaps.BME_MAX_GRANULARITY_BITS) {
            return "Granularity exceeds maximum (" + (1L << Qcow2Bitmaps.BME_MAX_GRANULARITY_BITS) + " bytes)";
        }
        if (gbits < Qcow2Bitmaps.BME_MIN_GRANULARITY_BITS) {
            return "Granularity is under minimum (" + (1L << Qcow2Bitmaps.BME_MIN_GRANULARITY_BITS) + " bytes)";
        }
        long chunks = (size >>> gbits) + ((size & (granularity - 1)) != 0 ? 1 : 0);
        long bytes = (chunks + 7) / 8;
        if (bytes > Qcow2Bitmaps.BME_MAX_PHYS_SIZE || bytes > Qcow2Bitmaps.BME_MAX_TABLE_SIZE * clusterSize) {
            return "Too much space will be occupied by the bitmap. Use larger granularity";
        }
        byte[] n = name.getBytes(java.nio.charset.StandardCharsets.UTF_8);
        if (n.length > Qcow2Bitmaps.BME_MAX_NAME_SIZE) {
            return "Name length exceeds maximum (" + Qcow2Bitmaps.BME_MAX_NAME_SIZE + " characters)";
        }
        long count = 1;
        long dirSize = Qcow2Bitmaps.entrySize(n.length);
        Supplier<List<DirtyBitmap>> nb = nodeBitmaps;
        for (DirtyBitmap b : nb != null ? nb.get() : bitmaps) {
            if (!b.persistent()) continue;
            count++;
            dirSize += Qcow2Bitmaps.entrySize(b.name().getBytes(java.nio.charset.StandardCharsets.UTF_8).length);
        }
        if (count > QCOW2_MAX_BITMAPS) return "Maximum number of persistent bitmaps is already reached";
        if (dirSize > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) return "Not enough space in the bitmap directory";
        return null;
    }

    /**
     * QEMU's qcow2_co_remove_persistent_dirty_bitmap: drops {@code name} from the image's
     * directory now (absent: nothing to do, not an error), rewritten in place with the autoclear
     * bit cleared meanwhile; its table and data clusters, and directory clusters no longer
     * needed, are freed by the next metadata writeback. Waits for a running writeback first (it
     * may write the header). {@code done} runs later on the home thread. Home thread.
     */
    @Override
    public void removeStored(String name, IoCompletion done) {
        assert home == null || home.inThread() : "qcow2 bitmap removal off its home IOThread";
        int i = indexOf(bmDir, name);
        if (i < 0 || closed) {
            later(done, 0);
            return;
        }
        if (wbActive) {
            wbWaiters.add(new Waiter() {
                @Override public void resume() { removeStored(name, done); }

                @Override public void fail(int errno) { later(done, errno); }
            });
            return;
        }
        int err = 0;
        try {
            removeNow(i);
        } catch (BlockException e) {
            LOG.error("qcow2: removing persistent bitmap '{}' of node '{}' failed: {}", name, nodeName, e.getMessage());
            err = e.errno();
        } catch (RuntimeException e) {
            err = unexpected("removing bitmap '" + name + "'", e).errno();
        }
        later(done, err);
    }

    private void later(IoCompletion done, int errno) {
        if (home != null) home.execute(() -> done.ioDone(errno)); else done.ioDone(errno);
    }

    private static int indexOf(List<Qcow2Bitmaps.Entry> dir, String name) {
        for (int i = 0; i < dir.size(); i++) if (dir.get(i).name().equals(name)) return i;
        return -1;
    }

    private void removeNow(int i) throws BlockException {
        Qcow2Bitmaps.Entry gone = bmDir.get(i);
        ArrayList<Qcow2Bitmaps.Entry> dir = new ArrayList<>(bmDir);
        dir.remove(i);
        long autoclear = be64(hdr + HDR_AUTOCLEAR_FEATURES);
        putBe64(hdr + HDR_AUTOCLEAR_FEATURES, autoclear & ~QCOW2_AUTOCLEAR_BITMAPS);
        writeHeaderWhole(bmDir.size(), bmDirSize, bmDirOffset);
        file.flush();
        long oldClusters = (bmDirSize + csMask) >>> clusterBits;
        long newClusters = 0;
        if (dir.isEmpty()) {
            writeHeaderWhole(0, 0, 0);
        } else {
            byte[] d = Qcow2Bitmaps.encodeDirectory(dir);
            writeBytesSync(bmDirOffset, d);
            file.flush();
            newClusters = (d.length + csMask) >>> clusterBits;
            putBe64(hdr + HDR_AUTOCLEAR_FEATURES, autoclear | QCOW2_AUTOCLEAR_BITMAPS);
            writeHeaderWhole(dir.size(), d.length, bmDirOffset);
            bmDirSize = d.length;
        }
        file.flush();
        for (long c = newClusters; c < oldClusters; c++) pendingFree(bmDirOffset + (c << clusterBits));
        if (dir.isEmpty()) {
            bmDirOffset = 0;
            bmDirSize = 0;
        }
        bmDir = List.copyOf(dir);
        freeBitmapClusters(gone);
    }

    /**
     * Close hook (BlockNode.flushAndClose, after the final flush succeeded, nothing in flight):
     * QEMU's qcow2_store_persistent_dirty_bitmaps. Synchronous I/O through the file child; a
     * failure (ENOSPC, EIO) is logged with QEMU's words and leaves the image consistent (the
     * bitmaps stay in_use: the next open reports them inconsistent). Home thread.
     */
    public void storeBitmaps() {
        if (closed) return;
        Supplier<List<DirtyBitmap>> nb = nodeBitmaps;
        List<DirtyBitmap> store = new ArrayList<>();
        for (DirtyBitmap b : nb != null ? nb.get() : bitmaps) if (b.persistent() && !b.inconsistent()) store.add(b);
        if (readOnly) {
            // Bitmaps loaded from a read-only image are QEMU's read-only bitmaps: unchanged.
            for (DirtyBitmap b : store) {
                if (!bitmaps.contains(b)) {
                    LOG.error("qcow2: Lost persistent bitmaps during inactivation of node '{}': No write access", nodeName);
                    break;
                }
            }
            return;
        }
        if (store.isEmpty()) {
            // Frees of removed bitmaps applied by the final writeback still sit in the cache.
            try {
                if (anyDirty() && flushErrno == 0 && !corrupt) flush();
            } catch (BlockException e) {
                LOG.error("qcow2: final metadata flush of node '{}' failed: {}", nodeName, e.getMessage());
            }
            return;
        }
        try {
            if (version < 3) throw new BlockException(ENOTSUP, "Cannot store dirty bitmaps in qcow2 v2 files");
            if (corrupt) throw new BlockException(EIO, "the image is marked corrupt");
            if (flushErrno != 0) throw new BlockException(flushErrno, "an earlier flush failed");
            storeNow(store);
        } catch (BlockException e) {
            LOG.error("qcow2: Lost persistent bitmaps during inactivation of node '{}': {}", nodeName, e.getMessage());
        } catch (RuntimeException e) {
            unexpected("storing bitmaps of node '" + nodeName + "'", e);
        }
    }

    private void storeNow(List<DirtyBitmap> store) throws BlockException {
        ArrayList<Qcow2Bitmaps.Entry> dir = new ArrayList<>(bmDir);
        ArrayList<Qcow2Bitmaps.Entry> drop = new ArrayList<>();
        ArrayList<DirtyBitmap> byEntry = new ArrayList<>();
        for (int i = 0; i < dir.size(); i++) byEntry.add(null);
        // Entries keep their place in the directory, new bitmaps go last (QEMU's order).
        for (DirtyBitmap b : store) {
            int gbits = Long.numberOfTrailingZeros(b.granularity());
            if (gbits < Qcow2Bitmaps.BME_MIN_GRANULARITY_BITS || gbits > Qcow2Bitmaps.BME_MAX_GRANULARITY_BITS
                    || b.size() != size || Qcow2Bitmaps.tableSize(b.bitCount(), clusterSize) > Qcow2Bitmaps.BME_MAX_TABLE_SIZE) {
                throw new BlockException(EINVAL, "Bitmap '" + b.name() + "' doesn't satisfy the constraints");
            }
            Qcow2Bitmaps.Entry e = new Qcow2Bitmaps.Entry(b.name(), 0, 0, b.recording() ? Qcow2Bitmaps.BME_FLAG_AUTO : 0, gbits);
            int i = indexOf(dir, b.name());
            if (i < 0) {
                dir.add(e);
                byEntry.add(b);
            } else {
                if ((dir.get(i).flags() & Qcow2Bitmaps.BME_FLAG_IN_USE) == 0) {
                    throw new BlockException(EINVAL, "Bitmap '" + b.name() + "' already exists in the image");
                }
                drop.add(dir.get(i));
                dir.set(i, e);
                byEntry.set(i, b);
            }
        }
        if (dir.size() > QCOW2_MAX_BITMAPS) throw new BlockException(EINVAL, "Too many persistent bitmaps");
        if (Qcow2Bitmaps.directorySize(dir) > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
            throw new BlockException(EINVAL, "Bitmap directory is too large");
        }
        long buf = NativeAlloc.allocate(clusterSize, ALIGN);
        try {
            long a = NativeAlloc.aligned(buf, ALIGN);
            byte[] data = new byte[clusterSize];
            long bitsPerCluster = (long) clusterSize * 8;
            for (int i = 0; i < dir.size(); i++) {
                DirtyBitmap b = byEntry.get(i);
                if (b == null) continue; // an inconsistent bitmap: kept as it is
                long n = Qcow2Bitmaps.tableSize(b.bitCount(), clusterSize);
                java.nio.ByteBuffer table = java.nio.ByteBuffer.allocate((int) (((n * 8) + csMask) & ~csMask));
                for (long k = 0; k < n; k++) {
                    if (!Qcow2Bitmaps.serialize(b, k * bitsPerCluster, data)) continue; // all zeros: entry 0
                    long off = allocCluster(null, true);
                    checkDataWrite(off, clusterSize);
                    for (int j = 0; j < clusterSize; j++) RawMemory.putByte(a + j, data[j]);
                    file.write(off, a, clusterSize, false);
                    table.putLong((int) (k * 8), off);
                }
                long tOff = allocRunSync(table.capacity() >>> clusterBits);
                writeBytesSync(tOff, table.array());
                Qcow2Bitmaps.Entry e = dir.get(i);
                dir.set(i, new Qcow2Bitmaps.Entry(e.name(), tOff, n, e.flags(), e.granularityBits()));
            }
        } finally {
            RawMemory.free(buf);
        }
        byte[] d = Qcow2Bitmaps.encodeDirectory(dir);
        long dOff = allocRunSync((d.length + csMask) >>> clusterBits);
        writeBytesSync(dOff, d);
        flush(); // the new clusters' refcounts (and the data) on disk before the header names them
        putBe64(hdr + HDR_AUTOCLEAR_FEATURES, be64(hdr + HDR_AUTOCLEAR_FEATURES) | QCOW2_AUTOCLEAR_BITMAPS);
        writeHeaderWhole(dir.size(), d.length, dOff);
        file.flush();
        long oldOff = bmDirOffset;
        long oldClusters = (bmDirSize + csMask) >>> clusterBits;
        bmDir = List.copyOf(dir);
        bmDirOffset = dOff;
        bmDirSize = d.length;
        for (long c = 0; c < oldClusters; c++) pendingFree(oldOff + (c << clusterBits));
        for (Qcow2Bitmaps.Entry e : drop) freeBitmapClusters(e);
        flush();
        LOG.info("qcow2: stored {} persistent bitmap(s) of node '{}'", store.size(), nodeName);
    }

    /**
     * Queues the frees of a bitmap's data clusters and table (QEMU's free_bitmap_clusters); the
     * table is read synchronously. Entries that are not a plain cluster offset inside the file
     * are left alone (leaked rather than freeing what may be something else).
     */
    private void freeBitmapClusters(Qcow2Bitmaps.Entry e) throws BlockException {
        long bytes = e.tableSize() * 8;
        long clusters = (bytes + csMask) >>> clusterBits;
        long fileSize = file.size();
        String bad = null;
        if (e.tableOffset() <= 0 || (e.tableOffset() & csMask) != 0 || e.tableSize() > Qcow2Bitmaps.BME_MAX_TABLE_SIZE
                || e.tableOffset() + (clusters << clusterBits) > fileSize) {
            bad = "its table is outside the image";
        } else {
            bad = metadataAt(e.tableOffset(), bytes);
        }
        ArrayList<Long> free = new ArrayList<>();
        LongSet seen = new LongSet();
        if (bad == null) {
            // An in_use bitmap's table was never checked at open: check it as load does before
            // freeing anything it names (a hostile table must not free metadata).
            java.nio.ByteBuffer t = java.nio.ByteBuffer.wrap(readBytes(file, e.tableOffset(), (int) bytes));
            for (long k = 0; k < e.tableSize() && bad == null; k++) {
                long entry = t.getLong((int) (k * 8));
                long off = entry & Qcow2Bitmaps.BME_TABLE_ENTRY_OFFSET_MASK;
                if (off == 0) continue;
                if ((entry & Qcow2Bitmaps.BME_TABLE_ENTRY_RESERVED_MASK) != 0 || (off & csMask) != 0 || off + clusterSize > fileSize) {
                    bad = "table entry " + k + " is invalid";
                } else if ((bad = metadataAt(off, clusterSize)) == null && off >= e.tableOffset()
                        && off < e.tableOffset() + (clusters << clusterBits)) {
                    bad = "table entry " + k + " points into the table";
                } else if (bad == null && seen.contains(off >>> clusterBits)) {
                    bad = "table entry " + k + " repeats a data cluster";
                }
                if (bad == null) {
                    free.add(off);
                    seen.add(off >>> clusterBits);
                }
            }
        }
        if (bad != null) {
            LOG.warn("qcow2: the clusters of bitmap '{}' are left allocated ({}): 'qemu-img check -r leaks' reclaims them", e.name(), bad);
            return;
        }
        for (long off : free) pendingFree(off);
        for (long c = 0; c < clusters; c++) pendingFree(e.tableOffset() + (c << clusterBits));
    }

    /** The metadata (fixed structures, active L2 tables, refcount blocks) in {@code [off, off+len)}'s clusters, or null. */
    private String metadataAt(long off, long len) {
        String what = rangeAt(off, len);
        for (long c = clusterOf(off), end = clusterOf(off + len - 1); what == null && c <= end; c++) {
            if (l2Set.contains(c)) what = "an L2 table";
            else if (rbSet.contains(c)) what = "a refcount block";
        }
        if (what == null && bmDirSize > 0 && clusterOf(off) <= clusterOf(bmDirOffset + bmDirSize - 1)
                && clusterOf(bmDirOffset) <= clusterOf(off + len - 1)) {
            what = "the bitmap directory";
        }
        return what;
    }

    /**
     * {@code n} contiguous free clusters (QEMU's qcow2_alloc_clusters): clusters taken while a
     * run was interrupted are given back (their refcount was only raised in the cache).
     * Synchronous: idle node only.
     */
    private long allocRunSync(long n) throws BlockException {
        ArrayList<Long> spare = new ArrayList<>();
        long first = -1;
        long count = 0;
        while (count < n) {
            long off = allocCluster(null, true);
            if (count > 0 && off != first + (count << clusterBits)) {
                for (long i = 0; i < count; i++) spare.add(first + (i << clusterBits));
                count = 0;
            }
            if (count == 0) first = off;
            count++;
        }
        for (long off : spare) {
            long c = off >>> clusterBits;
            Table t = rbCache.getSync(rbOffset(c >>> rbBits));
            setRc(t.addr, (int) (c & (rbEntries - 1)), 0);
            rbCache.markDirty(t);
            freeClusterIndex = Math.min(freeClusterIndex, c);
        }
        for (long c = 0; c < n; c++) checkMetaAlloc(clusterOf(first) + c, "bitmap structure");
        return first;
    }

    /** Writes {@code data} at {@code off} (not flushed), zero-padded to whole I/O units, within the clusters that hold it. */
    private void writeBytesSync(long off, byte[] data) throws BlockException {
        int len = (int) ((data.length + ioUnit - 1L) / ioUnit * ioUnit);
        // QEMU may end the file right after a directory: the padded write grows it, inside the cluster
        if (off + len > file.size()) file.grow(off + len);
        long base = NativeAlloc.allocate(len, ALIGN);
        try {
            long a = NativeAlloc.aligned(base, ALIGN);
            RawMemory.fill(a, len, 0);
            for (int i = 0; i < data.length; i++) RawMemory.putByte(a + i, data[i]);
            file.write(off, a, len, false);
        } finally {
            RawMemory.free(base);
        }
    }

    /**
     * Rebuilds the header cluster with a bitmaps extension of {@code nb} bitmaps ({@code 0}:
     * none) and writes it (not flushed). The autoclear field is whatever {@code hdr} holds.
     */
    private void writeHeaderWhole(long nb, long dirSize, long dirOffset) throws BlockException {
        byte[] cl = new byte[clusterSize];
        for (int i = 0; i < clusterSize; i++) cl[i] = (byte) RawMemory.getByte(hdr + i);
        int used = Qcow2Format.rebuildHeader(cl, headerLength, nb, dirSize, dirOffset);
        for (int i = 0; i < clusterSize; i++) RawMemory.putByte(hdr + i, cl[i]);
        int len = (int) Math.min(clusterSize, (used + ioUnit - 1L) / ioUnit * ioUnit);
        file.write(0, hdr, len, false);
    }

    // ================================================================ corruption

    /** Marks the image corrupt (once: header bit, one ERROR line) and returns the EIO to throw. */
    private BlockException corruption(String what) {
        if (!corrupt) {
            corrupt = true;
            LOG.error("qcow2: Marking image as corrupt: {}; further corruption events will be suppressed", what);
            if (!readOnly) {
                try {
                    putBe64(hdr + HDR_INCOMPATIBLE_FEATURES, be64(hdr + HDR_INCOMPATIBLE_FEATURES) | QCOW2_INCOMPAT_CORRUPT);
                    if (version >= 3) writeHeaderSync();
                } catch (BlockException e) {
                    LOG.error("qcow2: could not set the corrupt bit: {}", e.getMessage());
                }
            }
        }
        return new BlockException(EIO, "qcow2: " + what);
    }

    private int headerWriteLen() {
        return (int) Math.min(Math.min(clusterSize, Math.max(ioUnit, 512)), Math.min(hdrLen, file.size()));
    }

    private void writeHeaderSync() throws BlockException {
        file.write(0, hdr, headerWriteLen(), true);
    }

    // ---- mapped transfers vs frees ----
    // An in-place write or a data read uses a host offset it looked up without a lock; a discard
    // may unmap that cluster meanwhile. Its free is applied only once every such transfer that
    // started before the writeback (which captured the free) has completed, so a freed cluster is
    // never reused while an old transfer may still reach it.

    private long epoch;
    private int mappedOld;
    private int mappedCur;
    private boolean wbWaitsMapped;

    private void startMapped(Req r) {
        r.mapped = true;
        r.mappedEpoch = epoch;
        mappedCur++;
    }

    private void endMapped(Req r) {
        r.mapped = false;
        if (r.mappedEpoch < epoch) {
            if (--mappedOld == 0 && wbWaitsMapped) {
                wbWaitsMapped = false;
                wake(wb);
            }
        } else {
            mappedCur--;
        }
    }

    // ================================================================ writeback

    /** Starts the writeback chain, or asks the running one to run again when it ends. */
    private void startWriteback() {
        if (wbActive) {
            wbAgain = true;
            return;
        }
        wbActive = true;
        wbAgain = false;
        epoch++;
        mappedOld += mappedCur;
        mappedCur = 0;
        wbErr = 0;
        wbPhase = 0;
        wbPending = 0;
        wbFreeIdx = 0;
        ArrayList<Req> f = flushers;
        flushers = nextFlushers;
        nextFlushers = f;
        long[] p = wbFrees;
        wbFrees = pendingFrees;
        wbFreeCount = pendingFreeCount;
        pendingFrees = p;
        pendingFreeCount = 0;
        if (flushErrno != 0) {
            wbErr = flushErrno;
        }
        wbAdvance();
    }

    private static final int P_RB = 0;
    private static final int P_RT = 2;
    private static final int P_HDR = 4;
    private static final int P_L2 = 6;
    private static final int P_L1 = 8;
    private static final int P_FINAL_FLUSH = 9;
    private static final int P_FREES = 10;
    private static final int P_DONE = 11;

    private void wbAdvance() {
        while (wbPending == 0) {
            if (wbErr != 0 || wbPhase >= P_DONE) {
                wbFinish();
                return;
            }
            int phase = wbPhase++;
            try {
                if (phase == P_FREES && wbFreeCount > 0 && mappedOld > 0) {
                    wbPhase--;
                    wbWaitsMapped = true; // endMapped resumes the writeback
                    return;
                }
                if (phase == P_FREES) {
                    if (!applyFrees(wb, false)) {
                        wbPhase--;
                        return; // parked on a refcount block load: Wb.resume continues
                    }
                    issuePunches();
                } else if (phase == P_FINAL_FLUSH || (phase & 1) == 1) {
                    if (phase == P_FINAL_FLUSH || wbPhaseWrote) {
                        file.flush(wb.io);
                        wbPending++; // completions never run inside the submitting call
                    }
                    wbPhaseWrote = false;
                } else {
                    wbPhaseWrote = issueWrites(phase, false);
                }
            } catch (BlockException e) {
                wbErr = e.errno();
                LOG.error("qcow2: metadata writeback failed: {}", e.getMessage());
            } catch (RuntimeException e) {
                wbErr = unexpected("writing back metadata", e).errno();
            }
        }
    }

    /** The writeback as a waiter (refcount block loads of the frees phase) and its I/O completion. */
    private final class Wb implements Waiter {
        final IoCompletion io = this::done;
        final IoCompletion punchDone = errno -> { metaInFlight--; done(0); };

        void done(int errno) {
            if (errno != 0 && wbErr == 0) wbErr = errno;
            if (--wbPending == 0) wbAdvance();
        }

        @Override
        public void resume() { wbAdvance(); }

        @Override
        public void fail(int errno) {
            if (wbErr == 0) wbErr = errno;
            wbAdvance();
        }
    }

    /**
     * Writes every dirty table of {@code cache} after the overlap check: a table must not land on
     * fixed metadata nor on a table of the other kind ({@code others}). True when anything was written.
     */
    private boolean writeDirtyTables(Cache cache, String kind, LongSet others, String otherKind, boolean sync) throws BlockException {
        boolean any = false;
        for (Table t : cache.slots) {
            if (!t.dirty || t.offset < 0) continue;
            String o = rangeAt(t.offset, clusterSize);
            if (o == null && others.contains(t.offset >>> clusterBits)) o = otherKind;
            if (o != null) throw corruption("Preventing invalid write on metadata (" + kind + " overlaps with " + o + ")");
            tableWrite(t, sync);
            any = true;
        }
        return any;
    }

    /** Issues (or, sync, performs) the writes of one phase; true when anything was written. */
    private boolean issueWrites(int phase, boolean sync) throws BlockException {
        boolean any = false;
        switch (phase) {
            case P_RB -> any = writeDirtyTables(rbCache, "refcount block", l2Set, "active L2 table", sync);
            case P_RT -> {
                if (rtRelocated) {
                    metaWrite(reftableOffset, rt, reftableClusters << clusterBits, sync);
                    any = true;
                } else if (rtDirtyHi > rtDirtyLo) {
                    long from = rtDirtyLo * ioUnit;
                    long len = Math.min((rtDirtyHi - rtDirtyLo) * ioUnit, (reftableClusters << clusterBits) - from);
                    metaWrite(reftableOffset + from, rt + from, len, sync);
                    any = true;
                }
                rtDirtyLo = Long.MAX_VALUE;
                rtDirtyHi = -1;
            }
            case P_HDR -> {
                if (rtRelocated) {
                    putBe64(hdr + HDR_REFCOUNT_TABLE_OFFSET, reftableOffset);
                    putBe32(hdr + HDR_REFCOUNT_TABLE_CLUSTERS, reftableClusters);
                    rtRelocated = false;
                    metaWrite(0, hdr, headerWriteLen(), sync);
                    any = true;
                }
            }
            case P_L2 -> any = writeDirtyTables(l2Cache, "L2 table", rbSet, "refcount block", sync);
            case P_L1 -> {
                if (l1DirtyHi > l1DirtyLo) {
                    long from = l1DirtyLo * ioUnit;
                    long len = Math.min((l1DirtyHi - l1DirtyLo) * ioUnit, file.size() - (l1Offset + from));
                    len = Math.min(len, ((l1Size * 8 + csMask) & ~csMask) - from);
                    metaWrite(l1Offset + from, l1 + from, len, sync);
                    any = true;
                }
                l1DirtyLo = Long.MAX_VALUE;
                l1DirtyHi = -1;
            }
            default -> throw new IllegalStateException("writeback phase " + phase);
        }
        return any;
    }

    private void tableWrite(Table t, boolean sync) throws BlockException {
        if (sync) {
            file.write(t.offset, t.addr, clusterSize, false);
            t.dirty = false;
            return;
        }
        file.write(t.offset, t.addr, clusterSize, false, errno -> {
            t.writing = false;
            if (errno == 0) t.dirty = false;
            wb.done(errno);
        });
        t.writing = true;
        wbPending++;
    }

    private void metaWrite(long off, long addr, long len, boolean sync) throws BlockException {
        if (sync) {
            file.write(off, addr, (int) len, false);
            return;
        }
        file.write(off, addr, (int) len, false, wb.io);
        wbPending++;
    }

    /** Applies the frees captured at writeback start; false when parked on a refcount block load. */
    private boolean applyFrees(Waiter w, boolean sync) throws BlockException {
        while (wbFreeIdx < wbFreeCount) {
            long off = wbFrees[wbFreeIdx];
            long c = off >>> clusterBits;
            long rbi = c >>> rbBits;
            long rbOff = rbi < rtEntries ? rbOffset(rbi) : 0;
            if (rbOff == 0) {
                wbFreeIdx++;
                corruption("freeing cluster " + c + " that has no refcount block");
                continue;
            }
            Table t = sync ? rbCache.getSync(rbOff) : rbCache.get(rbOff, w, true);
            if (t == null) return false;
            int i = (int) (c & (rbEntries - 1));
            long rc = getRc(t.addr, i);
            wbFreeIdx++;
            if (rc == 0) {
                corruption("refcount of cluster " + c + " would drop below 0");
                continue;
            }
            setRc(t.addr, i, rc - 1);
            rbCache.markDirty(t);
            if (rc == 1) {
                freeClusterIndex = Math.min(freeClusterIndex, c);
                l2Set.remove(c);
                l2Cache.drop(off);
                rbCache.drop(off);
                if (dcKey != -1) dcKey = -1;
                if (options.passDiscardRequest()) punches.add(off);
            }
        }
        wbFreeCount = 0;
        wbFreeIdx = 0;
        return true;
    }

    /** Punches freed clusters in the file; the writeback waits for them before clusters are reused. */
    private void issuePunches() {
        for (Long off : punches) {
            try {
                file.discard(off, clusterSize, wb.punchDone);
                wbPending++; // completions never run inside the submitting call
                metaInFlight++;
            } catch (BlockException e) {
                // advisory: a failed punch only leaves the data in place
            }
        }
        punches.clear();
    }

    private void wbFinish() {
        int err = wbErr;
        if (err != 0 && flushErrno == 0) flushErrno = err;
        wbActive = false;
        ArrayList<Req> done = new ArrayList<>(flushers);
        flushers.clear();
        for (Req r : done) {
            r.fuaDone = true;
            finish(r, err);
        }
        wakeAll(wbWaiters);
        if (!closed && (wbAgain || !nextFlushers.isEmpty())) startWriteback();
        checkIdle();
    }

    /**
     * Writes back all metadata synchronously and flushes the child: for the final close, when
     * nothing is in flight. Fails with EBUSY otherwise.
     */
    @Override
    public void flush() throws BlockException {
        checkOpen();
        if (readOnly) return;
        if (inFlight() != 0) throw new BlockException(EBUSY, "qcow2: synchronous flush with requests in flight");
        if (flushErrno != 0) throw new BlockException(flushErrno, "qcow2: an earlier flush failed; data may be lost");
        try {
            for (int round = 0; round < 3; round++) {
                long[] p = wbFrees;
                wbFrees = pendingFrees;
                wbFreeCount = pendingFreeCount;
                wbFreeIdx = 0;
                pendingFrees = p;
                pendingFreeCount = 0;
                boolean wrote = false;
                for (int phase = P_RB; phase <= P_L1; phase += 2) {
                    if (issueWrites(phase, true)) {
                        wrote = true;
                        file.flush();
                    }
                }
                if (!wrote) file.flush();
                applyFrees(null, true);
                for (Long off : punches) {
                    try {
                        file.discard(off, clusterSize);
                    } catch (BlockException e) {
                        // advisory
                    }
                }
                punches.clear();
                if (!anyDirty()) break;
            }
        } catch (BlockException e) {
            flushErrno = e.errno();
            throw e;
        }
    }

    private boolean anyDirty() {
        if (pendingFreeCount > 0 || rtRelocated || rtDirtyHi > rtDirtyLo || l1DirtyHi > l1DirtyLo) return true;
        for (Table t : rbCache.slots) if (t.dirty) return true;
        for (Table t : l2Cache.slots) if (t.dirty) return true;
        return false;
    }

    // ================================================================ block status

    private final Mapping statusMap = new Mapping();
    private final BlockStatus fileStatus = new BlockStatus();
    /** 0 unknown, 1 yes, 2 no: see {@link #metadataPreallocation}. */
    private int metadataPrealloc;

    /**
     * QEMU's qcow2_detect_metadata_preallocation: the image was preallocated with metadata when
     * far more clusters have a refcount than the file has blocks on disk. Decided once, at the
     * first block status (synchronous refcount block reads).
     */
    private boolean metadataPreallocation() throws BlockException {
        if (metadataPrealloc == 0) {
            metadataPrealloc = 2;
            long real = file.allocatedSize();
            if (real >= 0) {
                long realClusters = real >>> clusterBits; // floor, as QEMU
                long threshold = Math.max(realClusters * 10 / 9, realClusters + 2);
                long end = (file.size() + csMask) >>> clusterBits;
                long count = 0;
                for (long c = 0; c < end && count < threshold; c++) {
                    long rbi = c >>> rbBits;
                    if (rbi >= rtEntries) break;
                    long rbOff = rbOffset(rbi);
                    if (rbOff == 0) {
                        c |= rbEntries - 1; // no block: nothing counted in its range
                        continue;
                    }
                    Table t = rbCache.lookup(rbOff);
                    long a;
                    if (t != null && !t.loading) {
                        a = t.addr;
                    } else {
                        file.read(rbOff, statusBuf, clusterSize);
                        a = statusBuf;
                    }
                    int from = (int) (c & (rbEntries - 1));
                    int to = (int) Math.min(rbEntries, from + (end - c));
                    for (int i = from; i < to && count < threshold; i++) if (getRc(a, i) != 0) count++;
                    c = (rbi << rbBits) + to - 1;
                }
                if (count >= threshold) metadataPrealloc = 1; // QEMU: cluster_count >= threshold
            }
        }
        return metadataPrealloc == 1;
    }

    @Override
    public void status(long offset, long maxLength, BlockStatus out) throws BlockException {
        checkOpen();
        assert home == null || home.inThread() : "qcow2 block status off its home IOThread";
        if (offset < 0 || offset >= size || maxLength <= 0) {
            throw new BlockException(EINVAL, "block status at " + offset + " (+" + maxLength + ") outside image of size " + size);
        }
        long limit = Math.min(maxLength, size - offset);
        try {
            map(null, statusMap, offset, limit, true);
        } catch (RuntimeException e) {
            throw unexpected("block status at " + offset, e);
        }
        long len = statusMap.runLen;
        switch (statusMap.kind) {
            case K_COMPRESSED -> out.set(len, 0, 1);
            case K_DATA -> {
                // As QEMU: in an image preallocated with metadata only, the file says whether the
                // mapped range is a hole; then it is data that reads as zeros.
                long host = statusMap.host;
                long fs = file.size();
                if (!metadataPreallocation()) {
                    out.set(len, 0, 1);
                } else if (host >= fs) {
                    out.set(len, BlockStatus.ZERO, 1);
                } else {
                    file.status(host, Math.min(len, fs - host), fileStatus);
                    long l = Math.max(1, Math.min(fileStatus.length, len));
                    out.set(l, (fileStatus.flags & BlockStatus.ZERO) != 0 ? BlockStatus.ZERO : 0, 1);
                }
            }
            // As QEMU: a zero cluster is ZERO without DATA (NBD: HOLE|ZERO) but allocated here (depth 1).
            case K_ZERO -> out.set(len, BlockStatus.HOLE | BlockStatus.ZERO, 1);
            default -> {
                long part = backingPart(offset, len);
                if (part == 0) {
                    out.set(len, BlockStatus.HOLE | BlockStatus.ZERO, 0);
                } else {
                    backing.status(offset, part, out);
                    out.length = Math.max(1, Math.min(out.length, part));
                    if (out.depth > 0) out.depth++;
                }
            }
        }
    }

    // ================================================================ close

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        for (Req r : allReqs) r.free();
        for (long a : allocations) RawMemory.free(a);
        allocations.clear();
        l2Cache.free();
        rbCache.free();
        if (rtBase != 0) RawMemory.free(rtBase);
        rtBase = 0;
        inflater.end();
    }

    /** Internal state for diagnostics (tests, hang reports). Home thread. */
    String debugState() {
        StringBuilder b = new StringBuilder();
        b.append("file=").append(file.inFlight()).append(" guest=").append(guestInFlight).append(" meta=").append(metaInFlight).append(" wbActive=").append(wbActive)
                .append(" phase=").append(wbPhase).append(" pending=").append(wbPending).append(" wbWaiters=").append(wbWaiters.size())
                .append(" flushers=").append(flushers.size()).append("/").append(nextFlushers.size()).append(" lockers=");
        for (Req r : lockers) b.append(r.lockCluster).append("(st").append(r.state).append(",w").append(r.lockWaiters.size()).append(") ");
        for (Cache c : new Cache[] {l2Cache, rbCache}) {
            b.append("\n").append(c.name).append(":");
            for (Table t : c.slots) {
                b.append(" [").append(t.offset).append(t.loading ? " L" : "").append(t.dirty ? " D" : "").append(t.writing ? " W" : "")
                        .append(" w").append(t.waiters.size()).append("]");
            }
        }
        return b.toString();
    }

    @Override
    public String toString() {
        return "Qcow2Driver[v" + version + ", size=" + size + ", cluster=" + clusterSize + (extL2 ? ", extended-l2" : "")
                + (readOnly ? ", ro" : "") + (corrupt ? ", corrupt" : "") + "]";
    }

    // ================================================================ the metadata caches

    /** One cached table (an L2 table or a refcount block): a cluster of aligned native memory. */
    static final class Table {
        long offset = -1;
        /** Position in the cache's slot list. */
        int index;
        long base;
        long addr;
        boolean loading;
        boolean dirty;
        boolean writing;
        /** Requests that hold this table across a park (never evicted meanwhile). */
        int pins;
        /** Loaded and not used yet: not evicted before its waiters ran (no thrashing livelock). */
        boolean fresh;
        long lastUse;
        final ArrayList<Waiter> waiters = new ArrayList<>(2);
    }

    /**
     * A write-back LRU cache of tables keyed by host offset. Misses start an asynchronous child
     * read and park the waiter; dirty tables are never evicted (a writeback cleans them first).
     */
    final class Cache {
        final String name;
        final int capacity;
        final ArrayList<Table> slots = new ArrayList<>();
        /** Offset (cluster index) to slot, open addressing: keys and slot indices. */
        private long[] keys = new long[16];
        private int[] vals = new int[16];
        long clock;

        Cache(String name, int capacity) {
            this.name = name;
            this.capacity = capacity;
            java.util.Arrays.fill(keys, -1);
        }

        /** Removed keys (tombstones) since the last rebuild. */
        private int tombs;

        Table lookup(long off) {
            long k = off >>> clusterBits;
            int mask = keys.length - 1;
            for (int i = hash(k, mask); ; i = (i + 1) & mask) {
                if (keys[i] == k) return slots.get(vals[i]);
                if (keys[i] == -1) return null;
            }
        }

        /** Re-keys slot {@code t} from its old offset to {@code off} (-1: unmapped). */
        private void remap(Table t, long off) {
            if (t.offset >= 0) {
                long k = t.offset >>> clusterBits;
                int mask = keys.length - 1;
                for (int i = hash(k, mask); ; i = (i + 1) & mask) {
                    if (keys[i] == -1) break;
                    if (keys[i] == k && slots.get(vals[i]) == t) {
                        keys[i] = -2; // tombstone: lookups continue past it
                        tombs++;
                        break;
                    }
                }
            }
            t.offset = off;
            if (off < 0) return;
            if ((slots.size() + tombs) * 2 >= keys.length) {
                rebuild();
                return;
            }
            insert(off >>> clusterBits, t.index);
        }

        private int hash(long k, int mask) {
            long x = k * 0x9E3779B97F4A7C15L;
            return (int) (x ^ (x >>> 32)) & mask;
        }

        private void rebuild() {
            tombs = 0;
            int cap = Integer.highestOneBit(Math.max(16, slots.size() * 4) - 1) << 1;
            keys = new long[cap];
            vals = new int[cap];
            java.util.Arrays.fill(keys, -1);
            for (int s = 0; s < slots.size(); s++) {
                Table t = slots.get(s);
                if (t.offset >= 0) insert(t.offset >>> clusterBits, s);
            }
        }

        private void insert(long k, int s) {
            int mask = keys.length - 1;
            for (int i = hash(k, mask); ; i = (i + 1) & mask) {
                if (keys[i] < 0) {
                    keys[i] = k;
                    vals[i] = s;
                    return;
                }
            }
        }

        /** A clean slot to reuse (LRU), a new one while below capacity (or when forced), else null. */
        private Table victim(boolean force) {
            if (slots.size() < capacity) return newSlot();
            Table best = null;
            boolean anyDirty = false;
            for (Table t : slots) {
                anyDirty |= t.dirty;
                if (t.loading || t.writing || t.dirty || t.pins > 0 || t.fresh) continue;
                if (best == null || t.lastUse < best.lastUse) best = t;
            }
            // Every slot busy (loading, pinned, just loaded) and none to clean: exceed the capacity
            // rather than wait for nothing (bounded by the requests in flight).
            if (best == null && (force || !anyDirty)) return newSlot();
            return best;
        }

        private Table newSlot() {
            Table t = new Table();
            t.index = slots.size();
            t.base = NativeAlloc.allocate(clusterSize, ALIGN);
            t.addr = NativeAlloc.aligned(t.base, ALIGN);
            slots.add(t);
            return t;
        }

        private void assign(Table t, long off) {
            remap(t, off);
            t.lastUse = ++clock;
        }

        /** The table at {@code off}, or null with {@code w} parked (on its load, or on a writeback). */
        Table get(long off, Waiter w, boolean force) throws BlockException {
            Table t = lookup(off);
            if (t != null) {
                if (t.loading) {
                    t.waiters.add(w);
                    return null;
                }
                t.lastUse = ++clock;
                t.fresh = false;
                return t;
            }
            t = victim(force);
            if (t == null) {
                if (flushErrno != 0) throw new BlockException(flushErrno, "qcow2: metadata writeback failed earlier; no free " + name + " cache slot");
                wbWaiters.add(w);
                startWriteback();
                return null;
            }
            assign(t, off);
            t.loading = true;
            t.waiters.add(w);
            metaInFlight++;
            Table tt = t;
            try {
                file.read(off, t.addr, clusterSize, errno -> loaded(tt, errno));
            } catch (BlockException e) {
                metaInFlight--;
                t.loading = false;
                t.waiters.clear();
                remap(t, -1);
                throw e;
            }
            return null;
        }

        /** Synchronous variant (the sync flush): reads a missing table now. */
        Table getSync(long off) throws BlockException {
            Table t = lookup(off);
            if (t != null && !t.loading) return t;
            if (t != null) throw new BlockException(EBUSY, "qcow2: " + name + " table is being loaded");
            t = victim(true);
            file.read(off, t.addr, clusterSize);
            assign(t, off);
            return t;
        }

        private void loaded(Table t, int errno) {
            metaInFlight--;
            t.loading = false;
            List<Waiter> ws = new ArrayList<>(t.waiters);
            t.waiters.clear();
            if (errno != 0) {
                remap(t, -1);
                for (Waiter w : ws) w.fail(errno);
            } else {
                t.fresh = true;
                t.lastUse = ++clock;
                for (Waiter w : ws) wake(w);
            }
            checkIdle();
        }

        /** Forgets a clean table whose cluster was freed (it may come back as another table). */
        void drop(long off) {
            Table t = lookup(off);
            if (t != null && !t.loading && !t.writing && !t.dirty && t.pins == 0) {
                remap(t, -1);
            }
        }

        /** A new zeroed dirty table at {@code off} (a new L2 table or refcount block); may exceed capacity. */
        Table create(long off) {
            Table t = lookup(off);
            if (t != null && (t.loading || t.writing)) {
                remap(t, -1); // a stale copy of a freed cluster: never looked up again
                t = null;
            }
            if (t == null) t = victim(true);
            RawMemory.fill(t.addr, clusterSize, 0);
            assign(t, off);
            t.dirty = true;
            return t;
        }

        void markDirty(Table t) { t.dirty = true; }

        void free() {
            for (Table t : slots) RawMemory.free(t.base);
            slots.clear();
        }
    }
}
