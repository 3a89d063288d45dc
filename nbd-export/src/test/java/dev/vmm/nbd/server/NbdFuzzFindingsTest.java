package dev.vmm.nbd.server;

import static dev.vmm.nbd.protocol.NbdCmd.*;
import static dev.vmm.nbd.protocol.NbdCmdFlags.*;
import static dev.vmm.nbd.protocol.NbdRep.*;
import static dev.vmm.nbd.protocol.NbdReplyType.*;
import static org.junit.jupiter.api.Assertions.*;

import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.client.NbdClient.Chunk;
import dev.vmm.nbd.client.NbdClient.Reply;
import dev.vmm.nbd.protocol.NbdError;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdOpt;
import dev.vmm.nbd.protocol.NbdTransmissionFlags;
import dev.vmm.nbd.testing.NbdTestClient;
import org.junit.jupiter.api.Test;

/**
 * Regressions for what an outside NBD fuzzer found in the transmission phase, each named after
 * the rule of proto.md it checks. (The third finding, a client leaving during a move, is
 * {@link NbdAsyncTransmissionTest#aClientThatLeftDuringAMoveDoesNotFailTheAttachStep}.)
 */
class NbdFuzzFindingsTest extends NbdServerFixture {

    /**
     * proto.md, "Command flags", NBD_CMD_FLAG_FUA: "If the server advertised NBD_FLAG_SEND_FUA, it
     * MUST accept all commands with this bit set (even by ignoring the bit)". READ, FLUSH,
     * BLOCK_STATUS and CACHE were answered NBD_EINVAL.
     */
    @Test
    void withSendFuaEveryCommandAcceptsTheFuaFlag() throws Exception {
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ACK, c.structuredReplies().type());
            c.metaContext(NbdOpt.NBD_OPT_SET_META_CONTEXT, "disk0", NbdMetaContext.BASE_ALLOCATION);
            c.go("disk0");
            assertTrue((c.transmissionFlags & NbdTransmissionFlags.NBD_FLAG_SEND_FUA) != 0);
            assertArrayEquals(fileBytes(4096, 4096), c.read(4096, 4096, NBD_CMD_FLAG_FUA), "READ with FUA");
            assertEquals(0, c.request(NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH, 0, 0, null).error(), "FLUSH with FUA");
            assertEquals(0, c.request(NBD_CMD_FLAG_FUA, NBD_CMD_CACHE, 0, 65536, null).error(), "CACHE with FUA");
            Reply bs = c.request(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE, NBD_CMD_BLOCK_STATUS, 0, 4096, null);
            assertEquals(0, bs.error(), "BLOCK_STATUS with FUA");
            assertEquals(NBD_REPLY_TYPE_BLOCK_STATUS, bs.chunks().get(0).type());
            assertEquals(0, c.write(8192, random(4096, 3), NBD_CMD_FLAG_FUA), "WRITE with FUA");
            assertEquals(0, c.request(NBD_CMD_FLAG_FUA, NBD_CMD_TRIM, 2 << 20, 4096, null).error(), "TRIM with FUA");
            assertEquals(0, c.request(NBD_CMD_FLAG_FUA, NBD_CMD_WRITE_ZEROES, 3 << 20, 4096, null).error(), "WRITE_ZEROES with FUA");
            // still refused where the spec says "undocumented flag"
            assertEquals(NbdError.NBD_EINVAL, c.request(NBD_CMD_FLAG_NO_HOLE, NBD_CMD_READ, 0, 512, null).error());
        }
        try (NbdTestClient c = client()) { // a read-only export does not advertise SEND_FUA
            c.go("ro");
            assertEquals(0, c.transmissionFlags & NbdTransmissionFlags.NBD_FLAG_SEND_FUA);
            assertEquals(NbdError.NBD_EINVAL, c.request(NBD_CMD_FLAG_FUA, NBD_CMD_READ, 0, 512, null).error());
        }
    }

    /**
     * proto.md, NBD_CMD_READ with NBD_CMD_FLAG_DF: the server "MAY reject a client's request with
     * the error NBD_EOVERFLOW if the length is too large to send without fragmentation, in which
     * case it MUST NOT send a content chunk; however, the server MUST support unfragmented reads
     * in which the client's request length does not exceed 65,536 bytes". We send up to the
     * maximum payload (32 MiB) in one chunk, so a DF read above 64 KiB up to that is served as one
     * chunk, and one beyond it gets NBD_EOVERFLOW (it got NBD_EINVAL).
     */
    @Test
    void dfReadLongerThanOneChunkIsEoverflowWithoutAContentChunk() throws Exception {
        try (NbdTestClient c = client()) {
            assertEquals(NBD_REP_ACK, c.structuredReplies().type());
            c.go("disk0");
            Reply one = c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, 1 << 20, null);
            assertEquals(1, one.chunks().size(), "1 MiB with DF: one chunk");
            assertArrayEquals(fileBytes(0, 1 << 20), NbdClient.readData(one, 0, 1 << 20));

            int tooLong = NbdExport.MAX_PAYLOAD + 4096;
            Reply r = c.request(NBD_CMD_FLAG_DF, NBD_CMD_READ, 0, tooLong, null);
            assertEquals(NbdError.NBD_EOVERFLOW, r.error());
            for (Chunk ch : r.chunks()) {
                assertNotEquals(NBD_REPLY_TYPE_OFFSET_DATA, ch.type(), "no content chunk with EOVERFLOW");
                assertNotEquals(NBD_REPLY_TYPE_OFFSET_HOLE, ch.type(), "no content chunk with EOVERFLOW");
            }
            // without DF the same read is over the maximum block size: EINVAL (proto.md "Error values")
            assertEquals(NbdError.NBD_EINVAL, c.request(0, NBD_CMD_READ, 0, tooLong, null).error());
            assertArrayEquals(fileBytes(0, 512), c.read(0, 512), "the connection goes on");
        }
    }
}
