package dev.vmm.cli.guest;

import dev.vmm.cli.it.VmmProcess;
import java.nio.file.Path;

/**
 * Our backend: {@code vmm serve} with the same arguments as {@link QsdServer}, as a child JVM
 * (ready when its pidfile appears, i.e. when every listener accepts).
 */
final class VmmServer implements VhostUserBlkServer {
    private final Path dir;
    private VmmProcess process;
    private String lastLog = "";

    VmmServer(Path dir) {
        this.dir = dir;
    }

    @Override
    public String name() {
        return "vmm";
    }

    @Override
    public void start(Export export) {
        process = VmmProcess.start(dir, "guest-vmm", export.args());
    }

    @Override
    public void stop() {
        VmmProcess p = process;
        process = null;
        if (p != null) {
            p.stop();
            lastLog = p.stderr();
        }
    }

    @Override
    public String log() {
        return process != null ? process.stderr() : lastLog;
    }
}
