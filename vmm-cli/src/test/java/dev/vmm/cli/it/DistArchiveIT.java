package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The installable archive ({@code vmm-VERSION.tar.gz}, built by {@code mvn package}) unpacked in
 * a temp dir runs {@code bin/vmm serve} with a PATH that has java and a few shell tools but no
 * Maven; nbdinfo reads its export. Its man pages and bash completion are in place. Runs after
 * package (failsafe, {@code mvn verify}).
 */
@Timeout(180)
class DistArchiveIT extends PeerTestBase {

    static Path built(String property) {
        String p = System.getProperty(property);
        if (p == null || !Files.isRegularFile(Path.of(p))) fail(property + " not built: " + p + " (run mvn verify, not only test)");
        return Path.of(p);
    }

    @Test
    void unpackedArchiveServesNbdWithoutMaven() throws Exception {
        Path archive = built("vmm.dist.archive");
        Path inst = Files.createDirectories(tmp.resolve("inst"));
        Run.cmd("tar", "-xzf", archive.toString(), "-C", inst.toString()).expect(0);
        List<Path> top = Files.list(inst).toList();
        assertEquals(1, top.size(), "one top directory: " + top);
        Path home = top.get(0);
        assertTrue(home.getFileName().toString().matches("vmm-\\d.*"), home.toString());
        for (String f : List.of("bin/vmm", "lib/vmm-cli.jar", "lib/jvm.flags", "lib/picocli-4.7.7.jar", "README.md",
                "share/man/man1/vmm.1", "share/man/man1/vmm-serve.1", "share/man/man1/vmm-bench.1",
                "share/bash-completion/completions/vmm", "share/doc/vmm/install.md", "share/doc/vmm/qmp.md")) {
            assertTrue(Files.isRegularFile(home.resolve(f)), "missing " + f);
        }
        assertTrue(Files.isExecutable(home.resolve("bin/vmm")));
        assertTrue(Files.readString(home.resolve("share/man/man1/vmm-serve.1")).contains(".TH \"VMM\\-SERVE\" \"1\""));

        // The man page renders, the completion script loads and completes subcommands.
        Run.Result man = Run.cmd("man", "-l", "-P", "cat", home.resolve("share/man/man1/vmm-serve.1").toString())
                .env("MANWIDTH", "100").expectAny();
        if (man.exit() == 0) assertTrue(man.stdout().contains("--blockdev"), man.describe()); // man-db may be absent
        Run.Result comp = Run.cmd("bash", "-c", "source " + home.resolve("share/bash-completion/completions/vmm")
                + " && complete -p vmm && COMP_WORDS=(vmm se) COMP_CWORD=1 COMP_LINE='vmm se' COMP_POINT=6"
                + " && $(complete -p vmm | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p') vmm se vmm && echo \"${COMPREPLY[@]}\"").expect(0);
        assertTrue(comp.stdout().contains("serve"), comp.describe());

        // A PATH with java and the launcher's shell tools only: no mvn, no javac.
        Path bin = pathDir();
        Path javaBin = Path.of(System.getProperty("java.home"), "bin", "java");
        Files.createSymbolicLink(bin.resolve("java"), javaBin);
        for (String tool : List.of("readlink", "dirname", "sed", "head", "cut", "cat")) {
            String where = Run.cmd("sh", "-c", "command -v " + tool).expect(0).stdout().strip();
            Files.createSymbolicLink(bin.resolve(tool), Path.of(where));
        }
        Map<String, String> env = Map.of("PATH", bin.toString(), "HOME", tmp.toString());
        Run.Result noMvn = Run.cmd("/bin/sh", "-c", "command -v mvn || exit 3").env("PATH", bin.toString()).expectAny();
        assertEquals(3, noMvn.exit(), "mvn must not be reachable: " + noMvn.describe());

        Run.Result version = withEnv(Run.cmd(home.resolve("bin/vmm").toString(), "--version"), env).expect(0);
        assertTrue(version.stdout().contains("vmm"), version.describe());
        withEnv(Run.cmd(home.resolve("bin/vmm").toString(), "bench", "--help"), env).expect(0);

        Path dir = socketDir();
        Path sock = dir.resolve("nbd.sock");
        Path image = Images.sparse(tmp.resolve("disk.img"), 8 * MiB);
        ProcessBuilder pb = new ProcessBuilder(home.resolve("bin/vmm").toString(), "serve",
                "--blockdev", "driver=file,node-name=disk0,filename=" + image,
                "--nbd-server", "addr.type=unix,addr.path=" + sock,
                "--export", "type=nbd,id=exp0,node-name=disk0")
                .redirectErrorStream(true).redirectOutput(tmp.resolve("serve.log").toFile());
        pb.environment().clear();
        pb.environment().putAll(env);
        Process serve = background(pb.start());
        for (int i = 0; i < 600 && !Files.exists(sock) && serve.isAlive(); i++) Thread.sleep(100);
        assertTrue(Files.exists(sock), "the archive's vmm did not listen: " + Files.readString(tmp.resolve("serve.log")));
        Run.Result info = Run.cmd(Peers.require("nbdinfo"), "--size", "nbd+unix:///disk0?socket=" + sock).expect(0);
        assertEquals(String.valueOf(8 * MiB), info.stdout().strip(), info.describe());
        serve.destroy(); // SIGTERM: the orderly shutdown
        assertTrue(serve.waitFor(30, java.util.concurrent.TimeUnit.SECONDS));
        assertEquals(0, serve.exitValue(), Files.readString(tmp.resolve("serve.log")));
        assertTrue(!Files.exists(sock), "socket removed at exit");
    }

    @Test
    void launcherRefusesAMissingJava() throws Exception {
        Path archive = built("vmm.dist.archive");
        Path inst = Files.createDirectories(tmp.resolve("inst"));
        Run.cmd("tar", "-xzf", archive.toString(), "-C", inst.toString()).expect(0);
        Path home = Files.list(inst).toList().get(0);
        Path bin = pathDir();
        for (String tool : List.of("readlink", "dirname")) {
            Files.createSymbolicLink(bin.resolve(tool), Path.of(Run.cmd("sh", "-c", "command -v " + tool).expect(0).stdout().strip()));
        }
        Run.Result r = Run.cmd(home.resolve("bin/vmm").toString(), "--version").env("PATH", bin.toString()).env("JAVA_HOME", "").expectAny();
        assertNotEquals(0, r.exit(), r.describe());
        assertTrue(r.stderr().contains("no Java found"), r.describe());
    }

    /** A directory for a test PATH of symlinks, outside @TempDir (which warns about links leaving it). */
    private Path pathDir() throws java.io.IOException {
        Path d = Files.createTempDirectory("vmm-path");
        closeLater(() -> deleteTree(d));
        return d;
    }

    private static Run withEnv(Run r, Map<String, String> env) {
        for (Map.Entry<String, String> e : env.entrySet()) r.env(e.getKey(), e.getValue());
        return r;
    }
}
