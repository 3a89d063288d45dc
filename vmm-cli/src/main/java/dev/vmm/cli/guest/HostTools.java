package dev.vmm.cli.guest;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * Finds the host programs the guest tooling runs, and names the Debian package of a missing one.
 * Thread-safe (stateless).
 */
public final class HostTools {
    public static final String QEMU = "qemu-system-x86_64";

    /** Debian 12 package of each program. */
    private static final Map<String, String> PACKAGE = Map.of(
            QEMU, "qemu-system-x86",
            "qemu-storage-daemon", "qemu-system-common",
            "apt-get", "apt",
            "apt-cache", "apt",
            "dpkg-deb", "dpkg",
            "xz", "xz-utils",
            "zstd", "zstd");

    /** Where busybox-static installs its binary. */
    public static final Path STATIC_BUSYBOX = Path.of("/bin/busybox");

    private HostTools() {}

    /** The Debian package that provides {@code tool}. */
    public static String debianPackage(String tool) {
        return PACKAGE.getOrDefault(tool, tool);
    }

    /** The absolute path of {@code tool} on PATH (or in /usr/sbin, /sbin, which a user's PATH may lack), or a {@link MissingToolException}. */
    public static Path require(String tool) {
        Path p = find(tool);
        if (p == null) {
            throw new MissingToolException(tool, debianPackage(tool), tool + " not found on PATH");
        }
        return p;
    }

    /** The absolute path of {@code tool}, or null. */
    public static Path find(String tool) {
        String path = System.getenv().getOrDefault("PATH", "/usr/bin:/bin");
        for (String dir : path.split(File.pathSeparator)) {
            Path p = Path.of(dir.isEmpty() ? "." : dir, tool);
            if (Files.isRegularFile(p) && Files.isExecutable(p)) {
                return p.toAbsolutePath();
            }
        }
        for (String d : List.of("/usr/sbin", "/sbin")) {
            Path p = Path.of(d, tool);
            if (Files.isRegularFile(p) && Files.isExecutable(p)) {
                return p;
            }
        }
        return null;
    }

    /**
     * A statically linked busybox for the initramfs ({@code /bin/busybox} of busybox-static; the
     * dynamically linked one of the {@code busybox} package cannot run without a libc in the guest).
     */
    public static Path staticBusybox() {
        Path p = STATIC_BUSYBOX;
        if (!Files.isRegularFile(p)) {
            throw new MissingToolException("busybox", "busybox-static", p + " not found");
        }
        if (hasInterpreter(p)) {
            throw new MissingToolException("busybox", "busybox-static",
                    p + " is dynamically linked (the 'busybox' package); the guest needs a static one");
        }
        return p;
    }

    /** True if the ELF file has a PT_INTERP program header (is dynamically linked). */
    static boolean hasInterpreter(Path elf) {
        try (InputStream in = Files.newInputStream(elf)) {
            byte[] head = in.readNBytes(64);
            if (head.length < 64 || head[0] != 0x7f || head[1] != 'E' || head[4] != 2) {
                return false; // not a 64-bit ELF: let the guest find out
            }
            ByteBuffer h = ByteBuffer.wrap(head).order(head[5] == 2 ? ByteOrder.BIG_ENDIAN : ByteOrder.LITTLE_ENDIAN);
            long phoff = h.getLong(32);
            int phentsize = Short.toUnsignedInt(h.getShort(54));
            int phnum = Short.toUnsignedInt(h.getShort(56));
            byte[] all = Files.readAllBytes(elf);
            ByteBuffer b = ByteBuffer.wrap(all).order(h.order());
            for (int i = 0; i < phnum; i++) {
                long at = phoff + (long) i * phentsize;
                if (at + 4 > all.length) break;
                if (b.getInt((int) at) == 3) return true; // PT_INTERP
            }
            return false;
        } catch (IOException e) {
            throw new GuestException("cannot read " + elf + ": " + e.getMessage(), e);
        }
    }
}
