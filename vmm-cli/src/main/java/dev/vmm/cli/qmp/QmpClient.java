package dev.vmm.cli.qmp;

import dev.vmm.core.json.Json;
import dev.vmm.core.json.JsonException;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.Channels;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Map;
import java.util.Objects;
import java.util.function.Consumer;

/**
 * A blocking QMP client for one unix socket: reads the greeting, negotiates capabilities (none),
 * then sends one request at a time and returns its reply. Events that arrive before a reply go
 * to the event listener. Works with vmm and with qemu-storage-daemon (whose replies end in CRLF
 * and have blanks after ':' and ',').
 *
 * <p>Thread contract: one thread at a time.
 */
public final class QmpClient implements AutoCloseable {
    private final SocketChannel channel;
    private final BufferedReader in;
    private final OutputStream out;
    private final Map<String, Object> greeting;
    private Consumer<Map<String, Object>> events = e -> { };
    private long nextId;

    private QmpClient(SocketChannel channel) throws IOException {
        this.channel = channel;
        this.in = new BufferedReader(new InputStreamReader(Channels.newInputStream(channel), StandardCharsets.UTF_8));
        this.out = Channels.newOutputStream(channel);
        Map<String, Object> g = readMessage();
        if (!g.containsKey("QMP")) throw new IOException("not a QMP monitor: the greeting is " + Json.write(g));
        this.greeting = g;
    }

    /** Connects and negotiates capabilities. */
    public static QmpClient connect(Path socket) throws IOException {
        SocketChannel ch;
        try {
            ch = SocketChannel.open(UnixDomainSocketAddress.of(socket));
        } catch (IOException e) {
            throw new IOException("cannot connect to " + socket + ": " + e.getMessage(), e);
        }
        QmpClient c;
        try {
            c = new QmpClient(ch);
            Map<String, Object> r = c.execute(new ShellSyntax.Request("qmp_capabilities", Map.of()));
            if (r.containsKey("error")) throw new IOException("qmp_capabilities failed: " + Json.write(r.get("error")));
        } catch (IOException | RuntimeException e) {
            ch.close();
            throw e;
        }
        return c;
    }

    public Map<String, Object> greeting() { return greeting; }

    /** Where events go (by default nowhere). */
    public void onEvent(Consumer<Map<String, Object>> listener) {
        this.events = Objects.requireNonNull(listener);
    }

    /** Sends one request and returns the reply object ({@code return} or {@code error}). */
    public Map<String, Object> execute(ShellSyntax.Request request) throws IOException {
        String id = "vmm-" + (++nextId);
        out.write((Json.write(request.toJson(id)) + "\n").getBytes(StandardCharsets.UTF_8));
        out.flush();
        while (true) {
            Map<String, Object> m = readMessage();
            if (m.containsKey("event")) {
                events.accept(m);
                continue;
            }
            if (m.containsKey("return") || m.containsKey("error")) {
                if (id.equals(m.get("id")) || !m.containsKey("id")) {
                    m.remove("id");
                    return m;
                }
            }
            // Anything else (a reply to another id) is not ours: skip it.
        }
    }

    @SuppressWarnings("unchecked")
    private Map<String, Object> readMessage() throws IOException {
        String line;
        do {
            line = in.readLine();
            if (line == null) throw new IOException("the monitor closed the connection");
        } while (line.isBlank());
        try {
            Object o = Json.parse(line.strip());
            if (o instanceof Map) return (Map<String, Object>) o;
            throw new IOException("unexpected message from the monitor: " + line);
        } catch (JsonException e) {
            throw new IOException("malformed message from the monitor: " + e.getMessage(), e);
        }
    }

    @Override
    public void close() throws IOException {
        channel.close();
    }
}
