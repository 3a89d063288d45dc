package dev.vmm.cli.docs;

import dev.vmm.cli.Main;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code vmm docs}: writes the command-line reference (docs/cli.md) generated from the picocli
 * model. Hidden from {@code --help}: it is a maintainer's tool. Runs on the CLI thread.
 */
@Command(name = "docs", hidden = true, description = "Write the command-line reference (Markdown) generated from the picocli model.")
public final class DocsCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
    boolean help;

    @Option(names = "--output", paramLabel = "FILE", description = "Write here instead of stdout (e.g. " + CliReference.FILE + ").")
    Path output;

    @Override
    public Integer call() {
        String md = CliReference.markdown(Main.commandLine());
        if (output == null) {
            spec.commandLine().getOut().print(md);
            spec.commandLine().getOut().flush();
            return 0;
        }
        try {
            Files.writeString(output, md, StandardCharsets.UTF_8);
        } catch (IOException e) {
            spec.commandLine().getErr().println("vmm docs: cannot write " + output + ": " + e.getMessage());
            return 1;
        }
        spec.commandLine().getErr().println("vmm docs: wrote " + output);
        return 0;
    }
}
