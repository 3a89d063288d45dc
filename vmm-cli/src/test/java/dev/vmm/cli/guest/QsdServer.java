package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.cli.it.Peers;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** qemu-storage-daemon's vhost-user-blk export: the reference backend. Ready when the socket file exists. */
final class QsdServer implements VhostUserBlkServer {
    private final Path logDir;
    private Process process;
    private Path log;

    QsdServer(Path logDir) {
        this.logDir = logDir;
    }

    @Override
    public String name() {
        return "qsd";
    }

    @Override
    public void start(Export export) {
        List<String> cmd = new ArrayList<>();
        cmd.add(Peers.require("qemu-storage-daemon"));
        cmd.addAll(export.args());
        try {
            Files.deleteIfExists(export.socket());
            log = Files.createTempFile(logDir, "qsd-", ".log");
            process = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null"))).start();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot start " + cmd, e);
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!Files.exists(export.socket())) {
            if (!process.isAlive()) {
                fail("qemu-storage-daemon exited with " + process.exitValue() + "\ncommand: " + String.join(" ", cmd)
                        + "\n" + log());
            }
            if (System.nanoTime() > deadline) {
                stop();
                fail("qemu-storage-daemon created no socket in 20 s\ncommand: " + String.join(" ", cmd) + "\n" + log());
            }
            try {
                Thread.sleep(10);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException(e);
            }
        }
    }

    @Override
    public void stop() {
        Process p = process;
        process = null;
        if (p == null) return;
        p.destroy();
        try {
            if (!p.waitFor(10, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                p.waitFor(10, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            p.destroyForcibly();
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public String log() {
        try {
            return log == null ? "" : Files.readString(log, StandardCharsets.UTF_8);
        } catch (IOException e) {
            return "(cannot read " + log + ")";
        }
    }
}
