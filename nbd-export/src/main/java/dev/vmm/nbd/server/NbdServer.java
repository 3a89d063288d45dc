package dev.vmm.nbd.server;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.core.net.InheritedSocket;
import dev.vmm.core.net.UnixSocketFiles;
import dev.vmm.core.tls.TlsCredentials;
import dev.vmm.iothread.IOThread;
import io.netty.bootstrap.ServerBootstrap;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.Channel;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelInitializer;
import io.netty.channel.ChannelOption;
import io.netty.channel.EventLoop;
import io.netty.channel.WriteBufferWaterMark;
import io.netty.channel.epoll.EpollDomainSocketChannel;
import io.netty.channel.epoll.EpollServerDomainSocketChannel;
import io.netty.util.AttributeKey;
import io.netty.channel.epoll.EpollServerSocketChannel;
import io.netty.channel.unix.DomainSocketAddress;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The NBD server ({@code --nbd-server}): its listening sockets (one, or more with socket
 * activation and in {@code vmm demo}), the export table, and the
 * lifecycle of client connections. Clients are accepted and negotiate on the main loop; when
 * NBD_OPT_GO (or NBD_OPT_EXPORT_NAME) names an export, the channel moves to the home IOThread
 * of the export's block node, so a disk's NBD clients share its event loop.
 *
 * <p>Thread contract: {@link #start}, {@link #addExport} and {@link #removeExport} are
 * control-plane calls (main loop, control thread, or the CLI thread); {@link #stop} waits for the
 * main loop and MUST NOT be called on it; handshakes run on the main loop; {@link #lookup} and
 * {@link #exports} may be called from any thread. A client is closed on its node's home with no
 * move of the node in progress (see {@link #closeGracefully}).
 */
public final class NbdServer {
    private static final Logger LOG = LoggerFactory.getLogger(NbdServer.class);

    /**
     * Where to listen and how. With {@code tls} set the server runs in the spec's FORCEDTLS mode:
     * a client must send NBD_OPT_STARTTLS before any other option (proto.md, "TLS support").
     */
    public record Config(SocketAddress address, int maxConnections, int handshakeMaxSeconds, TlsCredentials tls) {
        public Config {
            Objects.requireNonNull(address, "address");
            if (maxConnections < 0) throw new IllegalArgumentException("max-connections must be >= 0");
            if (handshakeMaxSeconds < 0) throw new IllegalArgumentException("handshake-max-seconds must be >= 0");
        }

        /** Without TLS. */
        public Config(SocketAddress address, int maxConnections, int handshakeMaxSeconds) {
            this(address, maxConnections, handshakeMaxSeconds, null);
        }
    }

    private final IOThread main;
    private final Config config;
    private final Map<String, NbdExport> exports = new LinkedHashMap<>();
    /** Every open client connection, in whatever phase: what max-connections counts and stop() closes. */
    private final Set<Channel> connections = ConcurrentHashMap.newKeySet();
    /** Listening channels and what each was asked to listen on; guarded by itself. */
    private final Map<Channel, SocketAddress> listeners = new LinkedHashMap<>();

    public NbdServer(IOThread main, Config config) {
        this.main = Objects.requireNonNull(main, "main");
        this.config = Objects.requireNonNull(config, "config");
    }

    public Config config() { return config; }

    Logger log() { return LOG; }

    /** Binds the configured address; returns once it accepts connections. */
    public void start() throws IOException {
        listen(config.address());
    }

    /**
     * Listens on one more address (a TCP port beside a unix socket, or a socket handed over by
     * systemd): every listener serves the same exports, whose counters and client sets therefore
     * include the clients of all of them. Returns once it accepts connections.
     */
    public void listen(SocketAddress address) throws IOException {
        ServerBootstrap b = new ServerBootstrap().group(main.loop(), main.loop());
        Path socketPath = null;
        boolean registerOnly = true; // a socket that listens already is registered, not bound
        if (address instanceof DomainSocketAddress unix) {
            socketPath = Path.of(unix.path());
            int fd = UnixSocketFiles.listen(socketPath, 128); // 0600 before it listens
            b.channelFactory(() -> new EpollServerDomainSocketChannel(fd, true));
        } else if (address instanceof InheritedSocket inherited) {
            if (inherited.unix()) {
                b.channelFactory(() -> new EpollServerDomainSocketChannel(inherited.fd(), true));
            } else {
                b.channelFactory(() -> new EpollServerSocketChannel(inherited.fd()))
                        .childOption(ChannelOption.TCP_NODELAY, true)
                        .childOption(ChannelOption.SO_KEEPALIVE, true);
            }
        } else {
            registerOnly = false;
            b.channel(EpollServerSocketChannel.class)
                    .option(ChannelOption.SO_BACKLOG, 128) // a unix socket got its backlog from listen(2) already
                    .option(ChannelOption.SO_REUSEADDR, true)
                    .childOption(ChannelOption.TCP_NODELAY, true)
                    .childOption(ChannelOption.SO_KEEPALIVE, true);
        }
        b.childOption(ChannelOption.WRITE_BUFFER_WATER_MARK, new WriteBufferWaterMark(1 << 20, 4 << 20))
                // Reads of up to 1 MiB: a large WRITE payload arrives in few syscalls (gathered into
                // its own buffer as it comes); small requests keep the buffer small.
                .childOption(ChannelOption.RECVBUF_ALLOCATOR, new io.netty.channel.AdaptiveRecvByteBufAllocator(512, 16 * 1024, 1 << 20))
                .childHandler(new ChannelInitializer<Channel>() {
                    @Override
                    protected void initChannel(Channel ch) {
                        accept(ch);
                    }
                });
        Channel l;
        try {
            l = registerOnly ? b.register().sync().channel() : b.bind(address).sync().channel();
        } catch (Exception e) {
            if (socketPath != null) UnixSocketFiles.removeQuietly(socketPath);
            throw new IOException("cannot listen on " + describe(address) + ": " + rootMessage(e), e);
        }
        synchronized (listeners) {
            listeners.put(l, address);
        }
        LOG.info("NBD server listening on {}{}", describe(address),
                config.tls() == null ? "" : " (TLS required: " + config.tls().id() + ", verify-peer=" + (config.tls().verifyPeer() ? "on" : "off")
                        + ", " + config.tls().providerName() + ")");
    }

    /** The first listener's bound address (with the real port when port 0 was asked for), or null before {@link #start}. */
    public SocketAddress boundAddress() {
        synchronized (listeners) {
            for (Map.Entry<Channel, SocketAddress> e : listeners.entrySet()) return bound(e.getKey(), e.getValue());
        }
        return null;
    }

    /** Every listener's bound address, in the order they started. */
    public List<SocketAddress> boundAddresses() {
        List<SocketAddress> out = new ArrayList<>();
        synchronized (listeners) {
            for (Map.Entry<Channel, SocketAddress> e : listeners.entrySet()) out.add(bound(e.getKey(), e.getValue()));
        }
        return out;
    }

    /** True when the server was started and each of its listeners is still open. */
    public boolean listening() {
        synchronized (listeners) {
            return !listeners.isEmpty() && listeners.keySet().stream().allMatch(Channel::isOpen);
        }
    }

    private static SocketAddress bound(Channel l, SocketAddress configured) {
        // A registered fd knows no address: a unix socket says its path, an inherited TCP socket its local address.
        if (configured instanceof DomainSocketAddress) return configured;
        SocketAddress local = l.localAddress();
        return local != null ? local : configured;
    }

    private static String rootMessage(Throwable e) {
        while (e.getCause() != null) e = e.getCause();
        String m = e.getMessage() == null ? e.toString() : e.getMessage();
        // Netty's native errors read "bind(..) failed with error(-98): Address already in use".
        return m.replaceFirst("^\\w+\\(\\.\\.\\) failed with error\\(-?\\d+\\): ", "");
    }

    static String describe(SocketAddress a) {
        if (a instanceof DomainSocketAddress u) return "unix:" + u.path();
        if (a instanceof InheritedSocket s) return s.toString();
        if (a instanceof InetSocketAddress i) return i.getHostString() + ":" + i.getPort();
        return String.valueOf(a);
    }

    /** The peer of a client connection, for log lines; set once when accepted. */
    private static final AttributeKey<String> PEER = AttributeKey.valueOf("vmm.nbd.peer");
    /** The export a client uses, once its handshake chose one; for the disconnect line. */
    static final AttributeKey<String> EXPORT = AttributeKey.valueOf("vmm.nbd.export");
    /** Set by the first graceful close of a connection; a second one (stop and export-del racing) only waits. */
    private static final AttributeKey<Boolean> CLOSING = AttributeKey.valueOf("vmm.nbd.closing");

    /**
     * How log lines name a client: {@code host:port} over TCP; over a unix socket the peer's
     * credentials (SO_PEERCRED), since its address is empty.
     */
    static String peer(Channel ch) {
        String p = ch.attr(PEER).get();
        return p != null ? p : describePeer(ch);
    }

    /** As {@link #peer}, read from the socket; {@code pid=P,uid=U} as the vhost-user listener logs its front-ends. */
    static String describePeer(Channel ch) {
        if (ch instanceof EpollDomainSocketChannel d) return LibcSocket.peerCredentials(d.fd().intValue());
        SocketAddress a = ch.remoteAddress();
        return a == null ? "?" : describe(a);
    }

    private void accept(Channel ch) {
        String who = describePeer(ch);
        ch.attr(PEER).set(who);
        connections.add(ch);
        ch.closeFuture().addListener(f -> connections.remove(ch));
        int n = connections.size();
        if (config.maxConnections() > 0 && n > config.maxConnections()) {
            LOG.warn("NBD client {} refused: max-connections={} reached", who, config.maxConnections());
            ch.close();
            return;
        }
        LOG.info("NBD client {} connected", who);
        // Exactly one line per connection however it ends: handshake, transmission, refused export.
        ch.closeFuture().addListener(f -> {
            String export = ch.attr(EXPORT).get();
            LOG.info("NBD client {} disconnected{}", who, export == null ? " during the handshake" : " from export '" + export + "'");
        });
        HandshakeHandler hs = new HandshakeHandler(this);
        ch.pipeline().addLast("nbd-handshake", hs);
        if (config.handshakeMaxSeconds() > 0) {
            ScheduledFuture<?> timeout = ch.eventLoop().schedule(() -> {
                if (ch.pipeline().get("nbd-handshake") == hs && hs.inHandshake()) {
                    LOG.warn("NBD client {} did not finish its handshake in {} s; closing", peer(ch), config.handshakeMaxSeconds());
                    ch.close();
                }
            }, config.handshakeMaxSeconds(), TimeUnit.SECONDS);
            ch.closeFuture().addListener(f -> timeout.cancel(false));
        }
    }

    /**
     * Ends the handshake of {@code ch}: sends {@code lastReply}, then moves the channel to the
     * home IOThread of the export's node and starts the transmission phase there. Main loop.
     */
    void handOff(Channel ch, HandshakeHandler hs, NbdExport export, Negotiated negotiated, ByteBuf lastReply) {
        assert main.inThread();
        ch.config().setAutoRead(false);
        ch.writeAndFlush(lastReply).addListener((ChannelFutureListener) written -> {
            if (!written.isSuccess()) {
                ch.close();
                return;
            }
            // Through the node's gate: a client never joins a node that is half-way through a move.
            export.node().requestJoin(() -> join(ch, hs, export, negotiated));
        });
    }

    /** Main loop, inside the node's gate: move {@code ch} to the node's home and start serving. */
    private void join(Channel ch, HandshakeHandler hs, NbdExport export, Negotiated negotiated) {
        IOThread home = export.node().home();
        Runnable done = () -> main.execute(export.node()::joinDone);
        ch.deregister().addListener((ChannelFutureListener) d -> {
            if (!d.isSuccess()) {
                hs.releaseCumulation();
                ch.close();
                done.run();
                return;
            }
            ((EventLoop) home.loop()).register(ch).addListener((ChannelFutureListener) r -> {
                try {
                    if (!r.isSuccess()) {
                        LOG.warn("NBD client {}: cannot move to IOThread {}: {}", peer(ch), home.id(), r.cause().toString());
                        hs.releaseCumulation();
                        ch.close();
                        return;
                    }
                    if (ch.pipeline().context(hs) == null) {
                        // The client closed while moving: its pipeline is torn down already (replace
                        // would throw, and Netty would print the stack trace of a normal disconnect).
                        hs.releaseCumulation();
                        ch.close();
                        return;
                    }
                    TransmissionHandler tx = new TransmissionHandler(export, negotiated, home, hs.takeLeftover());
                    ch.pipeline().replace(hs, "nbd-transmission", tx);
                    if (!ch.isActive() || !isExported(export)) { // closed, or export removed, while moving
                        ch.close();
                        return;
                    }
                    export.clients().add(ch);
                    export.stats().connections.increment();
                    ch.attr(EXPORT).set(export.name());
                    export.node().addUser(tx);
                    LOG.info("NBD client {} uses export '{}' on IOThread {}{}{}", peer(ch), export.name(), home.id(),
                            negotiated.extendedHeaders ? " (extended headers)" : negotiated.structuredReplies ? " (structured replies)" : "",
                            negotiated.tls ? " over TLS" : "");
                    tx.start(ch.pipeline().context(tx));
                } finally {
                    done.run();
                }
            });
        });
    }

    // ---- exports ----

    /** Adds an export. Its name must be unique on this server. */
    public void addExport(NbdExport export) {
        synchronized (exports) {
            if (exports.containsKey(export.name())) {
                throw new IllegalArgumentException("an NBD export named '" + export.name() + "' exists already");
            }
            exports.put(export.name(), export);
        }
        LOG.debug("NBD export '{}' added (node {}, {})", export.name(), export.node().name(), export.writable() ? "writable" : "read-only");
    }

    /** Removes an export and disconnects its clients after their replies are sent. */
    public void removeExport(String name) {
        NbdExport e;
        synchronized (exports) {
            e = exports.remove(name);
        }
        if (e != null) {
            for (Channel c : e.clients()) closeGracefully(c, e);
            LOG.debug("NBD export '{}' removed", name);
        }
    }

    /**
     * The export a client asked for, or null. The empty name selects the only export when there
     * is exactly one, so that {@code nbd://host} works as with qemu-nbd.
     */
    public NbdExport lookup(String name) {
        synchronized (exports) {
            NbdExport e = exports.get(name);
            if (e == null && name.isEmpty() && exports.size() == 1) e = exports.values().iterator().next();
            return e;
        }
    }

    private boolean isExported(NbdExport e) {
        synchronized (exports) {
            return exports.get(e.name()) == e;
        }
    }

    public List<NbdExport> exports() {
        synchronized (exports) {
            return new ArrayList<>(exports.values());
        }
    }

    public int connectionCount() { return connections.size(); }

    /**
     * Stops listening, then lets every client's pending replies go out and closes it. Waits for
     * the main loop and the IOThreads, so it MUST NOT be called on either (CLI or control thread).
     */
    public void stop(long timeoutMs) {
        assert !main.inThread() : "NbdServer.stop waits for the main loop";
        Map<Channel, SocketAddress> ls;
        synchronized (listeners) {
            ls = new LinkedHashMap<>(listeners);
            listeners.clear();
        }
        boolean started = !ls.isEmpty();
        for (Map.Entry<Channel, SocketAddress> l : ls.entrySet()) {
            l.getKey().close().awaitUninterruptibly(timeoutMs);
            // An inherited socket's file (if any) belongs to whoever bound it: left in place.
            if (l.getValue() instanceof DomainSocketAddress u) UnixSocketFiles.removeQuietly(Path.of(u.path()));
        }
        Map<Channel, NbdExport> closing = new LinkedHashMap<>();
        for (NbdExport e : exports()) {
            for (Channel c : e.clients()) {
                closeGracefully(c, e);
                closing.put(c, e);
            }
        }
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        for (Map.Entry<Channel, NbdExport> c : closing.entrySet()) {
            long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            if (!c.getKey().closeFuture().awaitUninterruptibly(Math.max(1, left))) forceClose(c.getKey(), c.getValue().node());
        }
        // Clients still negotiating (or joining) have no replies in flight: close them too.
        for (Channel c : List.copyOf(connections)) {
            long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            c.close().awaitUninterruptibly(Math.max(1, left));
        }
        if (started) LOG.info("NBD server stopped");
    }

    /** How long a stopping connection waits for its client to close after our last reply. */
    static final long LINGER_MS = 2000;

    /**
     * Ends a transmission-phase connection of {@code export} at a reply boundary without losing
     * replies; returns its close future. Any thread.
     *
     * <p>The work runs on the node's home inside the node's gate ({@link BlockNode#requestJoin}):
     * while a move is in progress the channel is between its old loop and its new one, and work
     * queued on {@code c.eventLoop()} would release the request buffer and write to the channel on
     * the old home while the new home attaches and resumes it. Inside the gate no move runs, so
     * the channel is registered on the home; there it stops taking requests and leaves the node's
     * users, so later moves leave it on this loop for the rest of its close (it serves nothing).
     */
    private io.netty.channel.ChannelFuture closeGracefully(Channel c, NbdExport export) {
        if (c.attr(CLOSING).setIfAbsent(Boolean.TRUE) != null) return c.closeFuture(); // on its way already
        BlockNode node = export.node();
        main.execute(() -> node.requestJoin(() -> {
            IOThread home = node.home();
            try {
                home.execute(() -> {
                    try {
                        closeOnHome(c, node);
                    } finally {
                        main.execute(node::joinDone);
                    }
                });
            } catch (RuntimeException e) { // the IOThread is shutting down: its channels close with it
                node.joinDone();
                c.close();
            }
        }));
        return c.closeFuture();
    }

    /**
     * Closes a connection whose graceful close did not finish in time; inside the node's gate
     * too, since a move may still hold the channel between two loops. Any thread.
     */
    private void forceClose(Channel c, BlockNode node) {
        main.execute(() -> node.requestJoin(() -> {
            c.close(); // registered on some loop now: Netty runs the close there
            node.joinDone();
        }));
    }

    /**
     * The graceful close itself, on the node's home with no move in progress: no further request
     * is taken, what was sent so far is flushed, then the write side is shut (the client reads
     * end-of-stream after the last reply) and input is discarded until the client closes or
     * {@link #LINGER_MS} passes. Closing at once while requests sit unread in the receive queue
     * would make TCP send a reset, which discards replies not yet transmitted. On a TLS channel
     * the SslHandler sends close_notify before the write side is shut.
     */
    private static void closeOnHome(Channel c, BlockNode node) {
        if (!c.isActive()) return;
        assert c.eventLoop().inEventLoop() && node.home().inThread() : "graceful close off the node's home";
        if (c.pipeline().get("nbd-transmission") instanceof TransmissionHandler tx) {
            tx.stopTakingRequests();
            // Not moved any more: it ends on this loop. A later move still drains the node first,
            // so the requests in flight complete here, and are answered before the output is shut.
            node.removeUser(tx);
            tx.whenIdle(() -> shutOutput(c));
        } else {
            shutOutput(c);
        }
    }

    /** Flushes the last replies, then shuts the write side and lingers (see {@link #closeOnHome}). */
    private static void shutOutput(Channel c) {
        if (!c.isActive()) return;
        c.writeAndFlush(Unpooled.EMPTY_BUFFER).addListener((ChannelFutureListener) f -> {
            if (!f.isSuccess() || !(c instanceof io.netty.channel.socket.DuplexChannel d)) {
                c.close();
                return;
            }
            // TLS: close_notify goes first, so the client reads a clean end of the TLS stream
            // rather than a truncation (RFC 8446 6.1); then the TCP write side is shut.
            io.netty.handler.ssl.SslHandler ssl = c.pipeline().get(io.netty.handler.ssl.SslHandler.class);
            io.netty.channel.ChannelFuture notified = ssl == null ? f : ssl.closeOutbound();
            notified.addListener((ChannelFutureListener) n -> d.shutdownOutput().addListener((ChannelFutureListener) x -> {
                if (!x.isSuccess()) c.close();
            }));
            c.eventLoop().schedule((Runnable) c::close, LINGER_MS, TimeUnit.MILLISECONDS);
        });
    }
}
