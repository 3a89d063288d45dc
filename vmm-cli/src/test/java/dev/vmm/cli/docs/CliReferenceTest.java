package dev.vmm.cli.docs;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.Main;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;
import picocli.CommandLine.Model.OptionSpec;

/** docs/cli.md is what the picocli model generates today. */
class CliReferenceTest {
    static Path repoFile(String relative) {
        return Path.of(System.getProperty("basedir", ".")).toAbsolutePath().getParent().resolve(relative);
    }

    @Test
    void docsCliMdIsUpToDate() throws Exception {
        String expected = CliReference.markdown(Main.commandLine());
        Path file = repoFile(CliReference.FILE);
        String actual = Files.exists(file) ? Files.readString(file, StandardCharsets.UTF_8) : "";
        if (!expected.equals(actual)) {
            List<String> e = expected.lines().toList();
            List<String> a = actual.lines().toList();
            int i = 0;
            while (i < e.size() && i < a.size() && e.get(i).equals(a.get(i))) i++;
            fail(CliReference.FILE + " is out of date: regenerate it with '" + CliReference.REGENERATE
                    + "' (from the repository root) and commit it. First difference at line " + (i + 1)
                    + ":\n  generated: " + (i < e.size() ? e.get(i) : "(end)") + "\n  in file:   " + (i < a.size() ? a.get(i) : "(end)"));
        }
    }

    @Test
    void everyVisibleCommandAndOptionIsInTheReference() {
        String md = CliReference.markdown(Main.commandLine());
        check(Main.commandLine(), md);
    }

    private static void check(CommandLine c, String md) {
        var spec = c.getCommandSpec();
        if (spec.usageMessage().hidden() || spec.userObject() instanceof CommandLine.HelpCommand) return;
        assertTrue(md.contains("## " + spec.qualifiedName() + "\n"), spec.qualifiedName());
        for (OptionSpec o : spec.options()) {
            if (!o.hidden()) assertTrue(md.contains("`" + String.join(", ", o.names())), spec.qualifiedName() + " " + o.longestName());
        }
        for (CommandLine sub : c.getSubcommands().values()) check(sub, md);
    }

    @Test
    void anchorsFollowGitHub() {
        assertEquals("vmm-bench-vhost-user", CliReference.anchor("vmm bench vhost-user"));
    }
}
