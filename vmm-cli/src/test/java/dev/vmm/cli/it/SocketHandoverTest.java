package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.core.testing.Tools;
import dev.vmm.vhostuser.frontend.VhostUserFrontendConnection;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Sockets handed to the daemon by whoever starts it (issue 14), with real peers: libnbd's socket
 * activation ({@code nbdinfo -- [ vmm serve ... ]}), systemd's ({@code systemd-socket-activate})
 * for NBD and vhost-user, listening descriptors passed by a parent process ({@code addr.type=fd},
 * {@code --chardev socket,fd=N}), {@code sd_notify} READY=1 and STOPPING=1 received on a datagram
 * socket of the test, {@code --daemonize} with its pidfile, and the {@code /healthz} and
 * {@code /readyz} probes.
 */
@Timeout(300)
class SocketHandoverTest {
    private static final long START_MS = 90_000;

    Path dir;
    Path image;
    final List<Process> processes = new ArrayList<>();
    final List<Long> daemons = new ArrayList<>();

    @BeforeEach
    void setUp() throws IOException {
        Assumptions.assumeFalse(Peers.qsd(), "vmm's own start-up protocol (QSD 7.2 has no socket activation)");
        dir = Net.shortSocketDir();
        image = dir.resolve("disk.img");
        try (var f = new java.io.RandomAccessFile(image.toFile(), "rw")) {
            f.setLength(4L << 20);
        }
    }

    @AfterEach
    void tearDown() throws Exception {
        for (Process p : processes) {
            if (p.isAlive()) {
                p.destroy();
                if (!p.waitFor(20, TimeUnit.SECONDS)) p.destroyForcibly();
            }
        }
        for (long pid : daemons) ProcessHandle.of(pid).ifPresent(ProcessHandle::destroyForcibly);
        try (var s = Files.walk(dir)) {
            for (Path p : s.sorted(Comparator.reverseOrder()).toList()) Files.deleteIfExists(p);
        }
    }

    private List<String> blockdev() {
        return List.of("--blockdev", "driver=file,node-name=disk0,filename=" + image);
    }

    private static List<String> vmm(List<String> serveArgs) {
        return VmmProcess.commandLine(serveArgs, false);
    }

    private static List<String> concat(List<String> a, String... b) {
        List<String> out = new ArrayList<>(a);
        out.addAll(List.of(b));
        return out;
    }

    @Test
    void nbdinfoStartsTheServerWithLibnbdSocketActivation() {
        String nbdinfo = Peers.require("nbdinfo");
        List<String> cmd = new ArrayList<>(List.of(nbdinfo, "--size", "--", "["));
        cmd.addAll(vmm(concat(blockdev(), "--export", "type=nbd,id=exp0,node-name=disk0")));
        cmd.add("]");
        Run.Result r = Run.cmd(cmd).timeoutSeconds(120).expect(0);
        assertEquals(Long.toString(4L << 20), r.stdout().strip(), r.describe());
    }

    @Test
    void systemdSocketActivateServesNbdAndNotifiesReadyAndStopping() throws Exception {
        String activate = Tools.require("systemd-socket-activate", "systemd");
        String nbdinfo = Peers.require("nbdinfo");
        Path sock = dir.resolve("nbd.sock");
        try (NotifySocket notify = NotifySocket.abstractAddress("vmm-test-" + ProcessHandle.current().pid() + "-" + System.nanoTime())) {
            List<String> cmd = new ArrayList<>(List.of(activate, "-l", sock.toString(), "-E", "NOTIFY_SOCKET=" + notify.address()));
            cmd.addAll(vmm(concat(blockdev(), "--export", "type=nbd,id=exp0,node-name=disk0,writable=on")));
            Process p = start(cmd, "activate-nbd");
            awaitFile(sock, p);
            // The first connection makes systemd-socket-activate exec the server on the listening socket.
            Run.Result info = Run.cmd(nbdinfo, "--size", "nbd+unix:///disk0?socket=" + sock).timeoutSeconds(120).expect(0);
            assertEquals(Long.toString(4L << 20), info.stdout().strip());
            String ready = notify.receive(START_MS);
            assertNotNull(ready, "no sd_notify datagram");
            assertTrue(ready.contains("READY=1"), ready);
            assertTrue(ready.contains("MAINPID=" + p.pid()), ready + " (the server keeps systemd-socket-activate's pid: it execs)");
            p.destroy();
            String stopping = notify.receive(20_000);
            assertNotNull(stopping, "no STOPPING=1 at shutdown");
            assertTrue(stopping.contains("STOPPING=1"), stopping);
            assertTrue(p.waitFor(20, TimeUnit.SECONDS));
            assertEquals(0, p.exitValue());
            assertTrue(Files.exists(sock), "the activated socket's file belongs to whoever bound it: left in place");
        }
    }

    @Test
    void systemdSocketActivateServesVhostUser() throws Exception {
        String activate = Tools.require("systemd-socket-activate", "systemd");
        Path sock = dir.resolve("vhost.sock");
        List<String> cmd = new ArrayList<>(List.of(activate, "-l", sock.toString()));
        cmd.addAll(vmm(concat(blockdev(), "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,writable=on")));
        Process p = start(cmd, "activate-vhost");
        awaitFile(sock, p);
        try (VhostUserFrontendConnection fe = VhostUserFrontendConnection.connect(sock.toString(), START_MS)) {
            long features = fe.getFeatures();
            assertTrue((features & (1L << 30)) != 0, "VHOST_USER_F_PROTOCOL_FEATURES offered: " + Long.toHexString(features));
            assertTrue((features & (1L << 32)) != 0, "VIRTIO_F_VERSION_1 offered: " + Long.toHexString(features));
        }
        p.destroy();
        assertTrue(p.waitFor(20, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue());
    }

    /**
     * The example units of examples/ (docs/systemd.md), run as systemd would run them, with
     * systemd-socket-activate: the .socket's ListenStream (moved to the test's directory) and
     * FileDescriptorName, the .service's ExecStart (the launcher replaced by this build's java
     * command, the image by the test's). Type=notify: READY=1 must arrive.
     */
    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(strings = {"vmm-nbd", "vmm-vhost-user"})
    void theExampleUnitsWorkUnderSocketActivation(String unit) throws Exception {
        String activate = Tools.require("systemd-socket-activate", "systemd");
        Path examples = Path.of(System.getProperty("basedir", ".")).toAbsolutePath().getParent().resolve("examples");
        java.util.Map<String, String> socket = unitKeys(examples.resolve(unit + ".socket"));
        java.util.Map<String, String> service = unitKeys(examples.resolve(unit + ".service"));
        assertEquals("notify", service.get("Type"));
        List<String> exec = new ArrayList<>(List.of(service.get("ExecStart").split("\\s+")));
        assertEquals("/opt/vmm/vmm", exec.get(0));
        assertEquals("serve", exec.get(1));
        List<String> serveArgs = new ArrayList<>();
        for (String a : exec.subList(2, exec.size())) serveArgs.add(a.replace("/var/lib/vmm/disk0.img", image.toString()));
        Path sock = dir.resolve("unit.sock");
        try (NotifySocket notify = NotifySocket.abstractAddress("vmm-unit-" + ProcessHandle.current().pid() + "-" + System.nanoTime())) {
            List<String> cmd = new ArrayList<>(List.of(activate, "-l", sock.toString(), "--fdname=" + socket.get("FileDescriptorName"),
                    "-E", "NOTIFY_SOCKET=" + notify.address()));
            cmd.addAll(vmm(serveArgs));
            Process p = start(cmd, unit);
            awaitFile(sock, p);
            if (unit.equals("vmm-nbd")) {
                Run.Result info = Run.cmd(Peers.require("nbdinfo"), "--size", "nbd+unix:///disk0?socket=" + sock).timeoutSeconds(120).expect(0);
                assertEquals(Long.toString(4L << 20), info.stdout().strip());
            } else {
                try (VhostUserFrontendConnection fe = VhostUserFrontendConnection.connect(sock.toString(), START_MS)) {
                    assertTrue((fe.getFeatures() & (1L << 30)) != 0);
                }
            }
            String ready = notify.receive(START_MS);
            assertNotNull(ready, "no READY=1\n" + logs());
            assertTrue(ready.contains("READY=1"), ready);
            p.destroy();
            assertTrue(p.waitFor(20, TimeUnit.SECONDS));
            assertEquals(0, p.exitValue(), logs());
        }
    }

    /** KEY=VALUE lines of a unit file (comments and sections skipped; the last value of a key wins). */
    private static java.util.Map<String, String> unitKeys(Path f) throws IOException {
        java.util.Map<String, String> m = new java.util.HashMap<>();
        for (String line : Files.readAllLines(f)) {
            String l = line.strip();
            if (l.isEmpty() || l.startsWith("#") || l.startsWith("[")) continue;
            int eq = l.indexOf('=');
            if (eq > 0) m.put(l.substring(0, eq), l.substring(eq + 1));
        }
        return m;
    }

    /** A python parent binds the sockets and execs the server with them, as libvirt or a CSI plugin would. */
    private static final String PARENT = String.join("\n",
            "import os, socket, sys",
            "def listening(path):",
            "    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(8); return s",
            "nbd = listening(sys.argv[1]); vhost = listening(sys.argv[2]); qmp = listening(sys.argv[3])",
            "tcp = socket.socket(socket.AF_INET); tcp.bind(('127.0.0.1', int(sys.argv[4]))); tcp.listen(8)",
            "idle = socket.socket(socket.AF_UNIX)",
            "fds = {'@NBD@': nbd, '@VHOST@': vhost, '@QMP@': qmp, '@TCP@': tcp, '@IDLE@': idle}",
            "for s in fds.values(): os.set_inheritable(s.fileno(), True)",
            "args = sys.argv[5:]",
            "for k, s in fds.items(): args = [a.replace(k, str(s.fileno())) for a in args]",
            "os.execv(args[0], args)");

    private List<String> parent(List<String> serveArgs, int tcpPort) throws IOException {
        Path script = dir.resolve("parent.py");
        Files.writeString(script, PARENT);
        List<String> cmd = new ArrayList<>(List.of(Tools.require("python3", "python3"), script.toString(),
                dir.resolve("nbd.sock").toString(), dir.resolve("vhost.sock").toString(), dir.resolve("qmp.sock").toString(),
                Integer.toString(tcpPort)));
        cmd.addAll(vmm(serveArgs));
        return cmd;
    }

    @Test
    void listeningSocketsPassedByTheParentServeNbdVhostUserAndQmpAndTheProbesAnswer() throws Exception {
        String nbdinfo = Peers.require("nbdinfo");
        int metricsPort = Net.freePort();
        Path pidfile = dir.resolve("vmm.pid");
        List<String> args = concat(blockdev(), "--nbd-server", "addr.type=fd,addr.str=@NBD@",
                "--export", "type=nbd,id=exp0,node-name=disk0",
                "--export", "type=vhost-user-blk,id=vub0,node-name=disk0,addr.type=fd,addr.str=@VHOST@",
                "--chardev", "socket,id=mon0,fd=@QMP@,server=on,wait=off", "--monitor", "chardev=mon0",
                "--metrics", "addr.type=inet,addr.host=127.0.0.1,addr.port=" + metricsPort, "--pidfile", pidfile.toString());
        Process p = start(parent(args, Net.freePort()), "fd-parent");
        awaitFile(pidfile, p);
        Run.Result info = Run.cmd(nbdinfo, "--size", "nbd+unix:///disk0?socket=" + dir.resolve("nbd.sock")).timeoutSeconds(60).expect(0);
        assertEquals(Long.toString(4L << 20), info.stdout().strip());
        try (VhostUserFrontendConnection fe = VhostUserFrontendConnection.connect(dir.resolve("vhost.sock").toString(), 10_000)) {
            assertTrue((fe.getFeatures() & (1L << 30)) != 0);
        }
        try (dev.vmm.cli.qmp.QmpClient qmp = dev.vmm.cli.qmp.QmpClient.connect(dir.resolve("qmp.sock"))) {
            assertTrue(qmp.execute(dev.vmm.cli.qmp.ShellSyntax.parseLine("query-block-exports")).containsKey("return"));
        }
        HttpClient http = HttpClient.newHttpClient();
        for (String probe : List.of("/healthz", "/readyz")) {
            HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + metricsPort + probe)).build(),
                    HttpResponse.BodyHandlers.ofString());
            assertEquals(200, r.statusCode(), probe + ": " + r.body());
            assertEquals(probe.equals("/healthz") ? "ok\n" : "ready\n", r.body());
        }
        p.destroy();
        assertTrue(p.waitFor(20, TimeUnit.SECONDS));
        assertEquals(0, p.exitValue());
    }

    @Test
    void aTcpListeningSocketPassedByTheParentServesNbd() throws Exception {
        String nbdinfo = Peers.require("nbdinfo");
        int port = Net.freePort();
        Path pidfile = dir.resolve("vmm.pid");
        Process p = start(parent(concat(blockdev(), "--nbd-server", "addr.type=fd,addr.str=@TCP@",
                "--export", "type=nbd,id=exp0,node-name=disk0", "--pidfile", pidfile.toString()), port), "fd-tcp");
        awaitFile(pidfile, p);
        Run.Result info = Run.cmd(nbdinfo, "--size", "nbd://127.0.0.1:" + port + "/disk0").timeoutSeconds(60).expect(0);
        assertEquals(Long.toString(4L << 20), info.stdout().strip());
        p.destroy();
        assertTrue(p.waitFor(20, TimeUnit.SECONDS));
    }

    @Test
    void aSocketThatDoesNotListenOrAnUnknownNameIsAClearError() throws Exception {
        Run.Result idle = Run.cmd(parent(concat(blockdev(), "--nbd-server", "addr.type=fd,addr.str=@IDLE@"), Net.freePort()))
                .timeoutSeconds(120).expect(1);
        assertTrue(idle.stderr().contains("not a listening one"), idle.describe());
        Run.Result closed = Run.cmd(vmm(concat(blockdev(), "--nbd-server", "addr.type=fd,addr.str=77"))).timeoutSeconds(120).expect(1);
        assertTrue(closed.stderr().contains("file descriptor 77 is not open"), closed.describe());
        Run.Result named = Run.cmd(vmm(concat(blockdev(), "--nbd-server", "addr.type=fd,addr.str=nbd"))).timeoutSeconds(120).expect(1);
        assertTrue(named.stderr().contains("no socket named 'nbd' was passed"), named.describe());
    }

    @Test
    void daemonizeReturnsOnceServingAndThePidfileNamesTheDaemon() throws Exception {
        String nbdinfo = Peers.require("nbdinfo");
        Path pidfile = dir.resolve("daemon.pid");
        Path sock = dir.resolve("nbd.sock");
        Run.Result r = Run.cmd(vmm(concat(blockdev(), "--nbd-server", "addr.type=unix,addr.path=" + sock,
                "--export", "type=nbd,id=exp0,node-name=disk0", "--daemonize", "--pidfile", pidfile.toString())))
                .timeoutSeconds(120).expect(0);
        long pid = Long.parseLong(Files.readString(pidfile).strip());
        daemons.add(pid);
        ProcessHandle daemon = ProcessHandle.of(pid).orElseThrow(() -> new AssertionError("pid " + pid + " from the pidfile is not running"));
        // Ready when the command returned: no wait, no retry.
        Run.Result info = Run.cmd(nbdinfo, "--size", "nbd+unix:///disk0?socket=" + sock).timeoutSeconds(60).expect(0);
        assertEquals(Long.toString(4L << 20), info.stdout().strip(), r.describe());
        assertNotEquals(ProcessHandle.current().pid(), daemon.parent().map(ProcessHandle::pid).orElse(-1L));
        daemon.destroy();
        daemon.onExit().get(20, TimeUnit.SECONDS);
        assertTrue(!Files.exists(pidfile), "pidfile removed at exit");

        Run.Result bad = Run.cmd(vmm(List.of("--blockdev", "driver=file,node-name=d,filename=" + dir.resolve("missing.img"),
                "--daemonize", "--pidfile", dir.resolve("bad.pid").toString()))).timeoutSeconds(120).expect(1);
        assertTrue(bad.stderr().contains("missing.img"), bad.describe());
        assertTrue(!Files.exists(dir.resolve("bad.pid")), bad.describe());
    }

    // ---------------------------------------------------------------------------------------

    private Process start(List<String> cmd, String label) throws IOException {
        Path logs = dir.resolve(label + ".log");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(logs.toFile())
                .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null"))).start();
        processes.add(p);
        return p;
    }

    private void awaitFile(Path f, Process p) throws Exception {
        long deadline = System.currentTimeMillis() + START_MS;
        while (!Files.exists(f)) {
            if (!p.isAlive()) fail("exited with " + p.exitValue() + " before " + f + " existed\n" + logs());
            if (System.currentTimeMillis() > deadline) fail("no " + f + " after " + START_MS + " ms\n" + logs());
            Thread.sleep(20);
        }
    }

    private String logs() throws IOException {
        StringBuilder sb = new StringBuilder();
        try (var s = Files.list(dir)) {
            for (Path p : s.filter(x -> x.toString().endsWith(".log")).toList()) sb.append("--- ").append(p).append('\n').append(Files.readString(p));
        }
        return sb.toString();
    }

    /** The test's end of sd_notify: a unix datagram socket with an abstract address ('@' in NOTIFY_SOCKET). */
    static final class NotifySocket implements AutoCloseable {
        private final int fd;
        private final String address;

        private NotifySocket(int fd, String address) {
            this.fd = fd;
            this.address = address;
        }

        static NotifySocket abstractAddress(String name) {
            byte[] n = name.getBytes(StandardCharsets.UTF_8);
            int fd = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_DGRAM | LibcSocket.SOCK_CLOEXEC, 0);
            try (Memory addr = new Memory(LibcSocket.SOCKADDR_UN_SIZEOF)) {
                addr.clear();
                addr.setShort(0, (short) LibcSocket.AF_UNIX);
                addr.write(3, n, 0, n.length); // sun_path[0] = 0: abstract
                LibcSocket.bind(fd, Pointer.nativeValue(addr), 2 + 1 + n.length);
                LibcSocket.setTimeouts(fd, 500);
            } catch (LastErrorException e) {
                LibcSocket.closeQuietly(fd);
                throw e;
            }
            return new NotifySocket(fd, "@" + name);
        }

        String address() { return address; }

        /** The next datagram, or null after {@code timeoutMs}. */
        String receive(long timeoutMs) {
            long deadline = System.currentTimeMillis() + timeoutMs;
            try (Memory buf = new Memory(4096)) {
                while (System.currentTimeMillis() < deadline) {
                    try {
                        long n = LibcSocket.read(fd, Pointer.nativeValue(buf), 4096);
                        return new String(buf.getByteArray(0, (int) n), StandardCharsets.UTF_8);
                    } catch (LastErrorException e) {
                        // EAGAIN after SO_RCVTIMEO: look at the clock again
                    }
                }
            }
            return null;
        }

        @Override
        public void close() {
            LibcSocket.closeQuietly(fd);
        }
    }
}
