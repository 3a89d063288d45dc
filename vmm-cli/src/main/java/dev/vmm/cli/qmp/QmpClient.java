package dev.vmm.cli.qmp;

import dev.vmm.core.json.Json;
import dev.vmm.core.json.JsonException;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import java.util.function.Predicate;

/**
 * A blocking QMP client for one unix socket: reads the greeting, negotiates capabilities (none),
 * then sends one request at a time and returns its reply. Events go to the event listener as
 * they are taken from the connection: while a command waits for its reply, or while
 * {@link #awaitEvent} waits. Works with vmm and with qemu-storage-daemon (whose replies end in
 * CRLF and have blanks after ':' and ',').
 *
 * <p>Thread contract: one thread at a time calls it; after the greeting a daemon reader thread
 * takes messages off the socket into a queue, so a wait for an event can time out.
 */
public final class QmpClient implements AutoCloseable {
    private final SocketChannel channel;
    private final BufferedReader in;
    private final OutputStream out;
    private final Map<String, Object> greeting;
    private Consumer<Map<String, Object>> events = e -> { };
    private long nextId;
    static final long GREETING_TIMEOUT_NANOS = 10_000_000_000L;
    /** Messages read by the reader thread; an {@link IOException} ends the stream. */
    private final BlockingQueue<Object> inbox = new LinkedBlockingQueue<>();

    private QmpClient(SocketChannel channel) throws IOException {
        this.channel = channel;
        // Not Channels.newInputStream/newOutputStream: on a blocking SocketChannel both hold the
        // channel's blocking lock, so a write would wait for the reader thread's read to end.
        this.in = new BufferedReader(new InputStreamReader(new java.io.InputStream() {
            @Override
            public int read() throws IOException {
                byte[] b = new byte[1];
                return read(b, 0, 1) < 0 ? -1 : b[0] & 0xff;
            }

            @Override
            public int read(byte[] b, int off, int len) throws IOException {
                return channel.read(java.nio.ByteBuffer.wrap(b, off, len));
            }
        }, StandardCharsets.UTF_8));
        this.out = new OutputStream() {
            @Override
            public void write(int b) throws IOException {
                write(new byte[] {(byte) b}, 0, 1);
            }

            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                java.nio.ByteBuffer buf = java.nio.ByteBuffer.wrap(b, off, len);
                while (buf.hasRemaining()) channel.write(buf);
            }
        };
        Thread reader = new Thread(this::readLoop, "qmp-client-reader");
        reader.setDaemon(true);
        reader.start();
        Map<String, Object> g = next(GREETING_TIMEOUT_NANOS);
        if (g == null) {
            throw new IOException("no QMP greeting within " + GREETING_TIMEOUT_NANOS / 1_000_000_000L
                    + " s (QEMU's monitor serves one client at a time: is another one connected?)");
        }
        if (!g.containsKey("QMP")) throw new IOException("not a QMP monitor: the greeting is " + Json.write(g));
        this.greeting = g;
    }

    private void readLoop() {
        try {
            while (true) inbox.add(readMessage());
        } catch (IOException e) {
            inbox.add(e);
        }
    }

    /** The next message; rethrows the reader's end of stream for every later call too. */
    @SuppressWarnings("unchecked")
    private Map<String, Object> next(long timeoutNanos) throws IOException {
        Object o;
        try {
            o = timeoutNanos < 0 ? inbox.take() : inbox.poll(timeoutNanos, TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while waiting for the monitor", e);
        }
        if (o instanceof IOException e) {
            inbox.add(e);
            throw new IOException(e.getMessage(), e);
        }
        return (Map<String, Object>) o;
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
            ch.close(); // ends the reader thread too
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
            Map<String, Object> m = next(-1);
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

    /**
     * Waits up to {@code timeoutNanos} for an event that {@code match} accepts; every event taken
     * meanwhile (the match too) goes to the listener first. Returns the event, or null at the
     * timeout. Replies to nothing pending are dropped.
     */
    public Map<String, Object> awaitEvent(Predicate<Map<String, Object>> match, long timeoutNanos) throws IOException {
        long deadline = System.nanoTime() + timeoutNanos;
        while (true) {
            long left = deadline - System.nanoTime();
            if (left <= 0) return null;
            Map<String, Object> m = next(left);
            if (m == null) return null;
            if (!m.containsKey("event")) continue;
            events.accept(m);
            if (match.test(m)) return m;
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
