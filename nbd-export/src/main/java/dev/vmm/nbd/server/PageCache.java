package dev.vmm.nbd.server;

import dev.vmm.core.linux.Errno;

import static dev.vmm.core.linux.Errno.*;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibC;
import io.netty.util.concurrent.FastThreadLocal;
import io.netty.util.internal.PlatformDependent;

/**
 * Whether a file range is in the page cache, from {@code cachestat(2)} (Linux 6.5): a READ may
 * leave with {@link SendfileRegion} only when it is, since sendfile reads the page cache inside
 * the socket write and would block the IOThread (and every disk on it) on a miss. Answers false
 * where the call is missing (older kernels, seccomp), so those reads take the asynchronous path.
 * The answer can be stale by the time sendfile runs (pages evicted meanwhile): then that one
 * transfer waits for the disk, as every sendfile did before this check.
 *
 * <p>Thread contract: any thread; the 56 bytes of syscall arguments are per thread.
 */
final class PageCache {
    private PageCache() {}

    /** x86_64 syscall number (include/uapi/asm-generic/unistd.h: __NR_cachestat 451). */
    static final int SYS_CACHESTAT = 451;
    private static final long PAGE = 4096;
    private static volatile boolean unavailable;

    /** struct cachestat_range {u64 off; u64 len;} at 0, struct cachestat {u64 nr_cache; ...} (40 bytes) at 16. */
    private static final FastThreadLocal<Long> ARGS = new FastThreadLocal<>() {
        @Override
        protected Long initialValue() {
            return PlatformDependent.allocateMemory(16 + 40); // kept for the thread's life
        }
    };

    /** True when every page of [offset, offset + length) is cached. */
    static boolean resident(int fd, long offset, long length) {
        if (unavailable || length <= 0) return false;
        long m = ARGS.get();
        PlatformDependent.putLong(m, offset);
        PlatformDependent.putLong(m + 8, length);
        try {
            LibC.syscall(SYS_CACHESTAT, fd, m, m + 16, 0, 0, 0);
        } catch (LastErrorException e) {
            if (e.getErrorCode() == ENOSYS || e.getErrorCode() == EPERM) unavailable = true;
            return false;
        }
        long pages = (offset + length + PAGE - 1) / PAGE - offset / PAGE;
        return PlatformDependent.getLong(m + 16) >= pages; // nr_cache
    }
}
