package dev.vmm.cli.it;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.SplittableRandom;
import java.util.zip.CRC32C;

/**
 * A 4 KiB block that says what it is, so that after a crash a lost, stale, torn or misplaced
 * write can be told apart from a good one by looking at the block alone.
 *
 * <pre>
 * offset  size  field (big-endian)
 *      0     8  magic "VMMDUR01"
 *      8     8  block number (offset / 4096)
 *     16     8  version, from 1 up, per block
 *     24  4068  filler: a pseudo-random stream seeded by (block, version), like real data
 *   4092     4  CRC32C of bytes 0..4091
 * </pre>
 *
 * <p>A block of zeros is "never written". Stateless; any thread.
 */
public final class VersionedBlock {
    public static final int SIZE = 4096;
    private static final byte[] MAGIC = "VMMDUR01".getBytes(StandardCharsets.US_ASCII);
    private static final int CRC_AT = SIZE - 4;

    /** What a block on disk holds. */
    public enum Kind { ZERO, VALID, CORRUPT }

    /** A decoded block: its kind, and for VALID the block number and version it carries. */
    public record Found(Kind kind, long block, long version, String detail) {
        static Found zero() { return new Found(Kind.ZERO, -1, 0, "zeros"); }
        static Found corrupt(String why) { return new Found(Kind.CORRUPT, -1, -1, why); }

        @Override
        public String toString() {
            return kind == Kind.VALID ? "block " + block + " version " + version : detail;
        }
    }

    private VersionedBlock() {}

    /** Writes version {@code version} of block {@code block} into {@code dst} at its position. */
    public static void encode(long block, long version, ByteBuffer dst) {
        if (version < 1) throw new IllegalArgumentException("versions start at 1");
        int start = dst.position();
        ByteBuffer b = dst.slice(start, SIZE);
        b.put(MAGIC).putLong(block).putLong(version);
        SplittableRandom r = new SplittableRandom(block * 0x9E3779B97F4A7C15L ^ version);
        while (b.position() + 8 <= CRC_AT) b.putLong(r.nextLong());
        while (b.position() < CRC_AT) b.put((byte) r.nextInt());
        CRC32C crc = new CRC32C();
        crc.update(b.duplicate().position(0).limit(CRC_AT));
        b.putInt((int) crc.getValue());
        dst.position(start + SIZE);
    }

    public static byte[] encode(long block, long version) {
        byte[] a = new byte[SIZE];
        encode(block, version, ByteBuffer.wrap(a));
        return a;
    }

    /** Decodes the block at {@code buf[off, off + 4096)}. */
    public static Found decode(byte[] buf, int off) {
        boolean zero = true;
        for (int i = off; i < off + SIZE && zero; i++) zero = buf[i] == 0;
        if (zero) return Found.zero();
        for (int i = 0; i < MAGIC.length; i++) {
            if (buf[off + i] != MAGIC[i]) return Found.corrupt("no block header (neither zeros nor a versioned block)");
        }
        ByteBuffer b = ByteBuffer.wrap(buf, off, SIZE).slice();
        CRC32C crc = new CRC32C();
        crc.update(buf, off, CRC_AT);
        if ((int) crc.getValue() != b.getInt(CRC_AT)) {
            return Found.corrupt("checksum mismatch (torn or damaged) in a block claiming to be block "
                    + b.getLong(8) + " version " + b.getLong(16));
        }
        return new Found(Kind.VALID, b.getLong(8), b.getLong(16), "");
    }
}
