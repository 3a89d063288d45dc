package dev.vmm.core.qmp;

import static dev.vmm.core.qmp.QmpType.ANY;
import static dev.vmm.core.qmp.QmpType.BOOL;
import static dev.vmm.core.qmp.QmpType.INT;
import static dev.vmm.core.qmp.QmpType.NULL;
import static dev.vmm.core.qmp.QmpType.STR;
import static dev.vmm.core.qmp.QmpType.arrayOf;
import static dev.vmm.core.qmp.QmpType.enumOf;
import static dev.vmm.core.qmp.QmpType.object;

/**
 * The QAPI declarations of the core commands and events ({@link CoreCommands}) and of the types
 * other modules share (socket addresses). Names and members are QEMU 7.2's (qapi/*.json) where
 * the command is QEMU's; enums list the values the code accepts. Argument-type names of
 * commands follow QAPI's implicit {@code q_obj_<command>-arg}. Members of ours start with
 * {@code x-} or are noted.
 *
 * <p>Thread contract: constants, any thread.
 */
public final class CoreTypes {
    private CoreTypes() {}

    // ---- sockets (qapi/sockets.json) ----
    public static final QmpType INET_SOCKET_ADDRESS = object("InetSocketAddress")
            .required("host", STR).required("port", STR).optional("numeric", BOOL).optional("to", INT)
            .optional("ipv4", BOOL).optional("ipv6", BOOL).optional("keep-alive", BOOL).build();
    public static final QmpType UNIX_SOCKET_ADDRESS = object("UnixSocketAddress")
            .required("path", STR).optional("abstract", BOOL).optional("tight", BOOL).build();
    /** QEMU's {@code String}: a file descriptor's number or {@code getfd} name. */
    public static final QmpType FD_SOCKET_ADDRESS = object("String").required("str", STR).build();
    public static final QmpType SOCKET_ADDRESS_TYPE = enumOf("SocketAddressType", "inet", "unix", "fd");
    /** The flat {@code SocketAddress} of {@code block-export-add}'s and {@code --nbd-server}'s {@code addr}. */
    public static final QmpType SOCKET_ADDRESS = object("SocketAddress").required("type", SOCKET_ADDRESS_TYPE).union("type")
            .variant("inet", INET_SOCKET_ADDRESS).variant("unix", UNIX_SOCKET_ADDRESS).variant("fd", FD_SOCKET_ADDRESS).build();
    /** {@code SocketAddressLegacy} ({@code nbd-server-start}): the address under {@code data}. */
    public static final QmpType SOCKET_ADDRESS_LEGACY = object("SocketAddressLegacy")
            .required("type", enumOf("SocketAddressLegacyType", "inet", "unix", "fd")).union("type")
            .variant("inet", object("InetSocketAddressWrapper").required("data", INET_SOCKET_ADDRESS).build())
            .variant("unix", object("UnixSocketAddressWrapper").required("data", UNIX_SOCKET_ADDRESS).build())
            .variant("fd", object("StringWrapper").required("data", FD_SOCKET_ADDRESS).build()).build();

    // ---- control.json, misc.json, introspect.json ----
    static final QmpType VERSION_INFO = object("VersionInfo")
            .required("qemu", object("VersionTriple").required("major", INT).required("minor", INT).required("micro", INT).build())
            .required("package", STR).build();
    static final QmpType COMMAND_INFO = object("CommandInfo").required("name", STR).build();
    static final QmpType SCHEMA_INFO;

    static {
        QmpType features = arrayOf(STR);
        QmpType metaType = enumOf("SchemaMetaType", "builtin", "enum", "array", "object", "alternate", "command", "event");
        SCHEMA_INFO = object("SchemaInfo").required("name", STR).required("meta-type", metaType).optional("features", features)
                .union("meta-type")
                .variant("builtin", object("SchemaInfoBuiltin").required("json-type",
                        enumOf("JSONType", "string", "number", "int", "boolean", "null", "object", "array", "value")).build())
                .variant("enum", object("SchemaInfoEnum")
                        .required("members", arrayOf(object("SchemaInfoEnumMember").required("name", STR).optional("features", features).build()))
                        .required("values", arrayOf(STR)).build())
                .variant("array", object("SchemaInfoArray").required("element-type", STR).build())
                .variant("object", object("SchemaInfoObject")
                        .required("members", arrayOf(object("SchemaInfoObjectMember").required("name", STR).required("type", STR)
                                .optional("default", ANY).optional("features", features).build()))
                        .optional("tag", STR)
                        .optional("variants", arrayOf(object("SchemaInfoObjectVariant").required("case", STR).required("type", STR).build()))
                        .build())
                .variant("alternate", object("SchemaInfoAlternate")
                        .required("members", arrayOf(object("SchemaInfoAlternateMember").required("type", STR).build())).build())
                .variant("command", object("SchemaInfoCommand").required("arg-type", STR).required("ret-type", STR)
                        .optional("allow-oob", BOOL).build())
                .variant("event", object("SchemaInfoEvent").required("arg-type", STR).build())
                .build();
    }

    // ---- qom.json ----
    static final QmpType OBJECT_ADD_ARGS = object("ObjectOptions")
            .required("qom-type", enumOf("ObjectType", "iothread", "tls-creds-x509")).required("id", STR).union("qom-type")
            .variant("iothread", object("IothreadProperties").optional("poll-max-ns", INT).optional("poll-grow", INT)
                    .optional("poll-shrink", INT).optional("aio-max-batch", INT).build())
            .variant("tls-creds-x509", object("TlsCredsX509Properties").optional("loaded", BOOL).optional("verify-peer", BOOL)
                    .optional("dir", STR).optional("endpoint", enumOf("QCryptoTLSCredsEndpoint", "client", "server"))
                    .optional("priority", STR).optional("sanity-check", BOOL).optional("passwordid", STR).build())
            .build();
    static final QmpType OBJECT_DEL_ARGS = object("q_obj_object-del-arg").required("id", STR).build();
    static final QmpType IOTHREAD_INFO = object("IOThreadInfo").required("id", STR).required("thread-id", INT)
            .required("poll-max-ns", INT).required("poll-grow", INT).required("poll-shrink", INT).required("aio-max-batch", INT)
            .required("nodes", arrayOf(STR)).required("requests", INT).required("x-cpu-ns", INT).build();

    // ---- block-core.json ----
    /** {@code BlockdevRef}: an inline node or a node name (recursive through BlockdevOptions). */
    public static final QmpType BLOCKDEV_REF = QmpType.alternateForward("BlockdevRef");
    /** {@code BlockdevRefOrNull}: as BlockdevRef, or null for "no backing image". */
    public static final QmpType BLOCKDEV_REF_OR_NULL = QmpType.alternateForward("BlockdevRefOrNull");
    public static final QmpType BLOCKDEV_DRIVER = enumOf("BlockdevDriver", "file", "nbd", "qcow2", "raw");
    public static final QmpType BLOCKDEV_OPTIONS = object("BlockdevOptions")
            .required("driver", BLOCKDEV_DRIVER).optional("node-name", STR)
            // QEMU's discard enum is ignore|unmap; off|on are the command line's aliases, accepted here too
            .optional("discard", enumOf("BlockdevDiscardOptions", "ignore", "unmap", "off", "on"))
            .optional("cache", object("BlockdevCacheOptions").optional("direct", BOOL).optional("no-flush", BOOL).build())
            .optional("read-only", BOOL).optional("auto-read-only", BOOL).optional("force-share", BOOL)
            .optional("detect-zeroes", enumOf("BlockdevDetectZeroesOptions", "off", "on", "unmap"))
            .union("driver")
            .variant("file", object("BlockdevOptionsFile").required("filename", STR)
                    .optional("locking", enumOf("OnOffAuto", "auto", "on", "off"))
                    .optional("aio", enumOf("BlockdevAioOptions", "threads", "native", "io_uring")).build())
            // the nbd-export module's driver (ProtocolDriverFactory); its keys as QEMU's BlockdevOptionsNbd
            .variant("nbd", object("BlockdevOptionsNbd").required("server", SOCKET_ADDRESS).optional("export", STR)
                    .optional("tls-creds", STR).optional("tls-hostname", STR)
                    .optional("reconnect-delay", INT).optional("open-timeout", INT).build())
            .variant("qcow2", object("BlockdevOptionsQcow2").required("file", BLOCKDEV_REF).optional("backing", BLOCKDEV_REF_OR_NULL)
                    .optional("lazy-refcounts", BOOL).optional("pass-discard-request", BOOL).optional("cache-size", INT)
                    .optional("l2-cache-size", INT).optional("refcount-cache-size", INT).optional("cache-clean-interval", INT)
                    // refused by the driver with a reason; declared so the reason is what the client reads
                    .optional("data-file", BLOCKDEV_REF).optional("encrypt", ANY).build())
            .variant("raw", object("BlockdevOptionsRaw").required("file", BLOCKDEV_REF).optional("offset", INT).optional("size", INT).build())
            .build();

    static {
        BLOCKDEV_REF.define(BLOCKDEV_OPTIONS, STR);
        BLOCKDEV_REF_OR_NULL.define(BLOCKDEV_OPTIONS, STR, NULL);
    }

    static final QmpType BLOCKDEV_DEL_ARGS = object("q_obj_blockdev-del-arg").required("node-name", STR).build();
    static final QmpType QUERY_NAMED_BLOCK_NODES_ARGS = object("q_obj_query-named-block-nodes-arg").optional("flat", BOOL).build();
    static final QmpType QUERY_BLOCKSTATS_ARGS = object("q_obj_query-blockstats-arg").optional("query-nodes", BOOL).build();
    static final QmpType SET_IOTHREAD_ARGS = object("q_obj_x-blockdev-set-iothread-arg").required("node-name", STR)
            .required("iothread", QmpType.alternate("StrOrNull", STR, NULL)).optional("force", BOOL).build();

    /** Our {@code x-latency}: service time of requests on the home thread, in ns. */
    static final QmpType X_LATENCY = object("x-LatencyInfo").required("count", INT).required("mean-ns", INT).required("p50-ns", INT)
            .required("p99-ns", INT).required("p99.9-ns", INT).required("max-ns", INT).build();
    static final QmpType IMAGE_INFO = imageInfo();

    private static QmpType imageInfo() {
        QmpType backing = QmpType.alternateForward("ImageInfoRef"); // the chain's next image
        QmpType info = object("ImageInfo").optional("backing-image", backing).optional("backing-filename-format", STR)
                .required("virtual-size", INT).required("filename", STR).optional("cluster-size", INT).required("format", STR)
                .optional("actual-size", INT).optional("full-backing-filename", STR).optional("backing-filename", STR)
                .optional("dirty-flag", BOOL).build();
        backing.define(info);
        return info;
    }

    static final QmpType BLOCK_DEVICE_INFO = object("BlockDeviceInfo").required("node-name", STR).required("drv", STR)
            .required("file", STR).required("ro", BOOL).required("encrypted", BOOL).required("detect_zeroes", STR)
            .optional("backing_file", STR).required("backing_file_depth", INT)
            .required("bps", INT).required("bps_rd", INT).required("bps_wr", INT).required("iops", INT).required("iops_rd", INT)
            .required("iops_wr", INT).required("write_threshold", INT).required("image", IMAGE_INFO)
            .required("cache", object("BlockdevCacheInfo").required("no-flush", BOOL).required("direct", BOOL).required("writeback", BOOL).build())
            .required("iothread", STR).build();
    static final QmpType BLOCK_STATS = object("BlockStats").required("device", STR).required("node-name", STR)
            .required("stats", object("BlockDeviceStats").required("rd_bytes", INT).required("wr_bytes", INT)
                    .required("rd_operations", INT).required("wr_operations", INT).required("flush_operations", INT)
                    .required("unmap_operations", INT).required("write_zeroes_operations", INT).required("failed_operations", INT)
                    .optional("x-latency", X_LATENCY).required("x-in-flight", INT).required("x-iothread", STR).build())
            .build();
    static final QmpType X_EXPORT_STATS = object("x-ExportStats").required("id", STR).required("type", STR).required("node-name", STR)
            .required("iothread", STR).required("clients", INT).required("connections", INT).optional("frontend", ANY)
            .required("rd_operations", INT).required("wr_operations", INT).required("rd_bytes", INT).required("wr_bytes", INT)
            .required("other_operations", INT).required("failed_operations", INT).required("in-flight", INT)
            .optional("x-latency", X_LATENCY).build();
    static final QmpType X_HANDOFFS = object("x-HandoffLog").required("total", INT).required("pause-p50-ns", INT)
            .required("pause-p99-ns", INT).required("pause-max-ns", INT)
            .required("recent", arrayOf(object("x-Handoff").required("node-name", STR).required("from", STR).required("to", STR)
                    .required("pause-ns", INT).required("time-ms", INT).build()))
            .build();

    // ---- block-export.json ----
    /**
     * {@code BlockExportOptions}: a union over the export types on the class path, each
     * driver's own members ({@link dev.vmm.core.export.ExportDriver#qmpOptions}); an undeclared
     * driver gets {@link #QmpType.UNDECLARED}.
     */
    static QmpType blockExportOptions(java.util.Map<String, dev.vmm.core.export.ExportDriver> drivers) {
        QmpType.ObjectBuilder b = object("BlockExportOptions")
                .required("type", enumOf("BlockExportType", drivers.keySet().toArray(new String[0]))).required("id", STR)
                .optional("fixed-iothread", BOOL).optional("iothread", STR).required("node-name", STR).optional("writable", BOOL)
                .union("type");
        for (var e : drivers.entrySet()) {
            QmpType v = e.getValue().qmpOptions();
            b.variant(e.getKey(), v != null ? v : QmpType.UNDECLARED);
        }
        return b.build();
    }

    static final QmpType BLOCK_EXPORT_DEL_ARGS = object("q_obj_block-export-del-arg").required("id", STR)
            .optional("mode", enumOf("BlockExportRemoveMode", "safe", "hard")).build();
    static final QmpType BLOCK_EXPORT_INFO = object("BlockExportInfo").required("id", STR).required("type", STR)
            .required("node-name", STR).required("shutting-down", BOOL).build();

    // ---- events ----
    static final QmpType BLOCK_EXPORT_DELETED = object("q_obj_BLOCK_EXPORT_DELETED-arg").required("id", STR).build();
    static final QmpType NODE_MOVED = object("q_obj_VMM_NODE_MOVED-arg").required("node-name", STR).required("from", STR)
            .required("to", STR).required("pause-ns", INT).build();
}
