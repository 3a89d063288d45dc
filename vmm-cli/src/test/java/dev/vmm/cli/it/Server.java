package dev.vmm.cli.it;

import java.util.Arrays;
import java.util.Locale;
import java.util.stream.Stream;

/**
 * Which storage daemon a parameterized test runs against: vmm, or qemu-storage-daemon as the
 * reference (same command line by design). A test that passes on QSD and fails on vmm is vmm's
 * fault.
 *
 * <p>{@link #selected} is the {@code @MethodSource} of the qcow2 suites: by default both, so
 * that every run also re-validates the harness against QSD (cheap: QSD starts in milliseconds).
 * {@code -Dvmm.it.qcow2.servers=vmm} (or {@code qsd}) runs one; {@code -Dvmm.it.server=qsd}
 * (the whole suite against QSD) means QSD only. Any thread.
 */
enum Server {
    VMM, QSD;

    /** The servers to run against, from the system properties (see the class comment). */
    static Stream<Server> selected() {
        if (Peers.qsd()) return Stream.of(QSD);
        String list = System.getProperty("vmm.it.qcow2.servers", "vmm,qsd");
        return Arrays.stream(list.split(","))
                .map(s -> s.strip().toUpperCase(Locale.ROOT))
                .filter(s -> !s.isEmpty())
                .map(Server::valueOf)
                .distinct();
    }

    /**
     * The one server of the vmm-only suites (fuzz, kill): vmm, unless the selection is QSD alone
     * (to validate such a suite's harness once against the reference).
     */
    static Server primary() {
        return selected().anyMatch(s -> s == VMM) ? VMM : QSD;
    }

    boolean qsd() {
        return this == QSD;
    }

    @Override
    public String toString() {
        return name().toLowerCase(Locale.ROOT);
    }
}
