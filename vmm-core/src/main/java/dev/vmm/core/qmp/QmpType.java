package dev.vmm.core.qmp;

import java.math.BigInteger;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;

/**
 * A QAPI type as {@code query-qmp-schema} describes it (qapi/introspect.json {@code SchemaInfo}):
 * a builtin, an enum, an array, an object (optionally a flat union: a {@code tag} member and one
 * variant object per tag value) or an alternate. Command arguments are declared with these, and
 * the monitor checks every request against the declaration before the command runs
 * ({@link #check}), so the published schema is the one enforced.
 *
 * <p>Checking follows QEMU's qobject input visitor and its words: {@code Parameter 'x' is
 * missing}, {@code Parameter 'x' is unexpected}, {@code Invalid parameter type for 'x',
 * expected: integer}, {@code Parameter 'x' does not accept value 'y'}, with dotted paths for
 * nested members ({@code addr.data.path}). One documented leniency of ours (docs/qmp.md): a
 * scalar given as a string is accepted where it parses as the declared scalar ({@code "on"} for a
 * bool, {@code "512"} for an int, as QEMU's keyval command line does), and a number or a bool is
 * accepted where a string is declared; anything else of the wrong JSON type is refused.
 *
 * <p>Thread contract: immutable once built; any thread.
 */
public final class QmpType {
    /** SchemaInfo {@code meta-type} values of types (commands and events are not types). */
    public enum Meta { BUILTIN, ENUM, ARRAY, OBJECT, ALTERNATE }

    /** An object member; {@code optional} ones are listed with {@code "default": null}, as QEMU does. */
    public record Member(String name, QmpType type, boolean optional) {}

    public static final QmpType STR = builtin("str", "string");
    public static final QmpType INT = builtin("int", "int");
    public static final QmpType NUMBER = builtin("number", "number");
    public static final QmpType BOOL = builtin("bool", "boolean");
    public static final QmpType NULL = builtin("null", "null");
    public static final QmpType ANY = builtin("any", "value");
    /** QEMU's empty object ({@code q_empty}): the arguments of an argument-less command and its {@code {}} return. */
    public static final QmpType EMPTY = object("q_empty").build();

    /**
     * The variant of a union case whose members nobody declared (an export driver without
     * {@code qmpOptions}): every member passes, the code behind checks them; schema tests fail on it.
     */
    public static final QmpType UNDECLARED = object("x-undeclared").build();

    private final Meta meta;
    private final String name;
    private final String jsonType;
    private final List<String> values;
    private final QmpType element;
    private final List<Member> members;
    private final String tag;
    private final Map<String, QmpType> variants;
    private final List<QmpType> alternatives;

    private QmpType(Meta meta, String name, String jsonType, List<String> values, QmpType element, List<Member> members,
            String tag, Map<String, QmpType> variants, List<QmpType> alternatives) {
        this.meta = meta;
        this.name = name;
        this.jsonType = jsonType;
        this.values = values;
        this.element = element;
        this.members = members;
        this.tag = tag;
        this.variants = variants;
        this.alternatives = alternatives;
    }

    private static QmpType builtin(String name, String jsonType) {
        return new QmpType(Meta.BUILTIN, name, jsonType, List.of(), null, List.of(), null, Map.of(), List.of());
    }

    public static QmpType enumOf(String name, String... values) {
        return new QmpType(Meta.ENUM, name, null, List.of(values), null, List.of(), null, Map.of(), List.of());
    }

    /** {@code [element]}, QEMU's name for an array type. */
    public static QmpType arrayOf(QmpType element) {
        return new QmpType(Meta.ARRAY, "[" + element.name + "]", null, List.of(), element, List.of(), null, Map.of(), List.of());
    }

    /** A value of one of {@code types} (QEMU tells them apart by JSON type); QEMU's {@code StrOrNull} e.g. */
    public static QmpType alternate(String name, QmpType... types) {
        return new QmpType(Meta.ALTERNATE, name, null, List.of(), null, List.of(), null, Map.of(), List.of(types));
    }

    /**
     * An alternate whose branches are given later by {@link #define}, for recursive types
     * (QEMU's {@code BlockdevRef}: an inline {@code BlockdevOptions} or a node name, inside
     * {@code BlockdevOptions}). Define it before the type is published.
     */
    public static QmpType alternateForward(String name) {
        return new QmpType(Meta.ALTERNATE, name, null, List.of(), null, List.of(), null, Map.of(), new ArrayList<>());
    }

    /** Gives a {@link #alternateForward} its branches, once. */
    public QmpType define(QmpType... types) {
        if (meta != Meta.ALTERNATE || !alternatives.isEmpty()) throw new IllegalStateException(name + " is defined already");
        alternatives.addAll(List.of(types));
        return this;
    }

    public static ObjectBuilder object(String name) { return new ObjectBuilder(name); }

    /** Builds an object type; {@link #union} makes it a flat union on one of its enum members. */
    public static final class ObjectBuilder {
        private final String name;
        private final List<Member> members = new ArrayList<>();
        private String tag;
        private final Map<String, QmpType> variants = new LinkedHashMap<>();

        private ObjectBuilder(String name) { this.name = Objects.requireNonNull(name); }

        public ObjectBuilder required(String member, QmpType type) {
            members.add(new Member(member, type, false));
            return this;
        }

        public ObjectBuilder optional(String member, QmpType type) {
            members.add(new Member(member, type, true));
            return this;
        }

        /** The members of {@code base} (an object) first, as QAPI's {@code base}. */
        public ObjectBuilder base(QmpType base) {
            members.addAll(base.members);
            return this;
        }

        /** Flat union on {@code tagMember}, a required enum member declared already. */
        public ObjectBuilder union(String tagMember) {
            this.tag = tagMember;
            return this;
        }

        /** The members present when the tag is {@code value}; a tag value without variant adds none. */
        public ObjectBuilder variant(String value, QmpType type) {
            variants.put(value, type);
            return this;
        }

        public QmpType build() {
            if (tag != null) {
                Member t = members.stream().filter(m -> m.name().equals(tag)).findFirst()
                        .orElseThrow(() -> new IllegalStateException(name + ": no tag member " + tag));
                if (t.type().meta != Meta.ENUM || t.optional()) throw new IllegalStateException(name + ": tag must be a required enum");
                for (String v : variants.keySet()) {
                    if (!t.type().values.contains(v)) throw new IllegalStateException(name + ": variant " + v + " not in " + t.type().name);
                }
            }
            return new QmpType(Meta.OBJECT, name, null, List.of(), null, List.copyOf(members), tag,
                    java.util.Collections.unmodifiableMap(new LinkedHashMap<>(variants)), List.of());
        }
    }

    public Meta meta() { return meta; }

    public String name() { return name; }

    public List<String> values() { return values; }

    public List<Member> members() { return members; }

    public String tag() { return tag; }

    public Map<String, QmpType> variants() { return variants; }

    public QmpType element() { return element; }

    public List<QmpType> alternatives() { return alternatives; }

    // ---- checking (qapi/qobject-input-visitor.c) ----

    /**
     * Checks {@code value} (parsed JSON) against this type; {@code path} is the dotted name of
     * the value, null for the whole {@code arguments} object.
     *
     * @throws QmpException GenericError with QEMU's words
     */
    public void check(Object value, String path) throws QmpException {
        switch (meta) {
            case BUILTIN -> checkBuiltin(value, path);
            case ENUM -> {
                if (!(value instanceof String s)) throw invalidType(path, "string");
                // QEMU names only the member here (input_type_enum), "null" for a list element
                if (!values.contains(s)) throw QmpException.generic("Parameter '" + memberName(path) + "' does not accept value '" + s + "'");
            }
            case ARRAY -> {
                if (!(value instanceof List<?> list)) throw invalidType(path, "array");
                for (int i = 0; i < list.size(); i++) element.check(list.get(i), label(path) + "[" + i + "]");
            }
            case ALTERNATE -> {
                for (QmpType t : alternatives) {
                    if (t.accepts(value)) {
                        t.check(value, path);
                        return;
                    }
                }
                throw invalidType(path, name);
            }
            case OBJECT -> checkObject(value, path);
        }
    }

    /** Whether an alternate picks this branch for {@code value}: by JSON type, as QEMU. */
    private boolean accepts(Object v) {
        return switch (meta) {
            case OBJECT -> v instanceof Map;
            case ARRAY -> v instanceof List;
            case ENUM -> v instanceof String;
            case ALTERNATE -> alternatives.stream().anyMatch(a -> a.accepts(v));
            case BUILTIN -> switch (jsonType) {
                case "string" -> v instanceof String;
                case "int" -> v instanceof Long || v instanceof BigInteger || v instanceof Integer;
                case "number" -> v instanceof Number;
                case "boolean" -> v instanceof Boolean;
                case "null" -> v == null;
                default -> true;
            };
        };
    }

    private void checkBuiltin(Object v, String path) throws QmpException {
        switch (jsonType) {
            case "string" -> {
                if (!(v instanceof String || v instanceof Number || v instanceof Boolean)) throw invalidType(path, "string");
            }
            case "int" -> {
                if (v instanceof Long || v instanceof Integer || v instanceof BigInteger) return;
                if (v instanceof String s && s.matches("-?[0-9]+")) return;
                throw invalidType(path, "integer");
            }
            case "number" -> {
                if (v instanceof Number) return;
                if (v instanceof String s) {
                    try {
                        Double.parseDouble(s);
                        return;
                    } catch (NumberFormatException e) {
                        // refused below
                    }
                }
                throw invalidType(path, "number");
            }
            case "boolean" -> {
                if (v instanceof Boolean) return;
                if (v instanceof String s && s.matches("on|off|true|false")) return;
                throw invalidType(path, "boolean");
            }
            case "null" -> {
                if (v != null) throw invalidType(path, "null");
            }
            default -> { } // any
        }
    }

    private void checkObject(Object value, String path) throws QmpException {
        if (!(value instanceof Map<?, ?> map)) throw invalidType(path, "object");
        Set<String> known = new LinkedHashSet<>();
        checkMembers(members, map, path, known);
        if (tag != null) {
            QmpType variant = variants.get((String) map.get(tag)); // the tag was checked as an enum above
            if (variant == UNDECLARED) return;
            if (variant != null) checkMembers(variant.members, map, path, known);
        }
        for (Object k : map.keySet()) {
            if (!known.contains(k)) throw QmpException.generic("Parameter '" + child(path, (String) k) + "' is unexpected");
        }
    }

    private static void checkMembers(Collection<Member> members, Map<?, ?> map, String path, Set<String> known) throws QmpException {
        for (Member m : members) {
            known.add(m.name());
            if (!map.containsKey(m.name())) {
                if (!m.optional()) throw QmpException.generic("Parameter '" + child(path, m.name()) + "' is missing");
                continue;
            }
            m.type().check(map.get(m.name()), child(path, m.name()));
        }
    }

    private static String child(String path, String member) { return path == null ? member : path + "." + member; }

    private static String memberName(String path) {
        if (path == null || path.endsWith("]")) return "null";
        return path.substring(path.lastIndexOf('.') + 1);
    }

    private static String label(String path) { return path == null ? "null" : path; }

    private static QmpException invalidType(String path, String expected) {
        return QmpException.generic("Invalid parameter type for '" + label(path) + "', expected: " + expected);
    }

    // ---- introspection (qapi/introspect.json) ----

    /** This type's {@code SchemaInfo}, in QEMU's member order. */
    Map<String, Object> schemaInfo() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("name", name);
        switch (meta) {
            case BUILTIN -> {
                m.put("json-type", jsonType);
                m.put("meta-type", "builtin");
            }
            case ENUM -> {
                List<Object> ms = new ArrayList<>();
                for (String v : values) ms.add(Map.of("name", v));
                m.put("members", ms);
                m.put("meta-type", "enum");
                m.put("values", values);
            }
            case ARRAY -> {
                m.put("element-type", element.name);
                m.put("meta-type", "array");
            }
            case ALTERNATE -> {
                List<Object> ms = new ArrayList<>();
                for (QmpType t : alternatives) ms.add(Map.of("type", t.name));
                m.put("members", ms);
                m.put("meta-type", "alternate");
            }
            case OBJECT -> {
                if (tag != null) {
                    m.put("tag", tag);
                    List<Object> vs = new ArrayList<>();
                    for (Map.Entry<String, QmpType> e : variants.entrySet()) {
                        Map<String, Object> v = new LinkedHashMap<>();
                        v.put("case", e.getKey());
                        v.put("type", e.getValue().name);
                        vs.add(v);
                    }
                    m.put("variants", vs);
                }
                List<Object> ms = new ArrayList<>();
                for (Member x : members) {
                    Map<String, Object> mm = new LinkedHashMap<>();
                    mm.put("name", x.name());
                    if (x.optional()) mm.put("default", null);
                    mm.put("type", x.type().name);
                    ms.add(mm);
                }
                m.put("members", ms);
                m.put("meta-type", "object");
            }
        }
        return m;
    }

    /** The types this one names directly (member, element, variant and branch types). */
    List<QmpType> referenced() {
        List<QmpType> out = new ArrayList<>();
        for (Member x : members) out.add(x.type());
        out.addAll(variants.values());
        if (element != null) out.add(element);
        out.addAll(alternatives);
        return out;
    }

    @Override
    public String toString() { return name; }
}
