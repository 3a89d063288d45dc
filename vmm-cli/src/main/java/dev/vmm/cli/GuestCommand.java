package dev.vmm.cli;

import dev.vmm.cli.guest.GuestCache;
import dev.vmm.cli.guest.GuestKernel;
import dev.vmm.cli.guest.GuestLauncher;
import dev.vmm.cli.guest.GuestRun;
import dev.vmm.cli.guest.HostTools;
import dev.vmm.cli.guest.Initramfs;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code vmm guest}: boots a minimal Linux guest in QEMU (TCG) whose disk {@code /dev/vda} is the
 * vhost-user-blk device behind {@code --socket}, with the console on the terminal. Without
 * {@code --kernel}/{@code --initrd} it uses the cached Debian cloud kernel and a busybox
 * initramfs with an interactive shell (see docs/guest-testing.md). Exits with QEMU's exit code.
 *
 * <p>Thread contract: {@link #call} runs on the main thread and blocks until QEMU exits.
 */
@Command(name = "guest", sortOptions = false, usageHelpAutoWidth = true,
        description = {
            "Boot a minimal Linux guest in QEMU whose disk /dev/vda is the vhost-user-blk device on --socket, console on this terminal. 'exit' in the guest's shell powers it off; Ctrl-A X quits QEMU at once.",
            "Without --kernel/--initrd: Debian's cloud kernel (fetched once with apt-get download) and a busybox initramfs with a shell, cached under $${XDG_CACHE_HOME:-~/.cache}/vmm. QEMU runs with TCG (no KVM)."})
public final class GuestCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--socket", required = true, paramLabel = "PATH",
            description = "The backend's vhost-user socket (vmm serve --export type=vhost-user-blk,... or qemu-storage-daemon).")
    Path socket;

    @Option(names = "--kernel", paramLabel = "FILE",
            description = "Kernel image. Without --initrd the default initramfs loads no modules, so virtio-blk must be built in.")
    Path kernel;

    @Option(names = "--initrd", paramLabel = "FILE", description = "Initramfs (default: busybox shell, built and cached).")
    Path initrd;

    @Option(names = "--smp", paramLabel = "N", defaultValue = "1", description = "vCPUs (default ${DEFAULT-VALUE}).")
    int smp;

    @Option(names = "--memory", paramLabel = "SIZE", defaultValue = "512M",
            description = "Guest RAM, shared with the backend through a memfd (default ${DEFAULT-VALUE}).")
    String memory;

    @Option(names = "--num-queues", paramLabel = "N", defaultValue = "1",
            description = "Virtqueues of the device (default ${DEFAULT-VALUE}); the backend's export must offer at least"
                    + " as many (its num-queues=, also 1 by default), or QEMU refuses to start.")
    int numQueues;

    @Option(names = "--reconnect", description = "Reconnect to the backend after it restarts (chardev reconnect=1).")
    boolean reconnect;

    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
    boolean help;

    @Override
    public Integer call() throws Exception {
        PrintWriter err = spec.commandLine().getErr();
        HostTools.require(HostTools.QEMU); // first: one clear line naming the package
        Path k = kernel;
        Path i = initrd;
        if (k == null || i == null) {
            GuestKernel gk;
            if (k == null) {
                gk = GuestKernel.debian(msg -> {
                    err.println("vmm guest: " + msg);
                    err.flush();
                });
            } else {
                gk = GuestKernel.of(k, List.of());
            }
            k = gk.vmlinuz();
            if (i == null) i = Initramfs.cached(gk, Initramfs.INTERACTIVE_SHELL);
        }
        int queues = numQueues;
        GuestLauncher launcher = GuestLauncher.of(k, i).socket(socket).memory(memory).smp(smp)
                .numQueues(queues).reconnect(reconnect).timeout(Duration.ZERO);
        err.println("vmm guest: booting " + k + " (initrd " + i + ") on " + socket + ": TCG, " + smp + " vCPU, "
                + memory + ", " + queues + " queue(s)" + (reconnect ? ", reconnect" : "")
                + ". Ctrl-A X quits QEMU. Cache: " + GuestCache.root());
        err.flush();
        GuestRun run = launcher.run();
        return run.exitCode();
    }
}
