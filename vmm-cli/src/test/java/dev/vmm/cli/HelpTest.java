package dev.vmm.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

/** Every command of the picocli model, hidden ones included, answers {@code --help} and {@code -h} with its usage and exit 0. */
class HelpTest {
    static void collect(CommandLine cl, List<String> path, List<List<String>> out) {
        out.add(path);
        for (var e : cl.getSubcommands().entrySet()) {
            if (!e.getValue().getCommandName().equals(e.getKey())) continue; // an alias: its command is listed once
            List<String> p = new ArrayList<>(path);
            p.add(e.getKey());
            collect(e.getValue(), p, out);
        }
    }

    @Test
    void everySubcommandAnswersHelp() {
        List<List<String>> paths = new ArrayList<>();
        collect(Main.commandLine(), List.of(), paths);
        assertTrue(paths.size() >= 10, "commands found in the model: " + paths);
        for (List<String> path : paths) {
            for (String flag : new String[] {"--help", "-h"}) {
                CommandLine cl = Main.commandLine();
                StringWriter out = new StringWriter();
                StringWriter err = new StringWriter();
                cl.setOut(new PrintWriter(out));
                cl.setErr(new PrintWriter(err));
                List<String> args = new ArrayList<>(path);
                args.add(flag);
                int rc = cl.execute(args.toArray(new String[0]));
                String what = "vmm " + String.join(" ", args) + "\nstdout: " + out + "\nstderr: " + err;
                assertEquals(0, rc, what);
                String usage = "Usage: vmm" + (path.isEmpty() ? "" : " " + String.join(" ", path));
                assertTrue(out.toString().contains(usage), what);
                assertEquals("", err.toString(), what);
            }
        }
    }
}
