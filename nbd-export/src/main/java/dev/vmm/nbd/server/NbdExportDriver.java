package dev.vmm.nbd.server;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.export.ExportCommon;
import dev.vmm.core.export.ExportDriver;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import java.util.ArrayList;
import java.util.List;

/**
 * {@code --export type=nbd}: an export on the daemon's NBD server ({@code --nbd-server} must
 * come first, as in qemu-storage-daemon). Control plane only.
 */
public final class NbdExportDriver implements ExportDriver {
    @Override
    public String type() { return "nbd"; }

    /** QEMU's {@code BlockExportOptionsNbd} members that we read. */
    static final dev.vmm.core.qmp.QmpType QMP_OPTIONS = dev.vmm.core.qmp.QmpType.object("BlockExportOptionsNbd")
            .optional("name", dev.vmm.core.qmp.QmpType.STR).optional("description", dev.vmm.core.qmp.QmpType.STR)
            .optional("bitmaps", dev.vmm.core.qmp.QmpType.arrayOf(dev.vmm.core.qmp.QmpType.STR))
            .optional("allocation-depth", dev.vmm.core.qmp.QmpType.BOOL).build();

    @Override
    public dev.vmm.core.qmp.QmpType qmpOptions() { return QMP_OPTIONS; }

    @Override
    public String helpKeys() {
        return """
                  name=NAME            export name clients ask for (default: the node name)
                  description=TEXT     free text shown by 'nbdinfo --list'
                  allocation-depth=on  offer the qemu:allocation-depth metadata context (default off, as QEMU)
                  bitmaps.0=NAME,...   publish these dirty bitmaps as qemu:dirty-bitmap:NAME contexts; each is looked up
                                       on the node, then down its filters and backing chain, and is busy while exported""";
    }

    /**
     * A list option: {@code key.0}, {@code key.1}, ... (QEMU's keyval form; QMP's JSON array
     * arrives flattened so). A plain {@code key=value} is QEMU's "Invalid parameter type".
     */
    static List<String> list(Options options, String key) throws OptionException {
        if (options.has(key)) {
            options.required(key);
            throw new OptionException(OptionException.Kind.INVALID, options.optionName(), key,
                    "Invalid parameter type for '" + key + "', expected: array");
        }
        List<String> out = new ArrayList<>();
        Options sub = options.sub(key);
        for (int i = 0; sub.has(Integer.toString(i)); i++) out.add(sub.required(Integer.toString(i)));
        return out; // any other key in the group stays unconsumed: checkAllConsumed names it
    }

    @Override
    public BlockExport create(Daemon daemon, ExportCommon common, Options options) throws OptionException {
        NbdServer server = daemon.component(NbdServerComponent.class) == null ? null : daemon.component(NbdServerComponent.class).server();
        if (server == null) {
            throw new OptionException(OptionException.Kind.INVALID, options.optionName(), "type",
                    "an NBD export needs an NBD server: give --nbd-server first");
        }
        BlockNode node = common.node();
        String name = options.optional("name", node.name());
        String description = options.optional("description", null);
        boolean allocationDepth = options.bool("allocation-depth", false);
        List<String> bitmapNames = list(options, "bitmaps");
        if (name.length() > HandshakeHandler.MAX_STRING) {
            throw new OptionException(OptionException.Kind.INVALID, options.optionName(), "name", "'name' must be at most 4096 bytes");
        }
        if (server.lookup(name) != null && server.lookup(name).name().equals(name)) {
            throw new OptionException(OptionException.Kind.INVALID, options.optionName(), "name",
                    "an NBD export named '" + name + "' exists already");
        }
        List<DirtyBitmap> bitmaps;
        try {
            bitmaps = ExportBitmaps.resolve(node, bitmapNames, common.writable());
        } catch (ExportBitmaps.Refused e) {
            throw new OptionException(OptionException.Kind.INVALID, options.optionName(), "bitmaps", e.getMessage());
        }
        NbdExport export = new NbdExport(common.id(), name, description, node, common.writable(), allocationDepth, bitmaps);
        return new BlockExport() {
            private boolean open;

            @Override public String id() { return export.id(); }
            @Override public String type() { return "nbd"; }
            @Override public BlockNode node() { return node; }
            @Override public boolean writable() { return export.writable(); }
            @Override public int users() { return export.clients().size(); }
            @Override public dev.vmm.core.stats.ExportStats stats() { return export.stats(); }

            @Override
            public void start() throws OptionException {
                try {
                    ExportBitmaps.claim(export.bitmaps());
                } catch (ExportBitmaps.Refused e) { // another export took one since create
                    throw new OptionException(OptionException.Kind.INVALID, options.optionName(), "bitmaps", e.getMessage());
                }
                try {
                    server.addExport(export);
                } catch (RuntimeException e) { // the name was taken since create (another monitor): give the bitmaps back
                    ExportBitmaps.release(export.bitmaps());
                    throw e;
                }
                open = true;
            }

            @Override
            public void close() {
                if (open) {
                    open = false;
                    server.removeExport(export.name());
                    ExportBitmaps.release(export.bitmaps()); // as QEMU at export removal
                }
            }
        };
    }
}
