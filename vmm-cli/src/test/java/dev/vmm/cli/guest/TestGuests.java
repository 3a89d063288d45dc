package dev.vmm.cli.guest;

import dev.vmm.cli.it.Peers;

/**
 * The guest kernel for tests, fetched once per JVM. A missing host tool (QEMU, busybox-static,
 * apt) skips the test naming its Debian package, or fails it with {@code CI=true} (see
 * {@link Peers#missing}).
 */
final class TestGuests {
    private static GuestKernel kernel;

    private TestGuests() {}

    /** The cached Debian kernel; also checks that QEMU and a static busybox are installed. */
    static synchronized GuestKernel kernel() {
        try {
            HostTools.require(HostTools.QEMU);
            HostTools.staticBusybox();
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
