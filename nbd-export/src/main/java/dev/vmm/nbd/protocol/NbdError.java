package dev.vmm.nbd.protocol;

import dev.vmm.core.linux.Errno;

import static dev.vmm.core.linux.Errno.*;

/**
 * Error values (32 bits) of simple replies and error chunks, and the one errno mapping.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#error-values">Error values</a>. Only these values may go on the wire;
 * clients treat unknown values as NBD_EINVAL.
 */
public final class NbdError {
    private NbdError() {}

    /** 1: operation not permitted (e.g. write/trim on a read-only export). */
    public static final int NBD_EPERM = 1;
    /** 5: input/output error. */
    public static final int NBD_EIO = 5;
    /** 12: cannot allocate memory; SHOULD NOT be returned if at all possible. */
    public static final int NBD_ENOMEM = 12;
    /** 22: invalid argument (unknown command/flag, misaligned, read/trim out of range). */
    public static final int NBD_EINVAL = 22;
    /** 28: no space left on device (write beyond the end, EDQUOT, EFBIG). */
    public static final int NBD_ENOSPC = 28;
    /** 75: value too large; only for READ with NBD_CMD_FLAG_DF (and oversize effect lengths). */
    public static final int NBD_EOVERFLOW = 75;
    /** 95: operation not supported; only for WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO. */
    public static final int NBD_ENOTSUP = 95;
    /** 108: server is shutting down; the client MUST then soft-disconnect. */
    public static final int NBD_ESHUTDOWN = 108;

    // Linux errno values (asm-generic/errno-base.h, errno.h) used by fromErrno.

    /**
     * The single Linux errno to NBD error mapping; every reply error goes through here.
     *
     * <ul>
     *   <li>0 → 0 (success);
     *   <li>EPERM, EACCES, EROFS → NBD_EPERM (spec: EPERM for writes to a read-only export);
     *   <li>ENOSPC, EDQUOT, EFBIG → NBD_ENOSPC (spec: "SHOULD map the EDQUOT and EFBIG errors
     *       to NBD_ENOSPC");
     *   <li>EIO, ENOMEM, EINVAL, EOVERFLOW, ESHUTDOWN → the NBD value of the same name;
     *   <li>EOPNOTSUPP/ENOTSUP → NBD_ENOTSUP. Note the spec says the server "SHOULD NOT return
     *       NBD_ENOTSUP except" for FAST_ZERO, so the caller must not let a backend's
     *       EOPNOTSUPP from other commands reach the wire unfiltered;
     *   <li>anything else → NBD_EIO.
     * </ul>
     */
    public static int fromErrno(int linuxErrno) {
        return switch (linuxErrno) {
            case 0 -> 0;
            case EPERM, EACCES, EROFS -> NBD_EPERM;
            case EIO -> NBD_EIO;
            case ENOMEM -> NBD_ENOMEM;
            case EINVAL -> NBD_EINVAL;
            case ENOSPC, EDQUOT, EFBIG -> NBD_ENOSPC;
            case EOVERFLOW -> NBD_EOVERFLOW;
            case EOPNOTSUPP -> NBD_ENOTSUP;
            case ESHUTDOWN -> NBD_ESHUTDOWN;
            default -> NBD_EIO;
        };
    }

    /**
     * {@link #fromErrno(int)} for the reply to a request with command flags {@code cmdFlags}: the
     * spec reserves NBD_ENOTSUP for WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO and NBD_EOVERFLOW for
     * READ with NBD_CMD_FLAG_DF ("SHOULD NOT" otherwise), so without those flags a backend's
     * EOPNOTSUPP becomes NBD_EIO (the operation failed; the request was not invalid) and EOVERFLOW
     * becomes NBD_EINVAL.
     */
    public static int fromErrno(int linuxErrno, int cmdFlags) {
        int e = fromErrno(linuxErrno);
        if (e == NBD_ENOTSUP && (cmdFlags & NbdCmdFlags.NBD_CMD_FLAG_FAST_ZERO) == 0) return NBD_EIO;
        if (e == NBD_EOVERFLOW && (cmdFlags & NbdCmdFlags.NBD_CMD_FLAG_DF) == 0) return NBD_EINVAL;
        return e;
    }

    /** Log name of an error value, e.g. "NBD_EIO" or "NBD_E_UNKNOWN(7)". */
    public static String name(int error) {
        return switch (error) {
            case NBD_EPERM -> "NBD_EPERM";
            case NBD_EIO -> "NBD_EIO";
            case NBD_ENOMEM -> "NBD_ENOMEM";
            case NBD_EINVAL -> "NBD_EINVAL";
            case NBD_ENOSPC -> "NBD_ENOSPC";
            case NBD_EOVERFLOW -> "NBD_EOVERFLOW";
            case NBD_ENOTSUP -> "NBD_ENOTSUP";
            case NBD_ESHUTDOWN -> "NBD_ESHUTDOWN";
            default -> Names.unknown("NBD_E", Integer.toUnsignedLong(error));
        };
    }
}
