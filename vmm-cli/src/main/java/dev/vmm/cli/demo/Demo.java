package dev.vmm.cli.demo;

import dev.vmm.cli.ServeCommand;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.net.UnixSocketFiles;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.nbd.server.NbdServer;
import dev.vmm.nbd.server.NbdServerComponent;
import java.io.IOException;
import java.io.RandomAccessFile;
import dev.vmm.core.block.qcow2.Qcow2Create;
import dev.vmm.core.block.qcow2.Qcow2Driver;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The server half of {@code vmm demo}: the same daemon {@code vmm serve} builds, configured
 * in-process. A thin qcow2 image, IOThreads {@value #IOT0} and {@value #IOT1}, block node
 * {@value #NODE} homed on {@value #IOT0}, its NBD export on a unix socket in the work folder and
 * on TCP localhost, a vhost-user-blk export and a QMP monitor. Each part is one printed step.
 *
 * <p>Thread contract: built and closed by the demo's main thread; the daemon's own threads do
 * the serving.
 */
public final class Demo implements AutoCloseable {
    public static final String NODE = "disk0";
    public static final String IOT0 = "iot0";
    public static final String IOT1 = "iot1";
    public static final String IMAGE = "demo.qcow2";
    /** The number of steps {@link #start} prints. */
    public static final int STEPS = 6;

    /** What the user asked for. {@code port} is the preferred TCP port (another is picked when it is taken). */
    public record Config(Path dir, long size, int port) { }

    private final Config config;
    private final Daemon daemon;
    private final Path image;
    private final Path nbdSocket;
    private final Path vhostSocket;
    private final Path qmpSocket;
    private int tcpPort = -1;
    private boolean flushed;

    private Demo(Config config, Daemon daemon) {
        this.config = config;
        this.daemon = daemon;
        Path dir = config.dir().toAbsolutePath().normalize();
        this.image = dir.resolve(IMAGE);
        this.nbdSocket = dir.resolve("nbd.sock");
        this.vhostSocket = dir.resolve("vhost-user-blk.sock");
        this.qmpSocket = dir.resolve("qmp.sock");
    }

    /**
     * Runs the six set-up steps. A failure is printed as its step's outcome and thrown as a
     * {@link DemoException} after everything started so far is stopped again.
     *
     * @param onQuit what QMP {@code quit} does (the Ctrl-C path)
     */
    public static Demo start(Config config, Steps steps, Runnable onQuit) throws DemoException {
        Demo d = new Demo(config, Daemon.start());
        try {
            d.setUp(steps, onQuit);
            return d;
        } catch (DemoException e) {
            d.daemon.shutdown(false);
            throw e;
        }
    }

    private void setUp(Steps steps, Runnable onQuit) throws DemoException {
        checkPaths();
        Steps.Step s = steps.begin("image " + display(image) + " (" + Sizes.human(config.size()) + " qcow2, thin)");
        s.ok(createImage(s));

        s = steps.begin("IOThreads " + IOT0 + " and " + IOT1);
        run(s, () -> {
            daemon.objectAdd(Options.of("--object", Map.of("qom-type", "iothread", "id", IOT0)));
            daemon.objectAdd(Options.of("--object", Map.of("qom-type", "iothread", "id", IOT1)));
        });
        s.ok();

        s = steps.begin("block node " + NODE + " (qcow2 over file " + IMAGE + ")");
        run(s, () -> daemon.blockdevAdd(Options.of("--blockdev", Map.of("driver", "qcow2", "node-name", NODE,
                "file", Map.of("driver", "file", "filename", image.toString())))));
        s.ok();

        s = steps.begin("NBD export " + NODE + " on " + IOT0);
        Steps.Step nbdStep = s;
        run(s, () -> {
            NbdServerComponent unix = NbdServerComponent.configure(daemon,
                    Options.of("--nbd-server", Map.of("addr", Map.of("type", "unix", "path", nbdSocket.toString()))));
            daemon.exportAdd(Options.of("--export",
                    Map.of("type", "nbd", "id", "nbd0", "node-name", NODE, "writable", "on", "iothread", IOT0)));
            try {
                unix.start();
            } catch (IOException e) {
                throw new DaemonException(e.getMessage(), e);
            }
            startTcp(nbdStep, unix.server());
        });
        s.ok("unix " + display(nbdSocket) + (tcpPort > 0 ? ", tcp 127.0.0.1:" + tcpPort : ""));

        s = steps.begin("vhost-user-blk export on " + IOT0);
        run(s, () -> daemon.exportAdd(Options.of("--export", Map.of("type", "vhost-user-blk", "id", "vub0", "node-name", NODE,
                "writable", "on", "iothread", IOT0, "addr", Map.of("type", "unix", "path", vhostSocket.toString())))));
        s.ok(display(vhostSocket));

        s = steps.begin("QMP monitor");
        run(s, () -> ServeCommand.startMonitors(daemon, List.of(qmpSocket), onQuit));
        s.ok(display(qmpSocket));
    }

    /**
     * A second listener of the same NBD server, on TCP: its clients use the very export the unix
     * socket serves, so they count in nbd0's counters ({@code vmm top}, /metrics,
     * query-blockstats) and block-export-del disconnects them too. (It used to be a server of its
     * own with an unregistered export of the same node, invisible to every counter.) A taken port
     * is not an error for a demo: another is picked and the step says so.
     */
    private void startTcp(Steps.Step step, NbdServer server) throws DaemonException {
        try {
            server.listen(new InetSocketAddress("127.0.0.1", config.port()));
        } catch (IOException e) {
            if (!String.valueOf(e.getMessage()).contains("in use")) throw new DaemonException(e.getMessage(), e);
            try {
                server.listen(new InetSocketAddress("127.0.0.1", 0));
            } catch (IOException again) {
                step.accept("TCP: " + again.getMessage() + "; serving on the unix socket only");
                return;
            }
            tcpPort = tcpPortOf(server);
            step.accept("port " + config.port() + " is in use by another program: using port " + tcpPort + " instead");
        }
        if (tcpPort < 0) tcpPort = tcpPortOf(server);
    }

    private static int tcpPortOf(NbdServer server) {
        for (java.net.SocketAddress a : server.boundAddresses()) {
            if (a instanceof InetSocketAddress i) return i.getPort();
        }
        return -1;
    }

    private void checkPaths() throws DemoException {
        for (Path p : List.of(nbdSocket, vhostSocket, qmpSocket)) {
            if (p.toString().getBytes(StandardCharsets.UTF_8).length > UnixSocketFiles.MAX_PATH_BYTES) {
                throw new DemoException("--dir: " + p + " is longer than the 107 bytes a unix socket path may have;"
                        + " give a shorter --dir (e.g. /tmp/vmm-demo)");
            }
        }
    }

    /** Creates the qcow2 image (or reuses one of the same virtual size); returns the step's detail. */
    private String createImage(Steps.Step s) throws DemoException {
        try {
            Files.createDirectories(image.getParent());
            if (Files.exists(image)) {
                long existing = virtualSize(image);
                if (existing < 0) {
                    s.fail("not a qcow2 image");
                    throw new DemoException(image + " exists and is not a qcow2 image: remove it, or give another --dir");
                }
                if (existing != config.size()) {
                    s.fail("exists with another size");
                    throw new DemoException(image + " exists with virtual size " + existing + " bytes, not " + config.size()
                            + ": remove it or give --size " + existing);
                }
                return "exists, reused";
            }
            // An empty qcow2 costs four clusters; space is allocated as the guest and clients write.
            Qcow2Create.create(image, config.size());
            return "created";
        } catch (IOException e) {
            s.fail(e.getMessage());
            throw new DemoException("cannot create " + image + ": " + e.getMessage(), e);
        }
    }

    /** The virtual size in a qcow2 header, or -1 when the file is not qcow2 (a demo.qcow2 of another origin). */
    private static long virtualSize(Path qcow2) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(qcow2.toFile(), "r")) {
            if (f.length() < 32 || f.readInt() != Qcow2Driver.QCOW_MAGIC) return -1;
            f.seek(24);
            return f.readLong();
        }
    }

    @FunctionalInterface
    private interface Action {
        void run() throws OptionException, DaemonException;
    }

    private static void run(Steps.Step s, Action a) throws DemoException {
        try {
            a.run();
        } catch (OptionException | DaemonException e) {
            s.fail(e.getMessage());
            throw new DemoException(e.getMessage(), e);
        }
    }

    /** A path as the user should type it: relative to the current folder when inside it. */
    static String display(Path p) {
        Path cwd = Path.of("").toAbsolutePath();
        return p.startsWith(cwd) && !p.equals(cwd) ? cwd.relativize(p).toString() : p.toString();
    }

    public Daemon daemon() { return daemon; }
    public Path image() { return image; }
    public Path nbdSocket() { return nbdSocket; }
    public Path vhostSocket() { return vhostSocket; }
    public Path qmpSocket() { return qmpSocket; }
    /** The TCP port of the NBD server, or -1 when only the unix socket listens. */
    public int tcpPort() { return tcpPort; }
    public List<Path> sockets() { return List.of(nbdSocket, vhostSocket, qmpSocket); }

    /** The NBD URIs of the export, unix first. */
    public List<String> nbdUris() {
        List<String> out = new ArrayList<>();
        out.add("nbd+unix:///" + NODE + "?socket=" + nbdSocket);
        if (tcpPort > 0) out.add("nbd://127.0.0.1:" + tcpPort + "/" + NODE);
        return out;
    }

    /** The copy-pasteable commands to try next, one per line, comments aligned (paths relative when short). */
    public List<String> nextCommands() {
        String uri = tcpPort > 0 ? "nbd://127.0.0.1:" + tcpPort + "/" + NODE : "'" + nbdUris().get(0) + "'";
        String qmp = "./vmm qmp --socket " + display(qmpSocket);
        String[][] rows = {
            {"nbdinfo " + uri, "size and capabilities (apt-get install libnbd-bin)"},
            {"nbdinfo --map " + uri, "which parts hold data"},
            {"./vmm guest --socket " + display(vhostSocket), "a guest with a shell on the disk (Ctrl-A X quits)"},
            {"./vmm top --qmp " + display(qmpSocket), "live view: IOThreads, exports, moves"},
            {qmp + " query-iothreads", "which IOThread serves the disk"},
            {qmp + " x-blockdev-set-iothread node-name=" + NODE + " iothread=" + IOT1, null},
        };
        int width = 0;
        for (String[] r : rows) if (r[1] != null) width = Math.max(width, r[0].length());
        List<String> out = new ArrayList<>();
        for (String[] r : rows) out.add(r[1] == null ? r[0] : r[0] + " ".repeat(width - r[0].length()) + "   # " + r[1]);
        return out;
    }

    /**
     * Stops serving: listeners close (their sockets are removed), in-flight requests finish and
     * the image is flushed.
     */
    @Override
    public void close() {
        flushed = daemon.shutdown(false);
    }

    /** After {@link #close()}: true when the image's final flush succeeded. */
    public boolean flushed() {
        return flushed;
    }

    /** A socket the daemon did not remove (for the shutdown report), or null. */
    public Path leftoverSocket() {
        for (Path p : sockets()) if (Files.exists(p, java.nio.file.LinkOption.NOFOLLOW_LINKS)) return p;
        return null;
    }
}
