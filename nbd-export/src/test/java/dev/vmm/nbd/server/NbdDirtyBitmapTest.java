package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.NBD_CMD_BLOCK_STATUS;
import static dev.vmm.nbd.protocol.NbdCmd.NBD_CMD_READ;
import static dev.vmm.nbd.protocol.NbdCmdFlags.NBD_CMD_FLAG_PAYLOAD_LEN;
import static dev.vmm.nbd.protocol.NbdCmdFlags.NBD_CMD_FLAG_REQ_ONE;
import static dev.vmm.nbd.protocol.NbdReplyType.NBD_REPLY_TYPE_BLOCK_STATUS;
import static dev.vmm.nbd.protocol.NbdReplyType.NBD_REPLY_TYPE_BLOCK_STATUS_EXT;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.core.block.RawFileDriver;
import dev.vmm.nbd.client.NbdClient.Chunk;
import dev.vmm.nbd.client.NbdClient.Reply;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdMagic;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.testing.NbdTestClient;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * {@code qemu:dirty-bitmap:NAME} on the wire (proto.md "Metadata querying", "NBD_CMD_BLOCK_STATUS",
 * extended headers): which queries list and select the contexts (QEMU's rules), extents
 * read from the bits and clipped to the request, QEMU's 32-bit merging of long dirty runs in
 * compact replies, and 64-bit extents in NBD_REPLY_TYPE_BLOCK_STATUS_EXT over an 8 GiB export.
 * Expected values are worked out here from the bits set, not read back from our client's view.
 */
class NbdDirtyBitmapTest extends NbdServerFixture {
    static final long BIG = 8L << 30;
    static final long G = 1L << 30;
    RawFileDriver bigDriver;
    DirtyBitmap a;
    DirtyBitmap small;

    @BeforeEach
    void addBitmapExport() throws Exception {
        java.nio.file.Path p = tmp.resolve("big.img");
        try (var f = new java.io.RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(BIG); // sparse
        }
        bigDriver = RawFileDriver.open(p, true, false);
        BlockNode node = new BlockNode("big0", bigDriver, iot);
        a = new DirtyBitmap("a", BIG, 65536);
        a.set(0, 5 * G); // one 5 GiB dirty run
        a.set(6 * G + 100_000, 1); // one chunk: [6G+65536, 6G+131072)
        small = new DirtyBitmap("small", G, 512); // a bitmap of a smaller (backing) node
        small.set(G / 2, 4096);
        node.addDirtyBitmap(a);
        node.addDirtyBitmap(small);
        // "a" twice: QEMU accepts it; the context then names the first
        server.addExport(new NbdExport("e2", "big", null, node, false, false, List.of(a, small, a)));
    }

    @AfterEach
    void closeBig() {
        iot.submit(() -> { bigDriver.close(); return null; }).join();
    }

    static final String CTX_A = NbdMetaContext.QEMU_DIRTY_BITMAP + "a";
    static final String CTX_SMALL = NbdMetaContext.QEMU_DIRTY_BITMAP + "small";

    @Test
    void listedAndSelectedAsQemuDoes() throws Exception {
        try (NbdTestClient c = client()) {
            c.structuredReplies();
            List<String> all = List.of(NbdMetaContext.BASE_ALLOCATION, CTX_A, CTX_SMALL, CTX_A);
            assertEquals(all, NbdAllocationDepthTest.names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "big")));
            assertEquals(List.of(CTX_A, CTX_SMALL, CTX_A), NbdAllocationDepthTest.names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "big", "qemu:")));
            assertEquals(List.of(CTX_A, CTX_SMALL, CTX_A),
                    NbdAllocationDepthTest.names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "big", NbdMetaContext.QEMU_DIRTY_BITMAP)));
            assertEquals(List.of(CTX_SMALL), NbdAllocationDepthTest.names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "big", CTX_SMALL)));
            assertEquals(List.of(), NbdAllocationDepthTest.names(c.metaContext(NbdOpt.NBD_OPT_LIST_META_CONTEXT, "disk0", NbdMetaContext.QEMU_DIRTY_BITMAP)));
            // SET: namespaces alone select nothing; unknown names neither
            assertEquals(List.of(), NbdAllocationDepthTest.names(c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "big",
                    "qemu:", NbdMetaContext.QEMU_DIRTY_BITMAP, NbdMetaContext.QEMU_DIRTY_BITMAP + "nope", "qemu:dirty-bitmap:a:")));
            var set = c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "big", CTX_SMALL, CTX_A, NbdMetaContext.BASE_ALLOCATION);
            assertEquals(List.of(NbdMetaContext.BASE_ALLOCATION, CTX_A, CTX_SMALL), NbdAllocationDepthTest.names(set), "QEMU's order, a repeated name once");
            List<Integer> ids = new ArrayList<>();
            for (var r : set) if (r.type() == dev.vmm.nbd.protocol.NbdRep.NBD_REP_META_CONTEXT) ids.add(NbdTestClient.readInt(r.data(), 0));
            assertEquals(List.of(HandshakeHandler.BASE_ALLOCATION_ID, HandshakeHandler.FIRST_BITMAP_ID, HandshakeHandler.FIRST_BITMAP_ID + 1), ids);
        }
    }

    /** The (length, flags) pairs of a compact status chunk, after checking its context id. */
    static List<Long> compact(Chunk ch, int id) {
        assertEquals(NBD_REPLY_TYPE_BLOCK_STATUS, ch.type());
        assertEquals(id, NbdTestClient.readInt(ch.payload(), 0));
        List<Long> out = new ArrayList<>();
        for (int at = 4; at < ch.payload().length; at += 8) {
            out.add(NbdTestClient.readInt(ch.payload(), at) & 0xFFFF_FFFFL);
            out.add((long) NbdTestClient.readInt(ch.payload(), at + 4));
        }
        return out;
    }

    /** The (length, flags) pairs of an extended status chunk (id, count, then 64-bit length and flags). */
    static List<Long> wide(Chunk ch, int id) {
        assertEquals(NBD_REPLY_TYPE_BLOCK_STATUS_EXT, ch.type());
        assertEquals(id, NbdTestClient.readInt(ch.payload(), 0));
        int count = NbdTestClient.readInt(ch.payload(), 4);
        assertEquals(8 + 16 * count, ch.payload().length, "count matches the descriptors sent");
        List<Long> out = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            out.add(NbdTestClient.readLong(ch.payload(), 8 + 16 * i));
            out.add(NbdTestClient.readLong(ch.payload(), 16 + 16 * i));
        }
        return out;
    }

    static final int A = HandshakeHandler.FIRST_BITMAP_ID;
    static final int SMALL = HandshakeHandler.FIRST_BITMAP_ID + 1;

    @Test
    void compactRepliesClipToTheRequestAndMergeAsQemu() throws Exception {
        try (NbdTestClient c = client()) {
            c.structuredReplies();
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "big", CTX_A, CTX_SMALL);
            c.go("big");
            // 4 GiB - 1 of a 5 GiB dirty run: QEMU takes INT32_MAX bytes, then merges the rest while the sum fits 32 bits
            Reply r = c.request(0, NBD_CMD_BLOCK_STATUS, 0, 0xFFFF_FFFFL, null);
            assertEquals(2, r.chunks().size());
            assertFalse(r.chunks().get(0).done());
            assertTrue(r.chunks().get(1).done());
            assertEquals(List.of(0xFFFF_FFFFL, 1L), compact(r.chunks().get(0), A));
            // past "small"'s 1 GiB it reads clean
            assertEquals(List.of(G / 2, 0L, 4096L, 1L, 0xFFFF_FFFFL - G / 2 - 4096, 0L), compact(r.chunks().get(1), SMALL));
            // across the end of the 5 GiB run, unaligned at both ends: clipped to the request
            r = c.request(0, NBD_CMD_BLOCK_STATUS, 5 * G - 1000, 3000, null);
            assertEquals(List.of(1000L, 1L, 2000L, 0L), compact(r.chunks().get(0), A));
            // the lone chunk at 6G+64k, then clean to the export's end
            r = c.request(0, NBD_CMD_BLOCK_STATUS, 6 * G, 2 * G, null);
            assertEquals(List.of(65536L, 0L, 65536L, 1L, 2 * G - 131072, 0L), compact(r.chunks().get(0), A));
            assertEquals(List.of(2 * G, 0L), compact(r.chunks().get(1), SMALL), "beyond the bitmap's size: clean");
            // REQ_ONE: the first extent only, never past the request
            r = c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 6 * G, 2 * G, null);
            assertEquals(List.of(65536L, 0L), compact(r.chunks().get(0), A));
            r = c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 6 * G + 65536 + 7, 100, null);
            assertEquals(List.of(100L, 1L), compact(r.chunks().get(0), A));
        }
    }

    @Test
    void extendedHeadersCarry64BitExtents() throws Exception {
        try (NbdTestClient c = client()) {
            c.extendedHeaders();
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "big", NbdMetaContext.BASE_ALLOCATION, CTX_A);
            c.go("big");
            Reply r = c.request(0, NBD_CMD_BLOCK_STATUS, 0, BIG, null);
            assertEquals(2, r.chunks().size());
            for (Chunk ch : r.chunks()) assertEquals(0, ch.offset(), "extended chunks echo the request offset");
            assertEquals(List.of(BIG, (long) (NbdMetaContext.NBD_STATE_HOLE | NbdMetaContext.NBD_STATE_ZERO)),
                    wide(r.chunks().get(0), HandshakeHandler.BASE_ALLOCATION_ID), "one 8 GiB hole: no 32-bit split");
            assertEquals(List.of(5 * G, 1L, G + 65536, 0L, 65536L, 1L, 2 * G - 131072, 0L), wide(r.chunks().get(1), A));
            r = c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 1, 6 * G, null);
            assertEquals(List.of(5 * G - 1, 1L), wide(r.chunks().get(1), A));
        }
    }

    @Test
    void badExtendedRequestsGetTheSpecsAnswer() throws Exception {
        try (NbdTestClient c = client()) {
            c.extendedHeaders();
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "big", CTX_A);
            c.go("big");
            // PAYLOAD_LEN on BLOCK_STATUS without NBD_FLAG_BLOCK_STAT_PAYLOAD: the payload is consumed, then EINVAL
            Reply r = c.request(NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 0, 12, new byte[12]);
            assertEquals(NbdError.NBD_EINVAL, r.error());
            // beyond the end, and length 0
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_BLOCK_STATUS, BIG - 10, 11, null).error());
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_BLOCK_STATUS, 0, 0, null).error());
            // a READ longer than the maximum payload: refused, not allocated; u64 lengths over 2^63 too
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_READ, 0, 1L << 33, null).error());
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_READ, 0, Long.MIN_VALUE, null).error());
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_BLOCK_STATUS, 0, -1L, null).error());
            assertEquals(NbdError.NBD_EINVAL, c.request(0, dev.vmm.nbd.protocol.NbdCmd.NBD_CMD_CACHE, 4096, -4096L, null).error());
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_BLOCK_STATUS, -4096L, 4096, null).error());
            // framing is intact: the next request is answered
            assertEquals(List.of(65536L, 1L), wide(c.request(NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 6 * G + 65536, 65536, null).chunks().get(0), A));
            // a compact header after extended headers were negotiated breaks framing: the server closes
            c.out().writeInt(NbdMagic.NBD_REQUEST_MAGIC);
            c.out().writeShort(0);
            c.out().writeShort(NBD_CMD_BLOCK_STATUS);
            c.out().writeLong(99);
            c.out().writeLong(0);
            c.out().writeInt(4096);
            c.out().writeInt(0); // pad to 32 bytes, as an extended header would be
            c.out().flush();
            assertTrue(c.closedByServer());
        }
    }

    @Test
    void aPayloadLongerThanItsLengthSaysBreaksFramingAndCloses() throws Exception {
        try (NbdTestClient c = client()) {
            c.extendedHeaders();
            c.go("disk0");
            // 16 bytes announced, 56 sent: the surplus is read as the next 32-byte header, whose magic is wrong
            c.writeRequest(NBD_CMD_FLAG_PAYLOAD_LEN, dev.vmm.nbd.protocol.NbdCmd.NBD_CMD_WRITE, 7, 4096, 16, new byte[56]);
            c.flushOutput();
            // the write may be answered before the close or not (it was in flight when the bad header came)
            assertTrue(c.closedByServer());
        }
    }

    @Test
    void blockStatusWithoutAnyContextIsInvalid() throws Exception {
        try (NbdTestClient c = client()) {
            c.structuredReplies();
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "big", "qemu:dirty-bitmap:nope");
            c.go("big");
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_BLOCK_STATUS, 0, 4096, null).error());
            assertArrayEquals(new byte[4096], c.read(G, 4096));
        }
    }
}
