package dev.vmm.cli.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class ShellSyntaxTest {
    @Test
    void valuesAreJsonLiteralsElseStrings() throws Exception {
        ShellSyntax.Request r = ShellSyntax.parse(List.of("block-export-add", "type=nbd", "id=e0", "node-name=disk0",
                "writable=true", "max=-3", "ratio=0.5", "x=null", "l=[1,\"a\"]", "o={\"k\":false}", "f=1.img", "empty="));
        assertEquals("block-export-add", r.command());
        assertEquals(Map.of("type", "nbd", "id", "e0", "node-name", "disk0", "writable", true, "max", -3L, "ratio", 0.5,
                "l", List.of(1L, "a"), "o", Map.of("k", false), "f", "1.img", "empty", ""),
                without(r.arguments(), "x"));
        assertEquals(true, r.arguments().containsKey("x") && r.arguments().get("x") == null);
    }

    private static Map<String, Object> without(Map<String, Object> m, String key) {
        Map<String, Object> c = new java.util.LinkedHashMap<>(m);
        c.remove(key);
        return c;
    }

    @Test
    void dottedKeysBuildObjects() throws Exception {
        ShellSyntax.Request r = ShellSyntax.parse(List.of("nbd-server-start", "addr.type=unix", "addr.data.path=/x"));
        assertEquals(Map.of("addr", Map.of("type", "unix", "data", Map.of("path", "/x"))), r.arguments());
        assertEquals("{\"execute\":\"nbd-server-start\",\"arguments\":{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"/x\"}}},\"id\":1}",
                dev.vmm.core.json.Json.write(r.toJson(1)));
    }

    @Test
    void badWordsAreClearErrors() {
        assertEquals("expected key=value, got 'writable'",
                assertThrows(ShellSyntax.SyntaxException.class, () -> ShellSyntax.parse(List.of("q", "writable"))).getMessage());
        assertEquals("key 'a' is given twice (or is also a group)",
                assertThrows(ShellSyntax.SyntaxException.class, () -> ShellSyntax.parse(List.of("q", "a=1", "a=2"))).getMessage());
        assertEquals("key 'a' is both a value and a group ('a.b')",
                assertThrows(ShellSyntax.SyntaxException.class, () -> ShellSyntax.parse(List.of("q", "a=1", "a.b=2"))).getMessage());
        assertEquals("invalid key 'a..b'",
                assertThrows(ShellSyntax.SyntaxException.class, () -> ShellSyntax.parse(List.of("q", "a..b=2"))).getMessage());
        assertEquals("expected a command name first, got 'id=1'",
                assertThrows(ShellSyntax.SyntaxException.class, () -> ShellSyntax.parse(List.of("id=1"))).getMessage());
    }

    @Test
    void scriptLinesSplitLikeAShellWithQuotesAndJsonValues() throws Exception {
        ShellSyntax.Request r = ShellSyntax.parseLine("block-export-add  id=e0 description='my disk' port=\"10809\" addr={\"type\": \"unix\", \"path\": \"/a b\"}");
        assertEquals(Map.of("id", "e0", "description", "my disk", "port", "10809",
                "addr", Map.of("type", "unix", "path", "/a b")), r.arguments());
        assertEquals("unterminated ' quote",
                assertThrows(ShellSyntax.SyntaxException.class, () -> ShellSyntax.parseLine("q a='x")).getMessage());
    }
}
