package dev.vmm.cli.guest;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.List;
import java.util.zip.GZIPOutputStream;

/**
 * Builds the guest's initramfs: a gzip'ed newc cpio with a static busybox, the kernel's virtio
 * modules and an {@code /init} that mounts proc/sys/devtmpfs, loads the modules in order, waits
 * for {@code /dev/vda}, runs the workload, prints {@code VMMTEST:exit=<status>} and powers off.
 *
 * <p>The image is two concatenated gzip'ed cpio archives (the kernel unpacks both): the
 * <em>base</em> (busybox, modules, init), cached under {@code <cache>/initramfs/} keyed by the
 * SHA-256 of its content, and a small one holding {@code /workload.sh}. So a new workload costs
 * a few hundred bytes, not a rebuild.
 *
 * <p>The workload is a busybox {@code sh} script, sourced in a subshell after boot with
 * {@code /dev/vda} present. It reports results with {@code vmmtest KEY VALUE}, which prints
 * {@code VMMTEST:KEY=VALUE} on the console; {@link GuestRun#results()} parses them. Stateless
 * and thread-safe.
 */
public final class Initramfs {
    /** The prefix of result lines on the console. */
    public static final String RESULT_PREFIX = "VMMTEST:";

    /** The workload of {@code vmm guest}: an interactive shell on the serial console. */
    public static final String INTERACTIVE_SHELL = String.join("\n",
            "echo",
            "echo 'vmm guest: the disk is /dev/vda ('$(blockdev --getsize64 /dev/vda 2>/dev/null || echo missing)' bytes).'",
            "echo 'vmm guest: type exit (or Ctrl-D) to power off; Ctrl-A X kills QEMU at once.'",
            "setsid cttyhack sh",
            "");

    private static final String INIT = String.join("\n",
            "#!/bin/busybox sh",
            "# vmm test guest init: mount, load virtio-blk, run /workload.sh, power off.",
            "/bin/busybox --install -s /bin",
            "export PATH=/bin",
            "mount -t proc proc /proc",
            "mount -t sysfs sysfs /sys",
            "mount -t devtmpfs devtmpfs /dev",
            "exec </dev/console >/dev/console 2>&1",
            "vmmtest() { echo \"" + RESULT_PREFIX + "$1=$2\"; }",
            "for m in $(cat /etc/vmm-modules); do",
            "  insmod /lib/modules/$m.ko || vmmtest insmod-failed \"$m\"",
            "done",
            "i=0",
            "while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done",
            "[ -b /dev/vda ] || vmmtest error no-dev-vda",
            "vmmtest boot ok",
            "( . /workload.sh )",
            "vmmtest exit $?",
            "sync",
            "poweroff -f",
            "");

    private Initramfs() {}

    /** The {@code /init} script (for documentation and tests). */
    public static String initScript() {
        return INIT;
    }

    /**
     * Writes an initramfs for {@code kernel} running {@code workload} to {@code out}
     * (replaced if it exists). The base part comes from the cache.
     */
    public static Path build(GuestKernel kernel, String workload, Path out) {
        Path base = base(kernel);
        try {
            Path tmp = Files.createTempFile(out.toAbsolutePath().getParent(), ".initramfs", ".tmp");
            try (OutputStream o = Files.newOutputStream(tmp)) {
                Files.copy(base, o);
                o.write(gzip(workloadArchive(workload)));
            }
            Files.move(tmp, out, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            return out;
        } catch (IOException e) {
            throw new GuestException("cannot write the initramfs " + out + ": " + e.getMessage(), e);
        }
    }

    /** A cached initramfs for {@code kernel} running {@code workload} (for fixed workloads such as {@link #INTERACTIVE_SHELL}). */
    public static Path cached(GuestKernel kernel, String workload) {
        try {
            byte[] base = baseArchive(kernel);
            byte[] wl = workloadArchive(workload);
            Path file = GuestCache.root().resolve("initramfs").resolve(sha256(base, wl) + ".cpio.gz");
            if (!Files.isRegularFile(file)) {
                ByteArrayOutputStream all = new ByteArrayOutputStream();
                all.write(gzip(base));
                all.write(gzip(wl));
                publish(file, all.toByteArray());
            }
            return file;
        } catch (IOException e) {
            throw new GuestException("cannot build the initramfs: " + e.getMessage(), e);
        }
    }

    /** The cached base initramfs (busybox, modules, init) of {@code kernel}: {@code <cache>/initramfs/base-<sha256>.cpio.gz}. */
    public static Path base(GuestKernel kernel) {
        try {
            byte[] cpio = baseArchive(kernel);
            Path file = GuestCache.root().resolve("initramfs").resolve("base-" + sha256(cpio) + ".cpio.gz");
            if (!Files.isRegularFile(file)) {
                publish(file, gzip(cpio));
            }
            return file;
        } catch (IOException e) {
            throw new GuestException("cannot build the initramfs: " + e.getMessage(), e);
        }
    }

    // ---------------------------------------------------------------------------------------

    static byte[] baseArchive(GuestKernel kernel) throws IOException {
        Path busybox = HostTools.staticBusybox();
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(4 << 20);
        CpioWriter w = new CpioWriter(bytes);
        for (String d : List.of("bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "root", "sys", "tmp")) {
            w.directory(d, 0755);
        }
        w.charDevice("dev/console", 0600, 5, 1);
        w.charDevice("dev/null", 0666, 1, 3);
        w.file("bin/busybox", 0755, Files.readAllBytes(busybox));
        StringBuilder order = new StringBuilder();
        for (Path ko : kernel.modules()) {
            String name = GuestKernel.moduleName(ko.getFileName().toString());
            if (name == null || !ko.getFileName().toString().endsWith(".ko")) {
                throw new GuestException("module " + ko + " is not an uncompressed .ko file");
            }
            w.file("lib/modules/" + name + ".ko", 0644, Files.readAllBytes(ko));
            order.append(name).append('\n');
        }
        w.file("etc/vmm-modules", 0644, order.toString().getBytes(StandardCharsets.UTF_8));
        w.file("init", 0755, INIT.getBytes(StandardCharsets.UTF_8));
        w.finish();
        return bytes.toByteArray();
    }

    static byte[] workloadArchive(String workload) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        CpioWriter w = new CpioWriter(bytes);
        w.file("workload.sh", 0755, workload.getBytes(StandardCharsets.UTF_8));
        w.finish();
        return bytes.toByteArray();
    }

    private static byte[] gzip(byte[] data) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(data.length / 2 + 64);
        try (GZIPOutputStream gz = new GZIPOutputStream(bytes, 1 << 16)) {
            gz.write(data);
        }
        return bytes.toByteArray();
    }

    private static void publish(Path file, byte[] content) throws IOException {
        Files.createDirectories(file.getParent());
        Path tmp = Files.createTempFile(file.getParent(), ".tmp-", ".gz");
        try {
            Files.write(tmp, content);
            Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    private static String sha256(byte[]... parts) {
        try {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            for (byte[] p : parts) md.update(p);
            return HexFormat.of().formatHex(md.digest()).substring(0, 32);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
