package dev.vmm.core.options;

import dev.vmm.core.options.OptionException.Kind;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * The parameters of one option ({@code --blockdev ...}) or one QMP command: an ordered map of
 * flat, dotted keys ({@code addr.type}, {@code cache.direct}) to string values, read through
 * typed accessors that <em>consume</em> what they read. A consumer takes the parameters it
 * knows, then calls {@link #checkAllConsumed()}, which names the first parameter nobody took.
 *
 * <p>Every error is an {@link OptionException} whose message names the option and the full
 * dotted key, e.g. {@code --nbd-server: 'addr.port' must be a number from 1 to 65535, got 'abc'}.
 *
 * <p>Invariants, checked when built (by {@link KeyValueParser} or {@link #of}): every key is
 * one or more non-empty dot-separated parts of {@code [A-Za-z0-9_-]}; no key repeats; no key is
 * both a value and a group ({@code addr=x} with {@code addr.type=inet}).
 *
 * <p>A {@link #sub(String) sub} view shares the entries and the consumed set with its parent:
 * what a sub view consumes counts for the parent's {@link #checkAllConsumed()}.
 *
 * <p>Thread contract: not thread-safe. An instance and its sub views MUST be used by one thread,
 * the main loop or the CLI thread that parsed them.
 */
public final class Options {
    private final String optionName;
    /** All entries of the root, full keys; shared by sub views. */
    private final Map<String, String> entries;
    /** Full keys read by any accessor of the root or a sub view. */
    private final Set<String> consumed;
    /** "" for the root, else "group." (full, with the parent's prefix). */
    private final String prefix;

    private Options(String optionName, Map<String, String> entries, Set<String> consumed, String prefix) {
        this.optionName = optionName;
        this.entries = entries;
        this.consumed = consumed;
        this.prefix = prefix;
    }

    /**
     * Builds options from a map such as parsed QMP arguments. Nested maps become dotted keys
     * ({@code {"addr":{"port":1}}} gives {@code addr.port}), list elements get their index
     * ({@code a.0}, {@code a.1}) as in QEMU's {@code qdict_flatten}; empty maps and lists add no
     * key. Values become strings: {@code Boolean} as {@code on}/{@code off}, integers in decimal,
     * other numbers by their {@code toString()} (which {@link #number} and {@link #size} reject).
     *
     * @throws OptionException (SYNTAX) for a null value (except {@code backing}, which becomes
     *         {@code ""} as in QEMU), an invalid or repeated key, or a key
     *         used both as a value and a group
     * @throws IllegalArgumentException for a value of another Java type (a programming error)
     */
    public static Options of(String optionName, Map<String, ?> flat) throws OptionException {
        return ofTree(optionName, flat);
    }

    static Options ofTree(String optionName, Map<?, ?> tree) throws OptionException {
        Map<String, String> out = new LinkedHashMap<>();
        flatten(optionName, "", tree, out);
        return fromFlat(optionName, out);
    }

    static Options fromFlat(String optionName, Map<String, String> flat) throws OptionException {
        for (String key : flat.keySet()) {
            checkKeyName(optionName, key);
        }
        // Scalar/group conflicts: sorting puts "a" just before any "a.x"; but "a-b" sorts between
        // them, so check each key's every proper prefix instead (keys are short).
        for (String key : flat.keySet()) {
            for (int dot = key.indexOf('.'); dot >= 0; dot = key.indexOf('.', dot + 1)) {
                String group = key.substring(0, dot);
                if (flat.containsKey(group)) {
                    throw new OptionException(Kind.SYNTAX, optionName, group, "parameter '" + group
                            + "' is given both as a value and as a group ('" + key + "')");
                }
            }
        }
        return new Options(optionName, flat, new HashSet<>(), "");
    }

    private static void flatten(String optionName, String prefix, Map<?, ?> map, Map<String, String> out)
            throws OptionException {
        for (Map.Entry<?, ?> e : map.entrySet()) {
            if (!(e.getKey() instanceof String)) {
                throw new IllegalArgumentException("option keys must be strings, got " + e.getKey());
            }
            flattenValue(optionName, prefix + e.getKey(), e.getValue(), out);
        }
    }

    private static void flattenValue(String optionName, String key, Object v, Map<String, String> out)
            throws OptionException {
        if (v instanceof Map) {
            flatten(optionName, key + ".", (Map<?, ?>) v, out);
            return;
        }
        if (v instanceof List) {
            List<?> list = (List<?>) v;
            for (int i = 0; i < list.size(); i++) {
                flattenValue(optionName, key + "." + i, list.get(i), out);
            }
            return;
        }
        String s;
        if (v == null && (key.equals("backing") || key.endsWith(".backing"))) {
            // QAPI's BlockdevRefOrNull, the one nullable block option: null means "no backing
            // node", which QEMU's bdrv_open also turns into backing="" (as the key=value form writes it)
            s = "";
        } else if (v == null) {
            throw new OptionException(Kind.SYNTAX, optionName, key, "parameter '" + key + "' must not be null");
        } else if (v instanceof String) {
            s = (String) v;
        } else if (v instanceof Boolean) {
            s = ((Boolean) v) ? "on" : "off";
        } else if (v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte
                || v instanceof BigInteger || v instanceof Double || v instanceof Float
                || v instanceof BigDecimal) {
            s = v.toString();
        } else {
            throw new IllegalArgumentException("no option value form for " + v.getClass().getName());
        }
        if (out.putIfAbsent(key, s) != null) {
            throw new OptionException(Kind.SYNTAX, optionName, key, "duplicate parameter '" + key + "'");
        }
    }

    private static void checkKeyName(String optionName, String key) throws OptionException {
        boolean ok = !key.isEmpty();
        int partLength = 0;
        for (int i = 0; ok && i < key.length(); i++) {
            char c = key.charAt(i);
            if (c == '.') {
                ok = partLength > 0;
                partLength = 0;
            } else {
                ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                        || c == '-' || c == '_';
                partLength++;
            }
        }
        if (!ok || partLength == 0) {
            throw new OptionException(Kind.SYNTAX, optionName, key, "invalid parameter name '" + key + "'");
        }
    }

    // ---- views ----

    /** The option as the user wrote it, e.g. {@code --blockdev}. */
    public String optionName() { return optionName; }

    /**
     * The group {@code name} ({@code "addr"} or {@code "addr."}) as options of its own, keys
     * relative to it; empty if no key is in the group. Errors still name full keys.
     */
    public Options sub(String name) {
        String group = name.endsWith(".") ? name.substring(0, name.length() - 1) : name;
        if (group.isEmpty()) {
            throw new IllegalArgumentException("empty group name");
        }
        return new Options(optionName, entries, consumed, prefix + group + ".");
    }

    /** {@code key} as errors name it: with this view's group prefix ({@code addr.data.port}). */
    public String fullKey(String key) {
        return prefix + key;
    }

    /** Whether {@code key} is present; does not consume it. */
    public boolean has(String key) {
        return entries.containsKey(prefix + key);
    }

    /** Whether any key lies in group {@code name}; consumes nothing. */
    public boolean hasGroup(String name) {
        String p = prefix + (name.endsWith(".") ? name : name + ".");
        for (String k : entries.keySet()) {
            if (k.startsWith(p)) {
                return true;
            }
        }
        return false;
    }

    /** This view's entries in order, keys relative to this view; unmodifiable, consumes nothing. */
    public Map<String, String> asMap() {
        Map<String, String> m = new LinkedHashMap<>();
        for (Map.Entry<String, String> e : entries.entrySet()) {
            if (e.getKey().startsWith(prefix)) {
                m.put(e.getKey().substring(prefix.length()), e.getValue());
            }
        }
        return Collections.unmodifiableMap(m);
    }

    /**
     * Fails naming the first key of this view (in input order) that no accessor consumed.
     * On the root this covers sub views too.
     */
    public void checkAllConsumed() throws OptionException {
        for (String k : entries.keySet()) {
            if (k.startsWith(prefix) && !consumed.contains(k)) {
                throw new OptionException(Kind.UNKNOWN, optionName, k, "unknown parameter '" + k + "'");
            }
        }
    }

    // ---- consuming accessors ----

    /** The value, or null if absent; marks the key consumed. */
    private String take(String key) {
        String full = prefix + key;
        String v = entries.get(full);
        if (v != null) {
            consumed.add(full);
        }
        return v;
    }

    private OptionException invalid(String key, String what, String got) {
        String full = prefix + key;
        String shown = got.length() > 80 ? got.substring(0, 80) + "... (" + got.length() + " characters)" : got;
        return new OptionException(Kind.INVALID, optionName, full, "'" + full + "' must be " + what + ", got '" + shown + "'");
    }

    /** The value; absent is an error: {@code parameter 'filename' is missing}. */
    public String required(String key) throws OptionException {
        String v = take(key);
        if (v == null) {
            String full = prefix + key;
            throw new OptionException(Kind.MISSING, optionName, full, "parameter '" + full + "' is missing");
        }
        return v;
    }

    /** A file path (required): not empty and without NUL bytes, which no system call can take. */
    public String path(String key) throws OptionException {
        String v = required(key);
        if (v.isEmpty() || v.indexOf('\0') >= 0) throw invalid(key, "a file path (not empty, no NUL byte)", v.replace("\0", "\\0"));
        return v;
    }

    /** A unix socket path (required): {@link #path} that fits in {@code sockaddr_un} (107 bytes). */
    public String socketPath(String key) throws OptionException {
        String v = path(key);
        if (v.getBytes(java.nio.charset.StandardCharsets.UTF_8).length > dev.vmm.core.net.UnixSocketFiles.MAX_PATH_BYTES) {
            String full = prefix + key;
            throw new OptionException(Kind.INVALID, optionName, full, "'" + full + "' is longer than the "
                    + dev.vmm.core.net.UnixSocketFiles.MAX_PATH_BYTES + " bytes a unix socket path may have");
        }
        return v;
    }

    /**
     * The fields {@code host} (required) and {@code port} of a QAPI {@code InetSocketAddress}:
     * a host name or an address, an IPv6 address bare or in brackets ({@code [::1]}); a port from
     * 0 to 65535, {@code defaultPort} when absent, or required when {@code defaultPort} is
     * negative. A host that does not resolve is an error naming its key
     * ({@code 'addr.host': cannot resolve 'x'}).
     */
    public java.net.InetSocketAddress inetAddress(int defaultPort) throws OptionException {
        String host = required("host");
        if (defaultPort < 0 && !has("port")) required("port"); // "parameter 'addr.port' is missing"
        int port = (int) number("port", Math.max(defaultPort, 0), 0, 65535);
        if (host.startsWith("[") && host.endsWith("]")) host = host.substring(1, host.length() - 1);
        java.net.InetSocketAddress a = new java.net.InetSocketAddress(host, port);
        if (a.isUnresolved()) {
            String full = prefix + "host";
            throw new OptionException(Kind.INVALID, optionName, full, "'" + full + "': cannot resolve '" + host + "'");
        }
        return a;
    }

    /** The value, or {@code dflt} (may be null) if absent. */
    public String optional(String key, String dflt) {
        String v = take(key);
        return v == null ? dflt : v;
    }

    /** {@code on}/{@code yes}/{@code true} or {@code off}/{@code no}/{@code false} (exact case). */
    public boolean bool(String key, boolean dflt) throws OptionException {
        String v = take(key);
        if (v == null) {
            return dflt;
        }
        switch (v) {
            case "on": case "yes": case "true": return true;
            case "off": case "no": case "false": return false;
            default: throw invalid(key, "'on' or 'off'", v);
        }
    }

    /**
     * A decimal integer (optional sign, no spaces, no hex) in {@code [min, max]}, or {@code dflt}
     * if absent (not range-checked).
     */
    public long number(String key, long dflt, long min, long max) throws OptionException {
        String v = take(key);
        if (v == null) {
            return dflt;
        }
        long n;
        try {
            n = Long.parseLong(v);
        } catch (NumberFormatException e) {
            throw invalid(key, "a number from " + min + " to " + max, v);
        }
        if (n < min || n > max) {
            throw invalid(key, "a number from " + min + " to " + max, v);
        }
        return n;
    }

    /**
     * A byte count: decimal digits with an optional suffix {@code B} (bytes), {@code K},
     * {@code M}, {@code G}, {@code T}, {@code P}, {@code E} (powers of 1024, either case), as
     * QEMU's {@code qemu_strtosz} without fractions. At most {@link Long#MAX_VALUE}; a sign or a
     * larger value is an error.
     */
    public long size(String key, long dflt) throws OptionException {
        String v = take(key);
        if (v == null) {
            return dflt;
        }
        try {
            return parseSize(v);
        } catch (NumberFormatException e) {
            throw invalid(key, e.getMessage(), v);
        }
    }

    /**
     * {@link #size}'s syntax for sizes outside key=value options (command-line flags such as
     * {@code vmm demo --size 1G}): the byte count.
     *
     * @throws NumberFormatException when {@code text} is not a size; its message completes
     *         "must be ..." ({@code a size in bytes with an optional suffix K, M, G, T, P or E},
     *         {@code at most 9223372036854775807 bytes})
     */
    public static long parseSize(String text) {
        int end = text.length();
        int shift = 0;
        if (end > 0) {
            int s = "BKMGTPE".indexOf(Character.toUpperCase(text.charAt(end - 1)));
            if (s >= 0) {
                shift = 10 * s;
                end--;
            }
        }
        String what = "a size in bytes with an optional suffix K, M, G, T, P or E";
        if (end == 0) {
            throw new NumberFormatException(what);
        }
        long n = 0;
        for (int i = 0; i < end; i++) {
            char c = text.charAt(i);
            if (c < '0' || c > '9') {
                throw new NumberFormatException(what);
            }
            if (n > (Long.MAX_VALUE - (c - '0')) / 10) {
                throw new NumberFormatException("at most " + Long.MAX_VALUE + " bytes");
            }
            n = n * 10 + (c - '0');
        }
        if (shift > 0 && n > (Long.MAX_VALUE >> shift)) {
            throw new NumberFormatException("at most " + Long.MAX_VALUE + " bytes");
        }
        return n << shift;
    }

    /** One of {@code allowed} (exact case), or {@code dflt} (may be null) if absent. */
    public String choice(String key, String dflt, String... allowed) throws OptionException {
        String v = take(key);
        if (v == null) {
            return dflt;
        }
        for (String a : allowed) {
            if (a.equals(v)) {
                return v;
            }
        }
        throw invalid(key, "one of " + String.join(", ", allowed), v);
    }

    /**
     * An enum constant by its option spelling: the constant's name in lower case with
     * {@code '_'} as {@code '-'} ({@code VHOST_USER_BLK} is {@code vhost-user-blk}); {@code dflt}
     * (may be null) if absent.
     */
    public <E extends Enum<E>> E choice(String key, E dflt, Class<E> type) throws OptionException {
        String v = take(key);
        if (v == null) {
            return dflt;
        }
        E[] constants = type.getEnumConstants();
        String[] names = new String[constants.length];
        for (int i = 0; i < constants.length; i++) {
            names[i] = spelling(constants[i]);
            if (names[i].equals(v)) {
                return constants[i];
            }
        }
        throw invalid(key, "one of " + String.join(", ", names), v);
    }

    /** The option spelling of an enum constant, as {@link #choice(String, Enum, Class)} reads it. */
    public static String spelling(Enum<?> e) {
        return e.name().toLowerCase(Locale.ROOT).replace('_', '-');
    }

    @Override
    public String toString() {
        return optionName + " " + asMap();
    }
}
