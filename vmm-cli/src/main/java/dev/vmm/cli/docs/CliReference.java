package dev.vmm.cli.docs;

import java.util.ArrayList;
import java.util.List;
import picocli.CommandLine;
import picocli.CommandLine.Model.ArgSpec;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Model.OptionSpec;
import picocli.CommandLine.Model.PositionalParamSpec;

/**
 * Renders docs/cli.md from the picocli model: for every visible command (depth first, in
 * declaration order) its description, synopsis, options with defaults, parameters and footer
 * (serve's QSD-style key lists live there). Nothing is written by hand, so the reference cannot
 * drift from what {@code --help} says; CliReferenceTest compares the file with this output.
 *
 * <p>Thread contract: stateless; any thread.
 */
public final class CliReference {
    /** Where the reference lives, relative to the repository root. */
    public static final String FILE = "docs/cli.md";
    /** The command that rewrites it, for the file's header and the test's failure message. */
    public static final String REGENERATE = "./vmm docs --output " + FILE;
    /** Fixed width for synopses and footers, so the output does not depend on the terminal. */
    static final int WIDTH = 100;

    private CliReference() {}

    /** The whole reference for {@code root} (a fresh model: this changes its usage width). */
    public static String markdown(CommandLine root) {
        root.setUsageHelpAutoWidth(false);
        root.setUsageHelpWidth(WIDTH);
        List<CommandLine> all = new ArrayList<>();
        collect(root, all);
        StringBuilder sb = new StringBuilder();
        sb.append("# vmm command line reference\n\n")
          .append("<!-- Generated from the picocli model by `").append(REGENERATE).append("`: do not edit by hand.\n")
          .append("     CliReferenceTest fails when this file is out of date. -->\n\n")
          .append("Every command also prints its part with `--help`.\n\n");
        for (CommandLine c : all) {
            if (c == root) continue;
            String q = c.getCommandSpec().qualifiedName();
            sb.append("- [`").append(q).append("`](#").append(anchor(q)).append(")")
              .append(firstSentence(c.getCommandSpec())).append('\n');
        }
        sb.append('\n');
        for (CommandLine c : all) command(c, sb);
        return sb.toString();
    }

    private static void collect(CommandLine c, List<CommandLine> out) {
        out.add(c);
        for (CommandLine sub : c.getSubcommands().values()) {
            CommandSpec s = sub.getCommandSpec();
            if (s.usageMessage().hidden() || s.userObject() instanceof CommandLine.HelpCommand) continue;
            if (out.contains(sub)) continue; // aliases map to the same CommandLine
            collect(sub, out);
        }
    }

    private static void command(CommandLine c, StringBuilder sb) {
        CommandSpec spec = c.getCommandSpec();
        CommandLine.Help help = new CommandLine.Help(spec, CommandLine.Help.defaultColorScheme(CommandLine.Help.Ansi.OFF));
        sb.append("## ").append(spec.qualifiedName()).append("\n\n");
        String description = String.join("\n", spec.usageMessage().description());
        if (!description.isBlank()) sb.append(text(description)).append("\n\n");
        sb.append("```\n").append(help.synopsis(0).stripTrailing()).append("\n```\n\n");
        List<OptionSpec> options = spec.options().stream().filter(o -> !o.hidden()).toList();
        List<PositionalParamSpec> params = spec.positionalParameters().stream().filter(p -> !p.hidden()).toList();
        if (!options.isEmpty() || !params.isEmpty()) {
            sb.append("| Option | Description | Default |\n|---|---|---|\n");
            for (PositionalParamSpec p : params) row(sb, p.paramLabel(), p);
            for (OptionSpec o : options) {
                String label = String.join(", ", o.names()) + (o.arity().max() > 0 ? " " + o.paramLabel() : "");
                row(sb, label, o);
            }
            sb.append('\n');
        }
        List<String> subs = new ArrayList<>();
        for (var e : c.getSubcommands().entrySet()) {
            CommandSpec s = e.getValue().getCommandSpec();
            if (!s.usageMessage().hidden() && !(s.userObject() instanceof CommandLine.HelpCommand)) subs.add(s.qualifiedName());
        }
        if (!subs.isEmpty()) {
            sb.append("Subcommands:");
            for (String s : subs) sb.append(" [`").append(s).append("`](#").append(anchor(s)).append(")");
            sb.append("\n\n");
        }
        String footer = String.join("\n", spec.usageMessage().footer());
        if (!footer.isBlank()) {
            String heading = text(String.join("", spec.usageMessage().footerHeading())).strip();
            if (!heading.isEmpty()) sb.append("**").append(heading).append("**\n\n");
            sb.append("```\n").append(text(footer).stripTrailing()).append("\n```\n\n");
        }
    }

    private static void row(StringBuilder sb, String label, ArgSpec a) {
        String desc = text(String.join(" ", a.description())).replace("\n", " ").strip();
        String def = a.defaultValue();
        boolean showDefault = def != null && !def.isEmpty() && !(a.typeInfo().isBoolean() && def.equals("false"));
        sb.append("| `").append(cell(label)).append("` | ").append(cell(desc)).append(" | ")
          .append(showDefault ? "`" + cell(def) + "`" : "").append(" |\n");
    }

    /** picocli's %n is a line break; the rest of printf syntax is not used in our texts. */
    private static String text(String s) {
        return s.replace("%n", "\n").replace("%%", "%");
    }

    private static String cell(String s) {
        return s.replace("|", "\\|");
    }

    private static String firstSentence(CommandSpec spec) {
        String d = text(String.join(" ", spec.usageMessage().description())).replace("\n", " ").strip();
        if (d.isEmpty()) return "";
        int dot = d.indexOf(". ");
        return ": " + (dot > 0 ? d.substring(0, dot + 1) : d);
    }

    /** GitHub's heading anchor: lower case, spaces to '-', punctuation other than '-' dropped. */
    static String anchor(String heading) {
        return heading.toLowerCase(java.util.Locale.ROOT).replace(' ', '-').replaceAll("[^a-z0-9_-]", "");
    }
}
