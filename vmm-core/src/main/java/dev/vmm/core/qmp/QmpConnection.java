package dev.vmm.core.qmp;

import dev.vmm.core.daemon.DaemonException;
import dev.vmm.core.json.Json;
import dev.vmm.core.json.JsonException;
import dev.vmm.core.options.OptionException;
import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.ChannelFutureListener;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelInboundHandlerAdapter;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One monitor client (qmp-spec.rst): sends the greeting, stays in capabilities negotiation mode
 * until {@code qmp_capabilities}, then executes commands <em>one at a time, in order</em>: while
 * a command is pending, later requests wait in a queue, and reading stops when
 * {@value #MAX_QUEUED} are queued (as QEMU's {@code QMP_REQ_QUEUE_LEN_MAX}), so a client cannot
 * make us buffer without bound. Bad input (malformed JSON, a non-object, unknown members, an
 * over-long request) is answered with a {@code GenericError}; the connection stays.
 *
 * <p>Thread contract: a Netty handler on the main loop; every method runs there.
 */
final class QmpConnection extends ChannelInboundHandlerAdapter implements QmpFramer.Sink {
    private static final Logger LOG = LoggerFactory.getLogger(QmpConnection.class);
    static final int MAX_QUEUED = 8;
    /** Marks a request that overflowed the framer, in the queue. */
    private static final String TOO_LONG = new String("too long");

    private final QmpServer server;
    private final QmpFramer framer = new QmpFramer();
    private final ArrayDeque<String> queue = new ArrayDeque<>();
    private ChannelHandlerContext ctx;
    private boolean negotiated;
    private boolean busy;

    QmpConnection(QmpServer server) {
        this.server = server;
    }

    boolean negotiated() { return negotiated; }

    @Override
    public void channelActive(ChannelHandlerContext ctx) {
        this.ctx = ctx;
        send(server.greeting(), null);
        ctx.fireChannelActive();
    }

    @Override
    public void channelRead(ChannelHandlerContext ctx, Object msg) {
        ByteBuf in = (ByteBuf) msg;
        try {
            framer.feed(in, this);
        } finally {
            in.release();
        }
        drain();
    }

    @Override
    public void message(String json) { queue.add(json); }

    @Override
    public void tooLong() {
        queue.add(TOO_LONG);
    }

    @Override
    public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
        LOG.debug("QMP monitor {}: {}", ctx.channel(), cause.toString());
        ctx.close();
    }

    private void drain() {
        while (!busy && !queue.isEmpty() && ctx.channel().isActive()) {
            handle(queue.poll());
        }
        ctx.channel().config().setAutoRead(queue.size() < MAX_QUEUED);
    }

    private void handle(String text) {
        if (text == TOO_LONG) {
            sendError(null, QmpErrorClass.GenericError, "JSON parse error, request longer than " + QmpFramer.MAX_MESSAGE
                    + " bytes; discarded up to the next newline");
            return;
        }
        Object parsed;
        try {
            parsed = Json.parse(text);
        } catch (JsonException e) {
            sendError(null, QmpErrorClass.GenericError, "JSON parse error, " + e.getMessage());
            return;
        }
        if (!(parsed instanceof Map<?, ?> request)) {
            sendError(null, QmpErrorClass.GenericError, "QMP input must be a JSON object");
            return;
        }
        Object id = request.get("id");
        Object execute = null;
        Map<String, Object> arguments = null;
        // Member checks in QEMU's order and words (qmp-dispatch.c qmp_dispatch_check_obj).
        for (Map.Entry<?, ?> e : request.entrySet()) {
            String key = (String) e.getKey();
            Object v = e.getValue();
            switch (key) {
                case "execute" -> {
                    if (!(v instanceof String)) {
                        sendError(id, QmpErrorClass.GenericError, "QMP input member 'execute' must be a string");
                        return;
                    }
                    execute = v;
                }
                case "arguments" -> {
                    if (!(v instanceof Map)) {
                        sendError(id, QmpErrorClass.GenericError, "QMP input member 'arguments' must be an object");
                        return;
                    }
                    @SuppressWarnings("unchecked")
                    Map<String, Object> a = (Map<String, Object>) v;
                    arguments = a;
                }
                case "id" -> { }
                default -> {
                    sendError(id, QmpErrorClass.GenericError, "QMP input member '" + key + "' is unexpected");
                    return;
                }
            }
        }
        if (execute == null) {
            sendError(id, QmpErrorClass.GenericError, "QMP input lacks member 'execute'");
            return;
        }
        String name = (String) execute;
        if (!negotiated) {
            if (!name.equals(QmpCommands.QMP_CAPABILITIES)) {
                sendError(id, QmpErrorClass.CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'");
                return;
            }
            negotiate(id, arguments);
            return;
        }
        if (name.equals(QmpCommands.QMP_CAPABILITIES)) {
            sendError(id, QmpErrorClass.CommandNotFound, "Capabilities negotiation is already complete, command ignored");
            return;
        }
        QmpCommands.Entry entry = server.commands().entry(name);
        if (entry == null) {
            sendError(id, QmpErrorClass.CommandNotFound, "The command " + name + " has not been found");
            return;
        }
        if (entry.declared()) {
            try {
                entry.args().check(arguments == null ? Map.of() : arguments, null); // what query-qmp-schema says
            } catch (QmpException e) {
                sendError(id, e.errorClass(), e.getMessage());
                return;
            }
        }
        run(id, name, entry.command(), arguments);
    }

    /** {@code qmp_capabilities [enable: [...]]}: we offer no capability (no "oob"). */
    private void negotiate(Object id, Map<String, Object> arguments) {
        if (arguments != null) {
            try {
                QmpCommands.QMP_CAPABILITIES_ARGS.check(arguments, null);
            } catch (QmpException e) {
                sendError(id, e.errorClass(), e.getMessage());
                return;
            }
            if (arguments.get("enable") instanceof java.util.List<?> caps && !caps.isEmpty()) {
                sendError(id, QmpErrorClass.GenericError, "Capability '" + caps.get(0) + "' not available");
                return;
            }
        }
        negotiated = true;
        send(returnReply(Map.of(), id), null);
    }

    private void run(Object id, String name, QmpCommand command, Map<String, Object> arguments) {
        QmpCall call = new QmpCall(server, name, arguments);
        CompletableFuture<Object> f;
        try {
            f = command.execute(call);
        } catch (Exception e) {
            f = CompletableFuture.failedFuture(e);
        }
        if (f.isDone() && server.mainLoop().inThread() && !call.ranElsewhere()) {
            complete(id, call, f); // a sync command: its events were written inline already
            return;
        }
        // Through the main loop's queue: events the command emitted from another thread were
        // queued there first, so they reach the client before the reply.
        busy = true;
        CompletableFuture<Object> pending = f;
        f.whenComplete((r, t) -> server.mainLoop().execute(() -> {
            busy = false;
            complete(id, call, pending);
            drain();
        }));
    }

    private void complete(Object id, QmpCall call, CompletableFuture<Object> f) {
        Object result;
        try {
            result = f.join();
        } catch (CompletionException | java.util.concurrent.CancellationException e) {
            Throwable cause = e instanceof CompletionException && e.getCause() != null ? e.getCause() : e;
            if (cause instanceof ExecutionException && cause.getCause() != null) cause = cause.getCause();
            sendFailure(id, call.name(), cause);
            return;
        }
        Runnable after = call.afterReply();
        send(returnReply(result == null ? Map.of() : result, id), after);
    }

    private void sendFailure(Object id, String command, Throwable t) {
        if (t instanceof QmpException q) {
            sendError(id, q.errorClass(), q.getMessage());
        } else if (t instanceof OptionException o) {
            sendError(id, QmpErrorClass.GenericError, o.detail());
        } else if (t instanceof DaemonException d) {
            sendError(id, QmpErrorClass.GenericError, withoutPrefix(command, d.getMessage()));
        } else {
            LOG.error("QMP command {} failed", command, t);
            sendError(id, QmpErrorClass.GenericError, "internal error in " + command + ": " + t.getClass().getSimpleName()
                    + (t.getMessage() == null ? "" : ": " + t.getMessage().lines().findFirst().orElse("")));
        }
    }

    /** Daemon messages name the option first ("block-export-add: ..."), which QMP already says. */
    private static String withoutPrefix(String command, String message) {
        String p = command + ": ";
        return message != null && message.startsWith(p) ? message.substring(p.length()) : String.valueOf(message);
    }

    private static Map<String, Object> returnReply(Object value, Object id) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("return", value);
        if (id != null) m.put("id", id);
        return m;
    }

    private void sendError(Object id, QmpErrorClass cls, String desc) {
        Map<String, Object> err = new LinkedHashMap<>();
        err.put("class", cls.name());
        err.put("desc", desc);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("error", err);
        if (id != null) m.put("id", id);
        send(m, null);
    }

    /** Writes one JSON text and CRLF, as QEMU's monitor does. */
    void send(Map<String, Object> message, Runnable afterWrite) {
        ByteBuf b = Unpooled.wrappedBuffer((Json.write(message) + "\r\n").getBytes(StandardCharsets.US_ASCII));
        var f = ctx.writeAndFlush(b);
        if (afterWrite != null) f.addListener((ChannelFutureListener) w -> afterWrite.run());
    }
}
