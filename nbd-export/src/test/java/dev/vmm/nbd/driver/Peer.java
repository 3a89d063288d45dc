package dev.vmm.nbd.driver;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A server process for the driver's tests (nbdkit, qemu-nbd, qemu-storage-daemon) on a unix
 * socket, started and waited for until the socket exists; stopped by {@link #close} (SIGKILL with
 * {@link #kill}). Test thread only.
 */
final class Peer implements AutoCloseable {
    final List<String> command;
    final Path socket;
    final Path log;
    private Process process;

    Peer(Path socket, Path log, List<String> command) {
        this.command = command;
        this.socket = socket;
        this.log = log;
    }

    static Peer nbdkit(Path dir, String name, String... args) {
        List<String> c = new ArrayList<>(List.of(dev.vmm.core.testing.Tools.require("nbdkit", "nbdkit"), "--foreground", "--exit-with-parent",
                "-U", dir.resolve(name + ".sock").toString()));
        c.addAll(List.of(args));
        return new Peer(dir.resolve(name + ".sock"), dir.resolve(name + ".log"), c);
    }

    Peer start() throws IOException, InterruptedException {
        Files.deleteIfExists(socket);
        process = new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.appendTo(log.toFile())).start();
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!Files.exists(socket)) {
            if (!process.isAlive()) throw new IOException(command + " exited: " + Files.readString(log));
            if (System.nanoTime() > end) throw new IOException(command + " did not create " + socket);
            Thread.sleep(10);
        }
        return this;
    }

    /** SIGKILL: the server dies without a goodbye. */
    void kill() throws InterruptedException {
        process.destroyForcibly();
        process.waitFor(10, TimeUnit.SECONDS);
    }

    @Override
    public void close() throws InterruptedException {
        if (process != null && process.isAlive()) {
            process.destroy();
            if (!process.waitFor(5, TimeUnit.SECONDS)) kill();
        }
    }

    /** Runs a tool to the end; its output, or an AssertionError with it when it fails. */
    static String run(List<String> cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError(cmd + " timed out: " + out);
        }
        if (p.exitValue() != 0) throw new AssertionError(cmd + " exited " + p.exitValue() + ": " + out);
        return out;
    }

    /** Runs a tool to the end; its exit status. */
    static int status(List<String> cmd) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            return -1;
        }
        return p.exitValue();
    }
}
