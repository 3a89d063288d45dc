/**
 * TLS credentials: QEMU's {@code tls-creds-x509} object (a directory of PEM files, see QEMU's
 * docs/system/tls.rst) loaded into a Netty {@link io.netty.handler.ssl.SslContext}: BoringSSL
 * (netty-tcnative) when it loads, else the JDK provider.
 *
 * <ul>
 * <li>{@link dev.vmm.core.tls.Pem}: certificates and private keys from PEM text (PKCS#8, and
 *     PKCS#1 RSA / SEC1 EC keys rewrapped as PKCS#8); syntax only.</li>
 * <li>{@link dev.vmm.core.tls.TlsCredentials}: the directory's files, the sanity checks QEMU does
 *     at load time, the server context, and who uses the object.</li>
 * </ul>
 *
 * Errors are {@link dev.vmm.core.tls.TlsException}s: one line that names the file.
 */
package dev.vmm.core.tls;
