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
 * monitor NAME PATH          connect a second monitor (another daemon's QMP socket) as NAME
 * &#64;NAME COMMAND key=value ... send the command to monitor NAME instead of --socket's
 * wait-event [&#64;NAME] EVENT [key=value ...] [timeout=30s]
 *                            wait until EVENT arrives with those data fields (or arrived
 *                            since the last wait); a timeout is an error
 * ${VAR}                     anywhere: the environment variable VAR (unset is an error)
 * </pre>
 * Parsed completely before anything runs, so a typo on the last line is reported before the
 * first command is sent.
 *
 * <p>Thread contract: immutable once parsed.
 */
public final class Script {
    /** A statement with the line it came from (1-based). */
    public sealed interface Step permits Command, Sleep, Repeat, Monitor, WaitEvent {
        int line();
    }

    /** @param monitor the monitor's name, "" for the one given with --socket */
    public record Command(int line, String text, String monitor, ShellSyntax.Request request) implements Step {
        public Command(int line, String text, ShellSyntax.Request request) {
            this(line, text, "", request);
        }
    }

    public record Monitor(int line, String name, java.nio.file.Path path) implements Step { }

    /** @param data fields the event's data must hold (compared as JSON) */
    public record WaitEvent(int line, String text, String monitor, String event, java.util.Map<String, Object> data,
            long timeoutNanos) implements Step { }

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
    private static final Pattern DURATION = Pattern.compile("(\\d+(?:\\.\\d+)?)(ms|s|m)");
    private static final Pattern VAR = Pattern.compile("\\$\\{([A-Za-z_][A-Za-z0-9_]*)}");
    private static final Pattern NAME = Pattern.compile("[A-Za-z][A-Za-z0-9_-]*");
    static final long DEFAULT_WAIT_NANOS = 30_000_000_000L;

    private final List<Step> steps;

    private Script(List<Step> steps) {
        this.steps = steps;
    }

    public List<Step> steps() { return steps; }

    /** @param name how messages name the file, e.g. {@code rotate.qmp} */
    public static Script parse(String name, String text) throws ScriptException {
        return parse(name, text, System.getenv());
    }

    /** {@link #parse(String, String)} with {@code env} for {@code ${VAR}}. */
    public static Script parse(String name, String text, java.util.Map<String, String> env) throws ScriptException {
        java.util.Set<String> monitors = new java.util.HashSet<>();
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
            line = substitute(where, line, env);
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
                case "monitor" -> {
                    if (words.length != 3 || !NAME.matcher(words[1]).matches()) {
                        throw new ScriptException(where + "expected 'monitor NAME PATH', got '" + line + "'");
                    }
                    if (!monitors.add(words[1])) throw new ScriptException(where + "monitor '" + words[1] + "' is defined twice");
                    open.peek().add(new Monitor(no, words[1], java.nio.file.Path.of(words[2])));
                }
                case "wait-event" -> open.peek().add(waitEvent(where, no, line, monitors));
                default -> {
                    String monitor = "";
                    String rest = line;
                    if (line.startsWith("@")) {
                        monitor = words[0].substring(1);
                        if (!monitors.contains(monitor)) throw new ScriptException(where + "unknown monitor '" + monitor + "' (define it with 'monitor NAME PATH' first)");
                        rest = line.substring(words[0].length()).strip();
                    }
                    try {
                        open.peek().add(new Command(no, line, monitor, ShellSyntax.parseLine(rest)));
                    } catch (ShellSyntax.SyntaxException e) {
                        throw new ScriptException(where + e.getMessage());
                    }
                }
            }
        }
        if (!openLines.isEmpty()) throw new ScriptException(name + ":" + openLines.peek()[0] + ": 'repeat' without 'end'");
        return new Script(List.copyOf(top));
    }

    private static String substitute(String where, String line, java.util.Map<String, String> env) throws ScriptException {
        Matcher m = VAR.matcher(line);
        StringBuilder sb = new StringBuilder();
        while (m.find()) {
            String v = env.get(m.group(1));
            if (v == null) throw new ScriptException(where + "${" + m.group(1) + "} is not set in the environment");
            m.appendReplacement(sb, Matcher.quoteReplacement(v));
        }
        m.appendTail(sb);
        return sb.toString();
    }

    private static WaitEvent waitEvent(String where, int no, String line, java.util.Set<String> monitors) throws ScriptException {
        String usage = where + "expected 'wait-event [@MONITOR] EVENT [key=value ...] [timeout=30s]', got '" + line + "'";
        List<String> words;
        try {
            words = new ArrayList<>(ShellSyntax.split(line));
        } catch (ShellSyntax.SyntaxException e) {
            throw new ScriptException(where + e.getMessage());
        }
        words.remove(0);
        String monitor = "";
        if (!words.isEmpty() && words.get(0).startsWith("@")) {
            monitor = words.remove(0).substring(1);
            if (!monitors.contains(monitor)) throw new ScriptException(where + "unknown monitor '" + monitor + "' (define it with 'monitor NAME PATH' first)");
        }
        if (words.isEmpty() || words.get(0).contains("=")) throw new ScriptException(usage);
        long timeout = DEFAULT_WAIT_NANOS;
        List<String> fields = new ArrayList<>();
        fields.add(words.get(0));
        for (String w : words.subList(1, words.size())) {
            if (w.startsWith("timeout=")) {
                Matcher m = DURATION.matcher(w.substring("timeout=".length()));
                if (!m.matches()) throw new ScriptException(where + "expected timeout=N(ms|s|m), got '" + w + "'");
                double v = Double.parseDouble(m.group(1));
                timeout = (long) (v * switch (m.group(2)) { case "ms" -> 1e6; case "s" -> 1e9; default -> 60e9; });
            } else {
                fields.add(w);
            }
        }
        try {
            ShellSyntax.Request r = ShellSyntax.parse(fields);
            return new WaitEvent(no, line, monitor, r.command(), r.arguments(), timeout);
        } catch (ShellSyntax.SyntaxException e) {
            throw new ScriptException(where + e.getMessage());
        }
    }
}
