package dev.vmm.nbd.driver;

import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import io.netty.channel.unix.DomainSocketAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;

/**
 * What a {@code driver=nbd} node connects to, parsed from QEMU's keys:
 * {@code server.type=inet,server.host=H,server.port=P} or {@code server.type=unix,server.path=P},
 * {@code export}, {@code tls-creds}, {@code tls-hostname}, {@code reconnect-delay},
 * {@code open-timeout}. Immutable; any thread.
 *
 * @param address         a TCP address (unresolved until connect) or a {@link DomainSocketAddress}
 * @param export          the export name ("" = the server's default export)
 * @param tlsCreds        the {@code tls-creds-x509} object id, or null for a plain connection
 * @param tlsHostname     the name the server's certificate must carry (default: the host)
 * @param reconnectDelayNs how long requests wait for a lost connection to come back (0 = fail at once)
 * @param openTimeoutMs   bound of one connect + handshake
 * @param openRetry       {@code open-timeout} was given: blockdev-add retries until it ends (QEMU)
 */
record NbdTarget(SocketAddress address, String export, String tlsCreds, String tlsHostname, long reconnectDelayNs, long openTimeoutMs,
        boolean openRetry) {
    /** QEMU's open-timeout default is 0 (no retry); one attempt is still bounded by this. */
    static final long DEFAULT_OPEN_TIMEOUT_MS = 10_000;
    /** QEMU's NBD_DEFAULT_PORT. */
    static final int NBD_DEFAULT_PORT = 10809;

    static NbdTarget parse(Options o) throws OptionException {
        Options s = o.sub("server");
        String type = s.choice("type", null, "inet", "unix");
        if (type == null) {
            throw new OptionException(OptionException.Kind.MISSING, o.optionName(), s.fullKey("type"),
                    "parameter '" + s.fullKey("type") + "' is missing (inet or unix)");
        }
        SocketAddress address;
        if (type.equals("inet")) {
            String host = s.required("host");
            long port = s.number("port", NBD_DEFAULT_PORT, 1, 65535);
            // QEMU's InetSocketAddress keys that change nothing here
            s.bool("numeric", false);
            s.bool("ipv4", true);
            s.bool("ipv6", true);
            s.bool("keep-alive", false);
            if (s.has("to")) s.number("to", 0, 0, 65535);
            address = InetSocketAddress.createUnresolved(host, (int) port);
        } else {
            String path = s.socketPath("path");
            s.bool("abstract", false);
            address = new DomainSocketAddress(path);
        }
        String export = o.optional("export", "");
        if (export.length() > 4096) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("export"), "export name longer than 4096 bytes (NBD's limit)");
        }
        String tlsCreds = o.optional("tls-creds", null);
        String tlsHostname = o.optional("tls-hostname", null);
        if (tlsHostname != null && tlsCreds == null) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("tls-hostname"), "tls-hostname needs tls-creds");
        }
        long reconnectDelay = o.number("reconnect-delay", 0, 0, 24 * 3600);
        long openTimeout = o.number("open-timeout", 0, 0, 24 * 3600);
        return new NbdTarget(address, export, tlsCreds, tlsHostname, reconnectDelay * 1_000_000_000L,
                openTimeout == 0 ? DEFAULT_OPEN_TIMEOUT_MS : openTimeout * 1000, openTimeout > 0);
    }

    /** QEMU's filename of an NBD node ({@code nbd_refresh_filename}): {@code nbd://host:port/export} or {@code nbd+unix:///export?socket=path}. */
    String filename() {
        if (address instanceof DomainSocketAddress u) {
            return export.isEmpty() ? "nbd+unix://?socket=" + u.path() : "nbd+unix:///" + export + "?socket=" + u.path();
        }
        InetSocketAddress a = (InetSocketAddress) address;
        return "nbd://" + a.getHostString() + ":" + a.getPort() + (export.isEmpty() ? "" : "/" + export);
    }

    /** The peer for log lines. */
    String describe() {
        return filename();
    }
}
