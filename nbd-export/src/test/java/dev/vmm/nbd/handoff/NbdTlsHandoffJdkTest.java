package dev.vmm.nbd.handoff;

import static org.junit.jupiter.api.Assertions.assertEquals;

import dev.vmm.core.tls.TlsCredentials;
import io.netty.handler.ssl.SslProvider;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * {@link NbdTlsHandoffTest} on the JDK's TLS provider. The credentials come from
 * {@code --object}, which has no provider key (QEMU has none), so the system property picks it;
 * test classes in this fork run one after the other.
 */
class NbdTlsHandoffJdkTest extends NbdTlsHandoffTest {
    private static String saved;

    @BeforeAll
    static void jdk() {
        saved = System.setProperty(TlsCredentials.PROVIDER_PROPERTY, "jdk");
    }

    @AfterAll
    static void restore() {
        if (saved == null) System.clearProperty(TlsCredentials.PROVIDER_PROPERTY);
        else System.setProperty(TlsCredentials.PROVIDER_PROPERTY, saved);
    }

    @Test
    void theServerUsesTheJdkProvider() {
        assertEquals(SslProvider.JDK, nbd.server().config().tls().provider());
    }
}
