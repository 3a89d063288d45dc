package dev.vmm.cli;

import dev.vmm.cli.demo.Demo;
import dev.vmm.cli.demo.DemoException;
import dev.vmm.cli.demo.DemoGuest;
import dev.vmm.cli.demo.Steps;
import dev.vmm.core.options.Options;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code vmm demo}: the main job on an embedded default, each step printed as it happens (see
 * {@link Demo} and {@link DemoGuest}), then serving until Ctrl-C.
 *
 * <p>Thread contract: {@link #call} runs on the process's main thread: it runs the steps, then
 * waits; SIGINT/SIGTERM (or QMP {@code quit}) only release that wait, so the shutdown always runs
 * here, in order.
 */
@Command(name = "demo", sortOptions = false, usageHelpAutoWidth = true,
        description = {
            "Try vmm in one command: create a sparse image, serve it over NBD (unix socket and TCP localhost) and",
            "vhost-user-blk from IOThread iot0 with a QMP monitor, print the URIs and what to try next; then, when",
            "QEMU is installed, boot a minimal guest on the disk, write through it, read the same bytes back over",
            "NBD and move the disk to IOThread iot1 while the guest is attached. Serves until Ctrl-C."})
public final class DemoCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--dir", paramLabel = "DIR", defaultValue = "vmm-demo",
            description = "Working folder for the image, the sockets and the guest's console log (default ${DEFAULT-VALUE},"
                    + " created if missing; an image of the same size there is reused).")
    Path dir;

    @Option(names = "--size", paramLabel = "SIZE", defaultValue = "1G",
            description = "Size of the sparse image, e.g. 64M, 1G (default ${DEFAULT-VALUE}).")
    String size;

    @Option(names = "--port", paramLabel = "P", defaultValue = "10809",
            description = "TCP port for NBD on 127.0.0.1 (default ${DEFAULT-VALUE}; 0 or a taken port: a free one is picked and printed).")
    int port;

    @Option(names = "--no-guest", description = "Do not boot the guest, even when QEMU is installed.")
    boolean noGuest;

    @Option(names = "--once", description = "Stop and exit after the steps instead of serving until Ctrl-C (for tests and scripts).")
    boolean once;

    @Option(names = "--log-level", paramLabel = "LEVEL", defaultValue = "warn",
            description = "error, warn (default), info, debug or trace: the daemon's log on stderr.")
    String logLevel;

    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
    boolean help;

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        long bytes;
        try {
            bytes = Options.parseSize(size);
        } catch (NumberFormatException e) {
            bytes = -1;
        }
        if (bytes < DemoGuest.MIN_SIZE || bytes % 4096 != 0) {
            err.println("vmm demo: --size: expected a multiple of 4 KiB of at least 4M (e.g. 64M, 1G), got '" + size + "'");
            return 1;
        }
        if (!Logging.checkLevel(logLevel, "vmm demo", err)) return 1;
        if (port < 0 || port > 65535) {
            err.println("vmm demo: --port: expected 0 (any free port) to 65535, got " + port);
            return 1;
        }
        CountDownLatch stop = new CountDownLatch(1);
        // Installed first: Ctrl-C during a slow step (a kernel download, a guest boot) stops the demo too.
        Signals.onTermination(stop::countDown);

        DemoGuest.Missing missing = noGuest ? null : DemoGuest.missingTools();
        boolean guest = !noGuest && missing == null;
        Steps steps = new Steps(out, Demo.STEPS + (guest ? DemoGuest.STEPS : 0));
        Demo demo;
        try {
            demo = Demo.start(new Demo.Config(dir, bytes, port), steps, stop::countDown);
        } catch (DemoException e) {
            err.println("vmm demo: " + e.getMessage());
            return 1;
        }
        Signals.onHalt(() -> {
            for (java.nio.file.Path p : java.util.List.of(demo.nbdSocket(), demo.vhostSocket(), demo.qmpSocket())) {
                try {
                    java.nio.file.Files.deleteIfExists(p);
                } catch (java.io.IOException ignored) {
                    // best effort: the process halts
                }
            }
        });
        out.println();
        out.println("NBD URIs:");
        for (String uri : demo.nbdUris()) out.println("  " + uri);
        out.println("Try, in another terminal:");
        for (String c : demo.nextCommands()) out.println("  " + c);
        out.println();
        out.flush();

        if (missing != null) {
            out.println("No guest: " + missing.what() + " is not installed. To see the guest part, run");
            out.println("  " + missing.install());
            out.println("and ./vmm demo again. NBD is served all the same.");
        } else if (guest) {
            new DemoGuest(demo, steps, () -> stop.getCount() == 0).run();
        }
        boolean ok = steps.failed() == 0;
        if (!once && stop.getCount() > 0) {
            out.println();
            out.println(ok ? "All steps ok." : steps.failed() + " step(s) FAILED (see above).");
            out.println("Serving " + demo.nbdUris().get(demo.nbdUris().size() - 1) + " until Ctrl-C.");
            out.flush();
            try {
                stop.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        out.println();
        out.print("stopping ...");
        out.flush();
        long t0 = System.nanoTime();
        demo.close();
        Path left = demo.leftoverSocket();
        out.println(" done (" + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) + " ms)"
                + (left == null ? ": sockets removed" : ": " + left + " was left behind")
                + (demo.flushed() ? "" : "; the final flush FAILED"));
        out.flush();
        return ok && demo.flushed() && left == null ? 0 : 1;
    }
}
