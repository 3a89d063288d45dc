package dev.vmm.cli.qmp;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The {@code vmm qmp --script} language, one statement per line:
 * <pre>
 * # a comment (a whole line); blank lines are ignored
 * COMMAND key=value ...      a QMP command in {@link ShellSyntax}
 * sleep 20ms                 pause (ms or s; fractions allowed: 1.5s)
 * repeat N                   run the lines up to the matching 'end' N times (nestable)
 * end
 * </pre>
 * Parsed completely before anything runs, so a typo on the last line is reported before the
 * first command is sent.
 *
 * <p>Thread contract: immutable once parsed.
 */
public final class Script {
    /** A statement with the line it came from (1-based). */
    public sealed interface Step permits Command, Sleep, Repeat {
        int line();
    }

    public record Command(int line, String text, ShellSyntax.Request request) implements Step { }

    public record Sleep(int line, long nanos) implements Step { }

    public record Repeat(int line, long count, List<Step> body) implements Step { }

    /** A script that cannot be parsed: the message names the line. */
    public static final class ScriptException extends Exception {
        private static final long serialVersionUID = 1L;

        public ScriptException(String message) {
            super(message, null, false, false);
        }
    }

    private static final Pattern SLEEP = Pattern.compile("(\\d+(?:\\.\\d+)?)(ms|s)");

    private final List<Step> steps;

    private Script(List<Step> steps) {
        this.steps = steps;
    }

    public List<Step> steps() { return steps; }

    /** @param name how messages name the file, e.g. {@code rotate.qmp} */
    public static Script parse(String name, String text) throws ScriptException {
        Deque<List<Step>> open = new ArrayDeque<>();
        Deque<int[]> openLines = new ArrayDeque<>();
        Deque<Long> counts = new ArrayDeque<>();
        List<Step> top = new ArrayList<>();
        open.push(top);
        String[] lines = text.split("\n", -1);
        for (int i = 0; i < lines.length; i++) {
            int no = i + 1;
            String line = lines[i].strip();
            if (line.isEmpty() || line.startsWith("#")) continue;
            String where = name + ":" + no + ": ";
            String[] words = line.split("\\s+");
            switch (words[0]) {
                case "sleep" -> {
                    Matcher m = words.length == 2 ? SLEEP.matcher(words[1]) : null;
                    if (m == null || !m.matches()) throw new ScriptException(where + "expected 'sleep N(ms|s)', e.g. 'sleep 20ms', got '" + line + "'");
                    double v = Double.parseDouble(m.group(1));
                    double nanos = v * (m.group(2).equals("s") ? 1e9 : 1e6);
                    if (nanos > 24 * 3600 * 1e9) throw new ScriptException(where + "sleep longer than a day: '" + line + "'");
                    open.peek().add(new Sleep(no, (long) nanos));
                }
                case "repeat" -> {
                    long count;
                    try {
                        count = words.length == 2 ? Long.parseLong(words[1]) : -1;
                    } catch (NumberFormatException e) {
                        count = -1;
                    }
                    if (count < 0) throw new ScriptException(where + "expected 'repeat N' with N a whole number >= 0, got '" + line + "'");
                    open.push(new ArrayList<>());
                    openLines.push(new int[] {no});
                    counts.push(count);
                }
                case "end" -> {
                    if (words.length != 1) throw new ScriptException(where + "'end' takes nothing after it, got '" + line + "'");
                    if (openLines.isEmpty()) throw new ScriptException(where + "'end' without 'repeat'");
                    List<Step> body = open.pop();
                    int start = openLines.pop()[0];
                    open.peek().add(new Repeat(start, counts.pop(), List.copyOf(body)));
                }
                default -> {
                    try {
                        open.peek().add(new Command(no, line, ShellSyntax.parseLine(line)));
                    } catch (ShellSyntax.SyntaxException e) {
                        throw new ScriptException(where + e.getMessage());
                    }
                }
            }
        }
        if (!openLines.isEmpty()) throw new ScriptException(name + ":" + openLines.peek()[0] + ": 'repeat' without 'end'");
        return new Script(List.copyOf(top));
    }
}
