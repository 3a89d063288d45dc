package dev.vmm.cli.guest;

import dev.vmm.cli.it.Peers;

/**
 * The guest kernel for tests, fetched once per JVM. A missing host tool (QEMU, busybox-static,
 * apt) skips the test naming its Debian package, or fails it with {@code CI=true} (see
 * {@link Peers#missing}).
 */
public final class TestGuests {
    private static GuestKernel kernel;

    private TestGuests() {}

    /** QEMU and a static busybox must be installed (what booting a test guest needs besides the kernel). */
    public static void requireHostTools() {
        try {
            HostTools.require(HostTools.QEMU);
            HostTools.staticBusybox();
        } catch (MissingToolException e) {
            Peers.missing(e.getMessage(), e.debianPackage());
        }
    }

    /** The cached Debian kernel; also checks that QEMU and a static busybox are installed. */
    static synchronized GuestKernel kernel() {
        requireHostTools();
        try {
            if (kernel == null) {
                long t0 = System.nanoTime();
                kernel = GuestKernel.debian(msg -> System.out.println("[guest] " + msg));
                System.out.printf("[guest] kernel %s ready in %d ms%n", kernel.packageName(), (System.nanoTime() - t0) / 1_000_000);
            }
            return kernel;
        } catch (MissingToolException e) {
            Peers.missing(e.getMessage(), e.debianPackage());
            throw e; // not reached
        }
    }
}
