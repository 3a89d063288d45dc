package dev.vmm.core.json;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class JsonTest {

    private static JsonException fails(String text) {
        return assertThrows(JsonException.class, () -> Json.parse(text));
    }

    @Test
    void parsesEveryValueKind() throws Exception {
        Object v = Json.parse(" {\"s\":\"x\",\"i\":-12,\"d\":1.5e2,\"t\":true,\"f\":false,\"n\":null,"
                + "\"a\":[1,[],{}],\"o\":{\"k\":\"v\"}} ");
        Map<String, Object> expected = new LinkedHashMap<>();
        expected.put("s", "x");
        expected.put("i", -12L);
        expected.put("d", 150.0);
        expected.put("t", true);
        expected.put("f", false);
        expected.put("n", null);
        expected.put("a", Arrays.asList(1L, List.of(), Map.of()));
        expected.put("o", Map.of("k", "v"));
        assertEquals(expected, v);
        assertEquals(List.of("s", "i", "d", "t", "f", "n", "a", "o"),
                new ArrayList<>(((Map<?, ?>) v).keySet()), "document order kept");
        assertTrue(v instanceof LinkedHashMap);
    }

    @Test
    void integersAreLongOrBigInteger() throws Exception {
        assertEquals(Long.MAX_VALUE, Json.parse("9223372036854775807"));
        assertEquals(Long.MIN_VALUE, Json.parse("-9223372036854775808"));
        assertEquals(new BigInteger("18446744073709551615"), Json.parse("18446744073709551615"));
        assertEquals(0L, Json.parse("-0"));
        assertEquals(1.0, Json.parse("1.0"));
    }

    @Test
    void scalarsAtTopLevel() throws Exception {
        assertEquals("a", Json.parse("\"a\""));
        assertEquals(Boolean.TRUE, Json.parse("true"));
        assertNull(Json.parse("null"));
    }

    @Test
    void stringEscapes() throws Exception {
        assertEquals("\"\\/\b\f\n\r\t\u00e9\ud83d\ude00",
                Json.parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00E9\\ud83d\\uDE00\""));
        assertEquals("h\u00e9\ud83d\ude00", Json.parse("\"h\u00e9\ud83d\ude00\""), "raw non-ASCII accepted");
    }

    @Test
    void errorsCarryThePosition() {
        JsonException e = fails("{\"a\":1,}");
        assertEquals(7, e.position());
        assertEquals("invalid JSON at position 7: unexpected '}', expected a string (object key)", e.getMessage());
        e = fails("{\"a\" 1}");
        assertEquals("invalid JSON at position 5: unexpected '1', expected ':' after object key", e.getMessage());
        e = fails("[1 2]");
        assertEquals("invalid JSON at position 3: unexpected '2', expected ',' or ']'", e.getMessage());
        e = fails("{\"a\":1");
        assertEquals("invalid JSON at position 6: unexpected end of input, expected ',' or '}'", e.getMessage());
        assertEquals("invalid JSON at position 0: unexpected end of input, expected a value",
                fails("").getMessage());
        assertEquals("invalid JSON at position 2: unexpected 'x' after the JSON value", fails("{}x").getMessage());
    }

    @Test
    void rejectsNonStandardSyntax() {
        for (String bad : new String[] {"01", "1.", ".5", "+1", "1e", "-", "NaN", "Infinity", "'a'",
                "[1,]", "{a:1}", "tru", "nul", "\"\\x\"", "\"\\u12G4\"", "\"\\u12\"", "// c\n1", "\u00a01",
                "\"abc", "[1]]", "\"\\u\u0661\u0661\u0661\u0661\""}) {
            assertThrows(JsonException.class, () -> Json.parse(bad), bad);
        }
        assertEquals("invalid JSON at position 0: unterminated string", fails("\"abc").getMessage());
    }

    @Test
    void rejectsRawControlCharactersInStrings() {
        JsonException e = fails("\"a\nb\"");
        assertEquals("invalid JSON at position 2: unescaped control character U+000A in string", e.getMessage());
        fails("\"\u0000\"");
    }

    @Test
    void rejectsUnpairedSurrogates() {
        assertEquals("invalid JSON at position 1: unpaired surrogate escape \\ud800",
                fails("\"\\ud800\"").getMessage());
        fails("\"\\udc00\"");
        fails("\"\\ud800\\u0041\"");
        fails("\"\ud800\"");
    }

    @Test
    void rejectsDuplicateKeys() {
        assertEquals("invalid JSON at position 8: duplicate key \"a\"", fails("{\"a\":1, \"a\":2}").getMessage());
    }

    @Test
    void rejectsNumbersOutOfRangeOrTooLong() {
        assertEquals("invalid JSON at position 0: number out of range: 1e999", fails("1e999").getMessage());
        String longNumber = "1".repeat(Json.MAX_NUMBER_LENGTH + 1);
        assertEquals("invalid JSON at position 0: number longer than 256 characters",
                fails(longNumber).getMessage());
    }

    @Test
    void nestingUpToTheLimitIsAccepted() throws Exception {
        String ok = "[".repeat(Json.MAX_DEPTH) + "]".repeat(Json.MAX_DEPTH);
        Object v = Json.parse(ok);
        int depth = 0;
        while (v instanceof List && !((List<?>) v).isEmpty()) {
            v = ((List<?>) v).get(0);
            depth++;
        }
        assertEquals(Json.MAX_DEPTH - 1, depth);
    }

    @Test
    void deepNestingIsRejectedWithoutStackOverflow() {
        JsonException e = fails("[".repeat(Json.MAX_DEPTH + 1) + "]".repeat(Json.MAX_DEPTH + 1));
        assertEquals("invalid JSON at position 64: nesting deeper than 64 levels", e.getMessage());
        // Hostile: a million openers must fail at the limit, not blow the stack.
        e = fails("{\"a\":".repeat(1_000_000));
        assertEquals("invalid JSON at position " + (5 * 64) + ": nesting deeper than 64 levels", e.getMessage());
    }

    @Test
    void largeInputIsLinear() throws Exception {
        // Pathological for backtracking or per-escape copying parsers; must finish quickly.
        String big = "\"" + "\\n".repeat(2_000_000) + "\"";
        long t0 = System.nanoTime();
        assertEquals(2_000_000, ((String) Json.parse(big)).length());
        String list = "[" + "1,".repeat(500_000) + "1]";
        assertEquals(500_001, ((List<?>) Json.parse(list)).size());
        assertTrue(System.nanoTime() - t0 < 5_000_000_000L, "parsing took too long");
    }

    @Test
    void writeIsCompactAndAscii() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("s", "a\"b\\c/");
        m.put("n", null);
        m.put("b", false);
        m.put("i", 42);
        m.put("l", List.of(1L, 2.5));
        m.put("e", Map.of());
        assertEquals("{\"s\":\"a\\\"b\\\\c/\",\"n\":null,\"b\":false,\"i\":42,\"l\":[1,2.5],\"e\":{}}", Json.write(m));
        assertEquals("\"\\u0000\\u001f\\n\\t\\u007f\\u00e9\\ud83d\\ude00\"",
                Json.write("\u0000\u001f\n\t\u007f\u00e9\ud83d\ude00"));
    }

    @Test
    void writeReplacesUnpairedSurrogates() throws Exception {
        String out = Json.write("a\ud800b\udc00");
        assertEquals("\"a\\ufffdb\\ufffd\"", out);
        assertEquals("a\ufffdb\ufffd", Json.parse(out));
    }

    @Test
    void writeRejectsWhatJsonCannotSay() {
        assertThrows(IllegalArgumentException.class, () -> Json.write(Double.NaN));
        assertThrows(IllegalArgumentException.class, () -> Json.write(Map.of(1, "x")));
        assertThrows(IllegalArgumentException.class, () -> Json.write(new Object()));
        List<Object> cycle = new ArrayList<>();
        cycle.add(cycle);
        assertThrows(IllegalArgumentException.class, () -> Json.write(cycle));
    }

    @Test
    void roundTripOfEveryBmpCharacterAndControls() throws Exception {
        StringBuilder sb = new StringBuilder();
        for (char c = 0; c < 0xd800; c++) {
            sb.append(c);
        }
        for (int c = 0xe000; c <= 0xffff; c++) {
            sb.append((char) c);
        }
        sb.append("\ud83d\ude00\ud800\udc00\udbff\udfff"); // supplementary: first and last plane edges
        String s = sb.toString();
        String json = Json.write(List.of(s, Map.of(s, s)));
        for (int i = 0; i < json.length(); i++) {
            char c = json.charAt(i);
            assertTrue(c >= 0x20 && c < 0x7f, "output must be printable ASCII");
        }
        assertEquals(List.of(s, Map.of(s, s)), Json.parse(json));
    }

    @Test
    void roundTripOfParsedDocument() throws Exception {
        String doc = "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\",\"node-name\":\"d0\","
                + "\"size\":18446744073709551615,\"ratio\":0.25,\"flags\":[true,false,null],\"x\":-7}}";
        assertEquals(doc, Json.write(Json.parse(doc)));
    }
}
