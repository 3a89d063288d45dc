package dev.vmm.cli.top;

import dev.vmm.cli.qmp.QmpClient;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code vmm top}: a live view of a running daemon through its QMP monitor, redrawn every
 * interval like top(1). With {@code --once}, or when stdout is not a terminal, it takes two
 * samples one interval apart, prints one frame and exits (for scripts and tests).
 *
 * <p>Thread contract: runs on the CLI thread; one QMP connection, one request at a time.
 */
@Command(name = "top", sortOptions = false, usageHelpAutoWidth = true,
        description = {
            "Live view of a running vmm: per IOThread its load and disks; per disk and export IOPS, MiB/s,",
            "in-flight requests and latency; recent handoffs with their pauses. Polls the QMP monitor.",
            "Ctrl-C quits. Against qemu-storage-daemon, the parts that need vmm's x- commands stay empty."})
public final class TopCommand implements Callable<Integer> {
    /** Clear the screen and move the cursor home (ANSI), as top does before each frame. */
    public static final String CLEAR = "\033[H\033[2J";

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--qmp", required = true, paramLabel = "PATH", description = "The daemon's QMP socket (serve --qmp PATH).")
    Path socket;

    @Option(names = "--interval", paramLabel = "SECONDS", defaultValue = "2",
            description = "Seconds between refreshes (default 2; at least 0.1).")
    double interval;

    @Option(names = "--once", description = "Print one frame (rates over one interval) and exit; the default when stdout is not a terminal.")
    boolean once;

    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
    boolean help;

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        if (!(interval >= 0.1) || interval > 3600) {
            err.println("vmm: --interval: must be from 0.1 to 3600 seconds, got " + interval);
            return 1;
        }
        boolean live = !once && System.console() != null;
        long sleepMs = Math.round(interval * 1000);
        try (QmpClient qmp = QmpClient.connect(socket)) {
            Sample prev = Sample.take(qmp);
            while (true) {
                Thread.sleep(sleepMs);
                Sample cur = Sample.take(qmp);
                String frame = TopView.render(socket.toString(), prev, cur);
                if (!live) {
                    out.print(frame);
                    out.flush();
                    return 0;
                }
                out.print(CLEAR + frame);
                out.flush();
                prev = cur;
            }
        } catch (IOException e) {
            err.println("vmm: top: " + e.getMessage());
            return 1;
        }
    }
}
