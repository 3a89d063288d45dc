package dev.vmm.cli.it;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Deque;
import java.util.List;
import java.util.Objects;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.TestInfo;
import org.junit.jupiter.api.io.TempDir;

/**
 * Shared plumbing of the real-peer tests: a temp dir, servers and background processes that
 * are always cleaned up in {@code @AfterEach} (also when the test failed), and the usual
 * one-disk server.
 */
abstract class PeerTestBase {
    @TempDir
    Path tmp;

    private String label = "test";
    private final Deque<AutoCloseable> cleanup = new ArrayDeque<>();

    @BeforeEach
    void rememberName(TestInfo info) {
        label = info.getTestClass().map(Class::getSimpleName).orElse("T") + "."
                + info.getTestMethod().map(m -> m.getName()).orElse("m");
    }

    @AfterEach
    void cleanUp() throws Exception {
        Exception first = null;
        while (!cleanup.isEmpty()) {
            try {
                cleanup.pop().close();
            } catch (Exception e) {
                if (first == null) {
                    first = e;
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }

    /** Starts a server with these arguments (a pidfile is added) and stops it after the test. */
    VmmProcess serve(String... args) {
        return serve(Arrays.asList(args));
    }

    VmmProcess serve(List<String> args) {
        VmmProcess p = VmmProcess.start(tmp, label, args);
        cleanup.push(p);
        return p;
    }

    /** Starts {@code server} (vmm or qemu-storage-daemon) with these arguments; stopped after the test. */
    VmmProcess serve(Server server, List<String> args) {
        VmmProcess p = VmmProcess.start(tmp, label + "-" + server, args, server == Server.QSD);
        cleanup.push(p);
        return p;
    }

    /** {@link VmmProcess#startOrExit}: starts {@code server}, or returns the exited process; stopped after the test. */
    VmmProcess serveOrExit(Server server, List<String> args) {
        VmmProcess p = VmmProcess.startOrExit(tmp, label + "-" + server, args, server == Server.QSD);
        cleanup.push(p);
        return p;
    }

    /** Registers anything to be closed after the test (before what was registered earlier). */
    <T extends AutoCloseable> T closeLater(T resource) {
        cleanup.push(resource);
        return resource;
    }

    /** Registers a background process to be killed after the test. */
    Process background(Process p) {
        cleanup.push(() -> {
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
        });
        return p;
    }

    /** A fresh short directory for unix sockets, deleted after the test. */
    Path socketDir() {
        Path d = Net.shortSocketDir();
        cleanup.push(() -> deleteTree(d));
        return d;
    }

    /** One file node {@code disk0} exported as {@code disk0} over TCP. */
    record Disk(VmmProcess server, int port, Path image, String uri) {}

    /** Serves {@code image} as node and export {@code disk0} on a free TCP port. */
    Disk serveDisk(Path image, boolean writable) {
        int port = Net.freePort();
        VmmProcess p = serve(
                "--blockdev", "driver=file,node-name=disk0,filename=" + image,
                "--nbd-server", Net.inetServer(port),
                "--export", "type=nbd,id=exp0,node-name=disk0" + (writable ? ",writable=on" : ""));
        return new Disk(p, port, image, Net.uri(port, "disk0"));
    }

    /**
     * Copies a python script from the test resources (next to this class) into the temp dir
     * and returns the command line that runs it with libnbd's python bindings.
     */
    List<String> python(String script, String... args) {
        Path target = tmp.resolve(script);
        try (InputStream in = Objects.requireNonNull(PeerTestBase.class.getResourceAsStream(script),
                "missing test resource " + script)) {
            Files.copy(in, target, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        List<String> cmd = new ArrayList<>();
        cmd.add(Peers.python());
        cmd.add(target.toString());
        cmd.addAll(Arrays.asList(args));
        return cmd;
    }

    static void deleteTree(Path root) throws IOException {
        if (!Files.exists(root)) {
            return;
        }
        try (Stream<Path> s = Files.walk(root)) {
            for (Path p : s.sorted((a, b) -> b.getNameCount() - a.getNameCount()).toList()) {
                Files.deleteIfExists(p);
            }
        }
    }
}
