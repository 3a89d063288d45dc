package dev.vmm.virtio.blk;

/**
 * virtio-blk wire constants (virtio 1.2, §5.2 "Block Device"), named as in the spec.
 * Requests and config space are little-endian. Constants only: any thread.
 */
public final class VirtioBlk {
    private VirtioBlk() { }

    /** Virtio device id of a block device (§5). */
    public static final int VIRTIO_ID_BLOCK = 2;
    /** virtio-blk addresses data in 512-byte sectors whatever the logical block size (§5.2.6). */
    public static final int SECTOR_SIZE = 512;
    public static final int SECTOR_SHIFT = 9;

    // ---- feature bits (§5.2.3 and §6) ----
    /** Maximum size of any single segment is in size_max. */
    public static final int VIRTIO_BLK_F_SIZE_MAX = 1;
    /** Maximum number of segments in a request is in seg_max. */
    public static final int VIRTIO_BLK_F_SEG_MAX = 2;
    /** Disk-style geometry specified in geometry. */
    public static final int VIRTIO_BLK_F_GEOMETRY = 4;
    /** Device is read-only. */
    public static final int VIRTIO_BLK_F_RO = 5;
    /** Block size of disk is in blk_size. */
    public static final int VIRTIO_BLK_F_BLK_SIZE = 6;
    /** Cache flush command support. */
    public static final int VIRTIO_BLK_F_FLUSH = 9;
    /** Device exports information on optimal I/O alignment. */
    public static final int VIRTIO_BLK_F_TOPOLOGY = 10;
    /** Device can toggle its cache between writeback and writethrough modes. */
    public static final int VIRTIO_BLK_F_CONFIG_WCE = 11;
    /** Device supports multiqueue. */
    public static final int VIRTIO_BLK_F_MQ = 12;
    /** Device can support discard command. */
    public static final int VIRTIO_BLK_F_DISCARD = 13;
    /** Device can support write zeroes command. */
    public static final int VIRTIO_BLK_F_WRITE_ZEROES = 14;
    /** Device supports providing storage lifetime information. */
    public static final int VIRTIO_BLK_F_LIFETIME = 15;
    /** Device supports secure erase command. */
    public static final int VIRTIO_BLK_F_SECURE_ERASE = 16;

    /** Descriptors may point to indirect tables (§2.7.5.3). */
    public static final int VIRTIO_RING_F_INDIRECT_DESC = 28;
    /** used_event / avail_event suppression (§2.7.7). */
    public static final int VIRTIO_RING_F_EVENT_IDX = 29;
    /** Compliance with virtio 1.x. */
    public static final int VIRTIO_F_VERSION_1 = 32;
    /** Packed virtqueue layout (§2.8). */
    public static final int VIRTIO_F_RING_PACKED = 34;

    // ---- request types (§5.2.6) ----
    public static final int VIRTIO_BLK_T_IN = 0;
    public static final int VIRTIO_BLK_T_OUT = 1;
    public static final int VIRTIO_BLK_T_FLUSH = 4;
    public static final int VIRTIO_BLK_T_GET_ID = 8;
    public static final int VIRTIO_BLK_T_GET_LIFETIME = 10;
    public static final int VIRTIO_BLK_T_DISCARD = 11;
    public static final int VIRTIO_BLK_T_WRITE_ZEROES = 13;
    public static final int VIRTIO_BLK_T_SECURE_ERASE = 14;

    /** Length of the id string GET_ID returns (not NUL-terminated when it is this long). */
    public static final int VIRTIO_BLK_ID_BYTES = 20;

    // ---- status byte (§5.2.6) ----
    public static final int VIRTIO_BLK_S_OK = 0;
    public static final int VIRTIO_BLK_S_IOERR = 1;
    public static final int VIRTIO_BLK_S_UNSUPP = 2;

    /** Flag of a write-zeroes segment: the device may deallocate the range. */
    public static final int VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

    /** Request header: le32 type, le32 reserved, le64 sector. */
    public static final int REQUEST_HEADER_SIZE = 16;
    /** Discard / write-zeroes segment: le64 sector, le32 num_sectors, le32 flags. */
    public static final int DISCARD_SEGMENT_SIZE = 16;

    public static String requestName(int type) {
        return switch (type) {
            case VIRTIO_BLK_T_IN -> "VIRTIO_BLK_T_IN";
            case VIRTIO_BLK_T_OUT -> "VIRTIO_BLK_T_OUT";
            case VIRTIO_BLK_T_FLUSH -> "VIRTIO_BLK_T_FLUSH";
            case VIRTIO_BLK_T_GET_ID -> "VIRTIO_BLK_T_GET_ID";
            case VIRTIO_BLK_T_GET_LIFETIME -> "VIRTIO_BLK_T_GET_LIFETIME";
            case VIRTIO_BLK_T_DISCARD -> "VIRTIO_BLK_T_DISCARD";
            case VIRTIO_BLK_T_WRITE_ZEROES -> "VIRTIO_BLK_T_WRITE_ZEROES";
            case VIRTIO_BLK_T_SECURE_ERASE -> "VIRTIO_BLK_T_SECURE_ERASE";
            default -> "VIRTIO_BLK_T_UNKNOWN(" + type + ")";
        };
    }
}
