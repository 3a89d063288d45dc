package dev.vmm.core.qmp;

import io.netty.buffer.ByteBuf;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Splits a monitor's byte stream into JSON texts. It tracks only strings, escapes and bracket
 * depth (syntax is checked later by the JSON parser). A text ends when its outermost
 * {@code '}'} or {@code ']'} closes (so several requests may share a line), and at the latest at
 * the end of its line: whatever is unfinished there ({@code {bad}, a bare scalar, an unclosed
 * object or string) goes to the parser, which answers it with an error. So a request must fit on
 * one line, as every QMP client sends it (QEMU's own streamer would wait for the closing brace
 * instead, leaving a client that sent a malformed line without an answer).
 *
 * <p>Bounded: a text longer than {@value #MAX_MESSAGE} bytes is reported once through
 * {@link Sink#tooLong()}, and everything up to the next newline is dropped without being
 * buffered, after which framing starts afresh.
 *
 * <p>Thread contract: not thread-safe; one instance per connection, used on its event loop.
 */
public final class QmpFramer {
    /** Largest request, in bytes (1 MiB; QEMU's own limit is 64 MiB per token). */
    public static final int MAX_MESSAGE = 1 << 20;

    /** Receives what the framer found, in stream order. */
    public interface Sink {
        void message(String json);

        void tooLong();
    }

    private final int max;
    private byte[] buf = new byte[256];
    private int len;
    private int depth;
    private boolean inString;
    private boolean escape;
    private boolean discarding;

    public QmpFramer() {
        this(MAX_MESSAGE);
    }

    QmpFramer(int max) {
        this.max = max;
    }

    /** Consumes all readable bytes of {@code in}. */
    public void feed(ByteBuf in, Sink sink) {
        while (in.isReadable()) {
            byte b = in.readByte();
            if (discarding) {
                if (b == '\n') discarding = false;
                continue;
            }
            if (inString) {
                if (b == '\n') { // unterminated string: hand the line to the parser, which reports it
                    emit(sink);
                    continue;
                }
                if (!append(b, sink)) continue;
                if (escape) escape = false;
                else if (b == '\\') escape = true;
                else if (b == '"') inString = false;
                continue;
            }
            switch (b) {
                case '"' -> { if (append(b, sink)) inString = true; }
                case '{', '[' -> { if (append(b, sink)) depth++; }
                case '}', ']' -> {
                    // depth 0 after: complete; below 0: a stray closer, which the parser reports
                    if (append(b, sink) && --depth <= 0) emit(sink);
                }
                case '\n' -> { if (len > 0) emit(sink); } // unfinished at the end of its line: malformed
                case ' ', '\t', '\r' -> { if (len > 0) append(b, sink); }
                default -> append(b, sink);
            }
        }
    }

    /** Appends {@code b}; false when the text overflowed (reported, now discarding to the newline). */
    private boolean append(byte b, Sink sink) {
        if (len == max) {
            reset();
            discarding = true;
            sink.tooLong();
            return false;
        }
        if (len == buf.length) buf = Arrays.copyOf(buf, Math.min(max, buf.length * 2));
        buf[len++] = b;
        return true;
    }

    private void emit(Sink sink) {
        String text = new String(buf, 0, len, StandardCharsets.UTF_8);
        reset();
        sink.message(text);
    }

    private void reset() {
        len = 0;
        depth = 0;
        inString = false;
        escape = false;
        if (buf.length > 4096) buf = new byte[256]; // do not keep a 1 MiB buffer per idle monitor
    }

    /** Bytes of an unfinished text held now (for tests). */
    int buffered() { return len; }
}
