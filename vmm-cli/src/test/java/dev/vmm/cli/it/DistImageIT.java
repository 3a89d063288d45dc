package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.core.json.Json;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * The OCI image tarball (jib {@code buildTar}, no Docker daemon): its index, manifest and config
 * are well-formed OCI, every blob matches its digest, the entrypoint runs vmm with the image's
 * own Java; then its layers, unpacked in order into a root filesystem, run {@code vmm serve} in
 * a chroot (with its own /proc, as a container runtime gives) and nbdinfo reads the export.
 * Runs after package (failsafe).
 */
@Timeout(300)
class DistImageIT extends PeerTestBase {
    static final List<String> ENTRYPOINT = List.of("/opt/java/bin/java", "@/app/resources/jvm.flags",
            "-Dio.netty.leakDetection.level=disabled", "-cp", "/app/resources:/app/classes:/app/libs/*", "dev.vmm.cli.Main");

    @SuppressWarnings("unchecked")
    private static Map<String, Object> json(Path p) throws Exception {
        return (Map<String, Object>) Json.parse(Files.readString(p));
    }

    private static Path blob(Path layout, String digest) throws Exception {
        assertTrue(digest.startsWith("sha256:"), digest);
        Path p = layout.resolve("blobs/sha256/" + digest.substring(7));
        assertTrue(Files.isRegularFile(p), "missing blob " + digest);
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        try (var in = new java.security.DigestInputStream(Files.newInputStream(p), md)) {
            in.transferTo(java.io.OutputStream.nullOutputStream());
        }
        assertEquals(digest.substring(7), HexFormat.of().formatHex(md.digest()), "blob content does not match its digest");
        return p;
    }

    @Test
    @SuppressWarnings("unchecked")
    void imageTarballIsOciAndItsEntrypointServesNbd() throws Exception {
        Path tar = DistArchiveIT.built("vmm.dist.image");
        Path layout = Files.createDirectories(tmp.resolve("layout"));
        Run.cmd("tar", "-xf", tar.toString(), "-C", layout.toString()).expect(0);
        assertTrue(Files.readString(layout.resolve("oci-layout")).contains("imageLayoutVersion"));
        Map<String, Object> index = json(layout.resolve("index.json"));
        List<Object> manifests = (List<Object>) index.get("manifests");
        assertEquals(1, manifests.size(), index.toString());
        Map<String, Object> ref = (Map<String, Object>) manifests.get(0);
        assertEquals("application/vnd.oci.image.manifest.v1+json", ref.get("mediaType"));
        Map<String, Object> manifest = json(blob(layout, (String) ref.get("digest")));
        Map<String, Object> configRef = (Map<String, Object>) manifest.get("config");
        assertEquals("application/vnd.oci.image.config.v1+json", configRef.get("mediaType"));
        Map<String, Object> config = json(blob(layout, (String) configRef.get("digest")));
        assertEquals("linux", config.get("os"));
        assertEquals("amd64", config.get("architecture"));
        Map<String, Object> c = (Map<String, Object>) config.get("config");
        assertEquals(ENTRYPOINT, c.get("Entrypoint"), config.toString());
        assertTrue(((List<Object>) c.get("Env")).contains("PATH=/opt/java/bin"), c.toString());

        List<Object> layers = (List<Object>) manifest.get("layers");
        List<Object> diffIds = (List<Object>) ((Map<String, Object>) config.get("rootfs")).get("diff_ids");
        // jib: the runtime root (extra directory), dependencies, snapshot dependencies, resources, classes
        assertTrue(layers.size() >= 4, "layers: " + layers);
        assertEquals(layers.size(), diffIds.size());
        Path root = Files.createDirectories(tmp.resolve("rootfs"));
        for (Object o : layers) {
            Map<String, Object> l = (Map<String, Object>) o;
            assertEquals("application/vnd.oci.image.layer.v1.tar+gzip", l.get("mediaType"));
            Run.cmd("tar", "-xzf", blob(layout, (String) l.get("digest")).toString(), "-C", root.toString()).expect(0);
        }
        for (String f : List.of("opt/java/bin/java", "lib64/ld-linux-x86-64.so.2", "app/resources/jvm.flags", "app/classes/dev/vmm/cli/Main.class")) {
            assertTrue(Files.exists(root.resolve(f)), "not in the image: " + f);
        }
        assertTrue(Files.isExecutable(root.resolve("opt/java/bin/java")));
        assertTrue(Files.list(root.resolve("app/libs")).anyMatch(p -> p.getFileName().toString().startsWith("picocli-")));

        // Run the entrypoint in the image's root (needs root for chroot and a PID namespace's /proc).
        boolean isRoot = "0".equals(Run.cmd("id", "-u").expect(0).stdout().strip());
        if (!isRoot) {
            if ("true".equals(System.getenv("CI"))) fail("running the image's entrypoint needs root (chroot)");
            Assumptions.abort("not root: the image's entrypoint is not run");
        }
        Files.createDirectories(root.resolve("proc"));
        List<String> run = new ArrayList<>(List.of(Peers.require("unshare"), "--fork", "--pid", "--mount", "--kill-child",
                "--mount-proc=" + root.resolve("proc"), "chroot", root.toString()));
        run.addAll(ENTRYPOINT);
        List<String> version = new ArrayList<>(run);
        version.add("--version");
        Run.Result v = Run.cmd(version).timeoutSeconds(120).expect(0);
        assertTrue(v.stdout().contains("vmm"), v.describe());

        Images.sparse(root.resolve("disk.img"), 8 * MiB);
        List<String> serve = new ArrayList<>(run);
        serve.addAll(List.of("serve", "--blockdev", "driver=file,node-name=disk0,filename=/disk.img",
                "--nbd-server", "addr.type=unix,addr.path=/tmp/nbd.sock", "--export", "type=nbd,id=exp0,node-name=disk0"));
        Path log = tmp.resolve("serve.log");
        Process p = background(new ProcessBuilder(serve).redirectErrorStream(true).redirectOutput(log.toFile()).start());
        Path sock = root.resolve("tmp/nbd.sock");
        for (int i = 0; i < 900 && !Files.exists(sock) && p.isAlive(); i++) Thread.sleep(100);
        assertTrue(Files.exists(sock), "vmm in the image did not listen: " + Files.readString(log));
        Run.Result info = Run.cmd(Peers.require("nbdinfo"), "--size", "nbd+unix:///disk0?socket=" + sock).expect(0);
        assertEquals(String.valueOf(8 * MiB), info.stdout().strip(), info.describe());
    }
}
