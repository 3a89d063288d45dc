package dev.vmm.cli.guest;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.locks.ReentrantLock;

/**
 * The cache folder of the guest tooling: {@code ${XDG_CACHE_HOME:-~/.cache}/vmm}, holding
 * {@code kernel/<debian-package>/} and {@code initramfs/<sha256>.cpio.gz}. Deleting it is always
 * safe (it is rebuilt on the next run).
 *
 * <p>Entries are published by an atomic rename, so readers never see a half-written one; writers
 * serialize on a lock file (between processes) and a {@link ReentrantLock} (between threads of one
 * JVM, where a second {@link FileChannel#lock} would throw).
 */
public final class GuestCache {
    private static final ConcurrentHashMap<Path, ReentrantLock> JVM_LOCKS = new ConcurrentHashMap<>();

    private GuestCache() {}

    /** {@code ${XDG_CACHE_HOME:-~/.cache}/vmm} (or the system property {@code vmm.cache.dir}). */
    public static Path root() {
        String override = System.getProperty("vmm.cache.dir");
        if (override != null && !override.isBlank()) {
            return Path.of(override).toAbsolutePath();
        }
        String xdg = System.getenv("XDG_CACHE_HOME");
        Path base = xdg != null && !xdg.isBlank() && Path.of(xdg).isAbsolute()
                ? Path.of(xdg)
                : Path.of(System.getProperty("user.home"), ".cache");
        return base.resolve("vmm");
    }

    /** Work to do while holding a lock. */
    @FunctionalInterface
    interface Locked<T> {
        T run() throws IOException;
    }

    /** Runs {@code work} holding the lock file {@code lockFile} (created if needed). */
    static <T> T withLock(Path lockFile, Locked<T> work) throws IOException {
        Path key = lockFile.toAbsolutePath().normalize();
        ReentrantLock jvm = JVM_LOCKS.computeIfAbsent(key, k -> new ReentrantLock());
        jvm.lock();
        try {
            Files.createDirectories(key.getParent());
            try (FileChannel ch = FileChannel.open(key, StandardOpenOption.CREATE, StandardOpenOption.WRITE);
                 FileLock ignored = ch.lock()) {
                return work.run();
            }
        } finally {
            jvm.unlock();
        }
    }

    /** Deletes a folder tree, ignoring what is already gone. */
    static void deleteTree(Path dir) {
        if (dir == null || !Files.exists(dir, java.nio.file.LinkOption.NOFOLLOW_LINKS)) return;
        try (var s = Files.walk(dir)) {
            s.sorted(java.util.Comparator.reverseOrder()).forEach(p -> {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException ignored) {
                    // best effort
                }
            });
        } catch (IOException ignored) {
            // best effort
        }
    }
}
