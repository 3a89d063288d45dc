package dev.vmm.nbd.driver;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.ProtocolDriverFactory;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import dev.vmm.core.tls.TlsCredentials;
import io.netty.channel.Channel;
import io.netty.handler.ssl.SslHandler;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.function.Function;

/**
 * {@code --blockdev driver=nbd,...}: parses QEMU's keys ({@link NbdTarget}), connects and
 * negotiates (retrying until {@code open-timeout} when one is given, as QEMU does), and returns
 * the node's {@link NbdBlockDriver}. Found by ServiceLoader.
 *
 * <p>Thread contract: the control thread that runs blockdev-add (it blocks for the handshake).
 */
public final class NbdDriverFactory implements ProtocolDriverFactory {
    @Override
    public String driver() {
        return "nbd";
    }

    @Override
    public BlockDriver open(Daemon daemon, Options o, String nodeName, boolean readOnly) throws OptionException, DaemonException {
        NbdTarget t = NbdTarget.parse(o);
        o.checkAllConsumed();
        Function<Channel, SslHandler> tls = null;
        Runnable release = null;
        if (t.tlsCreds() != null) {
            String user = "block node '" + nodeName + "'";
            TlsCredentials creds;
            try {
                creds = daemon.useTlsCredentials(t.tlsCreds(), user);
            } catch (DaemonException e) { // the only failure: no such object
                throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("tls-creds"),
                        "'" + o.fullKey("tls-creds") + "': no TLS credentials object with id '" + t.tlsCreds() + "'");
            }
            if (!creds.isClient()) {
                creds.removeUser(user);
                throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("tls-creds"),
                        "'" + o.fullKey("tls-creds") + "': tls-creds-x509 '" + t.tlsCreds() + "' is endpoint=server; driver=nbd needs endpoint=client");
            }
            // the name the server's certificate must carry: tls-hostname, else the host connected to
            // (QEMU's rule); a unix socket without tls-hostname checks the CA only
            InetSocketAddress inet = t.address() instanceof InetSocketAddress a ? a : null;
            String host = t.tlsHostname() != null ? t.tlsHostname() : inet != null ? inet.getHostString() : null;
            int port = inet != null ? inet.getPort() : 0;
            tls = ch -> creds.newClientHandler(ch.alloc(), host, port, host != null);
            release = () -> creds.removeUser(user);
        }
        Session s;
        try {
            s = connect(t, tls, o.optionName());
            if (!readOnly && s.has(dev.vmm.nbd.protocol.NbdTransmissionFlags.NBD_FLAG_READ_ONLY)) {
                s.abort();
                throw new DaemonException(o.optionName() + ": the NBD export '" + t.export() + "' of " + t.describe()
                        + " is read-only; open it with read-only=on");
            }
        } catch (DaemonException | RuntimeException e) {
            if (release != null) release.run();
            throw e;
        }
        return new NbdBlockDriver(t, nodeName, readOnly, s, tls, release);
    }

    /** One attempt bounded by the default timeout, or attempts until {@code open-timeout} ends. */
    private static Session connect(NbdTarget t, Function<Channel, SslHandler> tls, String option) throws DaemonException {
        long end = System.nanoTime() + t.openTimeoutMs() * 1_000_000L;
        long backoff = 50;
        while (true) {
            try {
                long left = Math.max(1, (end - System.nanoTime()) / 1_000_000L);
                return Connector.open(t, tls, left);
            } catch (IOException e) {
                if (!t.openRetry() || System.nanoTime() - end + backoff * 1_000_000L > 0) {
                    // QEMU's wording for a failed connection
                    throw new DaemonException(option + ": Failed to connect to '" + t.describe() + "': " + e.getMessage(), e);
                }
            }
            try {
                Thread.sleep(backoff);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new DaemonException(option + ": interrupted while connecting to '" + t.describe() + "'");
            }
            backoff = Math.min(1000, backoff * 2);
        }
    }
}
