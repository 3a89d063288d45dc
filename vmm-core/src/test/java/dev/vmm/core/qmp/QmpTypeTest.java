package dev.vmm.core.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.json.Json;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;

/**
 * Argument checking against declarations, in QEMU's words (the expected texts are what
 * qemu-storage-daemon 7.2 answers to the same requests; QmpSchemaPeerTest compares live), and
 * the SchemaInfo the declarations publish.
 */
class QmpTypeTest {
    private static String error(QmpType t, String json) {
        QmpException e = assertThrows(QmpException.class, () -> t.check(Json.parse(json), null), json);
        assertEquals(QmpErrorClass.GenericError, e.errorClass());
        return e.getMessage();
    }

    private static void ok(QmpType t, String json) throws Exception {
        t.check(Json.parse(json), null);
    }

    @Test
    void missingUnexpectedAndMistypedMembersInQemusWords() throws Exception {
        assertEquals("Parameter 'node-name' is missing", error(CoreTypes.BLOCKDEV_DEL_ARGS, "{}"));
        assertEquals("Parameter 'y' is unexpected", error(CoreTypes.BLOCKDEV_DEL_ARGS, "{\"node-name\":\"x\",\"y\":1}"));
        assertEquals("Invalid parameter type for 'node-name', expected: string", error(CoreTypes.BLOCKDEV_DEL_ARGS, "{\"node-name\":{}}"));
        assertEquals("Invalid parameter type for 'flat', expected: boolean", error(CoreTypes.QUERY_NAMED_BLOCK_NODES_ARGS, "{\"flat\":1}"));
        assertEquals("Parameter 'mode' does not accept value 'zz'", error(CoreTypes.BLOCK_EXPORT_DEL_ARGS, "{\"id\":\"x\",\"mode\":\"zz\"}"));
        assertEquals("Invalid parameter type for 'iothread', expected: StrOrNull",
                error(CoreTypes.SET_IOTHREAD_ARGS, "{\"node-name\":\"x\",\"iothread\":[]}"));
        ok(CoreTypes.SET_IOTHREAD_ARGS, "{\"node-name\":\"x\",\"iothread\":null}");
        assertEquals("Invalid parameter type for 'poll-max-ns', expected: integer",
                error(CoreTypes.OBJECT_ADD_ARGS, "{\"qom-type\":\"iothread\",\"id\":\"a\",\"poll-max-ns\":1.5}"));
    }

    @Test
    void flatUnionsCheckTheTagThenTheVariantsMembers() throws Exception {
        QmpType b = CoreTypes.BLOCKDEV_OPTIONS;
        assertEquals("Parameter 'driver' is missing", error(b, "{\"node-name\":\"a\"}"));
        assertEquals("Parameter 'driver' does not accept value 'foo'", error(b, "{\"driver\":\"foo\",\"node-name\":\"a\"}"));
        assertEquals("Parameter 'filename' is missing", error(b, "{\"driver\":\"file\",\"node-name\":\"a\"}"));
        assertEquals("Invalid parameter type for 'cache.direct', expected: boolean",
                error(b, "{\"driver\":\"file\",\"node-name\":\"a\",\"filename\":\"/x\",\"cache\":{\"direct\":1}}"));
        assertEquals("Parameter 'cache.q' is unexpected",
                error(b, "{\"driver\":\"file\",\"node-name\":\"a\",\"filename\":\"/x\",\"cache\":{\"direct\":true,\"q\":1}}"));
        assertEquals("Invalid parameter type for 'file', expected: BlockdevRef", error(b, "{\"driver\":\"qcow2\",\"node-name\":\"a\",\"file\":1}"));
        // a member of another variant is unexpected here
        assertEquals("Parameter 'offset' is unexpected", error(b, "{\"driver\":\"file\",\"node-name\":\"a\",\"filename\":\"/x\",\"offset\":0}"));
        // recursion through BlockdevRef: the inner node is checked with its dotted path
        assertEquals("Parameter 'file.filename' is missing", error(b, "{\"driver\":\"qcow2\",\"node-name\":\"a\",\"file\":{\"driver\":\"file\"}}"));
        assertEquals("Parameter 'backing.file.driver' is missing",
                error(b, "{\"driver\":\"qcow2\",\"node-name\":\"a\",\"file\":\"f\",\"backing\":{\"driver\":\"raw\",\"file\":{}}}"));
        ok(b, "{\"driver\":\"qcow2\",\"node-name\":\"a\",\"file\":{\"driver\":\"file\",\"filename\":\"/x\"},\"backing\":null}");
        assertEquals("Invalid parameter type for 'addr.data.port', expected: string",
                error(QmpType.object("t").required("addr", CoreTypes.SOCKET_ADDRESS_LEGACY).build(),
                        "{\"addr\":{\"type\":\"inet\",\"data\":{\"host\":\"h\",\"port\":[]}}}"));
    }

    @Test
    void listElementsAreNamedWithTheirIndex() {
        // QEMU's quirk (input_type_enum): an enum error names the bare member, "null" for an element
        assertEquals("Parameter 'null' does not accept value 'x'",
                error(QmpCommands.QMP_CAPABILITIES_ARGS, "{\"enable\":[\"oob\",\"x\"]}"));
        assertEquals("Invalid parameter type for 'enable', expected: array", error(QmpCommands.QMP_CAPABILITIES_ARGS, "{\"enable\":\"oob\"}"));
    }

    /** Documented leniency (docs/qmp.md): scalars as strings where they parse, numbers and bools for strings. */
    @Test
    void scalarsGivenAsStringsAreAcceptedWhereTheyParse() throws Exception {
        ok(CoreTypes.QUERY_NAMED_BLOCK_NODES_ARGS, "{\"flat\":\"on\"}");
        ok(CoreTypes.OBJECT_ADD_ARGS, "{\"qom-type\":\"iothread\",\"id\":\"a\",\"poll-max-ns\":\"10\"}");
        ok(CoreTypes.BLOCKDEV_DEL_ARGS, "{\"node-name\":7}");
        assertEquals("Invalid parameter type for 'flat', expected: boolean", error(CoreTypes.QUERY_NAMED_BLOCK_NODES_ARGS, "{\"flat\":\"maybe\"}"));
    }

    @Test
    void schemaListsEveryReachedTypeOnceWithQemusShape() {
        QmpCommands t = new QmpCommands();
        t.register("blockdev-add", CoreTypes.BLOCKDEV_OPTIONS, QmpType.EMPTY, QmpCommand.sync(c -> Map.of()));
        t.register("query-qmp-schema", QmpType.EMPTY, QmpType.arrayOf(CoreTypes.SCHEMA_INFO), QmpCommand.sync(c -> Map.of()));
        t.register("x-undeclared-command", QmpCommand.sync(c -> Map.of()));
        t.event("VMM_NODE_MOVED", CoreTypes.NODE_MOVED);
        List<Object> schema = t.schema();
        Set<String> names = new HashSet<>();
        for (Object o : schema) {
            @SuppressWarnings("unchecked")
            Map<String, Object> info = (Map<String, Object>) o;
            assertTrue(names.add((String) info.get("name")), "listed twice: " + info.get("name"));
        }
        for (Object o : schema) {
            @SuppressWarnings("unchecked")
            Map<String, Object> info = (Map<String, Object>) o;
            for (String ref : refs(info)) assertTrue(names.contains(ref), info.get("name") + " names unknown type " + ref);
        }
        // the published schema is itself valid against the declared SchemaInfo
        assertDoesNotThrow(() -> QmpType.arrayOf(CoreTypes.SCHEMA_INFO).check(Json.parse(Json.write(schema)), null));
        assertEquals(Map.of("name", "qmp_capabilities", "ret-type", "q_empty", "meta-type", "command", "arg-type",
                "q_obj_qmp_capabilities-arg"), schema.get(0));
        assertEquals(List.of("x-undeclared-command"), t.undeclared());
        assertTrue(schema.contains(Map.of("name", "q_empty", "members", List.of(), "meta-type", "object")));
        assertTrue(schema.contains(Map.of("name", "str", "json-type", "string", "meta-type", "builtin")));
    }

    private static void assertDoesNotThrow(org.junit.jupiter.api.function.Executable e) {
        org.junit.jupiter.api.Assertions.assertDoesNotThrow(e);
    }

    @SuppressWarnings("unchecked")
    static List<String> refs(Map<String, Object> info) {
        List<String> out = new java.util.ArrayList<>();
        for (String k : List.of("arg-type", "ret-type", "element-type")) if (info.get(k) != null) out.add((String) info.get(k));
        if (info.get("members") instanceof List<?> ms && !"enum".equals(info.get("meta-type"))) {
            for (Object m : ms) if (((Map<String, Object>) m).get("type") != null) out.add((String) ((Map<String, Object>) m).get("type"));
        }
        if (info.get("variants") instanceof List<?> vs) for (Object v : vs) out.add((String) ((Map<String, Object>) v).get("type"));
        return out;
    }
}
