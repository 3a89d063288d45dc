package dev.vmm.virtio.blk;

import static dev.vmm.virtio.blk.VirtioBlk.*;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.BlockStats;
import dev.vmm.core.stats.ExportStats;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.DescriptorChain;
import dev.vmm.virtio.queue.IovecArray;
import java.nio.charset.StandardCharsets;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Executes virtio-blk requests (virtio 1.2 §5.2.6) against a block driver. A request is a
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
 * owns native scratch memory and allocates nothing per request.
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
    private final IovecArray iov = new IovecArray(MAX_SEGMENTS);
    /** 16 bytes of header or one discard segment, and the id string, in native memory. */
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
     * Runs one request and writes its status byte. Returns the number of bytes written into the
     * chain's device-writable part (the used length), 0 when not even a status byte fits.
     */
    int execute(DescriptorChain chain) {
        long total = chain.totalLength();
        long readable = chain.readableLength();
        if (readable < REQUEST_HEADER_SIZE || chain.writableLength() < 1) {
            malformed("a request needs a 16-byte readable header and a writable status byte");
            return complete(chain, VIRTIO_BLK_S_IOERR, 0);
        }
        chain.copyOut(0, scratch, REQUEST_HEADER_SIZE); // inside the readable part: checked above
        int type = RawMemory.getLe32(scratch);
        long sector = RawMemory.getLe64(scratch + 8);
        long dataOffset;
        long dataLength;
        try {
            switch (type) {
                case VIRTIO_BLK_T_IN -> {
                    dataOffset = readable;
                    dataLength = total - 1 - readable; // writable part less the status byte
                    if (!checkData(dataLength, type) || !checkIo(sector, dataLength, type)) return complete(chain, VIRTIO_BLK_S_IOERR, 0);
                    if (dataLength > 0) {
                        int n = chain.fillIovecs(iov, dataOffset, dataLength);
                        if (n < 0) return tooManySegments(chain, type);
                        driver.readv(sector << SECTOR_SHIFT, iov.address(), n, dataLength);
                    }
                    stats.readOps.increment();
                    stats.readBytes.add(dataLength);
                    exportStats.read(dataLength);
                    return complete(chain, VIRTIO_BLK_S_OK, dataLength);
                }
                case VIRTIO_BLK_T_OUT -> {
                    dataOffset = REQUEST_HEADER_SIZE;
                    dataLength = readable - REQUEST_HEADER_SIZE;
                    if (readOnly) return complete(chain, VIRTIO_BLK_S_IOERR, 0);
                    if (!checkData(dataLength, type) || !checkIo(sector, dataLength, type)) return complete(chain, VIRTIO_BLK_S_IOERR, 0);
                    if (dataLength > 0) {
                        int n = chain.fillIovecs(iov, dataOffset, dataLength);
                        if (n < 0) return tooManySegments(chain, type);
                        // Writethrough (the driver cleared the writeback byte): each write is FUA.
                        driver.writev(sector << SECTOR_SHIFT, iov.address(), n, dataLength, !config.writeback);
                    }
                    stats.writeOps.increment();
                    stats.writeBytes.add(dataLength);
                    exportStats.write(dataLength);
                    return complete(chain, VIRTIO_BLK_S_OK, 0);
                }
                case VIRTIO_BLK_T_FLUSH -> {
                    driver.flush();
                    stats.flushOps.increment();
                    exportStats.otherOps.increment();
                    return complete(chain, VIRTIO_BLK_S_OK, 0);
                }
                case VIRTIO_BLK_T_GET_ID -> {
                    long room = total - 1 - readable;
                    int n = (int) Math.min(room, VIRTIO_BLK_ID_BYTES);
                    for (int i = 0; i < n; i++) RawMemory.putByte(scratch + 16 + i, i < id.length ? id[i] : 0);
                    chain.copyIn(scratch + 16, readable, n); // inside the writable part: n <= room
                    exportStats.otherOps.increment();
                    return complete(chain, VIRTIO_BLK_S_OK, n);
                }
                case VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES -> {
                    return discardOrZero(chain, type, readable);
                }
                default -> {
                    return complete(chain, VIRTIO_BLK_S_UNSUPP, 0);
                }
            }
        } catch (BlockException e) {
            stats.errors.increment();
            LOG.warn("vhost-user-blk export '{}': {} at sector {} failed: {}", exportId, requestName(type), sector, e.getMessage());
            return complete(chain, VIRTIO_BLK_S_IOERR, 0);
        }
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
    private int discardOrZero(DescriptorChain chain, int type, long readable) throws BlockException {
        long segBytes = readable - REQUEST_HEADER_SIZE;
        if (segBytes <= 0 || segBytes % DISCARD_SEGMENT_SIZE != 0) {
            malformed(requestName(type) + " with " + segBytes + " bytes of segments");
            return complete(chain, VIRTIO_BLK_S_IOERR, 0);
        }
        if (segBytes / DISCARD_SEGMENT_SIZE > 1) {
            malformed(requestName(type) + " with more segments than max_discard_seg");
            return complete(chain, VIRTIO_BLK_S_UNSUPP, 0);
        }
        if (readOnly) return complete(chain, VIRTIO_BLK_S_IOERR, 0);
        chain.copyOut(REQUEST_HEADER_SIZE, scratch, DISCARD_SEGMENT_SIZE);
        long sector = RawMemory.getLe64(scratch);
        long sectors = RawMemory.getLe32(scratch + 8) & 0xFFFF_FFFFL;
        int flags = RawMemory.getLe32(scratch + 12);
        boolean unmap = (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0;
        // §5.2.6.2: UNMAP is only defined for write zeroes; other flag bits are reserved.
        if ((flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0 || (type == VIRTIO_BLK_T_DISCARD && unmap)) {
            return complete(chain, VIRTIO_BLK_S_UNSUPP, 0);
        }
        long max = type == VIRTIO_BLK_T_DISCARD ? config.maxDiscardSectors : config.maxWriteZeroesSectors;
        if (sectors > max || !checkIo(sector, sectors << SECTOR_SHIFT, type)) return complete(chain, VIRTIO_BLK_S_IOERR, 0);
        if (sectors > 0) {
            if (type == VIRTIO_BLK_T_DISCARD) {
                driver.discard(sector << SECTOR_SHIFT, sectors << SECTOR_SHIFT);
                stats.discardOps.increment();
                exportStats.otherOps.increment();
            } else {
                driver.writeZeroes(sector << SECTOR_SHIFT, sectors << SECTOR_SHIFT, unmap, false, !config.writeback);
                stats.zeroOps.increment();
                exportStats.otherOps.increment();
            }
        }
        return complete(chain, VIRTIO_BLK_S_OK, 0);
    }

    private int tooManySegments(DescriptorChain chain, int type) {
        malformed(requestName(type) + " with more than " + MAX_SEGMENTS + " segments");
        return complete(chain, VIRTIO_BLK_S_IOERR, 0);
    }

    /** Writes the status byte (the chain's last byte, device-writable) and returns the used length. */
    private int complete(DescriptorChain chain, int status, long dataWritten) {
        if (chain.writableLength() < 1) {
            stats.errors.increment();
            exportStats.errors.increment();
            return 0; // nowhere to put a status: the used length says nothing was written
        }
        if (status != VIRTIO_BLK_S_OK) {
            stats.errors.increment();
            exportStats.errors.increment();
        }
        RawMemory.putByte(scratch + 63, status);
        chain.copyIn(scratch + 63, chain.totalLength() - 1, 1);
        return (int) (dataWritten + 1);
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
        iov.close();
        RawMemory.free(scratch);
    }
}
