package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.*;
import static dev.vmm.nbd.protocol.NbdCmdFlags.*;
import static dev.vmm.nbd.protocol.NbdRep.*;
import static dev.vmm.nbd.protocol.NbdReplyType.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.iothread.IOThread;
import dev.vmm.nbd.client.NbdClient.Chunk;
import dev.vmm.nbd.client.NbdClient.OptionReply;
import dev.vmm.nbd.client.NbdClient.Reply;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdInfo;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdTransmissionFlags;
import dev.vmm.nbd.testing.NbdTestClient;
import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The NBD server in-process, driven by {@link NbdTestClient}: the protocol paths that Debian's
 * clients cannot reach (extended headers, oversized payloads, malformed options, clients that do
 * not read), named after the proto.md rule they check.
 */
@Timeout(60)
class NbdServerTest extends NbdServerFixture {
    // ---- handshake / options ----

    @Test
    void goRepliesWithExportInfoBlockSizeAndAck() throws Exception {
        try (NbdTestClient c = client()) {
            List<OptionReply> r = c.go("disk0", NbdInfo.NBD_INFO_NAME, NbdInfo.NBD_INFO_DESCRIPTION, NbdInfo.NBD_INFO_BLOCK_SIZE);
            assertEquals(NBD_REP_ACK, r.get(r.size() - 1).type());
            assertEquals(SIZE, c.size);
            assertTrue((c.transmissionFlags & NbdTransmissionFlags.NBD_FLAG_CAN_MULTI_CONN) != 0);
            assertEquals(0, c.transmissionFlags & NbdTransmissionFlags.NBD_FLAG_READ_ONLY);
            assertEquals(0, c.transmissionFlags & NbdTransmissionFlags.NBD_FLAG_SEND_DF, "DF needs structured replies");
            assertTrue(r.stream().anyMatch(o -> o.type() == NBD_REP_INFO && NbdTestClient.readShort(o.data(), 0) == NbdInfo.NBD_INFO_DESCRIPTION
                    && new String(o.data(), 2, o.data().length - 2).equals("the disk")));
            OptionReply bs = r.stream().filter(o -> o.type() == NBD_REP_INFO && NbdTestClient.readShort(o.data(), 0) == NbdInfo.NBD_INFO_BLOCK_SIZE).findFirst().orElseThrow();
            assertEquals(1, NbdTestClient.readInt(bs.data(), 2));
            assertEquals(NbdExport.MAX_PAYLOAD, NbdTestClient.readInt(bs.data(), 10));
            assertArrayEquals(fileBytes(4096, 4096), c.read(4096, 4096, 0));
        }
    }

    @Test
    void optionErrorsLeaveTheHandshakeUsable() throws Exception {
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ERR_POLICY, c.option(NbdOpt.NBD_OPT_STARTTLS, new byte[0]).get(0).type(), "STARTTLS without TLS configured (NOTLS mode)");
            assertEquals(NBD_REP_ERR_UNSUP, c.option(99, new byte[100]).get(0).type(), "unknown option, data consumed");
            assertEquals(NBD_REP_ERR_INVALID, c.option(NbdOpt.NBD_OPT_LIST, new byte[3]).get(0).type(), "LIST takes no data");
            assertEquals(NBD_REP_ERR_INVALID, c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "disk0", NbdMetaContext.BASE_ALLOCATION).get(0).type(),
                    "meta contexts need structured replies first");
            assertEquals(NBD_REP_ERR_UNKNOWN, c.option(NbdOpt.NBD_OPT_INFO, NbdTestClient.infoRequest("nope")).get(0).type());
            assertEquals(NBD_REP_ERR_INVALID, c.option(NbdOpt.NBD_OPT_GO, new byte[] {0, 0, 0, 9, 'x'}).get(0).type(), "name beyond data");
            assertEquals(NBD_REP_ERR_TOO_BIG, c.option(NbdOpt.NBD_OPT_INFO, new byte[HandshakeHandler.MAX_OPTION_LENGTH + 1]).get(0).type());
            List<OptionReply> list = c.option(NbdOpt.NBD_OPT_LIST, new byte[0]);
            assertEquals(3, list.size(), "two exports and an ACK");
            assertEquals(NBD_REP_ACK, c.structuredReplies().type());
            assertEquals(NBD_REP_ACK, c.extendedHeaders().type());
            assertEquals(NBD_REP_ERR_EXT_HEADER_REQD, c.option(NbdOpt.NBD_OPT_STRUCTURED_REPLY, new byte[0]).get(0).type(), "no downgrade");
            List<OptionReply> go = c.go("disk0");
            assertEquals(NBD_REP_ACK, go.get(go.size() - 1).type());
        }
    }

    @Test
    void exportNameForUnknownExportClosesTheConnection() throws Exception {
        try (NbdTestClient c = client()) {
            c.sendOption(NbdOpt.NBD_OPT_EXPORT_NAME, "nope".getBytes());
            assertTrue(c.closedByServer());
        }
    }

    @Test
    void exportNameWithNoZeroesSendsSizeAndFlagsOnly() throws Exception {
        try (NbdTestClient c = client()) {
            c.sendOption(NbdOpt.NBD_OPT_EXPORT_NAME, "ro".getBytes());
            assertEquals(SIZE, c.in().readLong());
            int flags = c.in().readUnsignedShort();
            assertTrue((flags & NbdTransmissionFlags.NBD_FLAG_READ_ONLY) != 0);
            // no 124 zero bytes: the next bytes are the reply to our first request
            Reply r = c.request(0, NBD_CMD_READ, 0, 512, null);
            assertEquals(0, r.error());
            assertArrayEquals(fileBytes(0, 512), r.chunks().get(0).payload());
        }
    }

    @Test
    void requestsPipelinedBehindGoInOneSegmentAreServed() throws Exception {
        // The bytes after GO arrive on the main loop before the channel moves to the IOThread.
        // Pipelined requests run concurrently and may be answered in any order (proto.md), so the
        // replies are structured (self-describing) and matched by cookie; the READs look at a
        // range the WRITE does not touch, which is read back once everything was answered.
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ACK, c.structuredReplies().type());
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            DataOutputStream d = new DataOutputStream(b);
            byte[] go = NbdTestClient.infoRequest("disk0");
            d.writeLong(NbdMagic.IHAVEOPT);
            d.writeInt(NbdOpt.NBD_OPT_GO);
            d.writeInt(go.length);
            d.write(go);
            byte[] data = random(8192, 7);
            for (int i = 0; i < 4; i++) {
                d.writeInt(NbdMagic.NBD_REQUEST_MAGIC);
                d.writeShort(0);
                d.writeShort(i == 0 ? NBD_CMD_WRITE : NBD_CMD_READ);
                d.writeLong(100 + i);
                d.writeLong(i == 0 ? 2 << 20 : (long) i * 8192);
                d.writeInt(8192);
                if (i == 0) d.write(data);
            }
            c.out().write(b.toByteArray());
            c.out().flush();
            while (c.readOptionReply().type() != NBD_REP_ACK) { }
            java.util.Set<Long> seen = new java.util.HashSet<>();
            for (int i = 0; i < 4; i++) {
                Reply r = c.readReply(0);
                assertEquals(0, r.error());
                assertTrue(seen.add(r.cookie()), "one reply per cookie");
                long at = (r.cookie() - 100) * 8192;
                if (r.cookie() != 100) assertArrayEquals(fileBytes(at, 8192), dev.vmm.nbd.client.NbdClient.readData(r, at, 8192));
            }
            assertEquals(java.util.Set.of(100L, 101L, 102L, 103L), seen);
            assertArrayEquals(data, c.read(2 << 20, 8192));
        }
    }

    // ---- transmission ----

    @Test
    void extendedHeadersCarryEveryCommand() throws Exception {
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ACK, c.extendedHeaders().type());
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "disk0", NbdMetaContext.BASE_ALLOCATION);
            c.go("disk0");
            byte[] data = random(65536, 3);
            assertEquals(0, c.request(NBD_CMD_FLAG_PAYLOAD_LEN | NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 2 << 20, data.length, data).error());
            Reply read = c.request(0, NBD_CMD_READ, 2 << 20, data.length, null);
            for (Chunk ch : read.chunks()) assertEquals(2 << 20, ch.offset(), "extended replies echo the request offset");
            assertArrayEquals(data, c.read(2 << 20, data.length, 0));
            Reply ok = c.request(0, NBD_CMD_FLUSH, 0, 0, null);
            assertEquals(1, ok.chunks().size());
            assertEquals(NBD_REPLY_TYPE_NONE, ok.chunks().get(0).type(), "no simple replies with extended headers");
            // 64-bit block status over the whole export: data (1 MiB), hole, data (64 KiB), hole
            Reply bs = c.request(0, NBD_CMD_BLOCK_STATUS, 0, SIZE, null);
            Chunk st = bs.chunks().get(0);
            assertEquals(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, st.type());
            int count = NbdTestClient.readInt(st.payload(), 4);
            long covered = 0;
            for (int i = 0; i < count; i++) covered += NbdTestClient.readLong(st.payload(), 8 + 16 * i);
            assertEquals(SIZE, covered);
            assertEquals(1 << 20, NbdTestClient.readLong(st.payload(), 8), "first extent: the data MiB");
            assertEquals(0, NbdTestClient.readLong(st.payload(), 16));
            assertEquals(NbdMetaContext.NBD_STATE_HOLE | NbdMetaContext.NBD_STATE_ZERO, NbdTestClient.readLong(st.payload(), 8 + 16 + 8));
            assertEquals(65536, NbdTestClient.readLong(st.payload(), 8 + 32));
        }
    }

    @Test
    void extendedPayloadOverTheMaximumClosesTheConnection() throws Exception {
        try (NbdTestClient c = client()) {
            c.extendedHeaders();
            c.go("disk0");
            c.sendRequest(NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, 0, 1L << 40, null);
            assertTrue(c.closedByServer());
        }
        try (NbdTestClient other = client()) { // the server goes on
            other.go("disk0");
            assertArrayEquals(fileBytes(0, 512), other.read(0, 512, 0));
        }
    }

    @Test
    void compactWriteOverTheMaximumIsReadAndRefusedAndTheStreamKeepsFraming() throws Exception {
        try (NbdTestClient c = client()) {
            c.go("disk0");
            int len = NbdExport.MAX_PAYLOAD + 4096;
            byte[] before = fileBytes(0, 4096);
            assertEquals(NbdError.NBD_EINVAL, c.write(0, new byte[len], 0));
            assertArrayEquals(before, fileBytes(0, 4096), "nothing written");
            assertArrayEquals(before, c.read(0, 4096, 0), "next request parsed correctly");
        }
    }

    @Test
    void badRequestMagicClosesOnlyThatClient() throws Exception {
        try (NbdTestClient good = client(); NbdTestClient bad = client()) {
            good.go("disk0");
            bad.go("disk0");
            bad.out().write(new byte[28]);
            bad.out().flush();
            assertTrue(bad.closedByServer());
            assertArrayEquals(fileBytes(0, 4096), good.read(0, 4096, 0));
        }
    }

    @Test
    void invalidRequestsGetTheSpecErrorsAndTheConnectionGoesOn() throws Exception {
        try (NbdTestClient c = client(); NbdTestClient ro = client()) {
            c.go("disk0");
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_READ, SIZE - 10, 20, null).error());
            assertEquals(NbdError.NBD_ENOSPC, c.write(SIZE - 10, new byte[20], 0));
            assertEquals(NbdError.NBD_EINVAL, c.request(0, 77, 0, 0, null).error(), "unknown command");
            assertEquals(NbdError.NBD_EINVAL, c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_READ, 0, 512, null).error(), "flag not for READ");
            assertEquals(NbdError.NBD_EINVAL, c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, 512, null).error(), "DF without structured replies");
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_BLOCK_STATUS, 0, 512, null).error(), "no meta context");
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_READ, 0, NbdExport.MAX_PAYLOAD + 1, null).error());
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_READ, Long.MAX_VALUE, 512, null).error(), "offset overflow");
            assertEquals(0, c.request(0, NBD_CMD_WRITE, 0, 0, new byte[0]).error(), "zero-length write is a no-op");
            assertArrayEquals(fileBytes(0, 512), c.read(0, 512, 0));
            ro.go("ro");
            assertEquals(NbdError.NBD_EPERM, ro.write(0, new byte[512], 0));
            assertEquals(NbdError.NBD_EPERM, ro.request(0, NBD_CMD_TRIM, 0, 4096, null).error());
            assertEquals(NbdError.NBD_EPERM, ro.request(0, NBD_CMD_WRITE_ZEROES, 0, 4096, null).error());
            assertArrayEquals(fileBytes(0, 512), ro.read(0, 512, 0));
        }
    }

    @Test
    void structuredReadOverHolesSendsHoleChunksAndDfSendsOneChunk() throws Exception {
        try (NbdTestClient c = client()) {
            c.structuredReplies();
            c.go("disk0");
            assertTrue((c.transmissionFlags & NbdTransmissionFlags.NBD_FLAG_SEND_DF) != 0);
            // [1 MiB - 64 KiB, 1 MiB + 192 KiB): 64 KiB data then 192 KiB hole
            long off = (1 << 20) - 65536;
            Reply r = c.request(0, NBD_CMD_READ, off, 262144, null);
            assertEquals(2, r.chunks().size());
            assertEquals(NBD_REPLY_TYPE_OFFSET_DATA, r.chunks().get(0).type());
            assertEquals(NBD_REPLY_TYPE_OFFSET_HOLE, r.chunks().get(1).type());
            assertEquals(196608, NbdTestClient.readInt(r.chunks().get(1).payload(), 8));
            assertTrue(r.chunks().get(1).done());
            byte[] expect = fileBytes(off, 262144);
            assertArrayEquals(expect, c.read(off, 262144, 0));
            Reply df = c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, off, 262144, null);
            assertEquals(1, df.chunks().size(), "DF: one chunk");
            assertEquals(NBD_REPLY_TYPE_OFFSET_DATA, df.chunks().get(0).type());
            assertArrayEquals(expect, c.read(off, 262144, NBD_CMD_FLAG_DF));
            Reply hole = c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, 4 << 20, 1 << 20, null);
            assertEquals(NBD_REPLY_TYPE_OFFSET_HOLE, hole.chunks().get(0).type(), "DF over a hole: one hole chunk");
            Reply err = c.request(0, NBD_CMD_READ, SIZE, 512, null);
            assertEquals(NBD_REPLY_TYPE_ERROR, err.chunks().get(0).type(), "structured error for READ");
        }
    }

    @Test
    void writeZeroesTrimAndBlockStatusReqOne() throws Exception {
        try (NbdTestClient c = client()) {
            c.structuredReplies();
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "disk0", NbdMetaContext.BASE_ALLOCATION);
            c.go("disk0");
            assertEquals(0, c.request(0, NBD_CMD_TRIM, 0, 65536, null).error());
            assertEquals(0, c.request(NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, NBD_CMD_WRITE_ZEROES, 65536, 65536, null).error());
            assertArrayEquals(new byte[131072], c.read(0, 131072, 0));
            Reply bs = c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 0, 1 << 20, null);
            Chunk st = bs.chunks().get(0);
            assertEquals(NBD_REPLY_TYPE_BLOCK_STATUS, st.type());
            assertEquals(4 + 8, st.payload().length, "REQ_ONE: one descriptor");
            assertEquals(3, NbdTestClient.readInt(st.payload(), 8), "trimmed range is hole+zero");
            assertEquals(0, c.request(0, NBD_CMD_CACHE, 0, 1 << 20, null).error());
        }
    }

    @Test
    void disconnectFinishesEarlierRequests() throws Exception {
        byte[] data = random(4096, 11);
        try (NbdTestClient c = client()) {
            c.go("disk0");
            c.sendRequest(0, NBD_CMD_WRITE, 8 << 20, data.length, data);
            c.disconnect();
            assertEquals(0, c.readReply(0).error());
            assertTrue(c.closedByServer());
        }
        assertArrayEquals(data, fileBytes(8 << 20, 4096));
    }

    @Test
    void aClientThatDoesNotReadIsThrottledNotBuffered() throws Exception {
        int n = 512;
        int len = 4 << 20; // 2 GiB of replies requested in all
        try (NbdTestClient c = client()) {
            c.socket().setReceiveBufferSize(64 * 1024);
            c.go("disk0");
            for (int i = 0; i < n; i++) c.sendRequest(0, NBD_CMD_READ, (i % 3) * (long) len, len, null);
            Thread.sleep(1000);
            long used = io.netty.util.internal.PlatformDependent.usedDirectMemory();
            assertTrue(used < 256L << 20, "direct memory held for a client that does not read: " + used);
            for (int i = 0; i < n; i++) {
                Reply r = c.readReply(len);
                assertEquals(0, r.error());
            }
        }
    }

    @Test
    void requestsOfTheAdvertisedMaximumPayloadWorkBothWays() throws Exception {
        byte[] data = random(NbdExport.MAX_PAYLOAD, 5);
        try (NbdTestClient c = client(); NbdTestClient s = client()) {
            c.go("disk0");
            assertEquals(0, c.write(16 << 20, data, NBD_CMD_FLAG_FUA));
            assertArrayEquals(data, c.read(16 << 20, data.length, 0));
            s.structuredReplies();
            s.go("disk0");
            assertArrayEquals(data, s.read(16 << 20, data.length, 0), "structured, sparse-checked path");
        }
        assertArrayEquals(data, fileBytes(16 << 20, data.length));
    }

    @Test
    void streamedWritesThatMustBeRefusedStillConsumeTheirPayload() throws Exception {
        byte[] big = random(3 << 20, 9); // arrives in many segments: written piecewise as it comes
        try (NbdTestClient c = client(); NbdTestClient ro = client()) {
            c.go("disk0");
            ro.go("ro");
            byte[] before = fileBytes(0, 4096);
            assertEquals(NbdError.NBD_EPERM, ro.write(0, big, 0));
            assertArrayEquals(before, ro.read(0, 4096, 0), "stream kept its framing");
            assertEquals(NbdError.NBD_ENOSPC, c.write(SIZE - (1 << 20), big, 0));
            assertEquals(NbdError.NBD_EINVAL, c.write(0, big, NBD_CMD_FLAG_REQ_ONE), "bad flag");
            assertArrayEquals(before, fileBytes(0, 4096), "nothing written by refused requests");
            assertEquals(0, c.write(5 << 20, big, NBD_CMD_FLAG_FUA));
            assertArrayEquals(big, fileBytes(5 << 20, big.length));
        }
    }

    @Test
    void anImageTruncatedBehindOurBackEndsOnlyThatClientsLargeRead() throws Exception {
        try (NbdTestClient c = client(); NbdTestClient other = client()) {
            c.go("disk0");
            other.go("ro");
            try (var f = new java.io.RandomAccessFile(image.toFile(), "rw")) {
                f.setLength(SIZE / 2); // an admin error: the image shrinks under a running server
            }
            c.sendRequest(0, NBD_CMD_READ, SIZE - (4 << 20), 1 << 20, null); // sent with sendfile
            try {
                Reply r = c.readReply(1 << 20);
                assertArrayEquals(new byte[1 << 20], r.chunks().get(0).payload(), "if served, the missing tail reads as zeros");
            } catch (java.io.IOException dropped) {
                // the header was out before sendfile found the file short: closing is the only way to say so
            }
            assertArrayEquals(new byte[4096], other.read(SIZE - 4096, 4096, 0), "other clients keep working (short read = zeros)");
        }
    }

    @Test
    void aClientThatFloodsOptionsWithoutReadingIsThrottled() throws Exception {
        NbdTestClient c = client();
        c.socket().setReceiveBufferSize(16 * 1024);
        byte[] one = new byte[16]; // NBD_OPT_LIST: IHAVEOPT, option 3, length 0
        java.nio.ByteBuffer.wrap(one).putLong(NbdMagic.IHAVEOPT).putInt(NbdOpt.NBD_OPT_LIST).putInt(0);
        byte[] burst = new byte[16 * 4096];
        for (int i = 0; i < 4096; i++) System.arraycopy(one, 0, burst, i * 16, 16);
        long before = io.netty.util.internal.PlatformDependent.usedDirectMemory();
        Thread flood = new Thread(() -> {
            try {
                for (int i = 0; i < 256; i++) c.out().write(burst); // 1M options, ~100 MB of replies if all were made
                c.out().flush();
            } catch (IOException stopped) {
                // closed below, or the server stopped reading: that is the point
            }
        });
        flood.setDaemon(true);
        flood.start();
        Thread.sleep(1500);
        long used = io.netty.util.internal.PlatformDependent.usedDirectMemory() - before;
        c.close();
        flood.join(5000);
        assertTrue(used < 16L << 20, "direct memory held for a client flooding options: " + used); // ~2 MB throttled, ~50 MB not
        try (NbdTestClient other = client()) { // the server goes on
            other.go("disk0");
            assertArrayEquals(fileBytes(0, 512), other.read(0, 512, 0));
        }
    }

    @Test
    void stopEndsAConnectionAtAReplyBoundaryWithoutAReset() throws Exception {
        // A client pipelining reads while the server stops must get every reply the server sent,
        // then end-of-stream -- not "connection reset": closing a socket with requests unread in
        // its receive queue makes TCP send a reset, which also drops replies not yet transmitted.
        NbdTestClient c = client();
        c.go("disk0"); // simple replies: a 16-byte header, then the data
        int len = 64 << 10;
        Thread sender = new Thread(() -> {
            try {
                for (int i = 0; i < 50_000; i++) c.sendRequest(0, NBD_CMD_READ, (long) (i % 16) * len, len, null);
            } catch (IOException expected) {
                // the server stopped reading and closed: that is the point
            }
        });
        sender.setDaemon(true);
        sender.start();
        // Replies are not read yet: the send buffers fill, the server stops reading and requests
        // pile up in its receive queue.
        Thread.sleep(1000);
        Thread stopper = new Thread(() -> server.stop(5000));
        stopper.start();
        NbdTestClient.StreamEnd end = c.readSimpleReadRepliesUntilEnd(len);
        stopper.join(10_000);
        assertTrue(end.clean(), end.toString());
        assertTrue(end.replies() > 0, end.toString());
        c.close();
    }

    @Test
    void stopAlsoClosesClientsStillInTheirHandshake() throws Exception {
        NbdTestClient negotiating = client(); // greeting read, no option sent yet
        NbdTestClient serving = client();
        serving.go("disk0");
        long t0 = System.nanoTime();
        server.stop(5000);
        assertTrue(negotiating.closedByServer(), "a client in the handshake is disconnected by stop()");
        assertTrue(serving.closedByServer());
        // stop() may linger LINGER_MS for the serving client, which reads nothing until stop() returns
        long ms = (System.nanoTime() - t0) / 1_000_000;
        assertTrue(ms < NbdServer.LINGER_MS + 5_000, "not left to the handshake timeout: " + ms + " ms");
        assertEquals(0, server.connectionCount());
        negotiating.close();
        serving.close();
    }

    @Test
    void emptyNameSelectsTheOnlyExport() throws Exception {
        server.removeExport("ro");
        try (NbdTestClient c = client()) {
            c.go("");
            assertEquals(SIZE, c.size);
        }
    }
}
