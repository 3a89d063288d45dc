package dev.vmm.core.options;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.json.Json;
import dev.vmm.core.options.OptionException.Kind;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

class OptionsTest {

    private static Options opts(String option, String text) throws OptionException {
        return KeyValueParser.parse(option, text, null);
    }

    private static String error(Executable call) {
        return assertThrows(OptionException.class, call).getMessage();
    }

    enum Kind2 { NBD, VHOST_USER_BLK }

    @Test
    void requiredAndOptional() throws Exception {
        Options o = opts("--blockdev", "driver=file,filename=/d.img");
        assertEquals("file", o.required("driver"));
        assertEquals("/d.img", o.optional("filename", "x"));
        assertEquals("dflt", o.optional("node-name", "dflt"));
        assertNull(o.optional("other", null));
        OptionException e = assertThrows(OptionException.class, () -> o.required("node-name"));
        assertEquals("--blockdev: parameter 'node-name' is missing", e.getMessage());
        assertEquals(Kind.MISSING, e.kind());
        assertEquals("node-name", e.key());
        assertEquals("parameter 'node-name' is missing", e.detail());
        assertEquals("--blockdev", e.optionName());
    }

    @Test
    void booleans() throws Exception {
        Options o = opts("--x", "a=on,b=off,c=yes,d=no,e=true,f=false");
        assertTrue(o.bool("a", false));
        assertFalse(o.bool("b", true));
        assertTrue(o.bool("c", false));
        assertFalse(o.bool("d", true));
        assertTrue(o.bool("e", false));
        assertFalse(o.bool("f", true));
        assertTrue(o.bool("absent", true));
        assertFalse(o.bool("absent", false));
    }

    @Test
    void badBooleans() throws Exception {
        Options o = opts("--blockdev", "read-only=maybe,x=ON,y=1,z=");
        OptionException e = assertThrows(OptionException.class, () -> o.bool("read-only", false));
        assertEquals("--blockdev: 'read-only' must be 'on' or 'off', got 'maybe'", e.getMessage());
        assertEquals(Kind.INVALID, e.kind());
        assertEquals("--blockdev: 'x' must be 'on' or 'off', got 'ON'", error(() -> o.bool("x", false)));
        assertEquals("--blockdev: 'y' must be 'on' or 'off', got '1'", error(() -> o.bool("y", false)));
        assertEquals("--blockdev: 'z' must be 'on' or 'off', got ''", error(() -> o.bool("z", false)));
    }

    @Test
    void numbers() throws Exception {
        Options o = opts("--nbd-server", "max-connections=4,low=-5,top=65535");
        assertEquals(4, o.number("max-connections", 0, 0, Integer.MAX_VALUE));
        assertEquals(-5, o.number("low", 0, -10, 10));
        assertEquals(65535, o.number("top", 0, 1, 65535));
        assertEquals(77, o.number("absent", 77, 1, 10), "default is returned as given");
    }

    @Test
    void badNumbers() throws Exception {
        Options o = opts("--nbd-server", "addr.port=abc,a=0,b=65536,c=0x10,d= 1,e=99999999999999999999,f=1.0");
        Options addr = o.sub("addr");
        OptionException e = assertThrows(OptionException.class, () -> addr.number("port", 10809, 1, 65535));
        assertEquals("--nbd-server: 'addr.port' must be a number from 1 to 65535, got 'abc'", e.getMessage());
        assertEquals("addr.port", e.key());
        assertEquals("--nbd-server: 'a' must be a number from 1 to 65535, got '0'", error(() -> o.number("a", 1, 1, 65535)));
        assertEquals("--nbd-server: 'b' must be a number from 1 to 65535, got '65536'",
                error(() -> o.number("b", 1, 1, 65535)));
        assertEquals("--nbd-server: 'c' must be a number from 0 to 100, got '0x10'", error(() -> o.number("c", 1, 0, 100)));
        assertEquals("--nbd-server: 'd' must be a number from 0 to 100, got ' 1'", error(() -> o.number("d", 1, 0, 100)));
        assertEquals("--nbd-server: 'e' must be a number from 0 to 9223372036854775807, got '99999999999999999999'",
                error(() -> o.number("e", 1, 0, Long.MAX_VALUE)));
        assertEquals("--nbd-server: 'f' must be a number from 0 to 100, got '1.0'", error(() -> o.number("f", 1, 0, 100)));
    }

    @Test
    void sizes() throws Exception {
        Options o = opts("--x", "a=512,b=4k,c=4K,d=2M,e=3G,f=1T,g=2m,h=1P,i=1E,j=7E,k=100B,l=0,m=9223372036854775807");
        assertEquals(512, o.size("a", 0));
        assertEquals(4096, o.size("b", 0));
        assertEquals(4096, o.size("c", 0));
        assertEquals(2L << 20, o.size("d", 0));
        assertEquals(3L << 30, o.size("e", 0));
        assertEquals(1L << 40, o.size("f", 0));
        assertEquals(2L << 20, o.size("g", 0));
        assertEquals(1L << 50, o.size("h", 0));
        assertEquals(1L << 60, o.size("i", 0));
        assertEquals(7L << 60, o.size("j", 0));
        assertEquals(100, o.size("k", 0));
        assertEquals(0, o.size("l", 0));
        assertEquals(Long.MAX_VALUE, o.size("m", 0));
        assertEquals(123, o.size("absent", 123));
    }

    /** The command line's sizes (vmm demo --size, vmm bench --bs) use the same syntax. */
    @Test
    void parseSizeIsSizesSyntaxOutsideOptions() {
        assertEquals(64L << 20, Options.parseSize("64M"));
        assertEquals(4096, Options.parseSize("4k"));
        assertEquals("a size in bytes with an optional suffix K, M, G, T, P or E",
                assertThrows(NumberFormatException.class, () -> Options.parseSize("1GiB")).getMessage());
        assertEquals("at most 9223372036854775807 bytes", assertThrows(NumberFormatException.class, () -> Options.parseSize("8E")).getMessage());
    }

    /** --nbd-server and --metrics addresses (one implementation since both had their own). */
    @Test
    void inetAddresses() throws Exception {
        assertEquals(new java.net.InetSocketAddress("::1", 10809),
                opts("--nbd-server", "addr.type=inet,addr.host=[::1]").sub("addr").inetAddress(10809));
        assertEquals(new java.net.InetSocketAddress("127.0.0.1", 0),
                opts("--metrics", "addr.host=127.0.0.1,addr.port=0").sub("addr").inetAddress(-1));
        assertEquals("--metrics: parameter 'addr.port' is missing",
                error(() -> opts("--metrics", "addr.host=127.0.0.1").sub("addr").inetAddress(-1)));
        assertEquals("--nbd-server: 'addr.port' must be a number from 0 to 65535, got '65536'",
                error(() -> opts("--nbd-server", "addr.host=127.0.0.1,addr.port=65536").sub("addr").inetAddress(10809)));
    }

    @Test
    void badSizes() throws Exception {
        Options o = opts("--blockdev", "a=-1,b=1.5G,c=8E,d=9223372036854775808,e=G,f=,g=1X,h=1KB,i=+1,j=8796093022208T");
        String form = "a size in bytes with an optional suffix K, M, G, T, P or E";
        assertEquals("--blockdev: 'a' must be " + form + ", got '-1'", error(() -> o.size("a", 0)));
        assertEquals("--blockdev: 'b' must be " + form + ", got '1.5G'", error(() -> o.size("b", 0)));
        assertEquals("--blockdev: 'c' must be at most 9223372036854775807 bytes, got '8E'", error(() -> o.size("c", 0)));
        assertEquals("--blockdev: 'd' must be at most 9223372036854775807 bytes, got '9223372036854775808'",
                error(() -> o.size("d", 0)));
        assertEquals("--blockdev: 'e' must be " + form + ", got 'G'", error(() -> o.size("e", 0)));
        assertEquals("--blockdev: 'f' must be " + form + ", got ''", error(() -> o.size("f", 0)));
        assertEquals("--blockdev: 'g' must be " + form + ", got '1X'", error(() -> o.size("g", 0)));
        assertEquals("--blockdev: 'h' must be " + form + ", got '1KB'", error(() -> o.size("h", 0)));
        assertEquals("--blockdev: 'i' must be " + form + ", got '+1'", error(() -> o.size("i", 0)));
        assertEquals("--blockdev: 'j' must be at most 9223372036854775807 bytes, got '8796093022208T'",
                error(() -> o.size("j", 0)));
    }

    @Test
    void stringChoice() throws Exception {
        Options o = opts("--blockdev", "cache=none,aio=fast");
        assertEquals("none", o.choice("cache", "writeback", "writeback", "none"));
        assertEquals("threads", o.choice("other", "threads", "threads", "native"));
        assertEquals("--blockdev: 'aio' must be one of threads, native, io_uring, got 'fast'",
                error(() -> o.choice("aio", "threads", "threads", "native", "io_uring")));
    }

    @Test
    void enumChoice() throws Exception {
        Options o = opts("--export", "type=vhost-user-blk,bad=vhost_user_blk,t2=nbd");
        assertEquals(Kind2.VHOST_USER_BLK, o.choice("type", null, Kind2.class));
        assertEquals(Kind2.NBD, o.choice("t2", null, Kind2.class));
        assertNull(o.choice("absent", (Kind2) null, Kind2.class));
        assertEquals(Kind2.NBD, o.choice("absent", Kind2.NBD, Kind2.class));
        assertEquals("--export: 'bad' must be one of nbd, vhost-user-blk, got 'vhost_user_blk'",
                error(() -> o.choice("bad", null, Kind2.class)));
        assertEquals("vhost-user-blk", Options.spelling(Kind2.VHOST_USER_BLK));
    }

    @Test
    void unknownParameterIsTheFirstUnconsumedInInputOrder() throws Exception {
        Options o = opts("--blockdev", "driver=file,zzz=1,filename=/x,foo=2");
        o.required("driver");
        o.required("filename");
        OptionException e = assertThrows(OptionException.class, o::checkAllConsumed);
        assertEquals("--blockdev: unknown parameter 'zzz'", e.getMessage());
        assertEquals(Kind.UNKNOWN, e.kind());
        o.optional("zzz", null);
        assertEquals("--blockdev: unknown parameter 'foo'", error(o::checkAllConsumed));
        o.optional("foo", null);
        o.checkAllConsumed();
    }

    @Test
    void readingAnAbsentKeyConsumesNothingElse() throws Exception {
        Options o = opts("--x", "a=1");
        o.optional("b", null);
        assertEquals("--x: unknown parameter 'a'", error(o::checkAllConsumed));
    }

    @Test
    void aFailedAccessorStillConsumesTheKey() throws Exception {
        // The key was recognised; the error is about its value, not an unknown parameter.
        Options o = opts("--x", "a=bad");
        assertThrows(OptionException.class, () -> o.bool("a", false));
        o.checkAllConsumed();
    }

    @Test
    void subViewsShareConsumption() throws Exception {
        Options o = opts("--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=10809,addr.bogus=1,"
                + "max-connections=4");
        Options addr = o.sub("addr.");
        assertEquals(Map.of("type", "inet", "host", "127.0.0.1", "port", "10809", "bogus", "1"), addr.asMap());
        assertEquals("inet", addr.choice("type", null, "inet", "unix"));
        assertEquals("127.0.0.1", addr.required("host"));
        assertEquals(10809, addr.number("port", 0, 1, 65535));
        assertEquals(4, o.number("max-connections", 0, 0, 100));
        assertEquals("--nbd-server: unknown parameter 'addr.bogus'", error(addr::checkAllConsumed));
        assertEquals("--nbd-server: unknown parameter 'addr.bogus'", error(o::checkAllConsumed));
        assertEquals("--nbd-server: parameter 'addr.path' is missing", error(() -> addr.required("path")));
        addr.optional("bogus", null);
        o.checkAllConsumed();
    }

    @Test
    void subViewChecksOnlyItsGroup() throws Exception {
        Options o = opts("--x", "top=1,g.a=1");
        Options g = o.sub("g");
        g.required("a");
        g.checkAllConsumed();
        assertEquals("--x: unknown parameter 'top'", error(o::checkAllConsumed));
    }

    @Test
    void nestedSubViewsAndHas() throws Exception {
        Options o = opts("--x", "a.b.c=1,a.bc=2");
        Options ab = o.sub("a").sub("b");
        assertEquals(Map.of("c", "1"), ab.asMap(), "'a.bc' is not in group 'a.b'");
        assertTrue(ab.has("c"));
        assertTrue(o.hasGroup("a"));
        assertTrue(o.sub("a").hasGroup("b"));
        assertFalse(o.hasGroup("c"));
        assertFalse(o.has("a"));
        assertEquals("--x: 'a.b.c' must be a number from 5 to 9, got '1'", error(() -> ab.number("c", 0, 5, 9)));
        assertEquals(Map.of(), o.sub("nothing").asMap());
        assertEquals("--x: unknown parameter 'a.b.c'".replace("a.b.c", "a.bc"), // a.b.c consumed by the failed read
                error(o::checkAllConsumed));
    }

    @Test
    void asMapIsUnmodifiableAndConsumesNothing() throws Exception {
        Options o = opts("--x", "a=1");
        assertThrows(UnsupportedOperationException.class, () -> o.asMap().put("b", "2"));
        o.asMap();
        assertEquals("--x: unknown parameter 'a'", error(o::checkAllConsumed));
        assertEquals("--x", o.optionName());
    }

    @Test
    void ofReadsQmpArgumentsLikeTheCommandLine() throws Exception {
        @SuppressWarnings("unchecked")
        Map<String, Object> args = (Map<String, Object>) Json.parse(
                "{\"type\":\"nbd\",\"id\":\"exp0\",\"node-name\":\"disk0\",\"writable\":true,"
                        + "\"addr\":{\"port\":10809}}");
        Options o = Options.of("block-export-add", args);
        assertEquals("nbd", o.required("type"));
        assertTrue(o.bool("writable", false));
        assertEquals(10809, o.sub("addr").number("port", 0, 1, 65535));
        assertEquals("block-export-add: unknown parameter 'id'", error(o::checkAllConsumed));

        Map<String, Object> flat = new LinkedHashMap<>();
        flat.put("addr.type", "unix");
        flat.put("size", 4096L);
        flat.put("ro", false);
        Options f = Options.of("x", flat);
        assertEquals(Map.of("addr.type", "unix", "size", "4096", "ro", "off"), f.asMap());
        assertEquals(List.of("addr.type", "size", "ro"), List.copyOf(f.asMap().keySet()));
    }

    @Test
    void ofValidatesKeysAndValues() {
        assertEquals("x: invalid parameter name 'a,b'", error(() -> Options.of("x", Map.of("a,b", "1"))));
        assertEquals("x: parameter 'a' is given both as a value and as a group ('a.b')",
                error(() -> Options.of("x", Map.of("a", "1", "a.b", "2"))));
        Map<String, Object> nul = new LinkedHashMap<>();
        nul.put("a", null);
        assertEquals("x: parameter 'a' must not be null", error(() -> Options.of("x", nul)));
        assertThrows(IllegalArgumentException.class, () -> Options.of("x", Map.of("a", new Object())));
    }

    @Test
    void backingNullIsTheEmptyNameAtAnyDepthAsInQemu() throws Exception {
        Map<String, Object> inner = new java.util.LinkedHashMap<>();
        inner.put("driver", "qcow2");
        inner.put("backing", null);
        Map<String, Object> args = new java.util.LinkedHashMap<>();
        args.put("backing", inner);
        Options o = Options.of("blockdev-add", args);
        assertEquals("", o.sub("backing").required("backing"));
        Map<String, Object> top = new java.util.LinkedHashMap<>();
        top.put("backing", null);
        assertEquals("", Options.of("blockdev-add", top).required("backing"));
        assertEquals("", opts("--blockdev", "{\"driver\":\"qcow2\",\"backing\":null}").required("backing"));
        Map<String, Object> other = new java.util.LinkedHashMap<>();
        other.put("file", null);
        assertEquals("x: parameter 'file' must not be null", error(() -> Options.of("x", other)));
    }
}
