package dev.vmm.core.tls;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * PEM files (RFC 7468) as {@code certtool} and {@code openssl} write them: certificates, and
 * unencrypted private keys as PKCS#8 ({@code BEGIN PRIVATE KEY}), PKCS#1 RSA
 * ({@code BEGIN RSA PRIVATE KEY}) or SEC1 EC ({@code BEGIN EC PRIVATE KEY}). The JDK reads only
 * PKCS#8, so the other two are wrapped into a PKCS#8 PrivateKeyInfo (RFC 5208) first; that takes
 * a few DER bytes, not a crypto library. Text around the blocks (certtool prints a dump of the
 * key before it) is ignored.
 *
 * <p>Thread contract: stateless; any thread (the control plane calls it while loading
 * credentials).
 */
public final class Pem {
    private static final org.slf4j.Logger LOG = org.slf4j.LoggerFactory.getLogger(Pem.class);

    private static final Pattern BLOCK = Pattern.compile(
            "-----BEGIN ([A-Z0-9 ]+)-----\\R(.*?)-----END \\1-----", Pattern.DOTALL);

    /** rsaEncryption (RFC 8017 A.1) AlgorithmIdentifier: OID 1.2.840.113549.1.1.1, NULL parameters. */
    private static final byte[] RSA_ALGORITHM = {
        0x30, 0x0d, 0x06, 0x09, 0x2a, (byte) 0x86, 0x48, (byte) 0x86, (byte) 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};
    /** id-ecPublicKey (RFC 5480 2.1.1): OID 1.2.840.10045.2.1; the curve OID follows as parameter. */
    private static final byte[] EC_PUBLIC_KEY_OID = {0x06, 0x07, 0x2a, (byte) 0x86, 0x48, (byte) 0xce, 0x3d, 0x02, 0x01};
    /** PKCS#8 version 0. */
    private static final byte[] VERSION_0 = {0x02, 0x01, 0x00};

    private static final int DER_SEQUENCE = 0x30;
    private static final int DER_OCTET_STRING = 0x04;
    /** SEC1 ECPrivateKey's {@code parameters [0] ECParameters}. */
    private static final int DER_CONTEXT_0 = 0xa0;

    private Pem() {}

    /** Every certificate in {@code file}, in file order; at least one. */
    public static List<X509Certificate> certificates(Path file) throws TlsException {
        String text = read(file);
        List<X509Certificate> out = new ArrayList<>();
        CertificateFactory cf;
        try {
            cf = CertificateFactory.getInstance("X.509");
        } catch (CertificateException e) {
            throw new IllegalStateException("the JDK has no X.509 certificate factory", e);
        }
        Matcher m = BLOCK.matcher(text);
        while (m.find()) {
            if (!m.group(1).equals("CERTIFICATE")) continue;
            try {
                out.add((X509Certificate) cf.generateCertificate(new ByteArrayInputStream(base64(file, m.group(2)))));
            } catch (CertificateException e) {
                throw new TlsException(file + ": certificate " + (out.size() + 1) + " does not parse: " + e.getMessage(), e);
            }
        }
        if (out.isEmpty()) throw new TlsException(file + ": no PEM certificate ('-----BEGIN CERTIFICATE-----') in the file");
        return out;
    }

    /**
     * The first private key in {@code file}. Logs one WARN line when the file is readable by its
     * group or by everyone (QEMU does not check; a key others can read is a key others may have).
     * The decoded key bytes are zeroed once the key object is built; the PEM text and the JDK's
     * own copies cannot be.
     */
    public static PrivateKey privateKey(Path file) throws TlsException {
        String text = read(file);
        Matcher m = BLOCK.matcher(text);
        while (m.find()) {
            String label = m.group(1);
            if (!label.endsWith("PRIVATE KEY")) continue;
            String body = m.group(2);
            if (label.equals("ENCRYPTED PRIVATE KEY") || body.contains("Proc-Type: 4,ENCRYPTED")) {
                throw new TlsException(file + ": the private key is encrypted; give an unencrypted key"
                        + " (e.g. 'openssl pkcs8 -topk8 -nocrypt -in KEY -out " + file.getFileName() + "')");
            }
            byte[] der = base64(file, body);
            byte[] pkcs8 = null;
            try {
                pkcs8 = switch (label) {
                    case "PRIVATE KEY" -> der;
                    case "RSA PRIVATE KEY" -> wrapPkcs1(der);
                    case "EC PRIVATE KEY" -> wrapSec1(file, der);
                    default -> throw new TlsException(file + ": unsupported key format '" + label + "' (PKCS#8, PKCS#1 RSA and SEC1 EC"
                            + " keys are supported; convert with 'openssl pkcs8 -topk8 -nocrypt')");
                };
                PrivateKey key = decodePkcs8(file, pkcs8);
                String exposed = readableByOthers(file); // only about a key that works: a broken one gets its error alone
                if (exposed != null) LOG.warn("{}", exposed);
                return key;
            } finally {
                java.util.Arrays.fill(der, (byte) 0);
                if (pkcs8 != null) java.util.Arrays.fill(pkcs8, (byte) 0);
            }
        }
        throw new TlsException(file + ": no PEM private key ('-----BEGIN PRIVATE KEY-----') in the file");
    }

    /**
     * A warning when {@code keyFile} may be read by its group or by everyone, else null (also
     * when the file system has no POSIX permissions or the file cannot be inspected).
     */
    static String readableByOthers(Path keyFile) {
        java.util.Set<java.nio.file.attribute.PosixFilePermission> p;
        try {
            p = Files.getPosixFilePermissions(keyFile);
        } catch (IOException | UnsupportedOperationException e) {
            return null; // read() reports a missing or unreadable file
        }
        if (!Files.isRegularFile(keyFile)) return null;
        boolean group = p.contains(java.nio.file.attribute.PosixFilePermission.GROUP_READ);
        boolean others = p.contains(java.nio.file.attribute.PosixFilePermission.OTHERS_READ);
        if (!group && !others) return null;
        return keyFile + ": the private key is readable by " + (others ? "every user" : "its group") + " (mode "
                + java.nio.file.attribute.PosixFilePermissions.toString(p) + "); restrict it with 'chmod 600 " + keyFile + "'";
    }

    private static PrivateKey decodePkcs8(Path file, byte[] pkcs8) throws TlsException {
        // The algorithm is in the AlgorithmIdentifier; trying each factory reads it for us.
        for (String alg : new String[] {"RSA", "EC", "EdDSA", "RSASSA-PSS"}) {
            try {
                return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(pkcs8));
            } catch (GeneralSecurityException | RuntimeException e) {
                // not this algorithm (or not valid for it): try the next
            }
        }
        throw new TlsException(file + ": the private key does not parse as an RSA, EC or Ed25519 key");
    }

    /** PKCS#1 RSAPrivateKey → PrivateKeyInfo { version 0, rsaEncryption, OCTET STRING { key } }. */
    static byte[] wrapPkcs1(byte[] pkcs1) {
        return tlv(DER_SEQUENCE, concat(VERSION_0, RSA_ALGORITHM, tlv(DER_OCTET_STRING, pkcs1)));
    }

    /**
     * SEC1 ECPrivateKey (RFC 5915: SEQUENCE { version 1, OCTET STRING key, [0] curve OID, [1]
     * public key }) → PrivateKeyInfo { version 0, { id-ecPublicKey, curve OID }, OCTET STRING { key } }.
     */
    static byte[] wrapSec1(Path file, byte[] sec1) throws TlsException {
        byte[] curve = null;
        try {
            int[] outer = header(sec1, 0);
            if (outer[0] != DER_SEQUENCE) throw new IllegalArgumentException("not a SEQUENCE");
            int at = outer[1];
            int end = outer[1] + outer[2];
            while (at < end) {
                int[] h = header(sec1, at);
                if (h[0] == DER_CONTEXT_0) {
                    int[] oid = header(sec1, h[1]);
                    curve = java.util.Arrays.copyOfRange(sec1, h[1], oid[1] + oid[2]);
                }
                at = h[1] + h[2];
            }
        } catch (RuntimeException e) {
            throw new TlsException(file + ": the EC private key does not parse (" + e.getMessage() + ")");
        }
        if (curve == null) throw new TlsException(file + ": the EC private key does not name its curve");
        return tlv(DER_SEQUENCE, concat(VERSION_0, tlv(DER_SEQUENCE, concat(EC_PUBLIC_KEY_OID, curve)), tlv(DER_OCTET_STRING, sec1)));
    }

    /** {tag, content start, content length} of the DER element at {@code at}; bounds-checked. */
    private static int[] header(byte[] d, int at) {
        if (at + 2 > d.length) throw new IllegalArgumentException("truncated");
        int tag = d[at] & 0xff;
        int len = d[at + 1] & 0xff;
        int start = at + 2;
        if (len >= 0x80) {
            int n = len & 0x7f;
            if (n == 0 || n > 3 || start + n > d.length) throw new IllegalArgumentException("bad length");
            len = 0;
            for (int i = 0; i < n; i++) len = (len << 8) | (d[start + i] & 0xff);
            start += n;
        }
        if (start + len > d.length) throw new IllegalArgumentException("truncated");
        return new int[] {tag, start, len};
    }

    private static byte[] tlv(int tag, byte[] content) {
        ByteArrayOutputStream b = new ByteArrayOutputStream(content.length + 6);
        b.write(tag);
        int n = content.length;
        if (n < 0x80) {
            b.write(n);
        } else if (n < 0x100) {
            b.write(0x81);
            b.write(n);
        } else if (n < 0x10000) {
            b.write(0x82);
            b.write(n >> 8);
            b.write(n);
        } else {
            b.write(0x83);
            b.write(n >> 16);
            b.write(n >> 8);
            b.write(n);
        }
        b.writeBytes(content);
        return b.toByteArray();
    }

    private static byte[] concat(byte[]... parts) {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        for (byte[] p : parts) b.writeBytes(p);
        return b.toByteArray();
    }

    private static byte[] base64(Path file, String body) throws TlsException {
        try {
            return Base64.getMimeDecoder().decode(body.replaceAll("(?m)^[A-Za-z-]+:.*$", ""));
        } catch (IllegalArgumentException e) {
            throw new TlsException(file + ": bad base64 in a PEM block: " + e.getMessage());
        }
    }

    /** The file as text; a missing or unreadable file is an error that names it. */
    static String read(Path file) throws TlsException {
        try {
            if (Files.isDirectory(file)) throw new TlsException(file + ": is a directory, expected a PEM file");
            return new String(Files.readAllBytes(file), StandardCharsets.ISO_8859_1);
        } catch (NoSuchFileException e) {
            throw new TlsException(file + ": no such file");
        } catch (AccessDeniedException e) {
            throw new TlsException(file + ": permission denied");
        } catch (IOException e) {
            throw new TlsException(file + ": cannot read: " + e.getMessage(), e);
        }
    }
}
