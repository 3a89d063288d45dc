package dev.vmm.cli.guest;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;

/**
 * Writes a cpio archive in the "newc" format the Linux initramfs loader reads
 * (Documentation/driver-api/early-userspace/buffer-format.rst). Written in Java so that device
 * nodes such as {@code /dev/console} can be created without root and the output is
 * reproducible (fixed mtimes and inode numbers), which makes content-hash caching work.
 * Not thread-safe; call {@link #finish} once at the end.
 */
final class CpioWriter {
    private static final int S_IFDIR = 0040000;
    private static final int S_IFREG = 0100000;
    private static final int S_IFLNK = 0120000;
    private static final int S_IFCHR = 0020000;

    private final OutputStream out;
    private long written;
    private int ino = 1;

    CpioWriter(OutputStream out) {
        this.out = out;
    }

    void directory(String name, int mode) throws IOException {
        entry(name, S_IFDIR | mode, 0, 0, new byte[0]);
    }

    void file(String name, int mode, byte[] data) throws IOException {
        entry(name, S_IFREG | mode, 0, 0, data);
    }

    void symlink(String name, String target) throws IOException {
        entry(name, S_IFLNK | 0777, 0, 0, target.getBytes(StandardCharsets.UTF_8));
    }

    void charDevice(String name, int mode, int major, int minor) throws IOException {
        entry(name, S_IFCHR | mode, major, minor, new byte[0]);
    }

    /** Writes the trailer; the stream is left open. */
    void finish() throws IOException {
        entry("TRAILER!!!", 0, 0, 0, new byte[0]);
        out.flush();
    }

    private void entry(String name, int mode, int rdevMajor, int rdevMinor, byte[] data) throws IOException {
        byte[] n = name.getBytes(StandardCharsets.UTF_8);
        StringBuilder h = new StringBuilder(110);
        h.append("070701");
        hex(h, name.equals("TRAILER!!!") ? 0 : ino++); // c_ino
        hex(h, mode);                                   // c_mode
        hex(h, 0);                                      // c_uid
        hex(h, 0);                                      // c_gid
        hex(h, (mode & 0170000) == S_IFDIR ? 2 : 1);     // c_nlink
        hex(h, 0);                                      // c_mtime
        hex(h, data.length);                            // c_filesize
        hex(h, 0);                                      // c_devmajor
        hex(h, 0);                                      // c_devminor
        hex(h, rdevMajor);                              // c_rdevmajor
        hex(h, rdevMinor);                              // c_rdevminor
        hex(h, n.length + 1);                           // c_namesize (with NUL)
        hex(h, 0);                                      // c_check
        write(h.toString().getBytes(StandardCharsets.US_ASCII));
        write(n);
        write(new byte[] {0});
        pad();
        write(data);
        pad();
    }

    private static void hex(StringBuilder sb, long v) {
        String s = Long.toHexString(v & 0xffffffffL);
        sb.append("00000000", 0, 8 - s.length()).append(s);
    }

    private void write(byte[] b) throws IOException {
        out.write(b);
        written += b.length;
    }

    private void pad() throws IOException {
        int p = (int) ((4 - (written & 3)) & 3);
        if (p > 0) write(new byte[p]);
    }
}
