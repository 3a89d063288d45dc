package dev.vmm.cli.qmp;

import dev.vmm.core.json.Json;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

/**
 * {@code vmm qmp}: a qmp-shell style client for a running daemon (vmm or qemu-storage-daemon).
 * Runs on the CLI thread; exit code 0 when every command succeeded, 1 otherwise.
 */
@Command(name = "qmp", sortOptions = false, usageHelpAutoWidth = true,
        description = {
            "Run one QMP command, or a script of them, against a monitor socket (vmm serve --qmp, or",
            "qemu-storage-daemon --chardev socket,...,server=on,wait=off --monitor chardev=...).",
            "Arguments are key=value: a value is JSON when it parses as a number, true/false/null, an object",
            "or an array, else a string; dotted keys build objects (addr.type=unix addr.path=/x).",
            "Output: one JSON line per reply and per event."},
        footerHeading = "%nScripts%n",
        footer = {
            "  One command per line in the same syntax, plus:",
            "    sleep 20ms | sleep 1.5s     pause",
            "    repeat N ... end            run the lines in between N times (nestable)",
            "    monitor NAME PATH           connect another monitor (e.g. a second daemon's) as NAME",
            "    @NAME COMMAND key=value ... send the command to monitor NAME",
            "    wait-event [@NAME] EVENT [key=value ...] [timeout=30s]",
            "                                wait for EVENT with those data fields (also one that came",
            "                                since the last wait); prints job progress every second",
            "    ${VAR}                      an environment variable, anywhere in a line",
            "    # comment                   (whole lines; blank lines are ignored)",
            "  The script stops at the first error (line, command and the monitor's message on stderr) unless",
            "  --continue-on-error. The last line is a summary: commands, errors, moves and their pause",
            "  p50/p99/max in ns (from VMM_NODE_MOVED events). Examples: examples/*.qmp",
            "",
            "Examples:",
            "  vmm qmp --socket /tmp/qmp.sock query-block-exports",
            "  vmm qmp --socket /tmp/qmp.sock block-export-add type=nbd id=e0 node-name=disk0 writable=true",
            "  vmm qmp --socket /tmp/qmp.sock --script examples/rotate-three-iothreads.qmp",
            "  vmm qmp --socket /tmp/qmp.sock --script examples/migrate-disk.qmp"})
public final class QmpClientCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--socket", required = true, paramLabel = "PATH", description = "The monitor's unix socket.")
    Path socket;

    @Option(names = "--script", paramLabel = "FILE", description = "Run the commands in FILE instead of one command.")
    Path script;

    @Option(names = "--continue-on-error", description = "In a script, go on after a failed command (exit code still 1).")
    boolean continueOnError;

    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
    boolean help;

    @Parameters(paramLabel = "COMMAND [key=value ...]", arity = "0..*", description = "One QMP command and its arguments.")
    List<String> words = new ArrayList<>();

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        if ((script == null) == words.isEmpty()) {
            err.println("vmm qmp: give either a COMMAND with its key=value arguments or --script FILE");
            return 1;
        }
        Script parsed = null;
        ShellSyntax.Request request = null;
        try {
            if (script != null) {
                String text;
                try {
                    text = Files.readString(script, StandardCharsets.UTF_8);
                } catch (IOException e) {
                    err.println("vmm qmp: --script: cannot read " + script + ": " + e.getMessage());
                    return 1;
                }
                parsed = Script.parse(script.getFileName().toString(), text);
            } else {
                request = ShellSyntax.parse(words);
            }
        } catch (Script.ScriptException | ShellSyntax.SyntaxException e) {
            err.println("vmm qmp: " + e.getMessage());
            return 1;
        }
        try (QmpClient client = QmpClient.connect(socket)) {
            if (parsed != null) {
                return new ScriptRunner(client, script.getFileName().toString(), out, err, continueOnError).run(parsed) ? 0 : 1;
            }
            client.onEvent(e -> {
                out.println(Json.write(e));
                out.flush();
            });
            Map<String, Object> reply = client.execute(request);
            out.println(Json.write(reply));
            out.flush();
            if (reply.containsKey("error")) {
                err.println("vmm qmp: " + request.command() + ": " + ScriptRunner.desc(reply));
                return 1;
            }
            return 0;
        } catch (IOException e) {
            err.println("vmm qmp: " + e.getMessage());
            return 1;
        }
    }
}
