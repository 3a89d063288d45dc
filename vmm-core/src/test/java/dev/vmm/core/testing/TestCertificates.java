package dev.vmm.core.testing;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A throw-away PKI made with the {@code openssl} tool, laid out as QEMU's tls-creds-x509
 * directories: a CA, a server directory ({@code ca-cert.pem}, {@code server-cert.pem},
 * {@code server-key.pem}; certificate for 127.0.0.1 and localhost) and a client directory
 * ({@code ca-cert.pem}, {@code client-cert.pem}, {@code client-key.pem}), which is what qemu-img
 * ({@code endpoint=client}) and libnbd ({@code tls-certificates=DIR}) read.
 *
 * <p>Without {@code openssl} on PATH the test is skipped, or fails under {@code CI=true}.
 * Thread contract: one test thread; each call runs openssl to completion.
 */
public final class TestCertificates {
    /** Key formats certtool and openssl write. */
    public enum KeyFormat { PKCS8_RSA, PKCS1_RSA, SEC1_EC }

    public final Path root;
    public final Path caKey;
    public final Path caCert;

    private TestCertificates(Path root) {
        this.root = root;
        this.caKey = root.resolve("ca-key.pem");
        this.caCert = root.resolve("ca-cert.pem");
    }

    /** Creates a CA under {@code root} (CN = {@code name}). */
    public static TestCertificates createCa(Path root, String name) throws IOException {
        openssl();
        Files.createDirectories(root);
        TestCertificates t = new TestCertificates(root);
        run(root, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", t.caKey.toString(),
                "-out", t.caCert.toString(), "-days", "2", "-subj", "/CN=" + name);
        return t;
    }

    /** A server directory {@code root/NAME}: ca-cert.pem, server-cert.pem, server-key.pem. */
    public Path serverDir(String name, KeyFormat format) throws IOException {
        Path dir = root.resolve(name);
        Files.createDirectories(dir);
        Files.copy(caCert, dir.resolve("ca-cert.pem"));
        issue(dir.resolve("server-key.pem"), dir.resolve("server-cert.pem"), "localhost", format,
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        return dir;
    }

    /** A client directory {@code root/NAME}: ca-cert.pem, client-cert.pem, client-key.pem. */
    public Path clientDir(String name) throws IOException {
        Path dir = root.resolve(name);
        Files.createDirectories(dir);
        Files.copy(caCert, dir.resolve("ca-cert.pem"));
        issue(dir.resolve("client-key.pem"), dir.resolve("client-cert.pem"), "vmm test client", KeyFormat.PKCS8_RSA,
                "extendedKeyUsage=clientAuth\n");
        return dir;
    }

    /** A key in {@code format} and a certificate for it signed by this CA. */
    public void issue(Path key, Path cert, String cn, KeyFormat format, String extensions) throws IOException {
        Path dir = key.getParent();
        switch (format) {
            case PKCS8_RSA -> run(dir, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key.toString());
            case PKCS1_RSA -> {
                Path tmp = dir.resolve(key.getFileName() + ".pkcs8");
                run(dir, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", tmp.toString());
                run(dir, "openssl", "rsa", "-in", tmp.toString(), "-traditional", "-out", key.toString());
                Files.delete(tmp);
            }
            case SEC1_EC -> run(dir, "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.toString());
        }
        Path csr = dir.resolve(cert.getFileName() + ".csr");
        Path ext = dir.resolve(cert.getFileName() + ".ext");
        Files.writeString(ext, extensions + "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n");
        run(dir, "openssl", "req", "-new", "-key", key.toString(), "-subj", "/CN=" + cn, "-out", csr.toString());
        run(dir, "openssl", "x509", "-req", "-in", csr.toString(), "-CA", caCert.toString(), "-CAkey", caKey.toString(),
                "-CAcreateserial", "-days", "2", "-out", cert.toString(), "-extfile", ext.toString());
        Files.delete(csr);
        Files.delete(ext);
    }

    /** Skips (or under CI=true fails) the test when openssl is not installed. */
    public static void openssl() {
        Tools.require("openssl", "openssl");
    }

    private static void run(Path dir, String... cmd) throws IOException {
        List<String> c = new ArrayList<>(List.of(cmd));
        Path log = Files.createTempFile("openssl", ".log");
        try {
            Process p = new ProcessBuilder(c).directory(dir.toFile()).redirectErrorStream(true).redirectOutput(log.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new File("/dev/null"))).start();
            if (!p.waitFor(60, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                throw new IOException("timed out: " + String.join(" ", c));
            }
            if (p.exitValue() != 0) {
                throw new IOException(String.join(" ", c) + " failed (" + p.exitValue() + "): " + Files.readString(log, StandardCharsets.UTF_8));
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted", e);
        } finally {
            Files.deleteIfExists(log);
        }
    }
}
