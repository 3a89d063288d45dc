package dev.vmm.nbd.server;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.netty.handler.ssl.SslProvider;
import org.junit.jupiter.api.Test;

/**
 * Every {@link NbdTlsTest} on the JDK's TLS provider, the fallback when netty-tcnative does not
 * load: the handler's buffers differ (heap plaintext, which the transmission handler copies to
 * direct memory) and so do its failure paths.
 */
class NbdTlsJdkTest extends NbdTlsTest {
    @Override
    SslProvider provider() { return SslProvider.JDK; }

    @Test
    void theServerUsesTheJdkProvider() {
        assertEquals(SslProvider.JDK, server.config().tls().provider());
    }
}
