package dev.vmm.cli.it;

import dev.vmm.core.testing.Tools;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;

/**
 * Locates the real NBD peers (qemu-img, nbdinfo, fio, ...) the integration tests drive.
 *
 * <p>A missing peer skips the test with a message naming the Debian package to install; with
 * {@code CI=true} in the environment it fails the test instead ({@link Tools}). Any test thread.
 */
public final class Peers {
    /** Debian 12 package of each peer binary. */
    private static final Map<String, String> PACKAGE = Map.of(
            "qemu-img", "qemu-utils",
            "qemu-io", "qemu-utils",
            "qemu-nbd", "qemu-utils",
            "qemu-storage-daemon", "qemu-system-common",
            "qemu-system-x86_64", "qemu-system-x86",
            "nbdinfo", "libnbd-bin",
            "nbdcopy", "libnbd-bin",
            "nbdsh", "python3-libnbd",
            "fio", "fio");

    private static volatile Path python;

    private Peers() {}

    /** The absolute path of {@code name} on PATH, or skip/fail the test. */
    public static String require(String name) {
        return Tools.require(name, PACKAGE.getOrDefault(name, name));
    }

    /**
     * A python3 that can {@code import nbd} (libnbd's bindings). Debian installs them for
     * /usr/bin/python3 only, so a pyenv python3 first on PATH does not see them; nbdsh itself
     * runs whatever python3 is first on PATH, which is why the tests run python directly.
     */
    public static String python() {
        if (python == null) {
            for (String candidate : List.of("/usr/bin/python3", "python3")) {
                try {
                    Process p = new ProcessBuilder(candidate, "-c", "import nbd")
                            .redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
                    if (p.waitFor(20, TimeUnit.SECONDS) && p.exitValue() == 0) {
                        python = Path.of(candidate);
                        break;
                    }
                    p.destroyForcibly();
                } catch (Exception e) {
                    // try the next candidate
                }
            }
        }
        if (python == null) {
            missing("no python3 can 'import nbd'", "python3-libnbd");
        }
        return python.toString();
    }

    /** fio with its nbd engine (Debian's fio is built with libnbd). */
    public static String fioWithNbd() {
        String fio = require("fio");
        Run.Result r = Run.cmd(fio, "--enghelp=nbd").timeoutSeconds(20).expectAny();
        if (r.exit() != 0 || !r.stdout().contains("uri")) {
            missing("fio has no nbd engine (fio --enghelp=nbd: " + r.stderr().strip() + ")", "fio");
        }
        return fio;
    }

    /** True when the suite runs against qemu-storage-daemon ({@code -Dvmm.it.server=qsd}). */
    public static boolean qsd() {
        return "qsd".equals(System.getProperty("vmm.it.server"));
    }

    /**
     * Marks an expectation where vmm intentionally goes beyond qemu-storage-daemon 7.2: skipped
     * when the suite runs against QSD.
     */
    public static void beyondQsd(String why) {
        Assumptions.assumeFalse(qsd(), "beyond qemu-storage-daemon: " + why);
    }

    /** Skips the test (fails it with {@code CI=true}) because {@code what} is missing, naming the Debian package. */
    public static void missing(String what, String pkg) {
        Tools.missing(what, pkg);
    }
}
