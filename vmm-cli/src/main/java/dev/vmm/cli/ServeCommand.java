package dev.vmm.cli;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.export.ExportDriver;
import dev.vmm.core.net.SdNotify;
import dev.vmm.core.net.SocketActivation;
import dev.vmm.core.net.UnixSocketFiles;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.qmp.CoreCommands;
import dev.vmm.core.qmp.QmpCommands;
import dev.vmm.core.qmp.QmpServer;
import dev.vmm.nbd.server.NbdQmpCommands;
import dev.vmm.nbd.server.NbdServerComponent;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code vmm serve}: qemu-storage-daemon's command line. Builds the daemon in a fixed order
 * (objects, block devices, NBD server, exports), then listens and writes the pidfile, then
 * reports ready (sd_notify READY=1, the {@code --daemonize} parent, {@code /readyz}), then
 * waits for SIGTERM/SIGINT and shuts down in order (after sd_notify STOPPING=1). Listening
 * sockets may be handed over (docs/systemd.md: {@code addr.type=fd}, systemd socket activation). Any bad option ends the process with one
 * line on stderr and exit code 1 before anything listens.
 *
 * <p>Thread contract: {@link #call} runs on the process's main thread, which only builds the
 * daemon and waits; the daemon's work runs on its main loop and IOThreads.
 */
@Command(name = "serve", sortOptions = false, usageHelpAutoWidth = true,
        description = {
            "Serve disk images to NBD clients and to vhost-user-blk frontends (QEMU guests).",
            "Options use qemu-storage-daemon's syntax: key=value pairs separated by ',' (write ',,' for a comma",
            "in a value), or a JSON object. Every option may be repeated except --nbd-server and --pidfile.",
            "QMP monitors (--chardev + --monitor, or --qmp) take QEMU's commands; 'vmm qmp' is a client."},
        footerHeading = "%nKeys%n")
public final class ServeCommand implements Callable<Integer> {
    private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(ServeCommand.class);

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--blockdev", paramLabel = "driver=file|raw|qcow2|nbd,node-name=NAME,...",
            description = "Open a block node: a disk image (driver=file), an export of a remote NBD server (driver=nbd), or a format node over one (raw, qcow2) with its backing chain.")
    List<String> blockdevs = new ArrayList<>();

    @Option(names = "--object", paramLabel = "iothread,id=ID | tls-creds-x509,id=ID,dir=DIR,endpoint=server|client",
            description = "Create an IOThread (an event-loop thread that serves the disks placed on it) or TLS credentials for --nbd-server tls-creds=ID (endpoint=server) or --blockdev driver=nbd,tls-creds=ID (endpoint=client).")
    List<String> objects = new ArrayList<>();

    @Option(names = "--nbd-server", paramLabel = "addr.type=inet|unix,...",
            description = "Start the NBD server that --export type=nbd exports are served by.")
    List<String> nbdServers = new ArrayList<>();

    @Option(names = "--export", paramLabel = "type=nbd,id=ID,node-name=NAME[,...]",
            description = "Export a block node.")
    List<String> exports = new ArrayList<>();

    @Option(names = "--chardev", paramLabel = "socket,id=ID,path=PATH,server=on,wait=off",
            description = "A unix socket for a QMP monitor (see --monitor).")
    List<String> chardevs = new ArrayList<>();

    @Option(names = "--monitor", paramLabel = "chardev=ID[,mode=control]",
            description = "Serve the QMP monitor on a --chardev.")
    List<String> monitors = new ArrayList<>();

    @Option(names = "--qmp", paramLabel = "PATH",
            description = "Serve the QMP monitor on this unix socket (short for --chardev + --monitor).")
    List<String> qmps = new ArrayList<>();

    @Option(names = "--metrics", paramLabel = "addr.type=inet,addr.host=HOST,addr.port=PORT",
            description = "Serve the daemon's counters over HTTP at /metrics in the Prometheus text format.")
    List<String> metrics = new ArrayList<>();

    @Option(names = "--pidfile", paramLabel = "PATH",
            description = "Write the process id here once every listener accepts connections; removed at exit.")
    Path pidfile;

    @Option(names = "--daemonize",
            description = "Return once every listener accepts connections and keep serving in the background (as qemu-storage-daemon);"
                    + " start-up errors are printed and the command exits 1. Combine with --pidfile.")
    boolean daemonize;

    @Option(names = "--socket-mode", paramLabel = "MODE", defaultValue = "0600",
            description = "Permissions of the unix socket files the daemon creates (octal, default 0600: the owner only; 0660 with"
                    + " --socket-group lets a group in, e.g. libvirt's QEMU user). Handed-over sockets keep theirs.")
    String socketMode;

    @Option(names = "--socket-group", paramLabel = "GROUP",
            description = "Group of the unix socket files the daemon creates (default: the process's group).")
    String socketGroup;

    @Option(names = "--log-level", paramLabel = "LEVEL", defaultValue = "info",
            description = "error, warn, info (default), debug or trace. Logs go to stderr.")
    String logLevel;

    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
    boolean help;

    /** Every key of every option, for --help. */
    static String keysHelp() {
        StringBuilder sb = new StringBuilder();
        sb.append("  --blockdev (all drivers)\n")
          .append("    driver=file|raw|qcow2|nbd  a protocol node (file, nbd) or a format node over a 'file' child (raw, qcow2)\n")
          .append("    node-name=NAME           name exports and other nodes refer to (unique; implicit nodes are #blockN)\n")
          .append("    read-only=on|off         open read-only (default off; inline children inherit it)\n")
          .append("    discard=unmap|ignore     TRIM/discard reaches the image (default unmap; QEMU's default is ignore)\n")
          .append("    detect-zeroes=off|on|unmap  a write of an all-zero buffer becomes a write-zeroes (on), which may\n")
          .append("                             leave a hole (unmap: needs discard=unmap, as QEMU) (default off)\n")
          .append("    force-share=on|off       share every permission with other users of the image: read-only\n")
          .append("                             nodes only, as QEMU (qemu-img -U); inline children inherit it\n")
          .append("    auto-read-only=on|off    a file that cannot be opened for writing (EACCES, EROFS, EPERM) is\n")
          .append("                             opened read-only, and so are the nodes over it (default off; inherited)\n")
          .append("  --blockdev driver=file\n")
          .append("    filename=PATH            the image file\n")
          .append("    cache.direct=on|off      O_DIRECT: bypass the host page cache (default off)\n")
          .append("    cache.no-flush=on|off    flushes complete at once without syncing, FUA writes are plain\n")
          .append("                             writes: fast, and nothing survives a host crash (default off)\n")
          .append("    aio=io_uring|native|threads  asynchronous I/O engine (default io_uring; threads where the\n")
          .append("                             kernel refuses io_uring; native needs cache.direct=on, served by io_uring)\n")
          .append("    locking=auto|on|off      QEMU's image locks (OFD locks on bytes 100-103/200-203, docs/locking.md):\n")
          .append("                             QEMU, qemu-img and other vmm daemons see this daemon's users and it\n")
          .append("                             sees theirs (default auto: on where the kernel has OFD locks)\n")
          .append("  --blockdev driver=nbd (an NBD client; see docs/nbd-client.md)\n")
          .append("    server.type=inet|unix    how to reach the server; JSON: \"server\": {\"type\": \"inet\", ...}\n")
          .append("    server.host=HOST, server.port=PORT   inet: the server (port default 10809)\n")
          .append("    server.path=PATH         unix: the server's socket\n")
          .append("    export=NAME              the export to open (default: the server's default export, \"\")\n")
          .append("    tls-creds=ID             STARTTLS with this --object tls-creds-x509,endpoint=client (ca-cert.pem,\n")
          .append("                             optionally client-cert.pem and client-key.pem)\n")
          .append("    tls-hostname=NAME        the name the server's certificate must carry (default: server.host)\n")
          .append("    reconnect-delay=S        after a lost connection, requests wait up to S seconds for a reconnect\n")
          .append("                             and are re-sent; later ones fail with EIO until it is back (default 0)\n")
          .append("    open-timeout=S           keep trying to connect for S seconds (default 0: one attempt)\n")
          .append("  --blockdev driver=raw\n")
          .append("    file=NODE | file.driver=file,file.filename=PATH,...   the child: an existing node, or inline\n")
          .append("                             (created with this node, removed with it)\n")
          .append("    offset=SIZE, size=SIZE   serve only this window of the child (default: all of it)\n")
          .append("  --blockdev driver=qcow2\n")
          .append("    file=NODE | file.driver=file,file.filename=PATH,...   the image's protocol node, as for raw\n")
          .append("    backing=NODE | backing=  the backing node, or none (backing= is QMP's null); absent: the\n")
          .append("                             file named in the image header, opened read-only as implicit nodes\n")
          .append("                             (relative to the image's folder; format from the header or probed)\n")
          .append("    l2-cache-size, refcount-cache-size, cache-size=SIZE   metadata cache sizes (QEMU's rules)\n")
          .append("    lazy-refcounts=on|off    override the image's lazy refcounts bit\n")
          .append("    pass-discard-request=on|off  freed clusters are discarded in the file too (default on)\n")
          .append("    cache-clean-interval=S   accepted, no effect\n")
          .append("    data-file, encrypt.*     refused: external data files and encryption are not supported\n")
          .append("  --object iothread\n")
          .append("    id=ID                    the IOThread's id (unique)\n")
          .append("    poll-max-ns, poll-grow, poll-shrink, aio-max-batch   accepted for QEMU compatibility, no effect\n")
          .append("  --object tls-creds-x509\n")
          .append("    id=ID                    the credentials' id (unique among objects)\n")
          .append("    dir=DIR                  holds ca-cert.pem, server-cert.pem, server-key.pem (PEM; PKCS#8, PKCS#1 RSA or SEC1 EC key);\n")
          .append("                             for endpoint=client: ca-cert.pem, optionally client-cert.pem, client-key.pem\n")
          .append("    endpoint=server|client   server: for --nbd-server; client (QEMU's default): for driver=nbd nodes\n")
          .append("    verify-peer=on|off       the peer must present a certificate from a CA in ca-cert.pem (default on)\n")
          .append("    sanity-check=on|off      check validity dates and that server-cert.pem is issued by ca-cert.pem (default on)\n")
          .append("  --nbd-server\n").append(keys(NbdServerComponent.HELP_KEYS, 4))
          .append("  --export (all types)\n")
          .append("    type=TYPE                one of ").append(Daemon.exportDrivers().keySet()).append('\n')
          .append("    id=ID                    the export's id (unique)\n")
          .append("    node-name=NAME           the block node to export\n")
          .append("    writable=on|off          allow writes (default off: read-only)\n")
          .append("    iothread=ID              serve the node from this IOThread (default: the main loop)\n")
          .append("    fixed-iothread=on|off    accepted for QEMU compatibility\n")
          .append(keys(MonitorOptions.HELP, 2))
          .append("  --metrics\n").append(keys(dev.vmm.core.metrics.MetricsServer.HELP_KEYS, 4));
        for (Map.Entry<String, ExportDriver> e : Daemon.exportDrivers().entrySet()) {
            sb.append("  --export type=").append(e.getKey()).append('\n').append(keys(e.getValue().helpKeys(), 4));
        }
        sb.append("\nBlock graphs:\n")
          .append("  A format node and its children (file, backing, their children...) form a graph that lives on\n")
          .append("  one IOThread. A new node starts on its file child's IOThread (a backing graph elsewhere is moved\n")
          .append("  there); --export ...,iothread= and x-blockdev-set-iothread on any node move the whole connected\n")
          .append("  graph with every export of every node in it (a backing file shared by two disks moves both).\n")
          .append("  Children created inline or from an image header belong to their parent: blockdev-del of the\n")
          .append("  parent removes them; a node that another node or an export uses cannot be removed.\n")
          .append("  Example: --blockdev driver=qcow2,node-name=disk0,file.driver=file,file.filename=disk.qcow2\n");
        sb.append("\nExample:\n")
          .append("  vmm serve --blockdev driver=file,node-name=disk0,filename=disk.img \\\n")
          .append("    --object iothread,id=iot0 \\\n")
          .append("    --nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port=10809 \\\n")
          .append("    --export type=nbd,id=exp0,node-name=disk0,writable=on,iothread=iot0 --pidfile vmm.pid\n")
          .append("  nbdinfo nbd://127.0.0.1/disk0\n");
        return sb.toString();
    }

    /** Java text blocks lose their indentation: put it back so the key lists line up. */
    private static String keys(String block, int indent) {
        return block.stripIndent().indent(indent);
    }

    @Override
    public Integer call() {
        PrintWriter err = spec.commandLine().getErr();
        if (!Logging.checkLevel(logLevel, "vmm", err)) return 1; // applied by Main before any logger existed
        if (nbdServers.size() > 1 || metrics.size() > 1) {
            err.println("vmm: " + (nbdServers.size() > 1 ? "--nbd-server" : "--metrics") + ": may be given only once");
            return 1;
        }
        if (daemonize && !Daemonize.isChild()) return Daemonize.parent(err);
        try {
            UnixSocketFiles.setAccess(socketAccess(socketMode, socketGroup));
        } catch (OptionException e) {
            err.println("vmm: " + e.getMessage());
            return 1;
        }
        List<MonitorOptions.Endpoint> monitorPaths;
        try {
            monitorPaths = MonitorOptions.resolve(chardevs, monitors, qmps);
        } catch (OptionException e) {
            err.println("vmm: " + e.getMessage());
            return 1;
        }
        CountDownLatch stop = new CountDownLatch(1);
        Daemon daemon = Daemon.start();
        try {
            for (String o : objects) daemon.objectAdd(KeyValueParser.parse("--object", o, "qom-type"));
            for (String b : blockdevs) daemon.blockdevAdd(KeyValueParser.parse("--blockdev", b, null));
            NbdServerComponent nbd = null;
            for (String s : nbdServers) nbd = NbdServerComponent.configure(daemon, KeyValueParser.parse("--nbd-server", s, null));
            if (nbd == null) nbd = activatedNbdServer(daemon);
            dev.vmm.core.metrics.MetricsServer metricsServer = null; // parsed before any export listens
            for (String m : metrics) metricsServer = dev.vmm.core.metrics.MetricsServer.configure(daemon, KeyValueParser.parse("--metrics", m, null));
            for (String e : exports) daemon.exportAdd(KeyValueParser.parse("--export", e, "type"));
            if (nbd != null) {
                try {
                    nbd.start();
                } catch (IOException e) {
                    throw new DaemonException("--nbd-server: " + e.getMessage(), e);
                }
            }
            if (metricsServer != null) {
                try {
                    metricsServer.start();
                } catch (IOException e) {
                    throw new DaemonException("--metrics: " + e.getMessage(), e);
                }
            }
            if (!monitorPaths.isEmpty()) startMonitorEndpoints(daemon, monitorPaths, stop::countDown);
            if (pidfile != null) writePidfile(pidfile);
            for (SocketActivation.Fd f : SocketActivation.current().unclaimed()) {
                LOG.warn("socket activation: socket {} (fd {}) is used by no listener (name it in addr.str=, see docs/systemd.md)",
                        f.name(), f.fd());
            }
        } catch (OptionException | DaemonException e) {
            err.println("vmm: " + (e instanceof DaemonException d ? d.withHint() : e.getMessage()));
            err.flush();
            daemon.shutdown(false);
            return 1;
        } catch (IOException e) {
            err.println("vmm: --pidfile: cannot write " + pidfile + ": " + e.getMessage());
            err.flush();
            daemon.shutdown(false);
            return 1;
        }
        Signals.onTermination(stop::countDown);
        daemon.markStarted();
        SdNotify.notify("READY=1\nMAINPID=" + ProcessHandle.current().pid());
        Daemonize.childReady();
        try {
            stop.await();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        SdNotify.notify("STOPPING=1");
        boolean flushed = daemon.shutdown();
        if (pidfile != null) {
            try {
                Files.deleteIfExists(pidfile);
            } catch (IOException ignored) {
                // the process is ending; a stale pidfile names a dead pid
            }
        }
        return flushed ? 0 : 1;
    }

    /**
     * The NBD server of a socket-activated daemon given NBD exports but no {@code --nbd-server}
     * (as qemu-nbd): it listens on the first activated socket no option named; null otherwise.
     */
    private NbdServerComponent activatedNbdServer(Daemon daemon) throws OptionException, DaemonException {
        if (SocketActivation.current().unclaimed().isEmpty()) return null;
        boolean nbdExport = false;
        for (String e : exports) {
            if ("nbd".equals(KeyValueParser.parse("--export", e, "type").optional("type", null))) nbdExport = true;
        }
        if (!nbdExport) return null;
        dev.vmm.core.net.InheritedSocket s;
        try {
            s = SocketActivation.current().claimNext();
        } catch (IOException e) {
            throw new DaemonException("socket activation: " + e.getMessage(), e);
        }
        return NbdServerComponent.configure(daemon,
                new dev.vmm.nbd.server.NbdServer.Config(s, 0, NbdServerComponent.DEFAULT_HANDSHAKE_MAX_SECONDS));
    }

    /** {@code --socket-mode} (octal, owner read-write at least) and {@code --socket-group} (an existing group). */
    static UnixSocketFiles.Access socketAccess(String mode, String group) throws OptionException {
        int m;
        try {
            m = Integer.parseInt(mode, 8);
        } catch (NumberFormatException e) {
            throw new OptionException(OptionException.Kind.INVALID, "--socket-mode", null, "'" + mode + "' is not an octal mode such as 0660");
        }
        java.nio.file.attribute.GroupPrincipal g = null;
        if (group != null) {
            try {
                g = java.nio.file.FileSystems.getDefault().getUserPrincipalLookupService().lookupPrincipalByGroupName(group);
            } catch (IOException e) { // UserPrincipalNotFoundException included
                throw new OptionException(OptionException.Kind.INVALID, "--socket-group", null, "no group named '" + group + "'");
            }
        }
        try {
            return new UnixSocketFiles.Access(m, g);
        } catch (IllegalArgumentException e) {
            throw new OptionException(OptionException.Kind.INVALID, "--socket-mode", null, e.getMessage());
        }
    }

    /** Every QMP command of the daemon (docs/qmp.md documents each; QmpReferenceTest checks it). */
    public static QmpCommands qmpCommands(Daemon daemon, Runnable quit) {
        QmpCommands commands = new QmpCommands();
        CoreCommands.register(commands, daemon, daemon::moveNode, quit);
        NbdQmpCommands.register(commands, daemon);
        dev.vmm.core.qmp.JobCommands.register(commands, daemon);
        dev.vmm.core.qmp.BitmapCommands.register(commands, daemon);
        // last: its schema lists the transaction action kinds every module registered above
        dev.vmm.core.qmp.TransactionCommand.register(commands, daemon);
        return commands;
    }

    /** The QMP monitors: every command registered, then each socket bound (0600). Also used by {@code vmm demo}. */
    public static void startMonitors(Daemon daemon, List<Path> paths, Runnable quit) throws DaemonException {
        List<MonitorOptions.Endpoint> endpoints = new ArrayList<>();
        for (Path p : paths) endpoints.add(new MonitorOptions.Endpoint(p, null));
        startMonitorEndpoints(daemon, endpoints, quit);
    }

    static void startMonitorEndpoints(Daemon daemon, List<MonitorOptions.Endpoint> endpoints, Runnable quit) throws DaemonException {
        QmpCommands commands = qmpCommands(daemon, quit);
        QmpServer qmp = new QmpServer(daemon.mainLoop(), commands,
                new QmpServer.Version(QmpServer.Version.DEFAULT.major(), QmpServer.Version.DEFAULT.minor(),
                        QmpServer.Version.DEFAULT.micro(), new Version().getVersion()[0].replaceFirst(" \\(.*", "")));
        daemon.putComponent(QmpServer.class, qmp);
        for (MonitorOptions.Endpoint p : endpoints) {
            try {
                if (p.socket() != null) qmp.listen(p.socket());
                else qmp.listen(p.path());
            } catch (IOException e) {
                throw new DaemonException("--monitor: " + e.getMessage(), e);
            }
        }
    }

    /** Written to a temporary file and renamed, so a reader never sees a partial pid. */
    private static void writePidfile(Path p) throws IOException {
        Path abs = p.toAbsolutePath();
        Path tmp = abs.resolveSibling(abs.getFileName() + ".tmp");
        Files.writeString(tmp, ProcessHandle.current().pid() + "\n", StandardCharsets.US_ASCII);
        Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
    }
}
