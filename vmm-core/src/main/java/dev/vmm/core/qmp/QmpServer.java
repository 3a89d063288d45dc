package dev.vmm.core.qmp;

import dev.vmm.core.json.Json;
import dev.vmm.core.net.UnixSocketFiles;
import dev.vmm.iothread.IOThread;
import io.netty.bootstrap.ServerBootstrap;
import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.WriteBufferWaterMark;
import io.netty.channel.epoll.EpollServerDomainSocketChannel;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Instant;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The QMP monitors of the daemon: any number of unix socket listeners ({@code --chardev socket}
 * + {@code --monitor}, or {@code --qmp PATH}), any number of clients on each, one command table,
 * and events broadcast to every client past capabilities negotiation.
 *
 * <p>Listening sockets follow {@link UnixSocketFiles}: a stale file is replaced, the socket is
 * 0600, and it is removed on {@link #close()}. A client that stops reading while events pile up
 * beyond {@value #MAX_PENDING_OUTPUT} bytes is disconnected rather than buffered without bound.
 *
 * <p>Thread contract: connections live on the main loop. {@link #listen} and {@link #close} are
 * control-plane calls from a thread other than the main loop (they wait for bind and close);
 * {@link #emit} may be called from any thread. Commands that block run on one control thread
 * ({@link #blocking}), in submission order.
 */
public final class QmpServer implements AutoCloseable {
    private static final Logger LOG = LoggerFactory.getLogger(QmpServer.class);
    /** Output a client may leave unread before it is disconnected. */
    static final int MAX_PENDING_OUTPUT = 16 << 20;

    /** The QEMU version we answer to {@code query-version} and in the greeting: the QSD we replace. */
    public record Version(int major, int minor, int micro, String pkg) {
        public static final Version DEFAULT = new Version(7, 2, 0, "vmm");
    }

    private final IOThread main;
    private final QmpCommands commands;
    private final Version version;
    /** Listening channels and their socket paths (a channel made from a listening fd knows no address). */
    private final java.util.Map<Channel, Path> listeners = new java.util.LinkedHashMap<>();
    private final Set<Channel> clients = ConcurrentHashMap.newKeySet();
    private final ExecutorService control = Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "vmm-qmp-control");
        t.setDaemon(true);
        return t;
    });

    public QmpServer(IOThread main, QmpCommands commands, Version version) {
        this.main = Objects.requireNonNull(main, "main");
        this.commands = Objects.requireNonNull(commands, "commands");
        this.version = Objects.requireNonNull(version, "version");
    }

    public QmpCommands commands() { return commands; }

    public Version version() { return version; }

    IOThread mainLoop() { return main; }

    Map<String, Object> greeting() {
        Map<String, Object> v = new LinkedHashMap<>();
        v.put("qemu", qemuVersion());
        v.put("package", version.pkg());
        Map<String, Object> qmp = new LinkedHashMap<>();
        qmp.put("version", v);
        qmp.put("capabilities", List.of());
        return Map.of("QMP", qmp);
    }

    /** {@code {"micro": .., "minor": .., "major": ..}} in QEMU's member order. */
    public Map<String, Object> qemuVersion() {
        Map<String, Object> q = new LinkedHashMap<>();
        q.put("micro", version.micro());
        q.put("minor", version.minor());
        q.put("major", version.major());
        return q;
    }

    /** Binds a monitor socket at {@code path}; returns once it accepts connections. */
    public synchronized void listen(Path path) throws IOException {
        assert !main.inThread() : "listen waits for the bind; not on the main loop";
        if (path.toString().getBytes(StandardCharsets.UTF_8).length > UnixSocketFiles.MAX_PATH_BYTES) {
            throw new IOException(path + " is longer than the " + UnixSocketFiles.MAX_PATH_BYTES + " bytes a unix socket path may have");
        }
        int fd = UnixSocketFiles.listen(path, 16); // 0600 before it listens
        ServerBootstrap b = new ServerBootstrap().group(main.loop(), main.loop())
                .channelFactory(() -> new EpollServerDomainSocketChannel(fd, true))
                .childOption(ChannelOption.WRITE_BUFFER_WATER_MARK, new WriteBufferWaterMark(1 << 20, MAX_PENDING_OUTPUT))
                .childHandler(new ChannelInitializer<Channel>() {
                    @Override
                    protected void initChannel(Channel ch) {
                        clients.add(ch);
                        ch.closeFuture().addListener(f -> clients.remove(ch));
                        ch.pipeline().addLast("qmp", new QmpConnection(QmpServer.this));
                        LOG.debug("QMP monitor client connected on {}", path);
                    }
                });
        Channel l;
        try {
            l = b.register().sync().channel(); // listening already: registered, not bound
        } catch (Exception e) {
            UnixSocketFiles.removeQuietly(path);
            throw new IOException("cannot listen on " + path + ": " + e.getMessage(), e);
        }
        listeners.put(l, path);
        LOG.info("QMP monitor listening on {}", path);
    }

    /**
     * Sends {@code {"event": name, "data": data, "timestamp": {...}}} to every negotiated client.
     * The timestamp is taken now (wall clock, as QEMU's {@code qemu_clock_get_ns(QEMU_CLOCK_HOST)}).
     */
    public void emit(String name, Map<String, Object> data) {
        QmpType declared = commands.eventData(name);
        if (declared == null) {
            // a wiring bug: query-qmp-schema would not list it. Tests run with -ea and fail here.
            assert false : "QMP event " + name + " is not declared (QmpCommands.event)";
            LOG.error("QMP event {} is not declared; sent anyway", name);
        }
        assert declared == null || conforms(declared, data, name);
        Instant now = Instant.now();
        Map<String, Object> ts = new LinkedHashMap<>();
        ts.put("seconds", now.getEpochSecond());
        ts.put("microseconds", now.getNano() / 1000);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("event", name);
        m.put("data", data == null ? Map.of() : data);
        m.put("timestamp", ts);
        byte[] line = (Json.write(m) + "\r\n").getBytes(StandardCharsets.US_ASCII);
        Runnable send = () -> {
            for (Channel c : clients) {
                QmpConnection q = c.pipeline().get(QmpConnection.class);
                if (q == null || !q.negotiated()) continue;
                if (!c.isWritable()) {
                    LOG.warn("QMP monitor client does not read its events ({} bytes pending); disconnecting", MAX_PENDING_OUTPUT);
                    c.close();
                    continue;
                }
                c.writeAndFlush(Unpooled.wrappedBuffer(line));
            }
        };
        // On the main loop, so an event and a reply written there keep their order.
        if (main.inThread()) send.run(); else main.execute(send);
        LOG.debug("QMP event {} {}", name, data);
    }

    /** For assertions: {@code data} is what the schema says {@code event} carries. */
    private static boolean conforms(QmpType declared, Map<String, Object> data, String event) {
        try {
            declared.check(data == null ? Map.of() : data, null);
            return true;
        } catch (QmpException e) {
            throw new AssertionError("QMP event " + event + " does not match its declaration: " + e.getMessage());
        }
    }

    /** Runs a blocking part of a command on the control thread; completes with its result. */
    public <T> CompletableFuture<Object> blocking(Callable<T> task) {
        CompletableFuture<Object> f = new CompletableFuture<>();
        try {
            control.execute(() -> {
                try {
                    f.complete(task.call());
                } catch (Throwable t) {
                    f.completeExceptionally(t);
                }
            });
        } catch (java.util.concurrent.RejectedExecutionException e) {
            f.completeExceptionally(QmpException.generic("the daemon is shutting down"));
        }
        return f;
    }

    /** Clients connected now (for tests and logs). */
    public int clientCount() { return clients.size(); }

    /** Stops listening, disconnects every client, removes the socket files. Not on the main loop. */
    @Override
    public synchronized void close() {
        for (java.util.Map.Entry<Channel, Path> l : listeners.entrySet()) {
            l.getKey().close().awaitUninterruptibly(5000);
            UnixSocketFiles.removeQuietly(l.getValue());
        }
        listeners.clear();
        for (Channel c : clients) c.close().awaitUninterruptibly(5000);
        control.shutdown();
        try {
            control.awaitTermination(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public String toString() { return "QMP monitor"; }
}
