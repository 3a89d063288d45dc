package dev.vmm.cli.guest;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import java.util.zip.GZIPInputStream;

/**
 * A Linux kernel for the test guest and the virtio modules it must load, in load order.
 *
 * <p>{@link #debian} finds or fetches the kernel that Debian's {@code linux-image-cloud-amd64}
 * depends on: {@code apt-cache depends} names the package ({@code apt-get update} runs only if
 * that fails), {@code apt-get download} fetches it (about 27 MB), {@code dpkg-deb -x} unpacks it,
 * and {@code vmlinuz} plus the uncompressed virtio modules are kept in
 * {@code <cache>/kernel/<package>/}. Safe to call from several threads and processes at once:
 * one fetches, the others wait and use its result.
 *
 * <p>Instances are immutable.
 */
public final class GuestKernel {
    /** The Debian meta package whose dependency is the kernel we use. */
    public static final String META_PACKAGE = "linux-image-cloud-amd64";

    /** The modules that make /dev/vda appear, in the order they must be loaded (no modprobe in the guest). */
    public static final List<String> VIRTIO_BLK_MODULES = List.of(
            "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk");

    private static final Pattern DEPENDS = Pattern.compile("(?m)^\\s*\\|?Depends:\\s*(linux-image-[^\\s<>:]+)");
    private static final String ORDER_FILE = "modules.order";
    /** apt-get update renames fresh lists into this folder, which changes its mtime. */
    private static final Path APT_LISTS = Path.of("/var/lib/apt/lists");

    private final String packageName;
    private final Path vmlinuz;
    private final List<Path> modules;

    private GuestKernel(String packageName, Path vmlinuz, List<Path> modules) {
        this.packageName = packageName;
        this.vmlinuz = vmlinuz;
        this.modules = List.copyOf(modules);
    }

    /** A kernel given by the user; {@code modules} (in load order) may be empty when virtio is built in. */
    public static GuestKernel of(Path vmlinuz, List<Path> modules) {
        if (!Files.isRegularFile(vmlinuz)) {
            throw new GuestException("kernel " + vmlinuz + " is not a file");
        }
        return new GuestKernel(null, vmlinuz.toAbsolutePath(), modules);
    }

    /** The cached Debian kernel in {@link GuestCache#root()}, fetched first if needed; progress goes to {@code progress}. */
    public static GuestKernel debian(Consumer<String> progress) {
        return debian(GuestCache.root(), progress);
    }

    /** The cached Debian kernel in {@code cacheRoot}, fetched first if needed. */
    public static GuestKernel debian(Path cacheRoot, Consumer<String> progress) {
        Path kernels = cacheRoot.resolve("kernel");
        String pkg = kernelPackage(kernels, progress);
        Path dir = kernels.resolve(pkg);
        GuestKernel k = load(pkg, dir);
        if (k != null) {
            return k;
        }
        try {
            return GuestCache.withLock(kernels.resolve(".lock"), () -> {
                GuestKernel again = load(pkg, dir);
                return again != null ? again : fetch(pkg, kernels, dir, progress);
            });
        } catch (IOException e) {
            throw new GuestException("cannot prepare the guest kernel in " + dir + ": " + e.getMessage(), e);
        }
    }

    /** The Debian package name ({@code linux-image-6.1.0-NN-cloud-amd64}), or null for a user-given kernel. */
    public String packageName() {
        return packageName;
    }

    /** The kernel image (a bzImage). */
    public Path vmlinuz() {
        return vmlinuz;
    }

    /** The uncompressed {@code .ko} files to insmod, in load order (modules built into the kernel are left out). */
    public List<Path> modules() {
        return modules;
    }

    @Override
    public String toString() {
        return (packageName == null ? "" : packageName + " ") + vmlinuz;
    }

    // ---------------------------------------------------------------------------------------

    private static String kernelPackage(Path kernels, Consumer<String> progress) {
        String remembered = remembered(kernels);
        if (remembered != null) return remembered;
        String pkg;
        try {
            pkg = dependsOf(META_PACKAGE);
        } catch (MissingToolException e) {
            String cached = newestCached(kernels);
            if (cached != null) return cached;
            throw e;
        }
        if (pkg != null) return remember(kernels, pkg);
        String cached = newestCached(kernels);
        if (cached != null) {
            progress.accept("apt-cache does not know " + META_PACKAGE + "; using the cached " + cached);
            return cached;
        }
        progress.accept("apt-cache does not know " + META_PACKAGE + ": running apt-get update");
        Exec.Result update = Exec.run(null, 600, "apt-get", "update");
        if (update.exit() != 0) {
            throw new GuestException("apt-cache does not know the Debian package " + META_PACKAGE
                    + " and apt-get update failed (run 'apt-get update' as root): " + update.describe());
        }
        pkg = dependsOf(META_PACKAGE);
        if (pkg == null) {
            throw new GuestException("the apt sources have no Debian package " + META_PACKAGE
                    + " (a Debian 12 amd64 host is expected), or it depends on no linux-image package;"
                    + " pass --kernel and --initrd instead");
        }
        return remember(kernels, pkg);
    }

    /**
     * The package name apt-cache gave last time, if the apt lists have not changed since and
     * that kernel is cached: saves the ~2 s that {@code apt-cache depends} takes on each run.
     */
    private static String remembered(Path kernels) {
        Path memo = kernels.resolve(".resolved");
        try {
            if (!Files.isRegularFile(memo) || !Files.isDirectory(APT_LISTS)) return null;
            if (Files.getLastModifiedTime(memo).compareTo(Files.getLastModifiedTime(APT_LISTS)) <= 0) return null;
            String pkg = Files.readString(memo, StandardCharsets.UTF_8).strip();
            return !pkg.isEmpty() && load(pkg, kernels.resolve(pkg)) != null ? pkg : null;
        } catch (IOException | java.nio.file.InvalidPathException e) {
            return null;
        }
    }

    private static String remember(Path kernels, String pkg) {
        try {
            Files.createDirectories(kernels);
            Path tmp = Files.createTempFile(kernels, ".resolved", ".tmp");
            Files.writeString(tmp, pkg + "\n", StandardCharsets.UTF_8);
            Files.move(tmp, kernels.resolve(".resolved"), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            // only an optimization
        }
        return pkg;
    }

    /** The {@code linux-image-*} package that {@code meta} depends on, or null. */
    static String dependsOf(String meta) {
        Exec.Result r = Exec.run(null, 120, "apt-cache", "depends", meta);
        if (r.exit() != 0) return null;
        return parseDepends(r.output());
    }

    static String parseDepends(String aptCacheOutput) {
        Matcher m = DEPENDS.matcher(aptCacheOutput);
        return m.find() ? m.group(1) : null;
    }

    private static String newestCached(Path kernels) {
        if (!Files.isDirectory(kernels)) return null;
        try (Stream<Path> s = Files.list(kernels)) {
            return s.filter(d -> !d.getFileName().toString().startsWith("."))
                    .filter(d -> load(d.getFileName().toString(), d) != null)
                    .max(Comparator.comparing(d -> {
                        try {
                            return Files.getLastModifiedTime(d);
                        } catch (IOException e) {
                            return java.nio.file.attribute.FileTime.fromMillis(0);
                        }
                    }))
                    .map(d -> d.getFileName().toString()).orElse(null);
        } catch (IOException e) {
            return null;
        }
    }

    /** The complete cache entry in {@code dir}, or null. */
    private static GuestKernel load(String pkg, Path dir) {
        Path order = dir.resolve(ORDER_FILE);
        Path vmlinuz = dir.resolve("vmlinuz");
        if (!Files.isRegularFile(order) || !Files.isRegularFile(vmlinuz)) return null;
        try {
            List<Path> mods = new ArrayList<>();
            for (String line : Files.readAllLines(order, StandardCharsets.UTF_8)) {
                if (line.isBlank()) continue;
                Path ko = dir.resolve("modules").resolve(line.strip() + ".ko");
                if (!Files.isRegularFile(ko)) return null;
                mods.add(ko);
            }
            return new GuestKernel(pkg, vmlinuz, mods);
        } catch (IOException e) {
            return null;
        }
    }

    /** Downloads and unpacks {@code pkg}; publishes {@code dir} by renaming a finished temp folder. Runs under the lock. */
    private static GuestKernel fetch(String pkg, Path kernels, Path dir, Consumer<String> progress) throws IOException {
        Files.createDirectories(kernels);
        Path tmp = Files.createTempDirectory(kernels, ".tmp-" + pkg + "-");
        try {
            progress.accept("fetching the Debian kernel " + pkg + " (apt-get download, about 27 MB) into " + dir);
            Path deb = tmp.resolve("deb");
            Files.createDirectories(deb);
            Exec.check(deb, 900, "apt-get", "download", pkg);
            Path debFile;
            try (Stream<Path> s = Files.list(deb)) {
                debFile = s.filter(p -> p.toString().endsWith(".deb")).findFirst()
                        .orElseThrow(() -> new GuestException("apt-get download " + pkg + " left no .deb in " + deb));
            }
            Path x = tmp.resolve("x");
            Exec.check(null, 600, "dpkg-deb", "-x", debFile.toString(), x.toString());
            Files.delete(debFile);

            Path out = tmp.resolve("out");
            Files.createDirectories(out.resolve("modules"));
            Path vmlinuz;
            try (Stream<Path> s = Files.list(x.resolve("boot"))) {
                vmlinuz = s.filter(p -> p.getFileName().toString().startsWith("vmlinuz")).findFirst()
                        .orElseThrow(() -> new GuestException(pkg + " has no boot/vmlinuz-*"));
            }
            Files.copy(vmlinuz, out.resolve("vmlinuz"));

            Path modRoot;
            try (Stream<Path> s = Files.list(x.resolve("lib/modules"))) {
                modRoot = s.filter(Files::isDirectory).findFirst()
                        .orElseThrow(() -> new GuestException(pkg + " has no lib/modules/<version>/"));
            }
            Map<String, Path> found = new HashMap<>();
            try (Stream<Path> s = Files.walk(modRoot.resolve("kernel"))) {
                s.filter(Files::isRegularFile).forEach(p -> {
                    String name = moduleName(p.getFileName().toString());
                    if (name != null && VIRTIO_BLK_MODULES.contains(name)) found.putIfAbsent(name, p);
                });
            }
            Set<String> builtin = builtinModules(modRoot);
            List<String> order = new ArrayList<>();
            for (String m : VIRTIO_BLK_MODULES) {
                Path p = found.get(m);
                if (p == null) {
                    if (builtin.contains(m)) continue;
                    throw new GuestException(pkg + " has no module " + m + " under " + modRoot.getFileName() + "/kernel/ and does not build it in");
                }
                decompress(p, out.resolve("modules").resolve(m + ".ko"));
                order.add(m);
            }
            Files.write(out.resolve(ORDER_FILE), order, StandardCharsets.UTF_8);
            Files.writeString(out.resolve("source"), pkg + " " + debFile.getFileName() + "\n", StandardCharsets.UTF_8);
            GuestCache.deleteTree(dir); // an incomplete leftover (a complete one would have been used)
            Files.move(out, dir, StandardCopyOption.ATOMIC_MOVE);
            GuestKernel k = load(pkg, dir);
            if (k == null) throw new GuestException("the kernel cache entry " + dir + " is incomplete after unpacking");
            return k;
        } finally {
            GuestCache.deleteTree(tmp);
        }
    }

    /** {@code virtio_blk} for {@code virtio_blk.ko}, {@code virtio-blk.ko.xz}, ...; null for other files. */
    static String moduleName(String file) {
        for (String ext : List.of(".ko", ".ko.xz", ".ko.zst", ".ko.gz")) {
            if (file.endsWith(ext)) return file.substring(0, file.length() - ext.length()).replace('-', '_');
        }
        return null;
    }

    private static Set<String> builtinModules(Path modRoot) throws IOException {
        Set<String> set = new HashSet<>();
        Path f = modRoot.resolve("modules.builtin");
        if (Files.isRegularFile(f)) {
            for (String line : Files.readAllLines(f, StandardCharsets.UTF_8)) {
                String name = moduleName(Path.of(line.strip()).getFileName().toString());
                if (name != null) set.add(name);
            }
        }
        return set;
    }

    /**
     * Copies a module to {@code target} uncompressed: busybox's insmod in the guest is not
     * guaranteed to read compressed modules, so the host decompresses them once (xz and zstd
     * with their command-line tools, gzip in Java).
     */
    private static void decompress(Path src, Path target) throws IOException {
        String n = src.getFileName().toString().toLowerCase(Locale.ROOT);
        if (n.endsWith(".ko")) {
            Files.copy(src, target);
        } else if (n.endsWith(".gz")) {
            try (InputStream in = new GZIPInputStream(Files.newInputStream(src)); OutputStream o = Files.newOutputStream(target)) {
                in.transferTo(o);
            }
        } else {
            // xz -d / zstd -d replace X.ko.xz with X.ko next to it: work on a copy
            Path copy = target.resolveSibling(target.getFileName() + (n.endsWith(".xz") ? ".xz" : ".zst"));
            Files.copy(src, copy);
            if (n.endsWith(".xz")) Exec.check(null, 120, "xz", "-d", "-f", copy.toString());
            else Exec.check(null, 120, "zstd", "-d", "-q", "-f", "--rm", copy.toString());
            if (!Files.isRegularFile(target)) throw new GuestException("decompressing " + src + " did not produce " + target);
        }
    }
}
