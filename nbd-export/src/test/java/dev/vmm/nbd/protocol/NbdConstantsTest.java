package dev.vmm.nbd.protocol;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

/** Wire values checked against doc/proto.md, so a typo in a constant fails the build. */
class NbdConstantsTest {

    @Test
    void magicsMatchSpec() {
        // NBDMAGIC and IHAVEOPT are the ASCII strings, big-endian.
        assertEquals(ascii("NBDMAGIC"), NbdMagic.NBDMAGIC);
        assertEquals(ascii("IHAVEOPT"), NbdMagic.IHAVEOPT);
        assertEquals(0x0003e889045565a9L, NbdMagic.NBD_REP_MAGIC);
        assertEquals(0x25609513, NbdMagic.NBD_REQUEST_MAGIC);
        assertEquals(0x21e41c71, NbdMagic.NBD_EXTENDED_REQUEST_MAGIC);
        assertEquals(0x67446698, NbdMagic.NBD_SIMPLE_REPLY_MAGIC);
        assertEquals(0x668e33ef, NbdMagic.NBD_STRUCTURED_REPLY_MAGIC);
        assertEquals(0x6e8a278c, NbdMagic.NBD_EXTENDED_REPLY_MAGIC);
    }

    @Test
    void handshakeAndTransmissionFlagsMatchSpec() {
        assertEquals(1, NbdHandshakeFlags.NBD_FLAG_FIXED_NEWSTYLE);
        assertEquals(2, NbdHandshakeFlags.NBD_FLAG_C_NO_ZEROES);
        assertEquals(1 << 7, NbdTransmissionFlags.NBD_FLAG_SEND_DF);
        assertEquals(1 << 8, NbdTransmissionFlags.NBD_FLAG_CAN_MULTI_CONN);
        assertEquals(1 << 11, NbdTransmissionFlags.NBD_FLAG_SEND_FAST_ZERO);
        assertEquals(1 << 12, NbdTransmissionFlags.NBD_FLAG_BLOCK_STAT_PAYLOAD);
    }

    @Test
    void optionAndReplyValuesMatchSpec() {
        assertEquals(1, NbdOpt.NBD_OPT_EXPORT_NAME);
        assertEquals(7, NbdOpt.NBD_OPT_GO);
        assertEquals(10, NbdOpt.NBD_OPT_SET_META_CONTEXT);
        assertEquals(11, NbdOpt.NBD_OPT_EXTENDED_HEADERS);
        assertEquals(0x80000001, NbdRep.NBD_REP_ERR_UNSUP);
        assertEquals(0x80000008, NbdRep.NBD_REP_ERR_BLOCK_SIZE_REQD);
        assertEquals(0x8000000a, NbdRep.NBD_REP_ERR_EXT_HEADER_REQD);
        assertEquals(3, NbdInfo.NBD_INFO_BLOCK_SIZE);
        assertTrue(NbdRep.isError(NbdRep.NBD_REP_ERR_TOO_BIG));
        assertTrue(NbdRep.isError(0x80000063));
        assertFalse(NbdRep.isError(NbdRep.NBD_REP_META_CONTEXT));
    }

    @Test
    void transmissionValuesMatchSpec() {
        assertEquals(6, NbdCmd.NBD_CMD_WRITE_ZEROES);
        assertEquals(7, NbdCmd.NBD_CMD_BLOCK_STATUS);
        assertEquals(1 << 4, NbdCmdFlags.NBD_CMD_FLAG_FAST_ZERO);
        assertEquals(1 << 5, NbdCmdFlags.NBD_CMD_FLAG_PAYLOAD_LEN);
        assertEquals(6, NbdReplyType.NBD_REPLY_TYPE_BLOCK_STATUS_EXT);
        assertEquals(32769, NbdReplyType.NBD_REPLY_TYPE_ERROR);
        assertEquals(32770, NbdReplyType.NBD_REPLY_TYPE_ERROR_OFFSET);
        assertTrue(NbdReplyType.isError(NbdReplyType.NBD_REPLY_TYPE_ERROR_OFFSET));
        assertFalse(NbdReplyType.isError(NbdReplyType.NBD_REPLY_TYPE_OFFSET_HOLE));
        assertEquals(1, NbdReplyFlags.NBD_REPLY_FLAG_DONE);
        assertEquals(75, NbdError.NBD_EOVERFLOW);
        assertEquals(108, NbdError.NBD_ESHUTDOWN);
        assertEquals("base:allocation", NbdMetaContext.BASE_ALLOCATION);
        assertEquals(2, NbdMetaContext.NBD_STATE_ZERO);
    }

    @Test
    void namesOfKnownAndUnknownValues() {
        assertEquals("NBD_OPT_GO", NbdOpt.name(7));
        assertEquals("NBD_OPT_UNKNOWN(42)", NbdOpt.name(42));
        assertEquals("NBD_REP_ERR_UNSUP", NbdRep.name(NbdRep.NBD_REP_ERR_UNSUP));
        assertEquals("NBD_REP_UNKNOWN(2147483747)", NbdRep.name(0x80000063));
        assertEquals("NBD_CMD_UNKNOWN(99)", NbdCmd.name(99));
        assertEquals("NBD_CMD_BLOCK_STATUS", NbdCmd.name(7));
        assertEquals("NBD_INFO_UNKNOWN(4)", NbdInfo.name(4));
        assertEquals("NBD_REPLY_TYPE_UNKNOWN(3)", NbdReplyType.name(3));
        assertEquals("NBD_E_UNKNOWN(7)", NbdError.name(7));
        assertEquals("NBD_SIMPLE_REPLY_MAGIC", NbdMagic.name(0x67446698));
        assertEquals("IHAVEOPT", NbdMagic.name(NbdMagic.IHAVEOPT));
        assertEquals("NBD_MAGIC_UNKNOWN(0x12560953)", NbdMagic.name(0x12560953));
        assertEquals("NBD_CMD_FLAG_FUA|NBD_CMD_FLAG_NO_HOLE", NbdCmdFlags.name(0x3));
        assertEquals("NBD_CMD_FLAG_DF|NBD_CMD_FLAG_UNKNOWN(0x8000)", NbdCmdFlags.name(0x8004));
        assertEquals("NBD_FLAG_HAS_FLAGS|NBD_FLAG_READ_ONLY", NbdTransmissionFlags.name(3));
        assertEquals("0", NbdReplyFlags.name(0));
        assertEquals("NBD_FLAG_C_FIXED_NEWSTYLE", NbdHandshakeFlags.clientName(1));
    }

    @Test
    void errnoMappingIsTheSpecOne() {
        assertEquals(NbdError.NBD_EPERM, NbdError.fromErrno(30)); // EROFS
        assertEquals(NbdError.NBD_EPERM, NbdError.fromErrno(13)); // EACCES
        assertEquals(NbdError.NBD_ENOSPC, NbdError.fromErrno(27)); // EFBIG
        assertEquals(NbdError.NBD_ENOSPC, NbdError.fromErrno(122)); // EDQUOT
        assertEquals(NbdError.NBD_ENOTSUP, NbdError.fromErrno(95)); // EOPNOTSUPP
        assertEquals(NbdError.NBD_EINVAL, NbdError.fromErrno(22));
        assertEquals(NbdError.NBD_EIO, NbdError.fromErrno(2)); // ENOENT: unknown -> EIO
        assertEquals(0, NbdError.fromErrno(0));
    }

    private static long ascii(String s) {
        byte[] b = s.getBytes(StandardCharsets.US_ASCII);
        long v = 0;
        for (byte x : b) {
            v = (v << 8) | (x & 0xff);
        }
        return v;
    }
}
