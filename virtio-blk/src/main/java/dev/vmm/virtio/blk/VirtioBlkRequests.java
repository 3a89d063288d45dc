package dev.vmm.virtio.blk;

import static dev.vmm.virtio.blk.VirtioBlk.*;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStats;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.stats.ExportStats;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.DescriptorChain;
import java.nio.charset.StandardCharsets;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Parses, executes and finishes virtio-blk requests (virtio 1.2 §5.2.6) against a block driver,
 * in three steps as Firecracker's {@code request.rs}: {@link #parse} reads and validates the
 * guest's request into a {@link VirtioBlkRequest}, {@link #execute} submits it to the
 * asynchronous driver, {@link #finish} turns the outcome into the status byte. A request is a
 * descriptor chain whose byte stream holds a 16-byte header (le32 type, le32 reserved, le64
 * sector), then data (device-readable for OUT, device-writable for IN), then one writable status
 * byte. Data moves with one {@code preadv}/{@code pwritev} over iovecs that point into guest
 * memory: no copy in the JVM.
 *
 * <p>A guest is untrusted: every length and sector is checked before any I/O, a malformed
 * request gets {@link VirtioBlk#VIRTIO_BLK_S_IOERR} (or UNSUPP) and is counted and logged once,
 * and the chain's segments were bounds-checked by the virtqueue at pop time.
 *
 * <p>Thread contract: one instance per virtqueue, used on the device's home IOThread only; it
 * owns native scratch memory (used inside {@link #parse} only) and allocates nothing per request.
 */
final class VirtioBlkRequests implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(VirtioBlkRequests.class);

    /** Segments one request may have; matches the iovec array (seg_max is announced below it). */
    static final int MAX_SEGMENTS = 1024;

    private final String exportId;
    private final BlockDriver driver;
    private final BlockStats stats;
    /** The export's counters, beside the node's; every non-OK status counts as an error there. */
    private final ExportStats exportStats;
    private final long sizeBytes;
    private final boolean readOnly;
    private final VirtioBlkConfig config;
    /** 16 bytes of header or one discard segment, and the id string, in native memory (parse only). */
    private final long scratch = RawMemory.allocate(64);
    private final byte[] id;
    private boolean warnedMalformed;

    VirtioBlkRequests(String exportId, BlockDriver driver, BlockStats stats, ExportStats exportStats, boolean readOnly,
            VirtioBlkConfig config) {
        this.exportId = exportId;
        this.driver = driver;
        this.stats = stats;
        this.exportStats = exportStats;
        this.sizeBytes = driver.size();
        this.readOnly = readOnly;
        this.config = config;
        byte[] b = exportId.getBytes(StandardCharsets.UTF_8);
        this.id = java.util.Arrays.copyOf(b, Math.min(b.length, VIRTIO_BLK_ID_BYTES));
    }

    BlockStats stats() { return stats; }

    ExportStats exportStats() { return exportStats; }

    /**
     * Parse (Firecracker's {@code Request::parse}): validates the chain and the header read from
     * guest memory and fills {@code r} (type, disk range, iovecs, status byte location). Returns
     * true when the request needs the block driver ({@link #execute}); false when its status is
     * decided already ({@code r.status}: a malformed request, UNSUPP, GET_ID, a zero-length I/O),
     * then {@link #finish} with errno 0 answers it.
     */
    boolean parse(VirtioBlkRequest r) {
        DescriptorChain chain = r.chain;
        long total = chain.totalLength();
        long readable = chain.readableLength();
        r.op = VirtioBlkRequest.OP_NONE;
        r.dataWritten = 0;
        r.iovcnt = 0;
        r.unmap = false;
        r.type = -1;
        r.sector = 0;
        // The status byte is the chain's last byte, inside the writable part: one byte always lies
        // in one segment, which the virtqueue bounds-checked at pop.
        r.statusAddr = chain.writableLength() < 1 ? 0 : chain.contiguous(total - 1, 1);
        if (readable < REQUEST_HEADER_SIZE || r.statusAddr == 0) {
            malformed("a request needs a 16-byte readable header and a writable status byte");
            return decided(r, VIRTIO_BLK_S_IOERR);
        }
        chain.copyOut(0, scratch, REQUEST_HEADER_SIZE); // inside the readable part: checked above
        int type = RawMemory.getLe32(scratch);
        long sector = RawMemory.getLe64(scratch + 8);
        r.type = type;
        r.sector = sector;
        switch (type) {
            case VIRTIO_BLK_T_IN -> {
                long dataLength = total - 1 - readable; // writable part less the status byte
                if (!checkData(dataLength, type) || !checkIo(sector, dataLength, type)) return decided(r, VIRTIO_BLK_S_IOERR);
                r.op = VirtioBlkRequest.OP_READ;
                r.dataWritten = dataLength;
                return data(r, readable, dataLength);
            }
            case VIRTIO_BLK_T_OUT -> {
                long dataLength = readable - REQUEST_HEADER_SIZE;
                if (readOnly) return decided(r, VIRTIO_BLK_S_IOERR);
                if (!checkData(dataLength, type) || !checkIo(sector, dataLength, type)) return decided(r, VIRTIO_BLK_S_IOERR);
                r.op = VirtioBlkRequest.OP_WRITE;
                return data(r, REQUEST_HEADER_SIZE, dataLength);
            }
            case VIRTIO_BLK_T_FLUSH -> {
                r.op = VirtioBlkRequest.OP_FLUSH;
                r.status = VIRTIO_BLK_S_OK;
                return true;
            }
            case VIRTIO_BLK_T_GET_ID -> {
                long room = total - 1 - readable;
                int n = (int) Math.min(room, VIRTIO_BLK_ID_BYTES);
                for (int i = 0; i < n; i++) RawMemory.putByte(scratch + 16 + i, i < id.length ? id[i] : 0);
                chain.copyIn(scratch + 16, readable, n); // inside the writable part: n <= room
                r.op = VirtioBlkRequest.OP_OTHER;
                r.dataWritten = n;
                return decided(r, VIRTIO_BLK_S_OK);
            }
            case VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES -> {
                return parseDiscardOrZero(r, type, readable);
            }
            default -> {
                return decided(r, VIRTIO_BLK_S_UNSUPP);
            }
        }
    }

    /** IN/OUT data part {@code [at, at + length)} of the chain as iovecs; true when there is I/O to do. */
    private boolean data(VirtioBlkRequest r, long at, long length) {
        r.offset = r.sector << SECTOR_SHIFT;
        r.length = length;
        if (length == 0) return decided(r, VIRTIO_BLK_S_OK);
        int n = r.chain.fillIovecs(r.iov, at, length);
        if (n < 0) {
            r.op = VirtioBlkRequest.OP_NONE;
            r.dataWritten = 0;
            malformed(requestName(r.type) + " with more than " + MAX_SEGMENTS + " segments");
            return decided(r, VIRTIO_BLK_S_IOERR);
        }
        r.iovcnt = n;
        r.status = VIRTIO_BLK_S_OK;
        return true;
    }

    private static boolean decided(VirtioBlkRequest r, int status) {
        r.status = status;
        if (status != VIRTIO_BLK_S_OK) {
            r.op = VirtioBlkRequest.OP_NONE;
            r.dataWritten = 0;
        }
        return false;
    }

    /**
     * Execute (Firecracker's {@code Request::execute} on the async engine): submits the parsed
     * request to the block driver with {@code r} as its completion. Returns true when the driver
     * accepted it ({@link VirtioBlkRequest#ioDone} runs later); false when it refused it at once
     * ({@code r.status} is IOERR, logged), then {@link #finish} answers it. Anything else the
     * driver throws is a bug or a fault, for the caller.
     */
    boolean execute(VirtioBlkRequest r) {
        try {
            switch (r.op) {
                case VirtioBlkRequest.OP_READ -> driver.readv(r.offset, r.iov.address(), r.iovcnt, r.length, r);
                // Writethrough (the driver cleared the writeback byte): each write is FUA.
                case VirtioBlkRequest.OP_WRITE -> driver.writev(r.offset, r.iov.address(), r.iovcnt, r.length, !config.writeback, r);
                case VirtioBlkRequest.OP_FLUSH -> driver.flush(r);
                case VirtioBlkRequest.OP_DISCARD -> driver.discard(r.offset, r.length, r);
                case VirtioBlkRequest.OP_ZEROES -> driver.writeZeroes(r.offset, r.length, r.unmap, false, !config.writeback, r);
                default -> throw new IllegalStateException("nothing to execute for " + requestName(r.type));
            }
            return true;
        } catch (BlockException e) {
            LOG.warn("vhost-user-blk export '{}': {} at sector {} failed: {}", exportId, requestName(r.type), r.sector, e.getMessage());
            r.op = VirtioBlkRequest.OP_NONE;
            r.dataWritten = 0;
            r.status = VIRTIO_BLK_S_IOERR;
            return false;
        }
    }

    /**
     * Finish (Firecracker's {@code Request::finish}): the outcome of {@code r} ({@code errno} from
     * the driver, 0 when it was decided without I/O) becomes its status; the counters are updated;
     * with {@code answer} the status byte is written into guest memory. Returns the used length:
     * the bytes written into the writable part, status byte included, 0 when there is no status
     * byte. Without {@code answer} (the ring was given up) nothing in guest memory is touched.
     */
    int finish(VirtioBlkRequest r, int errno, boolean answer) {
        int status = r.status;
        if (errno != 0 && status == VIRTIO_BLK_S_OK) {
            status = VIRTIO_BLK_S_IOERR;
            LOG.warn("vhost-user-blk export '{}': {} at sector {} failed: {}", exportId, requestName(r.type), r.sector,
                    LibC.describe(errno));
        }
        if (status == VIRTIO_BLK_S_OK) {
            switch (r.op) {
                case VirtioBlkRequest.OP_READ -> {
                    stats.readOps.increment();
                    stats.readBytes.add(r.length);
                    exportStats.read(r.length);
                }
                case VirtioBlkRequest.OP_WRITE -> {
                    stats.writeOps.increment();
                    stats.writeBytes.add(r.length);
                    exportStats.write(r.length);
                }
                case VirtioBlkRequest.OP_FLUSH -> {
                    stats.flushOps.increment();
                    exportStats.otherOps.increment();
                }
                case VirtioBlkRequest.OP_DISCARD -> {
                    stats.discardOps.increment();
                    exportStats.otherOps.increment();
                }
                case VirtioBlkRequest.OP_ZEROES -> {
                    stats.zeroOps.increment();
                    exportStats.otherOps.increment();
                }
                case VirtioBlkRequest.OP_OTHER -> exportStats.otherOps.increment();
                default -> { }
            }
        }
        if (r.statusAddr == 0 || status != VIRTIO_BLK_S_OK) {
            stats.errors.increment();
            exportStats.errors.increment();
        }
        if (r.statusAddr == 0) return 0; // nowhere to put a status: the used length says nothing was written
        if (answer) RawMemory.putByte(r.statusAddr, status); // the chain's last byte, checked at pop
        return (int) ((status == VIRTIO_BLK_S_OK ? r.dataWritten : 0) + 1);
    }

    /** Largest data part of one request: keeps the used length (an le32) and each syscall sane. */
    static final long MAX_REQUEST_BYTES = 256L << 20;

    /** The data of one IN/OUT: at most {@link #MAX_REQUEST_BYTES}, so the used length fits an le32. */
    private boolean checkData(long length, int type) {
        if (length <= MAX_REQUEST_BYTES) return true;
        malformed(requestName(type) + " of " + length + " bytes (more than " + MAX_REQUEST_BYTES + ")");
        return false;
    }

    /** Sector-aligned length, inside the disk. */
    private boolean checkIo(long sector, long length, int type) {
        if ((length & (SECTOR_SIZE - 1)) != 0) {
            malformed(requestName(type) + " of " + length + " bytes is not a whole number of sectors");
            return false;
        }
        if (sector < 0 || sector > (sizeBytes >>> SECTOR_SHIFT) || length > sizeBytes - (sector << SECTOR_SHIFT)) {
            malformed(requestName(type) + " beyond the end of the disk (sector " + sector + ")");
            return false;
        }
        return true;
    }

    /** Discard / write-zeroes: segments of {le64 sector, le32 num_sectors, le32 flags}; we accept one (max_*_seg = 1). */
    private boolean parseDiscardOrZero(VirtioBlkRequest r, int type, long readable) {
        long segBytes = readable - REQUEST_HEADER_SIZE;
        if (segBytes <= 0 || segBytes % DISCARD_SEGMENT_SIZE != 0) {
            malformed(requestName(type) + " with " + segBytes + " bytes of segments");
            return decided(r, VIRTIO_BLK_S_IOERR);
        }
        if (segBytes / DISCARD_SEGMENT_SIZE > 1) {
            malformed(requestName(type) + " with more segments than max_discard_seg");
            return decided(r, VIRTIO_BLK_S_UNSUPP);
        }
        if (readOnly) return decided(r, VIRTIO_BLK_S_IOERR);
        r.chain.copyOut(REQUEST_HEADER_SIZE, scratch, DISCARD_SEGMENT_SIZE); // inside the readable part: checked above
        long sector = RawMemory.getLe64(scratch);
        long sectors = RawMemory.getLe32(scratch + 8) & 0xFFFF_FFFFL;
        int flags = RawMemory.getLe32(scratch + 12);
        boolean unmap = (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0;
        r.sector = sector;
        // §5.2.6.2: UNMAP is only defined for write zeroes; other flag bits are reserved.
        if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0 || (type == VIRTIO_BLK_T_DISCARD && unmap)) {
            return decided(r, VIRTIO_BLK_S_UNSUPP);
        }
        long max = type == VIRTIO_BLK_T_DISCARD ? config.maxDiscardSectors : config.maxWriteZeroesSectors;
        if (sectors > max || !checkIo(sector, sectors << SECTOR_SHIFT, type)) return decided(r, VIRTIO_BLK_S_IOERR);
        if (sectors == 0) return decided(r, VIRTIO_BLK_S_OK); // nothing to do, nothing counted
        r.op = type == VIRTIO_BLK_T_DISCARD ? VirtioBlkRequest.OP_DISCARD : VirtioBlkRequest.OP_ZEROES;
        r.offset = sector << SECTOR_SHIFT;
        r.length = sectors << SECTOR_SHIFT;
        r.unmap = unmap;
        r.status = VIRTIO_BLK_S_OK;
        return true;
    }

    /** A possibly malicious driver: counted, logged once per queue at WARN, then at DEBUG. */
    private void malformed(String what) {
        if (!warnedMalformed) {
            warnedMalformed = true;
            LOG.warn("vhost-user-blk export '{}': guest sent a malformed request: {} (further ones are logged at debug)", exportId, what);
        } else {
            LOG.debug("vhost-user-blk export '{}': malformed request: {}", exportId, what);
        }
    }

    @Override
    public void close() {
        RawMemory.free(scratch);
    }
}
