package dev.vmm.cli.qmp;

import dev.vmm.core.json.Json;
import dev.vmm.core.json.JsonException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * qmp-shell's command syntax: {@code COMMAND key=value ...}. A value is a JSON literal when it
 * parses as a number, {@code true}/{@code false}/{@code null}, an object or an array, else a
 * string ({@code writable=true} is a boolean, {@code id=e0} a string, {@code port='"10809"'}
 * the string 10809). Dotted keys build nested objects: {@code addr.type=unix addr.path=/x} is
 * {@code {"addr": {"type": "unix", "path": "/x"}}}.
 *
 * <p>Thread contract: stateless.
 */
public final class ShellSyntax {
    private ShellSyntax() {}

    /** One parsed command. */
    public record Request(String command, Map<String, Object> arguments) {
        /** The QMP request object, with {@code id} when not null. */
        public Map<String, Object> toJson(Object id) {
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("execute", command);
            if (!arguments.isEmpty()) m.put("arguments", arguments);
            if (id != null) m.put("id", id);
            return m;
        }
    }

    /** A line or argument list that is not a command. */
    public static final class SyntaxException extends Exception {
        private static final long serialVersionUID = 1L;

        public SyntaxException(String message) {
            super(message, null, false, false);
        }
    }

    /** Parses {@code words[0]} as the command and the rest as {@code key=value}. */
    public static Request parse(List<String> words) throws SyntaxException {
        if (words.isEmpty()) throw new SyntaxException("no command given");
        String command = words.get(0);
        if (command.isEmpty() || command.contains("=")) throw new SyntaxException("expected a command name first, got '" + command + "'");
        Map<String, Object> args = new LinkedHashMap<>();
        for (String w : words.subList(1, words.size())) {
            int eq = w.indexOf('=');
            if (eq <= 0) throw new SyntaxException("expected key=value, got '" + w + "'");
            put(args, w.substring(0, eq), value(w.substring(eq + 1)));
        }
        return new Request(command, args);
    }

    /** Splits one script line into words, then {@link #parse(List)}. */
    public static Request parseLine(String line) throws SyntaxException {
        return parse(split(line));
    }

    /** The value of {@code key=TEXT}: a JSON literal (number, bool, null, object, array) or the text itself. */
    static Object value(String text) {
        if (text.isEmpty()) return text;
        char c = text.charAt(0);
        boolean jsonish = c == '{' || c == '[' || c == '-' || (c >= '0' && c <= '9') || c == '"'
                || text.equals("true") || text.equals("false") || text.equals("null");
        if (jsonish) {
            try {
                return Json.parse(text);
            } catch (JsonException e) {
                return text; // e.g. a file name starting with a digit
            }
        }
        return text;
    }

    @SuppressWarnings("unchecked")
    private static void put(Map<String, Object> root, String key, Object value) throws SyntaxException {
        String[] parts = key.split("\\.", -1);
        Map<String, Object> m = root;
        for (int i = 0; i < parts.length; i++) {
            String p = parts[i];
            if (p.isEmpty()) throw new SyntaxException("invalid key '" + key + "'");
            if (i == parts.length - 1) {
                if (m.containsKey(p)) throw new SyntaxException("key '" + key + "' is given twice (or is also a group)");
                m.put(p, value);
            } else {
                Object next = m.computeIfAbsent(p, k -> new LinkedHashMap<String, Object>());
                if (!(next instanceof Map)) {
                    throw new SyntaxException("key '" + String.join(".", java.util.Arrays.copyOf(parts, i + 1))
                            + "' is both a value and a group ('" + key + "')");
                }
                m = (Map<String, Object>) next;
            }
        }
    }

    /**
     * Splits a script line on blanks, as a shell would split the same words for the one-command
     * form. A value in single or double quotes ({@code description='my disk'}) is a string, kept
     * as a JSON string literal so it stays a string ({@code port='10809'}); a value starting with
     * <code>{</code> or {@code [} extends to its matching bracket, blanks and quotes included
     * ({@code addr={"type": "unix", "path": "/x"}}).
     */
    static List<String> split(String line) throws SyntaxException {
        List<String> out = new ArrayList<>();
        StringBuilder cur = new StringBuilder();
        boolean inWord = false;
        int i = 0;
        int n = line.length();
        while (i < n) {
            char c = line.charAt(i);
            boolean valueStart = cur.length() == 0 || cur.charAt(cur.length() - 1) == '=';
            if (c == ' ' || c == '\t') {
                if (inWord) out.add(cur.toString());
                cur.setLength(0);
                inWord = false;
                i++;
            } else if (valueStart && (c == '\'' || c == '"')) {
                int end = line.indexOf(c, i + 1);
                if (end < 0) throw new SyntaxException("unterminated " + c + " quote");
                cur.append(Json.write(line.substring(i + 1, end)));
                inWord = true;
                i = end + 1;
            } else if (valueStart && (c == '{' || c == '[')) {
                int depth = 0;
                boolean inString = false;
                int j = i;
                for (; j < n; j++) {
                    char d = line.charAt(j);
                    if (inString) {
                        if (d == '\\') j++;
                        else if (d == '"') inString = false;
                    } else if (d == '"') {
                        inString = true;
                    } else if (d == '{' || d == '[') {
                        depth++;
                    } else if ((d == '}' || d == ']') && --depth == 0) {
                        break;
                    }
                }
                if (j >= n) throw new SyntaxException("unterminated " + c + " in '" + line.substring(i) + "'");
                cur.append(line, i, j + 1);
                inWord = true;
                i = j + 1;
            } else {
                cur.append(c);
                inWord = true;
                i++;
            }
        }
        if (inWord) out.add(cur.toString());
        return out;
    }
}
