package dev.vmm.core.json;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A minimal, strict JSON (RFC 8259) reader and writer for the command line and the QMP monitor.
 *
 * <h2>Value mapping</h2>
 * <table>
 * <caption>JSON to Java</caption>
 * <tr><th>JSON</th><th>{@link #parse} returns</th><th>{@link #write} also accepts</th></tr>
 * <tr><td>object</td><td>{@code LinkedHashMap<String,Object>} in document order</td><td>any {@code Map} with String keys</td></tr>
 * <tr><td>array</td><td>{@code ArrayList<Object>}</td><td>any {@code Collection}</td></tr>
 * <tr><td>string</td><td>{@code String}</td><td>any {@code CharSequence}</td></tr>
 * <tr><td>integer (no fraction, no exponent)</td><td>{@code Long}, or {@code BigInteger} beyond the long range
 *     (QMP carries uint64 values)</td><td>{@code Integer}, {@code Short}, {@code Byte}, {@code BigInteger}</td></tr>
 * <tr><td>other number</td><td>{@code Double} (finite)</td><td>{@code Float}, {@code BigDecimal}</td></tr>
 * <tr><td>true / false</td><td>{@code Boolean}</td><td></td></tr>
 * <tr><td>null</td><td>{@code null}</td><td></td></tr>
 * </table>
 *
 * <h2>Strictness (the input may be hostile: a QMP client)</h2>
 * Whitespace is only space, tab, CR and LF; no comments, trailing commas, single quotes, NaN or
 * leading zeros; raw control characters inside strings, unpaired surrogate escapes, duplicate
 * object keys and trailing text after the value are errors. Nesting deeper than
 * {@value #MAX_DEPTH} arrays/objects is an error, so recursion is bounded; number literals
 * longer than {@value #MAX_NUMBER_LENGTH} characters are refused, so no big-number parsing
 * can go quadratic. Parsing is one pass, linear in the input.
 *
 * <h2>Output</h2>
 * {@link #write} produces compact, pure-ASCII JSON (like QEMU's monitor): characters outside
 * U+0020..U+007E are written as {@code \\uXXXX} (UTF-16 units, so supplementary characters
 * become surrogate pairs); an unpaired surrogate in a Java string is written as U+FFFD so that
 * the output always parses again.
 *
 * <p>Thread contract: stateless; both methods may be called from any thread.
 */
public final class Json {
    /** Deepest accepted nesting of arrays and objects; the top-level container is depth 1. */
    public static final int MAX_DEPTH = 64;
    /** Longest accepted number literal, in characters. */
    public static final int MAX_NUMBER_LENGTH = 256;

    private Json() {}

    /**
     * Parses one complete JSON text.
     *
     * @throws JsonException with the 0-based position of the first fault
     */
    public static Object parse(String text) throws JsonException {
        Parser p = new Parser(text);
        p.skipWhitespace();
        Object value = p.value(0);
        p.skipWhitespace();
        if (p.pos < text.length()) {
            throw p.error("unexpected " + describe(text.charAt(p.pos)) + " after the JSON value");
        }
        return value;
    }

    /**
     * Writes {@code value} as compact JSON.
     *
     * @throws IllegalArgumentException for a type outside the table above, a non-String map key,
     *         a non-finite number, or nesting deeper than {@value #MAX_DEPTH} (including cycles)
     */
    public static String write(Object value) {
        StringBuilder sb = new StringBuilder();
        write(sb, value, 0);
        return sb.toString();
    }

    // ---- writer ----

    private static void write(StringBuilder sb, Object v, int depth) {
        if (v == null) {
            sb.append("null");
        } else if (v instanceof CharSequence) {
            writeString(sb, (CharSequence) v);
        } else if (v instanceof Boolean) {
            sb.append(((Boolean) v).booleanValue() ? "true" : "false");
        } else if (v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte
                || v instanceof BigInteger) {
            sb.append(v.toString());
        } else if (v instanceof Double || v instanceof Float) {
            double d = ((Number) v).doubleValue();
            if (!Double.isFinite(d)) {
                throw new IllegalArgumentException("JSON cannot represent " + d);
            }
            sb.append(v instanceof Float ? Float.toString((Float) v) : Double.toString(d));
        } else if (v instanceof BigDecimal) {
            sb.append(v.toString());
        } else if (v instanceof Map) {
            checkDepth(depth + 1);
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!(e.getKey() instanceof String)) {
                    throw new IllegalArgumentException("JSON object keys must be strings, got " + e.getKey());
                }
                if (!first) {
                    sb.append(',');
                }
                first = false;
                writeString(sb, (String) e.getKey());
                sb.append(':');
                write(sb, e.getValue(), depth + 1);
            }
            sb.append('}');
        } else if (v instanceof Collection) {
            checkDepth(depth + 1);
            sb.append('[');
            boolean first = true;
            for (Object o : (Collection<?>) v) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                write(sb, o, depth + 1);
            }
            sb.append(']');
        } else {
            throw new IllegalArgumentException("no JSON form for " + v.getClass().getName());
        }
    }

    private static void checkDepth(int depth) {
        if (depth > MAX_DEPTH) {
            throw new IllegalArgumentException("JSON nesting deeper than " + MAX_DEPTH + " (or a cycle)");
        }
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private static void writeString(StringBuilder sb, CharSequence s) {
        sb.append('"');
        int n = s.length();
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); continue;
                case '\\': sb.append("\\\\"); continue;
                case '\b': sb.append("\\b"); continue;
                case '\f': sb.append("\\f"); continue;
                case '\n': sb.append("\\n"); continue;
                case '\r': sb.append("\\r"); continue;
                case '\t': sb.append("\\t"); continue;
                default: break;
            }
            if (c >= 0x20 && c < 0x7f) {
                sb.append(c);
                continue;
            }
            if (Character.isHighSurrogate(c) && i + 1 < n && Character.isLowSurrogate(s.charAt(i + 1))) {
                appendEscape(sb, c);
                appendEscape(sb, s.charAt(++i));
            } else if (Character.isSurrogate(c)) {
                appendEscape(sb, '\ufffd'); // unpaired: keep the output valid and parseable
            } else {
                appendEscape(sb, c);
            }
        }
        sb.append('"');
    }

    private static void appendEscape(StringBuilder sb, char c) {
        sb.append("\\u").append(HEX[(c >> 12) & 0xf]).append(HEX[(c >> 8) & 0xf])
                .append(HEX[(c >> 4) & 0xf]).append(HEX[c & 0xf]);
    }

    static String describe(char c) {
        if (c >= 0x20 && c < 0x7f) {
            return "'" + c + "'";
        }
        return String.format("character U+%04X", (int) c);
    }

    // ---- parser ----

    private static final class Parser {
        private final String s;
        private int pos;

        Parser(String s) {
            this.s = s;
        }

        JsonException error(String detail) {
            return new JsonException(pos, detail);
        }

        void skipWhitespace() {
            while (pos < s.length()) {
                char c = s.charAt(pos);
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
                    return;
                }
                pos++;
            }
        }

        Object value(int depth) throws JsonException {
            if (pos >= s.length()) {
                throw error("unexpected end of input, expected a value");
            }
            char c = s.charAt(pos);
            switch (c) {
                case '{': return object(depth + 1);
                case '[': return array(depth + 1);
                case '"': return string();
                case 't': literal("true"); return Boolean.TRUE;
                case 'f': literal("false"); return Boolean.FALSE;
                case 'n': literal("null"); return null;
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) {
                        return number();
                    }
                    throw error("unexpected " + describe(c) + ", expected a value");
            }
        }

        private void literal(String word) throws JsonException {
            if (!s.startsWith(word, pos)) {
                throw error("invalid literal, expected '" + word + "'");
            }
            pos += word.length();
        }

        private void enter(int depth) throws JsonException {
            if (depth > MAX_DEPTH) {
                throw error("nesting deeper than " + MAX_DEPTH + " levels");
            }
        }

        private Map<String, Object> object(int depth) throws JsonException {
            enter(depth);
            pos++; // '{'
            Map<String, Object> map = new LinkedHashMap<>();
            skipWhitespace();
            if (peek() == '}') {
                pos++;
                return map;
            }
            while (true) {
                skipWhitespace();
                if (peek() != '"') {
                    throw unexpected("a string (object key)");
                }
                int keyPos = pos;
                String key = string();
                skipWhitespace();
                if (peek() != ':') {
                    throw unexpected("':' after object key");
                }
                pos++;
                skipWhitespace();
                Object v = value(depth);
                if (map.containsKey(key)) {
                    throw new JsonException(keyPos, "duplicate key \"" + key + "\"");
                }
                map.put(key, v);
                skipWhitespace();
                char c = peek();
                if (c == ',') {
                    pos++;
                } else if (c == '}') {
                    pos++;
                    return map;
                } else {
                    throw unexpected("',' or '}'");
                }
            }
        }

        private List<Object> array(int depth) throws JsonException {
            enter(depth);
            pos++; // '['
            List<Object> list = new ArrayList<>();
            skipWhitespace();
            if (peek() == ']') {
                pos++;
                return list;
            }
            while (true) {
                skipWhitespace();
                list.add(value(depth));
                skipWhitespace();
                char c = peek();
                if (c == ',') {
                    pos++;
                } else if (c == ']') {
                    pos++;
                    return list;
                } else {
                    throw unexpected("',' or ']'");
                }
            }
        }

        /** The current character, or U+FFFF at the end (never a valid structural character). */
        private char peek() {
            return pos < s.length() ? s.charAt(pos) : '\uffff';
        }

        private JsonException unexpected(String expected) {
            if (pos >= s.length()) {
                return error("unexpected end of input, expected " + expected);
            }
            return error("unexpected " + describe(s.charAt(pos)) + ", expected " + expected);
        }

        private String string() throws JsonException {
            int start = pos;
            pos++; // opening quote
            StringBuilder sb = null;
            int runStart = pos;
            while (true) {
                if (pos >= s.length()) {
                    throw new JsonException(start, "unterminated string");
                }
                char c = s.charAt(pos);
                if (c == '"') {
                    String result = sb == null ? s.substring(runStart, pos)
                            : sb.append(s, runStart, pos).toString();
                    pos++;
                    return result;
                }
                if (c < 0x20) {
                    throw error("unescaped control " + describe(c) + " in string");
                }
                if (Character.isSurrogate(c)) {
                    if (Character.isHighSurrogate(c) && pos + 1 < s.length()
                            && Character.isLowSurrogate(s.charAt(pos + 1))) {
                        pos += 2;
                        continue;
                    }
                    throw error("unpaired surrogate " + describe(c) + " in string");
                }
                if (c != '\\') {
                    pos++;
                    continue;
                }
                if (sb == null) {
                    sb = new StringBuilder();
                }
                sb.append(s, runStart, pos);
                pos++; // backslash
                if (pos >= s.length()) {
                    throw new JsonException(start, "unterminated string");
                }
                char e = s.charAt(pos);
                switch (e) {
                    case '"': sb.append('"'); break;
                    case '\\': sb.append('\\'); break;
                    case '/': sb.append('/'); break;
                    case 'b': sb.append('\b'); break;
                    case 'f': sb.append('\f'); break;
                    case 'n': sb.append('\n'); break;
                    case 'r': sb.append('\r'); break;
                    case 't': sb.append('\t'); break;
                    case 'u': {
                        int escPos = pos - 1;
                        char u = hex4();
                        if (Character.isHighSurrogate(u)) {
                            if (!s.startsWith("\\u", pos + 1)) {
                                throw new JsonException(escPos, "unpaired surrogate escape \\u"
                                        + Integer.toHexString(u));
                            }
                            pos += 2;
                            char low = hex4();
                            if (!Character.isLowSurrogate(low)) {
                                throw new JsonException(escPos, "unpaired surrogate escape \\u"
                                        + Integer.toHexString(u));
                            }
                            sb.append(u).append(low);
                        } else if (Character.isLowSurrogate(u)) {
                            throw new JsonException(escPos, "unpaired surrogate escape \\u"
                                    + Integer.toHexString(u));
                        } else {
                            sb.append(u);
                        }
                        break;
                    }
                    default:
                        throw error("invalid escape \\" + (e >= 0x20 && e < 0x7f ? String.valueOf(e) : describe(e)));
                }
                pos++;
                runStart = pos;
            }
        }

        /** Reads the 4 hex digits after {@code \\u} (pos at the 'u'); leaves pos on the last digit. */
        private char hex4() throws JsonException {
            if (pos + 4 >= s.length()) {
                pos = Math.min(pos + 1, s.length());
                throw error("truncated \\u escape");
            }
            int v = 0;
            for (int i = 1; i <= 4; i++) {
                int d = Character.digit(s.charAt(pos + i), 16);
                if (d < 0 || s.charAt(pos + i) > 'f') { // Character.digit accepts non-ASCII digits
                    pos += i;
                    throw error("invalid hex digit in \\u escape");
                }
                v = (v << 4) | d;
            }
            pos += 4;
            return (char) v;
        }

        private Object number() throws JsonException {
            int start = pos;
            boolean integral = true;
            if (peek() == '-') {
                pos++;
            }
            char c = peek();
            if (c == '0') {
                pos++;
                if (isDigit(peek())) {
                    throw error("leading zero in number");
                }
            } else if (isDigit(c)) {
                while (isDigit(peek())) {
                    pos++;
                }
            } else {
                throw unexpected("a digit");
            }
            if (peek() == '.') {
                integral = false;
                pos++;
                if (!isDigit(peek())) {
                    throw unexpected("a digit after '.'");
                }
                while (isDigit(peek())) {
                    pos++;
                }
            }
            if (peek() == 'e' || peek() == 'E') {
                integral = false;
                pos++;
                if (peek() == '+' || peek() == '-') {
                    pos++;
                }
                if (!isDigit(peek())) {
                    throw unexpected("a digit in exponent");
                }
                while (isDigit(peek())) {
                    pos++;
                }
            }
            if (pos - start > MAX_NUMBER_LENGTH) {
                throw new JsonException(start, "number longer than " + MAX_NUMBER_LENGTH + " characters");
            }
            String lit = s.substring(start, pos);
            if (integral) {
                // At most 19 digits (plus sign) always fits the parse below; longer go to BigInteger.
                if (lit.length() <= 18) {
                    return Long.parseLong(lit);
                }
                BigInteger big = new BigInteger(lit);
                return big.bitLength() < 64 ? (Object) big.longValue() : big;
            }
            double d = Double.parseDouble(lit);
            if (!Double.isFinite(d)) {
                throw new JsonException(start, "number out of range: " + lit);
            }
            return d;
        }

        private static boolean isDigit(char c) {
            return c >= '0' && c <= '9';
        }
    }
}
