package dev.vmm.vhostuser.frontend;

import dev.vmm.core.memory.RawMemory;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * The data pattern {@code vmm bench} writes and checks: every 512-byte sector of the disk starts
 * with a 16-byte stamp, {@code le64 (MAGIC ^ byte offset of the sector)} then {@code le64
 * generation} (0 for a pre-filled or freshly stamped image, the writer's sequence number for a
 * benchmark write). The other 496 bytes are free (random in a stamped image, whatever the writer
 * left in its buffer otherwise). A sector read back from the right place of a stamped disk always
 * carries its own offset's tag; zeros, a neighbour's data, a stale buffer or random data do not
 * (the XOR with {@link #MAGIC} keeps an all-zero sector 0 from passing).
 *
 * <p>Thread contract: static and stateless.
 */
public final class BlkStamp {
    /** "vmmbench" as a little-endian long, XORed into every tag. */
    public static final long MAGIC = 0x68636e65626d6d76L;
    /** Written into the tag of a sector before a read is submitted, so that a buffer the device never wrote cannot pass. */
    public static final long POISON = 0xdeadbeefdeadbeefL;
    public static final int SECTOR = 512;
    public static final int STAMP_BYTES = 16;

    private BlkStamp() {}

    /** The tag a sector at {@code byteOffset} carries. Never equal to {@link #POISON} for a sector-aligned offset below 2^62. */
    public static long tag(long byteOffset) {
        return MAGIC ^ byteOffset;
    }

    /** Stamps {@code sectors} sectors at native address {@code addr}, the first one being disk byte {@code byteOffset}. */
    public static void stamp(long addr, long byteOffset, int sectors, long generation) {
        for (int i = 0; i < sectors; i++) {
            long p = addr + (long) i * SECTOR;
            RawMemory.putLe64(p, tag(byteOffset + (long) i * SECTOR));
            RawMemory.putLe64(p + 8, generation);
        }
    }

    /** Stamps every whole sector of {@code buf} (position 0 to limit, little-endian), the first one being disk byte {@code byteOffset}. */
    public static void stamp(ByteBuffer buf, long byteOffset, long generation) {
        ByteBuffer b = buf.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i + SECTOR <= b.limit(); i += SECTOR) {
            b.putLong(i, tag(byteOffset + i));
            b.putLong(i + 8, generation);
        }
    }

    /** Whether the sector at native address {@code addr} carries the tag of disk byte {@code byteOffset}. */
    public static boolean tagMatches(long addr, long byteOffset) {
        return RawMemory.getLe64(addr) == tag(byteOffset);
    }

    /** Whether the sector at {@code index} of {@code buf} carries the tag of disk byte {@code byteOffset}. */
    public static boolean tagMatches(ByteBuffer buf, int index, long byteOffset) {
        return buf.duplicate().order(ByteOrder.LITTLE_ENDIAN).getLong(index) == tag(byteOffset);
    }

    /** What a sector holds, for failure messages: "offset X generation G", or the raw first 16 bytes. */
    public static String describe(long tagValue, long generation) {
        long off = tagValue ^ MAGIC;
        if (tagValue == POISON) return "the poison the client wrote before the read (the device did not write this sector)";
        if (off >= 0 && off % SECTOR == 0 && off < (1L << 56)) return "the stamp of byte offset " + off + " (generation " + generation + ")";
        return String.format("no stamp (first 16 bytes %016x %016x)", Long.reverseBytes(tagValue), Long.reverseBytes(generation));
    }

    /**
     * Which sectors of a request of {@code sectors} sectors are checked for request number
     * {@code n}: all of them up to {@value #CHECKED_SECTORS}; above that {@value #CHECKED_SECTORS}
     * sectors spread evenly, starting at a phase that moves by one sector per request (so over
     * many requests every sector position is checked). Fills {@code out} and returns the count.
     */
    public static int sampleSectors(int sectors, long n, int[] out) {
        if (sectors <= CHECKED_SECTORS) {
            for (int i = 0; i < sectors; i++) out[i] = i;
            return sectors;
        }
        int step = sectors / CHECKED_SECTORS;
        int phase = (int) Long.remainderUnsigned(n, step);
        for (int i = 0; i < CHECKED_SECTORS; i++) out[i] = i * step + phase;
        return CHECKED_SECTORS;
    }

    /** Sectors checked per read request at most ({@link #sampleSectors}). */
    public static final int CHECKED_SECTORS = 8;
}
