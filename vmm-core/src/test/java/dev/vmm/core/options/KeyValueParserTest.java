package dev.vmm.core.options;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.options.OptionException.Kind;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class KeyValueParserTest {

    private static Map<String, String> map(String... kv) {
        Map<String, String> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put(kv[i], kv[i + 1]);
        }
        return m;
    }

    private static Map<String, String> parse(String text, String implied) throws OptionException {
        return KeyValueParser.parse("--x", text, implied).asMap();
    }

    private static OptionException fails(String option, String text, String implied) {
        return assertThrows(OptionException.class, () -> KeyValueParser.parse(option, text, implied));
    }

    @Test
    void keyValueElementsInOrder() throws Exception {
        Map<String, String> m = parse("driver=file,node-name=disk0,filename=/path/disk.img,read-only=on,"
                + "cache.direct=on", null);
        assertEquals(map("driver", "file", "node-name", "disk0", "filename", "/path/disk.img",
                "read-only", "on", "cache.direct", "on"), m);
        assertEquals(List.of("driver", "node-name", "filename", "read-only", "cache.direct"),
                List.copyOf(m.keySet()));
    }

    @Test
    void doubleCommaIsALiteralComma() throws Exception {
        assertEquals(map("filename", "/a,b", "x", "1"), parse("filename=/a,,b,x=1", null));
        assertEquals(map("description", ",lead,,two,", "x", "1"), parse("description=,,lead,,,,two,,,x=1", null));
        assertEquals(map("a", "1,"), parse("a=1,,", null));
    }

    @Test
    void valuesMayContainEqualsAndBeEmpty() throws Exception {
        assertEquals(map("a", "b=c", "e", ""), parse("a=b=c,e=", null));
    }

    @Test
    void impliedKeyAppliesToAFirstElementWithoutEquals() throws Exception {
        assertEquals(map("qom-type", "iothread", "id", "iot0"), parse("iothread,id=iot0", "qom-type"));
        assertEquals(map("backend", "socket", "id", "mon0", "path", "/x", "server", "on", "wait", "off"),
                parse("socket,id=mon0,path=/x,server=on,wait=off", "backend"));
        assertEquals(map("qom-type", "io,thread", "id", "x"), parse("io,,thread,id=x", "qom-type"));
        assertEquals(map("type", "nbd"), parse("nbd", "type"));
        // The implied key is optional: an explicit first element works too.
        assertEquals(map("type", "nbd", "id", "e"), parse("type=nbd,id=e", "type"));
    }

    @Test
    void impliedKeyOnlyForTheFirstElement() {
        OptionException e = fails("--object", "id=iot0,iothread", "qom-type");
        assertEquals("--object: expected '=' after parameter 'iothread'", e.getMessage());
        assertEquals(Kind.SYNTAX, e.kind());
    }

    @Test
    void bareKeyWithoutImpliedKeyIsAnError() {
        assertEquals("--blockdev: expected '=' after parameter 'read-only'",
                fails("--blockdev", "read-only,driver=file", null).getMessage());
    }

    @Test
    void impliedValueGivenTwiceIsADuplicate() {
        assertEquals("--object: duplicate parameter 'qom-type'",
                fails("--object", "iothread,qom-type=iothread", "qom-type").getMessage());
    }

    @Test
    void repeatedKeyIsAnError() {
        OptionException e = fails("--blockdev", "driver=file,filename=/a,filename=/b", null);
        assertEquals("--blockdev: duplicate parameter 'filename'", e.getMessage());
        assertEquals("filename", e.key());
    }

    @Test
    void emptyKeyIsAnError() {
        assertEquals("--blockdev: empty parameter name before '=' at position 12",
                fails("--blockdev", "driver=file,=x", null).getMessage());
        assertEquals("--blockdev: empty parameter at position 0", fails("--blockdev", ",driver=file", null).getMessage());
        assertEquals("--blockdev: invalid parameter name 'cache..direct'",
                fails("--blockdev", "cache..direct=on", null).getMessage());
        assertEquals("--blockdev: invalid parameter name 'cache.'", fails("--blockdev", "cache.=on", null).getMessage());
        assertEquals("--blockdev: invalid parameter name '.direct'", fails("--blockdev", ".direct=on", null).getMessage());
        assertEquals("--blockdev: invalid parameter name 'a b'", fails("--blockdev", "a b=1", null).getMessage());
    }

    @Test
    void oneTrailingCommaIsIgnoredAsInQemu() throws Exception {
        assertEquals(map("a", "1"), parse("a=1,", null));
        assertEquals(map(), parse("", "type"));
    }

    @Test
    void scalarAndGroupOfTheSameNameConflict() {
        assertEquals("--nbd-server: parameter 'addr' is given both as a value and as a group ('addr.type')",
                fails("--nbd-server", "addr=x,addr.type=inet", null).getMessage());
        assertEquals("--nbd-server: parameter 'addr' is given both as a value and as a group ('addr.type')",
                fails("--nbd-server", "addr.type=inet,addr=x", null).getMessage());
    }

    @Test
    void jsonFormEqualsKeyValueForm() throws Exception {
        Options kv = KeyValueParser.parse("--blockdev",
                "driver=file,node-name=disk0,filename=/x,,y,read-only=on,cache.direct=off,cache.no-flush=on,"
                        + "size=1024", null);
        Options js = KeyValueParser.parse("--blockdev",
                "{\"driver\":\"file\",\"node-name\":\"disk0\",\"filename\":\"/x,y\",\"read-only\":true,"
                        + "\"cache\":{\"direct\":false,\"no-flush\":true},\"size\":1024}", null);
        assertEquals(kv.asMap(), js.asMap());
        assertEquals(List.copyOf(kv.asMap().keySet()), List.copyOf(js.asMap().keySet()));
        assertEquals(1024, js.size("size", 0));
        assertTrue(js.sub("cache").bool("no-flush", false));
    }

    @Test
    void nestedJsonBecomesDottedKeys() throws Exception {
        Map<String, String> m = parse("{\"addr\":{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"port\":\"10809\","
                + "\"x\":{\"y\":{\"z\":1}}},\"list\":[\"a\",{\"b\":2}],\"empty\":{},\"none\":[]}", null);
        assertEquals(map("addr.type", "inet", "addr.host", "127.0.0.1", "addr.port", "10809", "addr.x.y.z", "1",
                "list.0", "a", "list.1.b", "2"), m);
    }

    @Test
    void jsonFormErrors() {
        OptionException e = fails("--blockdev", "{\"driver\":\"file\",}", null);
        assertEquals("--blockdev: invalid JSON at position 17: unexpected '}', expected a string (object key)",
                e.getMessage());
        assertEquals(Kind.SYNTAX, e.kind());
        assertEquals("--blockdev: duplicate parameter 'cache.direct'",
                fails("--blockdev", "{\"cache.direct\":true,\"cache\":{\"direct\":false}}", null).getMessage());
        assertEquals("--blockdev: parameter 'filename' must not be null",
                fails("--blockdev", "{\"filename\":null}", null).getMessage());
        // "backing": null is QAPI's one nullable block option: no backing node (OptionsTest)
        assertEquals("--blockdev: invalid parameter name ''", fails("--blockdev", "{\"\":1}", null).getMessage());
        assertEquals("--blockdev: invalid JSON at position 0: nesting deeper than 64 levels".replace("0:", "320:"),
                fails("--blockdev", "{\"a\":".repeat(100) + "1" + "}".repeat(100), null).getMessage());
    }

    @Test
    void jsonIsOnlyRecognisedAtTheFirstCharacter() throws Exception {
        // QEMU checks optarg[0] == '{'; anything else is key=value text.
        assertEquals(map("qom-type", " {\"a\":1}"), parse(" {\"a\":1}", "qom-type"));
    }
}
