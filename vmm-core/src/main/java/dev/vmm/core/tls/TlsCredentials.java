package dev.vmm.core.tls;

import io.netty.buffer.ByteBufAllocator;
import io.netty.handler.ssl.ClientAuth;
import io.netty.handler.ssl.OpenSsl;
import io.netty.handler.ssl.SslContext;
import io.netty.handler.ssl.SslContextBuilder;
import io.netty.handler.ssl.SslHandler;
import io.netty.handler.ssl.SslProvider;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.PrivateKey;
import java.security.Signature;
import java.security.cert.CertificateExpiredException;
import java.security.cert.CertificateNotYetValidException;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Objects;
import java.util.Set;
import javax.net.ssl.SSLException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * {@code --object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]}: the server
 * side of QEMU's x509 credentials. The directory holds QEMU's file names: {@value #CA_CERT}
 * (trusted CAs, always required, as in QEMU), {@value #SERVER_CERT} (our certificate, then any
 * intermediates) and {@value #SERVER_KEY} (its unencrypted key). With {@code verify-peer=on}
 * (QEMU's default) a client must present a certificate signed by one of the CAs; with
 * {@code off} no client certificate is asked for.
 *
 * <p>Everything is read and checked when the object is created, so a bad directory fails
 * {@code --object} (exit 1 before anything listens) or {@code object-add}, not a client's
 * handshake later. The checks mirror QEMU's {@code sanity-check=on}: certificates currently
 * valid, the key matching the certificate, the certificate issued by a CA of {@value #CA_CERT}.
 * A {@value #CA_CRL} is refused rather than ignored: silently accepting revoked client
 * certificates would let in someone who should not get in.
 *
 * <p>Provider: Netty's BoringSSL ({@link SslProvider#OPENSSL}, netty-tcnative) when it loads,
 * else the JDK's; {@code -Dvmm.tls.provider=jdk|openssl} forces one (tests, benchmarks). BoringSSL
 * is native code: fast from the first byte, where the JDK's TLS needs seconds of JIT warm-up
 * (docs/nbd-protocol-notes.md section 8). Not {@code OPENSSL_REFCNT}: with {@code OPENSSL} the
 * native context and engines are freed by the garbage collector, so credentials deleted with
 * {@code object-del} need no release call (an engine is also freed when its SslHandler is removed).
 *
 * <p>Thread contract: immutable once loaded, except the set of users, which is guarded by the
 * object's monitor. {@link #load} runs on a control-plane thread (file I/O);
 * {@link #newHandler} may be called from any thread (the main loop calls it for each client
 * that sends NBD_OPT_STARTTLS).
 */
public final class TlsCredentials {
    public static final String CA_CERT = "ca-cert.pem";
    public static final String CA_CRL = "ca-crl.pem";
    public static final String SERVER_CERT = "server-cert.pem";
    public static final String SERVER_KEY = "server-key.pem";
    /** {@code endpoint=client}: the certificate a client presents, optional as in QEMU. */
    public static final String CLIENT_CERT = "client-cert.pem";
    public static final String CLIENT_KEY = "client-key.pem";
    /** TLS versions we offer: 1.3 and 1.2 (what QEMU's default GnuTLS priority negotiates with current peers). */
    static final String[] PROTOCOLS = {"TLSv1.3", "TLSv1.2"};
    /**
     * Cipher suites: forward secrecy and AEAD only. TLS 1.3's are all of that; for 1.2 the
     * providers' defaults also offer static-RSA key exchange and CBC with SHA-1, which a storage
     * daemon has no reason to accept. GnuTLS (qemu-img, libnbd) and OpenSSL clients offer these.
     */
    static final List<String> CIPHERS = List.of(
            "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256");
    /** System property forcing a provider: {@code jdk} or {@code openssl}. */
    public static final String PROVIDER_PROPERTY = "vmm.tls.provider";

    private static final Logger LOG = LoggerFactory.getLogger(TlsCredentials.class);
    /** The fallback to the JDK is logged once per process, not once per object. */
    private static volatile boolean fallbackLogged;

    private final String id;
    private final Path dir;
    private final boolean verifyPeer;
    private final SslContext context;
    private final X509Certificate certificate;
    /** What uses these credentials (e.g. "the NBD server"); guarded by this. */
    private final Set<String> users = new LinkedHashSet<>();

    private final SslProvider provider;
    /** {@code endpoint=client}: the context makes client-mode handlers. */
    private boolean client;

    private TlsCredentials(String id, Path dir, boolean verifyPeer, SslProvider provider, SslContext context, X509Certificate certificate) {
        this.id = id;
        this.dir = dir;
        this.verifyPeer = verifyPeer;
        this.provider = provider;
        this.context = context;
        this.certificate = certificate;
    }

    /**
     * The provider for new credentials: {@value #PROVIDER_PROPERTY} if set, else BoringSSL when it
     * loads on this machine, else the JDK (one INFO line saying why). Read at every load, so a
     * test can switch it between objects.
     */
    public static SslProvider defaultProvider() throws TlsException {
        String forced = System.getProperty(PROVIDER_PROPERTY, "").strip();
        switch (forced) {
            case "jdk":
                return SslProvider.JDK;
            case "openssl":
                if (!OpenSsl.isAvailable()) {
                    throw new TlsException("-D" + PROVIDER_PROPERTY + "=openssl, but netty-tcnative (BoringSSL) does not load: "
                            + OpenSsl.unavailabilityCause());
                }
                return SslProvider.OPENSSL;
            case "":
                break;
            default:
                throw new TlsException("-D" + PROVIDER_PROPERTY + "=" + forced + ": expected 'jdk' or 'openssl'");
        }
        if (OpenSsl.isAvailable()) return SslProvider.OPENSSL;
        if (!fallbackLogged) {
            fallbackLogged = true;
            Throwable why = OpenSsl.unavailabilityCause();
            LOG.info("TLS: using the JDK provider (slower on first connections: JIT warm-up): netty-tcnative (BoringSSL) does not load: {}",
                    why == null ? "unknown reason" : why.toString());
        }
        return SslProvider.JDK;
    }

    /**
     * Reads and checks the directory's files and builds the server context.
     *
     * @param sanityCheck QEMU's {@code sanity-check}: validity dates and issuer checks (the key
     *                    must match its certificate either way, or no handshake could succeed)
     */
    public static TlsCredentials loadServer(String id, Path dir, boolean verifyPeer, boolean sanityCheck) throws TlsException {
        return loadServer(id, dir, verifyPeer, sanityCheck, defaultProvider());
    }

    /** {@link #loadServer(String, Path, boolean, boolean)} with the given provider ({@code JDK} or {@code OPENSSL}). */
    public static TlsCredentials loadServer(String id, Path dir, boolean verifyPeer, boolean sanityCheck, SslProvider provider) throws TlsException {
        Objects.requireNonNull(id, "id");
        if (provider != SslProvider.JDK && provider != SslProvider.OPENSSL) {
            throw new IllegalArgumentException("provider " + provider + ": JDK or OPENSSL");
        }
        if (!Files.isDirectory(dir)) {
            throw new TlsException(dir + ": " + (Files.exists(dir) ? "not a directory" : "no such directory")
                    + " (tls-creds-x509 'dir' must hold " + CA_CERT + ", " + SERVER_CERT + " and " + SERVER_KEY + ")");
        }
        Path caFile = dir.resolve(CA_CERT);
        Path certFile = dir.resolve(SERVER_CERT);
        Path keyFile = dir.resolve(SERVER_KEY);
        if (Files.exists(dir.resolve(CA_CRL))) {
            throw new TlsException(dir.resolve(CA_CRL) + ": certificate revocation lists are not supported;"
                    + " remove the file (and the revoked certificates' CA) or use qemu-storage-daemon");
        }
        List<X509Certificate> cas = Pem.certificates(caFile);
        List<X509Certificate> chain = Pem.certificates(certFile);
        PrivateKey key = Pem.privateKey(keyFile);
        X509Certificate cert = chain.get(0);
        checkKeyMatches(key, cert, keyFile, certFile);
        if (sanityCheck) {
            for (X509Certificate c : cas) checkValidity(c, caFile);
            for (X509Certificate c : chain) checkValidity(c, certFile);
            checkIssuedByCa(chain, cas, certFile, caFile);
        }
        SslContextBuilder b = SslContextBuilder.forServer(key, chain.toArray(new X509Certificate[0]))
                .sslProvider(provider)
                .protocols(PROTOCOLS)
                .ciphers(CIPHERS, io.netty.handler.ssl.SupportedCipherSuiteFilter.INSTANCE);
        if (verifyPeer) {
            b.clientAuth(ClientAuth.REQUIRE).trustManager(cas.toArray(new X509Certificate[0]));
        } else {
            b.clientAuth(ClientAuth.NONE);
        }
        try {
            return new TlsCredentials(id, dir, verifyPeer, provider, b.build(), cert);
        } catch (SSLException | RuntimeException e) {
            throw new TlsException(dir + ": cannot build a TLS context from " + SERVER_CERT + " and " + SERVER_KEY + ": " + e.getMessage(), e);
        }
    }

    /**
     * {@code endpoint=client} (a client of a remote TLS server, e.g. {@code driver=nbd}): the CA
     * that must have issued the server's certificate ({@value #CA_CERT}), and optionally our own
     * certificate and key ({@value #CLIENT_CERT}, {@value #CLIENT_KEY}) for servers that verify
     * their clients. With {@code verify-peer=off} the server's certificate is not checked.
     */
    public static TlsCredentials loadClient(String id, Path dir, boolean verifyPeer, boolean sanityCheck) throws TlsException {
        Objects.requireNonNull(id, "id");
        SslProvider provider = defaultProvider();
        if (!Files.isDirectory(dir)) {
            throw new TlsException(dir + ": " + (Files.exists(dir) ? "not a directory" : "no such directory")
                    + " (tls-creds-x509 'dir' of a client must hold " + CA_CERT + ", optionally " + CLIENT_CERT + " and " + CLIENT_KEY + ")");
        }
        Path caFile = dir.resolve(CA_CERT);
        Path certFile = dir.resolve(CLIENT_CERT);
        Path keyFile = dir.resolve(CLIENT_KEY);
        if (Files.exists(dir.resolve(CA_CRL))) {
            throw new TlsException(dir.resolve(CA_CRL) + ": certificate revocation lists are not supported");
        }
        List<X509Certificate> cas = verifyPeer || Files.exists(caFile) ? Pem.certificates(caFile) : List.of();
        SslContextBuilder b = SslContextBuilder.forClient()
                .sslProvider(provider)
                .protocols(PROTOCOLS)
                .ciphers(CIPHERS, io.netty.handler.ssl.SupportedCipherSuiteFilter.INSTANCE);
        if (verifyPeer) {
            if (sanityCheck) for (X509Certificate c : cas) checkValidity(c, caFile);
            b.trustManager(cas.toArray(new X509Certificate[0]));
        } else {
            b.trustManager(io.netty.handler.ssl.util.InsecureTrustManagerFactory.INSTANCE);
        }
        X509Certificate cert = null;
        if (Files.exists(certFile) || Files.exists(keyFile)) {
            List<X509Certificate> chain = Pem.certificates(certFile);
            PrivateKey key = Pem.privateKey(keyFile);
            cert = chain.get(0);
            checkKeyMatches(key, cert, keyFile, certFile);
            if (sanityCheck) {
                for (X509Certificate c : chain) checkValidity(c, certFile);
                if (!cas.isEmpty()) checkIssuedByCa(chain, cas, certFile, caFile);
            }
            b.keyManager(key, chain.toArray(new X509Certificate[0]));
        }
        try {
            TlsCredentials c = new TlsCredentials(id, dir, verifyPeer, provider, b.build(), cert);
            c.client = true;
            return c;
        } catch (SSLException | RuntimeException e) {
            throw new TlsException(dir + ": cannot build a TLS client context: " + e.getMessage(), e);
        }
    }

    /** True for {@code endpoint=client} credentials. */
    public boolean isClient() { return client; }

    /**
     * A client-mode handler for a connection to {@code host}:{@code port} ({@code endpoint=client}
     * only). With {@code verifyHost} (and verify-peer on), the server's certificate must name
     * {@code host} (a DNS name or an IP address in its subjectAltName), as QEMU's
     * {@code tls-hostname} check.
     */
    public SslHandler newClientHandler(ByteBufAllocator alloc, String host, int port, boolean verifyHost) {
        if (!client) throw new IllegalStateException("tls-creds-x509 " + id + " is endpoint=server");
        SslHandler h = host == null ? context.newHandler(alloc) : context.newHandler(alloc, host, port);
        if (verifyHost && verifyPeer && host != null) {
            javax.net.ssl.SSLParameters p = h.engine().getSSLParameters();
            p.setEndpointIdentificationAlgorithm("HTTPS");
            h.engine().setSSLParameters(p);
        }
        return h;
    }

    /** Signs a probe with the key and verifies it with the certificate's public key. */
    private static void checkKeyMatches(PrivateKey key, X509Certificate cert, Path keyFile, Path certFile) throws TlsException {
        String alg = switch (key.getAlgorithm()) {
            case "RSA" -> "SHA256withRSA";
            case "EC" -> "SHA256withECDSA";
            case "EdDSA", "Ed25519", "Ed448" -> "EdDSA";
            default -> null; // e.g. RSASSA-PSS needs parameters: the handshake will tell
        };
        if (alg == null) return;
        byte[] probe = "vmm tls-creds-x509 key check".getBytes(java.nio.charset.StandardCharsets.US_ASCII);
        boolean ok;
        try {
            Signature s = Signature.getInstance(alg);
            s.initSign(key);
            s.update(probe);
            byte[] sig = s.sign();
            Signature v = Signature.getInstance(alg);
            v.initVerify(cert.getPublicKey());
            v.update(probe);
            ok = v.verify(sig);
        } catch (GeneralSecurityException e) {
            ok = false;
        }
        if (!ok) throw new TlsException(keyFile + ": the private key does not match the certificate in " + certFile);
    }

    private static void checkValidity(X509Certificate c, Path file) throws TlsException {
        try {
            c.checkValidity();
        } catch (CertificateExpiredException e) {
            throw new TlsException(file + ": certificate '" + c.getSubjectX500Principal().getName() + "' expired on " + c.getNotAfter().toInstant());
        } catch (CertificateNotYetValidException e) {
            throw new TlsException(file + ": certificate '" + c.getSubjectX500Principal().getName() + "' is not valid before " + c.getNotBefore().toInstant());
        }
    }

    /** The last certificate of our chain must be signed by (or be) one of the CAs, as QEMU checks. */
    private static void checkIssuedByCa(List<X509Certificate> chain, List<X509Certificate> cas, Path certFile, Path caFile) throws TlsException {
        X509Certificate top = chain.get(chain.size() - 1);
        for (X509Certificate ca : cas) {
            if (ca.equals(top)) return;
            try {
                top.verify(ca.getPublicKey());
                return;
            } catch (GeneralSecurityException | RuntimeException e) {
                // not this CA
            }
        }
        throw new TlsException(certFile + ": certificate '" + top.getSubjectX500Principal().getName()
                + "' is not issued by a CA in " + caFile);
    }

    public String id() { return id; }

    public Path dir() { return dir; }

    /** True when clients must present a certificate signed by one of our CAs. */
    public boolean verifyPeer() { return verifyPeer; }

    /** The TLS implementation: {@code OPENSSL} (BoringSSL) or {@code JDK}. */
    public SslProvider provider() { return provider; }

    /** For logs: "BoringSSL" or "JDK TLS". */
    public String providerName() { return provider == SslProvider.OPENSSL ? "BoringSSL" : "JDK TLS"; }

    /** Our (leaf) certificate. */
    public X509Certificate certificate() { return certificate; }

    /** A server-mode handler for one connection; it starts the TLS handshake when added to an active channel. */
    public SslHandler newHandler(ByteBufAllocator alloc) {
        return context.newHandler(alloc);
    }

    // ---- users: an object in use may not be deleted ----

    public synchronized void addUser(String user) { users.add(user); }

    public synchronized void removeUser(String user) { users.remove(user); }

    /** Who uses these credentials now; empty when the object may be deleted. */
    public synchronized List<String> users() { return new ArrayList<>(users); }

    @Override
    public String toString() {
        return "tls-creds-x509 " + id + " (" + dir + (client ? ", endpoint=client" : "") + ", verify-peer=" + (verifyPeer ? "on" : "off") + ")";
    }
}
