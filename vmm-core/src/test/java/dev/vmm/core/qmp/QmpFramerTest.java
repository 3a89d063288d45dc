package dev.vmm.core.qmp;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class QmpFramerTest {
    private final List<String> out = new ArrayList<>();
    private final QmpFramer.Sink sink = new QmpFramer.Sink() {
        @Override public void message(String json) { out.add(json); }
        @Override public void tooLong() { out.add("<too long>"); }
    };

    private void feed(QmpFramer f, String s) {
        ByteBuf b = Unpooled.copiedBuffer(s, StandardCharsets.UTF_8);
        f.feed(b, sink);
        b.release();
    }

    @Test
    void objectsEndAtTheirClosingBraceAndSeveralMayShareALine() {
        QmpFramer f = new QmpFramer();
        feed(f, "{\"execute\":\"a\"}{\"execute\":\"b\"}\r\n  {\"execute\": \"c}\"}");
        assertEquals(List.of("{\"execute\":\"a\"}", "{\"execute\":\"b\"}", "{\"execute\": \"c}\"}"), out);
    }

    @Test
    void aRequestMaySpanReads() {
        QmpFramer f = new QmpFramer();
        feed(f, "{\"execute\":");
        feed(f, "\"x\\\"}\"}");
        assertEquals(List.of("{\"execute\":\"x\\\"}\"}"), out);
    }

    @Test
    void anUnfinishedLineIsHandedOverAtItsNewline() {
        QmpFramer f = new QmpFramer();
        feed(f, "{bad\n42\n\"open string\n]\n\n");
        assertEquals(List.of("{bad", "42", "\"open string", "]"), out);
    }

    @Test
    void aHugeLineIsReportedOnceAndDiscardedWithoutBuffering() {
        QmpFramer f = new QmpFramer(1000);
        feed(f, "{\"execute\":\"" + "x".repeat(5000));
        assertEquals(List.of("<too long>"), out);
        assertEquals(0, f.buffered());
        feed(f, "y".repeat(5000) + "\"}\n{\"execute\":\"ok\"}");
        assertEquals(List.of("<too long>", "{\"execute\":\"ok\"}"), out);
    }
}
