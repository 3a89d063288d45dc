package dev.vmm.nbd.server;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.export.BlockExport;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.core.qmp.CoreCommands;
import dev.vmm.core.qmp.CoreTypes;
import dev.vmm.core.qmp.QmpCommand;
import dev.vmm.core.qmp.QmpCommands;
import dev.vmm.core.qmp.QmpException;
import dev.vmm.core.qmp.QmpType;
import java.io.IOException;
import java.net.SocketAddress;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * QMP {@code nbd-server-start}, {@code nbd-server-stop}, and the older {@code nbd-server-add} and
 * {@code nbd-server-remove} (deprecated in QEMU, still in 7.2; libvirt's backup used them) on top
 * of {@code block-export-add}/{@code -del} (QEMU's block-export.json), registered
 * by the CLI wiring so the monitor does not depend on this module. Both run on the QMP control
 * thread: binding and stopping wait for the main loop.
 */
public final class NbdQmpCommands {
    private NbdQmpCommands() {}

    /** QEMU's {@code nbd-server-start} arguments, plus {@code handshake-max-seconds} (vmm, as --nbd-server). */
    static final QmpType NBD_SERVER_START_ARGS = QmpType.object("q_obj_nbd-server-start-arg")
            .required("addr", CoreTypes.SOCKET_ADDRESS_LEGACY).optional("tls-creds", QmpType.STR).optional("tls-authz", QmpType.STR)
            .optional("max-connections", QmpType.INT).optional("handshake-max-seconds", QmpType.INT).build();

    /** QEMU 7.2's {@code NbdServerAddOptions}: the export's name and description, the device, writable and one bitmap. */
    static final QmpType NBD_SERVER_ADD_ARGS = QmpType.object("NbdServerAddOptions")
            .optional("name", QmpType.STR).optional("description", QmpType.STR).required("device", QmpType.STR)
            .optional("writable", QmpType.BOOL).optional("bitmap", QmpType.STR).build();
    static final QmpType NBD_SERVER_REMOVE_ARGS = QmpType.object("q_obj_nbd-server-remove-arg")
            .required("name", QmpType.STR).optional("mode", QmpType.enumOf("NbdServerRemoveMode", "safe", "hard")).build();

    public static void register(QmpCommands t, Daemon daemon) {
        t.register("nbd-server-start", NBD_SERVER_START_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            Options o = c.options();
            SocketAddress address = address(o);
            int max = (int) o.number("max-connections", 0, 0, Integer.MAX_VALUE);
            int handshake = (int) o.number("handshake-max-seconds", NbdServerComponent.DEFAULT_HANDSHAKE_MAX_SECONDS, 0, 24 * 3600);
            String tlsCreds = NbdServerComponent.tlsCredsId(o);
            o.checkAllConsumed();
            if (daemon.component(NbdServerComponent.class) != null) throw QmpException.generic("NBD server already running");
            NbdServerComponent s = NbdServerComponent.configure(daemon, address, max, handshake, tlsCreds);
            try {
                s.start();
            } catch (IOException e) {
                daemon.removeComponent(NbdServerComponent.class);
                s.close(); // releases the TLS credentials it held
                throw new DaemonException(e.getMessage(), e);
            }
            return Map.of();
        }));
        t.register("nbd-server-add", NBD_SERVER_ADD_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            Options o = c.options();
            String device = o.required("device");
            String name = o.optional("name", device);
            String description = o.optional("description", null);
            boolean writable = o.bool("writable", false);
            String bitmap = o.optional("bitmap", null);
            o.checkAllConsumed();
            if (daemon.component(NbdServerComponent.class) == null) throw QmpException.generic("NBD server not running");
            BlockNode node;
            try {
                node = daemon.node(device);
            } catch (DaemonException e) {
                throw QmpException.generic("Cannot find device='" + device + "' nor node-name='" + device + "'");
            }
            if (daemon.export(name) != null) throw QmpException.generic("Block export id '" + name + "' is already in use");
            // As QEMU: the export's id is its name; a read-only node is exported read-only rather than refused.
            Map<String, Object> args = new LinkedHashMap<>();
            args.put("type", "nbd");
            args.put("id", name);
            args.put("node-name", node.name());
            args.put("name", name);
            if (description != null) args.put("description", description);
            args.put("writable", writable && !node.readOnly());
            if (bitmap != null) args.put("bitmaps", List.of(bitmap));
            daemon.exportAdd(Options.of("nbd-server-add", args));
            return Map.of();
        }));
        t.register("nbd-server-remove", NBD_SERVER_REMOVE_ARGS, QmpType.EMPTY, QmpCommand.blocking(c -> {
            Options o = c.options();
            String name = o.required("name");
            boolean hard = "hard".equals(o.choice("mode", "safe", "safe", "hard"));
            o.checkAllConsumed();
            BlockExport e = daemon.export(name);
            if (e == null) throw QmpException.generic("Export '" + name + "' is not found");
            if (!e.type().equals("nbd")) throw QmpException.generic("Export '" + name + "' is not an NBD export");
            daemon.exportDel(name, hard);
            c.server().emit(CoreCommands.BLOCK_EXPORT_DELETED, Map.of("id", name));
            return Map.of();
        }));
        t.register("nbd-server-stop", QmpType.EMPTY, QmpType.EMPTY, QmpCommand.blocking(c -> {
            c.options().checkAllConsumed();
            if (daemon.component(NbdServerComponent.class) == null) throw QmpException.generic("NBD server not running");
            // As QEMU: stopping the server removes its exports (clients are disconnected).
            for (BlockExport e : daemon.exports()) {
                if (e.type().equals("nbd")) {
                    daemon.exportDel(e.id(), true);
                    c.server().emit(CoreCommands.BLOCK_EXPORT_DELETED, Map.of("id", e.id()));
                }
            }
            NbdServerComponent s = daemon.removeComponent(NbdServerComponent.class);
            if (s != null) s.close();
            return Map.of();
        }));
    }

    /**
     * {@code addr}: QAPI {@code SocketAddressLegacy} as QEMU's nbd-server-start takes it
     * ({@code {"type": "inet", "data": {"host": .., "port": ".."}}}), or the flat
     * {@code SocketAddress} of {@code --nbd-server} ({@code {"type": "unix", "path": ..}}).
     */
    static SocketAddress address(Options o) throws OptionException {
        if (!o.hasGroup("addr")) {
            throw new OptionException(OptionException.Kind.MISSING, o.optionName(), "addr", "parameter 'addr' is missing");
        }
        Options addr = o.sub("addr");
        String type = addr.choice("type", null, "inet", "unix", "fd");
        if (type == null) {
            throw new OptionException(OptionException.Kind.MISSING, o.optionName(), "addr.type", "parameter 'addr.type' is missing (inet, unix or fd)");
        }
        return NbdServerComponent.address(addr.hasGroup("data") ? addr.sub("data") : addr, type);
    }
}
