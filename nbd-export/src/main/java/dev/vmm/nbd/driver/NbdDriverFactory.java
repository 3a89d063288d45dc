package dev.vmm.nbd.driver;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.ProtocolDriverFactory;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import java.io.IOException;

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
        if (t.tlsCreds() != null) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), o.fullKey("tls-creds"),
                    "'tls-creds': TLS to an NBD server is not supported by driver=nbd yet");
        }
        Session s = connect(t, o.optionName());
        if (!readOnly && s.has(dev.vmm.nbd.protocol.NbdTransmissionFlags.NBD_FLAG_READ_ONLY)) {
            s.abort();
            throw new DaemonException(o.optionName() + ": the NBD export '" + t.export() + "' of " + t.describe()
                    + " is read-only; open it with read-only=on");
        }
        return new NbdBlockDriver(t, nodeName, readOnly, s, null, null);
    }

    /** One attempt bounded by the default timeout, or attempts until {@code open-timeout} ends. */
    private static Session connect(NbdTarget t, String option) throws DaemonException {
        long end = System.nanoTime() + t.openTimeoutMs() * 1_000_000L;
        long backoff = 50;
        while (true) {
            try {
                long left = Math.max(1, (end - System.nanoTime()) / 1_000_000L);
                return Connector.open(t, null, left);
            } catch (IOException e) {
                if (t.openTimeoutMs() == NbdTarget.DEFAULT_OPEN_TIMEOUT_MS || System.nanoTime() - end + backoff * 1_000_000L > 0) {
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
