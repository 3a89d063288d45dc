package dev.vmm.core.metrics;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.Options;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * {@code --metrics addr.type=inet,addr.host=H,addr.port=P}: serves {@code GET /metrics} in the
 * Prometheus text format ({@link PrometheusText}) over HTTP/1.1.
 *
 * <p>The JDK's {@code com.sun.net.httpserver} on one thread of its own, rather than a Netty
 * handler: scrapes are rare (every few seconds), need no dependency, and run off the main loop
 * and the IOThreads, which they must not block (a scrape waits for each node's home thread to
 * copy its latency histogram).
 *
 * <p>Thread contract: {@link #configure}, {@link #start} and {@link #close} are control-plane
 * calls (the CLI thread or the main loop); scrapes run on the server's own thread.
 */
public final class MetricsServer implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(MetricsServer.class);

    public static final String HELP_KEYS = """
              addr.type=inet             the socket kind (inet only: HTTP over TCP)
              addr.host=HOST             address to bind (e.g. 127.0.0.1, ::1, 0.0.0.0)
              addr.port=PORT             TCP port (Prometheus exporters commonly use 9100-9999)""";

    private final Daemon daemon;
    private final InetSocketAddress address;
    private HttpServer http;
    private ExecutorService executor;

    private MetricsServer(Daemon daemon, InetSocketAddress address) {
        this.daemon = daemon;
        this.address = address;
    }

    /** Parses the options and registers (does not yet start) the server on the daemon. */
    public static MetricsServer configure(Daemon daemon, Options o) throws OptionException, DaemonException {
        Options addr = o.sub("addr");
        String type = addr.optional("type", "inet");
        if (!type.equals("inet")) {
            throw new OptionException(OptionException.Kind.INVALID, o.optionName(), "addr.type",
                    "'addr.type' must be inet (metrics are served over HTTP on TCP), got '" + type + "'");
        }
        // No default port for metrics ("parameter 'addr.port' is missing"); 0 is any free port (tests), logged once bound.
        InetSocketAddress a = addr.inetAddress(-1);
        o.checkAllConsumed();
        MetricsServer m = new MetricsServer(daemon, a);
        daemon.putComponent(MetricsServer.class, m);
        return m;
    }

    /** Binds and starts serving; a port in use is an IOException naming the address. */
    public void start() throws IOException {
        try {
            http = HttpServer.create(address, 16);
        } catch (java.net.BindException e) {
            throw new IOException("cannot listen on " + describe() + ": " + e.getMessage(), e);
        }
        executor = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "vmm-metrics");
            t.setDaemon(true);
            return t;
        });
        http.setExecutor(executor);
        http.createContext("/", this::handle);
        http.start();
        LOG.info("metrics served on http://{}/metrics", describe());
    }

    /** The bound address (the real port when 0 was asked for by a test). */
    public InetSocketAddress boundAddress() { return http == null ? address : http.getAddress(); }

    private String describe() {
        InetSocketAddress a = boundAddress();
        String h = a.getHostString();
        return (h.contains(":") ? "[" + h + "]" : h) + ":" + a.getPort();
    }

    private void handle(HttpExchange x) throws IOException {
        try (x) {
            String path = x.getRequestURI().getPath();
            if (!path.equals("/metrics") && !path.equals("/")) {
                reply(x, 404, "not found: try /metrics\n");
            } else if (!x.getRequestMethod().equals("GET") && !x.getRequestMethod().equals("HEAD")) {
                x.getResponseHeaders().set("Allow", "GET, HEAD");
                reply(x, 405, "method not allowed\n");
            } else {
                x.getResponseHeaders().set("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
                reply(x, 200, PrometheusText.render(daemon));
            }
        } catch (RuntimeException e) {
            LOG.warn("metrics scrape failed: {}", e.toString());
        }
    }

    private static void reply(HttpExchange x, int status, String body) throws IOException {
        byte[] b = body.getBytes(StandardCharsets.UTF_8);
        boolean head = x.getRequestMethod().equals("HEAD");
        x.sendResponseHeaders(status, head ? -1 : b.length);
        if (!head) {
            try (OutputStream o = x.getResponseBody()) {
                o.write(b);
            }
        }
    }

    @Override
    public void close() {
        if (http != null) {
            http.stop(0);
            executor.shutdownNow();
            http = null;
        }
    }

    @Override
    public String toString() { return "metrics server"; }
}
