package dev.vmm.core.testing;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.junit.jupiter.api.Assertions;
import org.junit.jupiter.api.Assumptions;

/**
 * The host tools a test needs (qemu-storage-daemon, openssl, the NBD peers, ...). A missing one
 * skips the test with a message naming the Debian package to install; with {@code CI=true} in
 * the environment it fails the test instead, so that CI cannot go green by skipping.
 *
 * <p>Thread contract: any test thread (the lookups are cached in a concurrent map).
 */
public final class Tools {
    private static final Map<String, Path> FOUND = new ConcurrentHashMap<>();

    private Tools() {}

    /** The absolute path of {@code name} (PATH, then the sbin folders), or skip/fail naming {@code debianPackage}. */
    public static String require(String name, String debianPackage) {
        Path p = FOUND.computeIfAbsent(name, Tools::lookup);
        if (p.toString().isEmpty()) missing(name + " not found on PATH", debianPackage);
        return p.toString();
    }

    /** Skips the test (fails it with {@code CI=true}) because {@code what} is missing, naming the Debian package. */
    public static void missing(String what, String debianPackage) {
        String msg = what + ": install the Debian package '" + debianPackage + "' (apt-get install " + debianPackage + ")";
        if ("true".equalsIgnoreCase(System.getenv("CI"))) Assertions.fail(msg);
        Assumptions.abort(msg);
    }

    private static Path lookup(String name) {
        for (String dir : System.getenv().getOrDefault("PATH", "/usr/bin:/bin").split(File.pathSeparator)) {
            Path p = Path.of(dir.isEmpty() ? "." : dir, name);
            if (Files.isRegularFile(p) && Files.isExecutable(p)) return p.toAbsolutePath();
        }
        for (String d : List.of("/usr/sbin", "/sbin", "/usr/bin")) {
            Path p = Path.of(d, name);
            if (Files.isExecutable(p)) return p;
        }
        return Path.of("");
    }
}
