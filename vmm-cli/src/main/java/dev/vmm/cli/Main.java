package dev.vmm.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

/**
 * {@code vmm}: the launcher's entry point. Subcommands are listed by {@code vmm --help}.
 * Runs on the process's main thread; each subcommand owns its threads.
 */
@Command(name = "vmm", mixinStandardHelpOptions = true, versionProvider = Version.class,
        description = "A storage VMM for the JVM: serves disk images over NBD and vhost-user-blk, qemu-storage-daemon compatible.",
        subcommands = {DemoCommand.class, ServeCommand.class, dev.vmm.cli.qmp.QmpClientCommand.class, GuestCommand.class, BenchCommand.class,
                dev.vmm.cli.top.TopCommand.class, dev.vmm.cli.docs.DocsCommand.class, CommandLine.HelpCommand.class})
public final class Main implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        spec.commandLine().usage(System.out);
    }

    public static void main(String[] args) {
        System.exit(run(args));
    }

    /** The command model every run uses, and docs/cli.md is generated from ({@code vmm docs}). */
    public static CommandLine commandLine() {
        CommandLine cl = new CommandLine(new Main());
        CommandLine serve = cl.getSubcommands().get("serve");
        serve.getCommandSpec().usageMessage().footer(ServeCommand.keysHelp());
        return cl;
    }

    /** Runs the command line and returns the exit code (tests call this in-process). */
    public static int run(String... args) {
        // Logging is configured before any class creates a logger; serve validates the value.
        // demo prints its own steps: only warnings and errors of the daemon would interleave.
        String level = args.length > 0 && args[0].equals("demo") ? "warn" : "info";
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--log-level") && i + 1 < args.length) level = args[i + 1];
            else if (args[i].startsWith("--log-level=")) level = args[i].substring("--log-level=".length());
        }
        Logging.configure(level.toLowerCase(java.util.Locale.ROOT));
        CommandLine cl = commandLine();
        cl.setParameterExceptionHandler((ex, a) -> {
            CommandLine c = ex.getCommandLine();
            c.getErr().println("vmm: " + ex.getMessage());
            c.getErr().println("Try '" + c.getCommandSpec().qualifiedName() + " --help' for more information.");
            return 1;
        });
        cl.setExecutionExceptionHandler((ex, c, p) -> {
            c.getErr().println("vmm: " + (ex.getMessage() == null ? ex.toString() : ex.getMessage()));
            return 1;
        });
        return cl.execute(args);
    }
}
