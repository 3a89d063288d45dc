package dev.vmm.nbd.server;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.core.tls.TlsCredentials;
import io.netty.channel.unix.DomainSocketAddress;
import java.io.IOException;
import java.net.SocketAddress;

/**
 * The daemon's NBD server as a component: built from {@code --nbd-server} (or QMP
 * {@code nbd-server-start}) options, stopped at shutdown. Control plane only.
 */
public final class NbdServerComponent implements AutoCloseable {
    /** qemu-storage-daemon's default for {@code handshake-max-seconds}. */
    public static final int DEFAULT_HANDSHAKE_MAX_SECONDS = 10;

    private final NbdServer server;

    private NbdServerComponent(NbdServer server) {
        this.server = server;
    }

    public NbdServer server() { return server; }

    public static final String HELP_KEYS = """
              addr.type=inet|unix        listen on TCP or on a unix socket
              addr.host=HOST             inet: address to bind (e.g. 127.0.0.1, ::1, 0.0.0.0)
              addr.port=PORT             inet: TCP port (10809 is NBD's)
              addr.path=PATH             unix: socket path (created mode 0600; a stale socket is replaced)
              max-connections=N          refuse clients beyond N at once (0: no limit, the default)
              handshake-max-seconds=N    drop clients that have not finished the handshake after N s (default 10, 0: never)
              tls-creds=ID               require TLS (NBD_OPT_STARTTLS) with this --object tls-creds-x509; plain clients get nothing""";

    /** Registers (does not yet start) a server with these settings on the daemon. */
    public static NbdServerComponent configure(Daemon daemon, NbdServer.Config config) throws DaemonException {
        NbdServerComponent c = new NbdServerComponent(new NbdServer(daemon.mainLoop(), config));
        daemon.putComponent(NbdServerComponent.class, c);
        return c;
    }

    /** Parses the options and registers (does not yet start) the server on the daemon. */
    public static NbdServerComponent configure(Daemon daemon, Options o) throws OptionException, DaemonException {
        SocketAddress address = address(o);
        int max = (int) o.number("max-connections", 0, 0, Integer.MAX_VALUE);
        int handshake = (int) o.number("handshake-max-seconds", DEFAULT_HANDSHAKE_MAX_SECONDS, 0, 24 * 3600);
        String tlsCreds = tlsCredsId(o);
        o.checkAllConsumed();
        TlsCredentials tls = null;
        if (tlsCreds != null) {
            try {
                tls = daemon.useTlsCredentials(tlsCreds, TLS_USER);
            } catch (DaemonException e) { // the only failure: no such object
                throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "tls-creds",
                        "'tls-creds': no TLS credentials object with id '" + tlsCreds + "'");
            }
            if (tls.isClient()) {
                tls.removeUser(TLS_USER);
                throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "tls-creds",
                        "'tls-creds': tls-creds-x509 '" + tlsCreds + "' is endpoint=client; the NBD server needs endpoint=server");
            }
        }
        try {
            return configure(daemon, new NbdServer.Config(address, max, handshake, tls));
        } catch (DaemonException e) {
            if (tls != null) tls.removeUser(TLS_USER);
            throw new DaemonException(o.optionName() + ": " + e.getMessage(), e);
        }
    }

    /**
     * {@code tls-creds=ID} (a {@code tls-creds-x509} object), or null. {@code tls-authz} (QEMU's
     * client-name ACL) is refused, not ignored: dropping it would let in clients it would not.
     */
    static String tlsCredsId(Options o) throws OptionException {
        if (o.has("tls-authz")) {
            o.required("tls-authz");
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "tls-authz",
                    "'tls-authz': authorization objects are not supported; every client with a certificate from the CA is accepted");
        }
        return o.has("tls-creds") ? o.required("tls-creds") : null;
    }

    /** What marks the credentials as used, so that object-del refuses them while the server lives. */
    static final String TLS_USER = "the NBD server";

    /**
     * Registers (does not yet start) a server; with {@code tlsCredsId} the server requires TLS with
     * those credentials and holds them until {@link #close}.
     */
    public static NbdServerComponent configure(Daemon daemon, SocketAddress address, int maxConnections, int handshakeMaxSeconds,
            String tlsCredsId) throws DaemonException {
        TlsCredentials tls = null;
        if (tlsCredsId != null) {
            tls = daemon.useTlsCredentials(tlsCredsId, TLS_USER);
            if (tls.isClient()) {
                tls.removeUser(TLS_USER);
                throw new DaemonException("tls-creds-x509 '" + tlsCredsId + "' is endpoint=client; the NBD server needs endpoint=server");
            }
        }
        NbdServerComponent c = new NbdServerComponent(new NbdServer(daemon.mainLoop(),
                new NbdServer.Config(address, maxConnections, handshakeMaxSeconds, tls)));
        try {
            daemon.putComponent(NbdServerComponent.class, c);
        } catch (DaemonException e) {
            c.releaseTls();
            throw e;
        }
        return c;
    }

    private void releaseTls() {
        TlsCredentials tls = server.config().tls();
        if (tls != null) tls.removeUser(TLS_USER);
    }

    /** {@code addr.type=inet,addr.host=...,addr.port=...} or {@code addr.type=unix,addr.path=...} (QAPI SocketAddress). */
    public static SocketAddress address(Options o) throws OptionException {
        Options addr = o.sub("addr");
        return address(addr, addr.choice("type", "inet", "inet", "unix"));
    }

    /**
     * The fields of one socket address of {@code type} ({@code inet}: host, port; {@code unix}:
     * path) read from {@code fields}; errors name the full dotted key ({@code addr.data.port}).
     */
    public static SocketAddress address(Options fields, String type) throws OptionException {
        if (type.equals("unix")) {
            String path = fields.socketPath("path");
            return new DomainSocketAddress(path);
        }
        return fields.inetAddress(10809); // NBD's port
    }

    public void start() throws IOException {
        server.start();
    }

    @Override
    public void close() {
        server.stop(10_000);
        releaseTls();
    }

    @Override
    public String toString() { return "NBD server"; }
}
