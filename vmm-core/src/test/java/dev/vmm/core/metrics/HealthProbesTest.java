package dev.vmm.core.metrics;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.Options;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** /healthz names an IOThread that does not run tasks; /readyz waits for the end of start-up. */
@Timeout(60)
class HealthProbesTest {
    @Test
    void aStuckIOThreadFailsHealthzAndStartUpGatesReadyz() throws Exception {
        Daemon daemon = Daemon.start();
        CountDownLatch release = new CountDownLatch(1);
        try {
            daemon.addIOThread("iot0");
            daemon.addIOThread("iot1");
            MetricsServer m = MetricsServer.configure(daemon, Options.of("--metrics",
                    Map.of("addr", Map.of("type", "inet", "host", "127.0.0.1", "port", "0"))));
            m.start();
            String base = "http://127.0.0.1:" + m.boundAddress().getPort();
            HttpClient http = HttpClient.newHttpClient();

            HttpResponse<String> notStarted = get(http, base + "/readyz");
            assertEquals(503, notStarted.statusCode());
            assertTrue(notStarted.body().contains("start-up has not finished"), notStarted.body());
            daemon.markStarted();
            assertEquals(200, get(http, base + "/readyz").statusCode());
            assertEquals(200, get(http, base + "/healthz").statusCode());

            daemon.iothread("iot1").execute(() -> { // a loop stuck in a blocking call
                try {
                    release.await();
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            });
            assertEquals(List.of("iothread iot1"), MetricsServer.hungLoops(daemon, 200));
            HttpResponse<String> sick = get(http, base + "/healthz");
            assertEquals(503, sick.statusCode());
            assertEquals("not answering within " + MetricsServer.HEALTH_TIMEOUT_MS + " ms: iothread iot1\n", sick.body());
            release.countDown();
            assertEquals(List.of(), MetricsServer.hungLoops(daemon, 5000));
        } finally {
            release.countDown();
            daemon.shutdown(false);
        }
    }

    private static HttpResponse<String> get(HttpClient http, String url) throws Exception {
        return http.send(HttpRequest.newBuilder(URI.create(url)).build(), HttpResponse.BodyHandlers.ofString());
    }
}
