package dev.vmm.core.options;

import dev.vmm.core.json.Json;
import dev.vmm.core.json.JsonException;
import dev.vmm.core.options.OptionException.Kind;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Splits a qemu-storage-daemon option argument into {@link Options}. Two forms, as QEMU's
 * {@code keyval.c} accepts them:
 *
 * <ul>
 * <li>{@code key=value,key.sub=value,...}: elements are separated by {@code ','}; in a value
 *     {@code ',,'} stands for a literal comma. A key ends at the first {@code '='} or
 *     {@code ','}, so keys cannot contain either. If the <em>first</em> element has no
 *     {@code '='} and an implied key is given, the whole element is that key's value
 *     ({@code iothread,id=x} is {@code qom-type=iothread,id=x} for {@code --object}). One
 *     trailing comma is ignored, as in QEMU. Deviations (on purpose, strict): a bare
 *     {@code key} without {@code '='} (QemuOpts' deprecated {@code key=on} shorthand) is an
 *     error, and so is an empty element.</li>
 * <li>JSON, when the text starts with <code>'{'</code>: an object, flattened by
 *     {@link Options#of} (nested objects become dotted keys, booleans {@code on}/{@code off},
 *     numbers decimal strings), so both forms give the same map.</li>
 * </ul>
 *
 * Key names, repeats and scalar/group conflicts are then checked by {@link Options} for both
 * forms alike.
 *
 * <p>Thread contract: stateless; in practice called on the CLI/main-loop thread.
 */
public final class KeyValueParser {
    private KeyValueParser() {}

    /**
     * Parses one option argument.
     *
     * @param optionName how errors name the option, e.g. {@code "--blockdev"}
     * @param text       the argument as the user wrote it
     * @param impliedKey key of a first element without {@code '='} ({@code "qom-type"} for
     *                   {@code --object}, {@code "backend"} for {@code --chardev}), or null
     */
    public static Options parse(String optionName, String text, String impliedKey) throws OptionException {
        if (text.startsWith("{")) {
            Object json;
            try {
                json = Json.parse(text);
            } catch (JsonException e) {
                throw new OptionException(Kind.SYNTAX, optionName, null, e.getMessage());
            }
            if (!(json instanceof Map)) {
                throw new OptionException(Kind.SYNTAX, optionName, null, "JSON argument must be an object");
            }
            return Options.ofTree(optionName, (Map<?, ?>) json);
        }
        return Options.fromFlat(optionName, split(optionName, text, impliedKey));
    }

    /**
     * Splits key=value text into entries in order. Repeats are kept apart (as a list of pairs
     * would) by reporting them here, so the message can name the parameter.
     */
    private static Map<String, String> split(String optionName, String text, String impliedKey)
            throws OptionException {
        Map<String, String> out = new LinkedHashMap<>();
        int pos = 0;
        int n = text.length();
        boolean first = true;
        while (pos < n) {
            int keyEnd = pos;
            while (keyEnd < n && text.charAt(keyEnd) != '=' && text.charAt(keyEnd) != ',') {
                keyEnd++;
            }
            String key;
            int valueStart;
            if (keyEnd < n && text.charAt(keyEnd) == '=') {
                key = text.substring(pos, keyEnd);
                if (key.isEmpty()) {
                    throw new OptionException(Kind.SYNTAX, optionName, null,
                            "empty parameter name before '=' at position " + pos);
                }
                valueStart = keyEnd + 1;
            } else if (keyEnd == pos) {
                throw new OptionException(Kind.SYNTAX, optionName, null,
                        "empty parameter at position " + pos);
            } else if (first && impliedKey != null) {
                key = impliedKey;
                valueStart = pos;
            } else {
                throw new OptionException(Kind.SYNTAX, optionName, text.substring(pos, keyEnd),
                        "expected '=' after parameter '" + text.substring(pos, keyEnd) + "'");
            }
            StringBuilder value = new StringBuilder();
            int i = valueStart;
            while (i < n) {
                char c = text.charAt(i);
                if (c == ',') {
                    if (i + 1 < n && text.charAt(i + 1) == ',') {
                        value.append(',');
                        i += 2;
                        continue;
                    }
                    break;
                }
                value.append(c);
                i++;
            }
            if (out.containsKey(key)) {
                throw new OptionException(Kind.SYNTAX, optionName, key, "duplicate parameter '" + key + "'");
            }
            out.put(key, value.toString());
            pos = i + 1; // past the separating comma (or past the end)
            first = false;
        }
        return out;
    }
}
