package dev.vmm.cli;

import com.sun.jna.Library;
import com.sun.jna.Memory;
import com.sun.jna.Native;
import com.sun.jna.Platform;
import com.sun.jna.Pointer;
import com.sun.jna.ptr.IntByReference;
import dev.vmm.core.linux.LibcSocket;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * {@code vmm serve --daemonize}, as qemu-storage-daemon's: the command returns once the daemon
 * listens, exit code 0, and the daemon goes on in the background in a session of its own; an
 * error at start-up is printed and the command exits 1.
 *
 * <p>A JVM cannot fork, so the parent re-executes itself ({@code /proc/self/exe} with the
 * arguments of {@code /proc/self/cmdline}, minus {@code --daemonize}) with posix_spawn(3) and
 * {@code POSIX_SPAWN_SETSID}, handing the child the write end of a pipe ({@link #ENV}). The child
 * starts as usual (its errors reach the same stderr), and once every listener accepts and the
 * pidfile is written it points stdin, stdout and stderr at /dev/null (as QSD) and writes
 * {@code READY} to the pipe. The parent exits 0 on {@code READY}, 1 when the pipe closes without it.
 * Descriptors the child needs ({@code addr.type=fd}) are inherited as they are not close-on-exec.
 *
 * <p>Thread contract: the CLI thread, before (parent) or after (child) the daemon starts.
 */
final class Daemonize {
    /** The environment variable naming the child's end of the readiness pipe. */
    static final String ENV = "VMM_DAEMONIZE_FD";
    /** glibc's posix_spawn flag: the child calls setsid(2) (since glibc 2.26). */
    private static final short POSIX_SPAWN_SETSID = 0x80;
    private static final int O_CLOEXEC = 0x80000;
    private static final int O_RDWR = 2;

    private Daemonize() { }

    /** The libc calls of the parent (JNA interface mapping: string arrays as {@code char **}). */
    interface Spawn extends Library {
        Spawn C = Native.load(Platform.C_LIBRARY_NAME, Spawn.class);

        int pipe2(int[] fds, int flags);

        int posix_spawnattr_init(Pointer attr);

        int posix_spawnattr_setflags(Pointer attr, short flags);

        int posix_spawnattr_destroy(Pointer attr);

        int posix_spawn_file_actions_init(Pointer actions);

        int posix_spawn_file_actions_addopen(Pointer actions, int fd, String path, int oflag, int mode);

        int posix_spawn_file_actions_destroy(Pointer actions);

        int posix_spawn(IntByReference pid, String path, Pointer actions, Pointer attr, String[] argv, String[] envp);

        int open(String path, int flags);

        int dup2(int from, int to);
    }

    /** True in the child started by {@link #parent}. */
    static boolean isChild() {
        return System.getenv(ENV) != null;
    }

    /**
     * The parent's side: spawns the daemon and waits for it to report ready. Returns the exit
     * code: 0 once the child is ready, 1 when it failed (it printed why on the shared stderr).
     */
    static int parent(PrintWriter err) {
        if (System.getenv("LISTEN_FDS") != null && System.getenv("LISTEN_PID") != null) {
            err.println("vmm: --daemonize: not with systemd socket activation (LISTEN_FDS): use Type=notify without --daemonize");
            return 1;
        }
        List<String> argv;
        try {
            argv = new ArrayList<>(List.of(new String(Files.readAllBytes(Path.of("/proc/self/cmdline")), StandardCharsets.UTF_8).split("\0")));
        } catch (IOException e) {
            err.println("vmm: --daemonize: cannot read /proc/self/cmdline: " + e.getMessage());
            return 1;
        }
        argv.removeIf(a -> a.equals("--daemonize"));
        int[] pipe = new int[2];
        if (Spawn.C.pipe2(pipe, O_CLOEXEC) != 0) {
            err.println("vmm: --daemonize: pipe2: " + dev.vmm.core.linux.LibC.describe(Native.getLastError()));
            return 1;
        }
        List<String> env = new ArrayList<>();
        for (Map.Entry<String, String> e : System.getenv().entrySet()) {
            if (!e.getKey().equals(ENV)) env.add(e.getKey() + "=" + e.getValue());
        }
        env.add(ENV + "=" + pipe[1]);
        int rc;
        IntByReference pid = new IntByReference();
        try (Memory attr = new Memory(1024); Memory actions = new Memory(1024)) {
            Spawn.C.posix_spawnattr_init(attr);
            Spawn.C.posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSID);
            Spawn.C.posix_spawn_file_actions_init(actions);
            Spawn.C.posix_spawn_file_actions_addopen(actions, 0, "/dev/null", O_RDWR, 0);
            try {
                // Only the write end crosses exec: it is the one descriptor made inheritable.
                LibcSocket.fcntl(pipe[1], LibcSocket.F_SETFD, 0);
                rc = Spawn.C.posix_spawn(pid, "/proc/self/exe", actions, attr, argv.toArray(new String[0]), env.toArray(new String[0]));
            } finally {
                Spawn.C.posix_spawn_file_actions_destroy(actions);
                Spawn.C.posix_spawnattr_destroy(attr);
                LibcSocket.closeQuietly(pipe[1]);
            }
        }
        if (rc != 0) {
            LibcSocket.closeQuietly(pipe[0]);
            err.println("vmm: --daemonize: cannot start the daemon: " + dev.vmm.core.linux.LibC.describe(rc));
            return 1;
        }
        StringBuilder answer = new StringBuilder();
        try (Memory buf = new Memory(64)) {
            while (true) { // until the child writes READY or its end closes (it exited)
                long n;
                try {
                    n = LibcSocket.read(pipe[0], Pointer.nativeValue(buf), 64);
                } catch (com.sun.jna.LastErrorException e) {
                    if (e.getErrorCode() == dev.vmm.core.linux.Errno.EINTR) continue;
                    break;
                }
                if (n <= 0) break;
                answer.append(new String(buf.getByteArray(0, (int) n), StandardCharsets.US_ASCII));
                if (answer.indexOf("READY") >= 0) break;
            }
        } finally {
            LibcSocket.closeQuietly(pipe[0]);
        }
        if (answer.indexOf("READY") >= 0) return 0;
        err.println("vmm: --daemonize: the daemon (pid " + pid.getValue() + ") exited during start-up");
        return 1;
    }

    /**
     * The child's side, once every listener accepts and the pidfile is written: detaches from
     * the terminal's files and tells the parent. Does nothing outside a daemonized child.
     */
    static void childReady() {
        String v = System.getenv(ENV);
        if (v == null) return;
        int fd;
        try {
            fd = Integer.parseInt(v);
        } catch (NumberFormatException e) {
            return;
        }
        try {
            LibcSocket.unsetenv(ENV);
        } catch (com.sun.jna.LastErrorException ignored) {
            // a valid name: cannot fail
        }
        System.out.flush();
        System.err.flush();
        int devNull = Spawn.C.open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devNull >= 0) {
            for (int std = 0; std <= 2; std++) Spawn.C.dup2(devNull, std);
            LibcSocket.closeQuietly(devNull);
        }
        try (Memory m = new Memory(6)) {
            m.write(0, "READY\n".getBytes(StandardCharsets.US_ASCII), 0, 6);
            LibcSocket.write(fd, Pointer.nativeValue(m), 6);
        } catch (com.sun.jna.LastErrorException ignored) {
            // the parent is gone: nobody to tell
        } finally {
            LibcSocket.closeQuietly(fd);
        }
    }
}
