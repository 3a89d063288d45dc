package dev.vmm.core.export;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;

/**
 * Creates exports of one type. Implementations are found with {@link java.util.ServiceLoader}
 * ({@code META-INF/services/dev.vmm.core.export.ExportDriver}), so the export modules never
 * depend on each other or on the CLI.
 *
 * <p>Thread contract: called on the control plane only.
 */
public interface ExportDriver {
    /** The {@code type=} value this driver handles. */
    String type();

    /**
     * Creates (but does not start) an export from its options. The common keys {@code type},
     * {@code id}, {@code node-name}, {@code writable} and {@code iothread} are already consumed
     * and passed in {@code common}; the driver consumes its own keys from {@code options}.
     */
    BlockExport create(Daemon daemon, ExportCommon common, Options options) throws OptionException;

    /** One line per key this driver understands, for {@code --help}. */
    String helpKeys();

    /**
     * The members this type adds to QMP {@code block-export-add} (an object type, QEMU's
     * {@code BlockExportOptions<Type>}): published by {@code query-qmp-schema} and checked
     * before {@link #create}. Null when undeclared: the type is then accepted with any members
     * and a schema test fails.
     */
    default dev.vmm.core.qmp.QmpType qmpOptions() { return null; }
}
