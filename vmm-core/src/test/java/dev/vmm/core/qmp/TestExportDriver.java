package dev.vmm.core.qmp;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.export.ExportCommon;
import dev.vmm.core.export.ExportDriver;
import dev.vmm.core.options.Options;
import dev.vmm.core.stats.ExportStats;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * {@code type=test}: an export that serves nobody, for the monitor's tests in this module (the
 * real types live in other modules). Registered through the test resources only; excluded from
 * the test-jar so other modules never see it.
 */
public final class TestExportDriver implements ExportDriver {
    static volatile int users;
    static final List<String> closed = new CopyOnWriteArrayList<>();

    @Override
    public String type() { return "test"; }

    @Override
    public String helpKeys() { return ""; }

    @Override
    public QmpType qmpOptions() { return QmpType.object("x-BlockExportOptionsTest").build(); }

    @Override
    public BlockExport create(Daemon daemon, ExportCommon common, Options options) {
        return new BlockExport() {
            private final ExportStats stats = new ExportStats();
            @Override public String id() { return common.id(); }
            @Override public String type() { return "test"; }
            @Override public BlockNode node() { return common.node(); }
            @Override public boolean writable() { return common.writable(); }
            @Override public int users() { return users; }
            @Override public ExportStats stats() { return stats; }
            @Override public void start() { }
            @Override public void close() { closed.add(common.id()); }
        };
    }
}
