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
 * Prometheus text format ({@link PrometheusText}) over HTTP/1.1, and two probes for managers
 * (Kubernetes liveness and readiness, systemd watchdogs, load balancers):
 * <ul>
 * <li>{@code /healthz}: 200 when every event loop (the main loop, the control loop if started,
 *     every IOThread) runs a no-op task within {@link #HEALTH_TIMEOUT_MS}; else 503 naming the
 *     loops that did not answer. A loop stuck in a blocking call or a busy loop is what it finds.</li>
 * <li>{@code /readyz}: 200 once start-up has finished and every listener still listens
 *     ({@link Daemon#notReady}); else 503 with the reasons.</li>
 * </ul>
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

    /** How long {@code /healthz} waits for each event loop to run a no-op task. */
    public static final long HEALTH_TIMEOUT_MS = 2000;

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
            if (!path.equals("/metrics") && !path.equals("/") && !path.equals("/healthz") && !path.equals("/readyz")) {
                reply(x, 404, "not found: try /metrics, /healthz or /readyz\n");
            } else if (!x.getRequestMethod().equals("GET") && !x.getRequestMethod().equals("HEAD")) {
                x.getResponseHeaders().set("Allow", "GET, HEAD");
                reply(x, 405, "method not allowed\n");
            } else if (path.equals("/healthz")) {
                x.getResponseHeaders().set("Content-Type", "text/plain; charset=utf-8");
                java.util.List<String> hung = hungLoops(daemon, HEALTH_TIMEOUT_MS);
                reply(x, hung.isEmpty() ? 200 : 503, hung.isEmpty() ? "ok\n"
                        : "not answering within " + HEALTH_TIMEOUT_MS + " ms: " + String.join(", ", hung) + "\n");
            } else if (path.equals("/readyz")) {
                x.getResponseHeaders().set("Content-Type", "text/plain; charset=utf-8");
                java.util.List<String> why = daemon.notReady();
                reply(x, why.isEmpty() ? 200 : 503, why.isEmpty() ? "ready\n" : "not ready: " + String.join("; ", why) + "\n");
            } else {
                x.getResponseHeaders().set("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
                reply(x, 200, PrometheusText.render(daemon));
            }
        } catch (RuntimeException e) {
            LOG.warn("metrics scrape failed: {}", e.toString());
        }
    }

    /**
     * The event loops that did not run a no-op task within {@code timeoutMs} (all asked at once,
     * so the answer takes at most one timeout), as {@code iothread ID}. Any thread but a loop's.
     */
    public static java.util.List<String> hungLoops(Daemon daemon, long timeoutMs) {
        java.util.List<dev.vmm.iothread.IOThread> loops = new java.util.ArrayList<>();
        loops.add(daemon.mainLoop());
        if (daemon.controlLoopIfStarted() != null) loops.add(daemon.controlLoopIfStarted());
        loops.addAll(daemon.iothreads());
        java.util.Map<dev.vmm.iothread.IOThread, java.util.concurrent.CompletableFuture<Boolean>> asked = new java.util.LinkedHashMap<>();
        for (dev.vmm.iothread.IOThread t : loops) {
            java.util.concurrent.CompletableFuture<Boolean> f;
            try {
                f = t.submit(() -> Boolean.TRUE);
            } catch (RuntimeException e) { // shut down: it will never answer
                f = java.util.concurrent.CompletableFuture.completedFuture(Boolean.FALSE);
            }
            asked.put(t, f);
        }
        long deadline = System.nanoTime() + java.util.concurrent.TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        java.util.List<String> hung = new java.util.ArrayList<>();
        for (java.util.Map.Entry<dev.vmm.iothread.IOThread, java.util.concurrent.CompletableFuture<Boolean>> e : asked.entrySet()) {
            long left = Math.max(0, deadline - System.nanoTime());
            boolean ok;
            try {
                ok = e.getValue().get(left, java.util.concurrent.TimeUnit.NANOSECONDS);
            } catch (java.util.concurrent.TimeoutException | java.util.concurrent.ExecutionException ex) {
                ok = false;
            } catch (InterruptedException ex) {
                Thread.currentThread().interrupt();
                ok = false;
            }
            if (!ok) hung.add("iothread " + e.getKey().id());
        }
        return hung;
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
