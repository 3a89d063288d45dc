package dev.vmm.core.daemon;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.RawFormatDriver;
import dev.vmm.core.block.qcow2.Qcow2Header;
import dev.vmm.core.block.qcow2.Qcow2Options;
import dev.vmm.core.linux.Errno;
import com.sun.jna.Memory;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * A stand-in "qcow2" for graph tests while the real driver is written elsewhere: a file whose
 * first {@value #HEADER} bytes are the text {@code FAKEQCOW\nbacking=NAME\nformat=FMT\n}
 * (both lines optional) and whose disk data follows, read through a {@link RawFormatDriver}
 * window. The backing driver is kept but never read: the tests check the graph, not the data.
 *
 * <p>Thread contract: that of {@link ImageFormat} (the file's home thread).
 */
final class FakeQcow2Format implements ImageFormat {
    static final int HEADER = 4096;
    static final String MAGIC = "FAKEQCOW\n";

    /** Writes an image of {@code size} data bytes naming {@code backing} (null for none). */
    static void create(Path p, long size, String backing, String format) throws IOException {
        StringBuilder h = new StringBuilder(MAGIC);
        if (backing != null) h.append("backing=").append(backing).append('\n');
        if (format != null) h.append("format=").append(format).append('\n');
        byte[] b = new byte[HEADER];
        byte[] t = h.toString().getBytes(StandardCharsets.UTF_8);
        System.arraycopy(t, 0, b, 0, t.length);
        Files.write(p, b);
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(HEADER + size);
        }
    }

    private static String text(BlockDriver file) throws BlockException {
        if (file.size() < HEADER) return "";
        try (Memory m = new Memory(HEADER)) {
            file.read(0, com.sun.jna.Pointer.nativeValue(m), HEADER);
            byte[] b = m.getByteArray(0, HEADER);
            int end = 0;
            while (end < b.length && b[end] != 0) end++;
            return new String(b, 0, end, StandardCharsets.UTF_8);
        }
    }

    @Override
    public boolean probe(BlockDriver file) throws BlockException {
        return text(file).startsWith(MAGIC);
    }

    @Override
    public Qcow2Header readHeader(BlockDriver file) throws BlockException {
        String t = text(file);
        if (!t.startsWith(MAGIC)) throw new BlockException(Errno.EINVAL, "Image is not in qcow2 format");
        String backing = null;
        String format = null;
        for (String line : t.split("\n")) {
            if (line.startsWith("backing=")) backing = line.substring(8);
            if (line.startsWith("format=")) format = line.substring(7);
        }
        return new Qcow2Header(3, file.size() - HEADER, 65536, backing, format);
    }

    @Override
    public BlockDriver open(BlockDriver file, Qcow2Header header, BlockDriver backing, Qcow2Options options) throws BlockException {
        return new RawFormatDriver(file, HEADER, header.size(), options.readOnly(), true);
    }
}
