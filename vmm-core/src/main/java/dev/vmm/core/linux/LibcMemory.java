package dev.vmm.core.linux;

import static dev.vmm.core.linux.Errno.*;

import com.sun.jna.LastErrorException;
import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;
import com.sun.jna.Platform;

import java.io.IOException;

/**
 * The libc calls that create and map shared memory: guest RAM handed over by a vhost-user
 * frontend (an fd per region, mapped {@code MAP_SHARED}) and the memfd-backed memory of our own
 * test frontend. JNA direct mapping, pointers as {@code long} (x86_64 Linux), like {@link LibC}.
 *
 * <p>The raw natives report failure through {@link LastErrorException}; the checked helpers
 * ({@link #memfdCreate}, {@link #truncate}, {@link #mapShared}, {@link #unmap}) turn that into an
 * {@link ErrnoException} whose message names the call, its arguments and errno, and check
 * {@link #MAP_FAILED} explicitly so a failed mmap can never be mistaken for an address.
 *
 * <p>Thread contract: any thread. None of these calls are on a data path.
 */
public final class LibcMemory {
    private LibcMemory() {}

    static {
        Native.register(LibcMemory.class, NativeLibrary.getInstance(Platform.C_LIBRARY_NAME));
    }

    // ---- mmap(2) protection (asm-generic/mman-common.h) ----
    /** Pages may not be accessed. */
    public static final int PROT_NONE = 0x0;
    /** Pages may be read. */
    public static final int PROT_READ = 0x1;
    /** Pages may be written. */
    public static final int PROT_WRITE = 0x2;

    // ---- mmap(2) flags ----
    /** Share the mapping: stores reach the file and every other mapping of it (guest RAM). */
    public static final int MAP_SHARED = 0x01;
    /** Private copy-on-write mapping. */
    public static final int MAP_PRIVATE = 0x02;
    /** Not backed by a file (fd -1). */
    public static final int MAP_ANONYMOUS = 0x20;
    /** Populate (prefault) page tables: fewer faults on first touch. */
    public static final int MAP_POPULATE = 0x8000;
    /** mmap's failure value, {@code (void *) -1}. */
    public static final long MAP_FAILED = -1L;

    // ---- memfd_create(2) flags (linux/memfd.h) ----
    /** Close the memfd on exec. */
    public static final int MFD_CLOEXEC = 0x0001;
    /** Allow F_ADD_SEALS. */
    public static final int MFD_ALLOW_SEALING = 0x0002;

    // ---- errno values seen here ----

    /** sysconf(3) name of the page size. */
    public static final int _SC_PAGESIZE = 30;

    /** A failed memory call, with errno. Not a data-path exception. */
    public static final class ErrnoException extends IOException {
        private static final long serialVersionUID = 1L;
        private final int errno;

        public ErrnoException(String call, int errno) {
            super(call + ": " + LibC.describe(errno));
            this.errno = errno;
        }

        /** The errno the call failed with. */
        public int errno() { return errno; }
    }

    // ---- raw natives ----

    /** memfd_create(2): an anonymous file living in memory. */
    public static native int memfd_create(String name, int flags) throws LastErrorException;

    /** ftruncate(2). */
    public static native int ftruncate(int fd, long length) throws LastErrorException;

    /** mmap(2); returns {@link #MAP_FAILED} (and throws) on failure. */
    public static native long mmap(long addr, long length, int prot, int flags, int fd, long offset) throws LastErrorException;

    /** munmap(2). */
    public static native int munmap(long addr, long length) throws LastErrorException;

    /** dup(2), with O_CLOEXEC semantics left to the caller: hands a memfd to a second owner. */
    public static native int dup(int fd) throws LastErrorException;

    /** sysconf(3). */
    public static native long sysconf(int name);

    // ---- checked helpers ----

    private static final long PAGE_SIZE = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;

    /** The system page size (mmap offsets must be multiples of it). */
    public static long pageSize() { return PAGE_SIZE; }

    /** memfd_create with MFD_CLOEXEC; the name is only shown in /proc/PID/fd. */
    public static int memfdCreate(String name) throws ErrnoException {
        try {
            int fd = memfd_create(name, MFD_CLOEXEC);
            if (fd < 0) throw new ErrnoException("memfd_create(" + name + ")", Errno.EINVAL);
            return fd;
        } catch (LastErrorException e) {
            throw new ErrnoException("memfd_create(" + name + ")", e.getErrorCode());
        }
    }

    /** ftruncate to {@code length} bytes. */
    public static void truncate(int fd, long length) throws ErrnoException {
        try {
            if (ftruncate(fd, length) != 0) throw new ErrnoException("ftruncate(" + fd + ", " + length + ")", Errno.EINVAL);
        } catch (LastErrorException e) {
            throw new ErrnoException("ftruncate(" + fd + ", " + length + ")", e.getErrorCode());
        }
    }

    /**
     * Maps {@code length} bytes of {@code fd} from {@code offset} (a page multiple) with
     * {@code MAP_SHARED}, readable, and writable if asked. Returns the address, never
     * {@link #MAP_FAILED}.
     */
    public static long mapShared(int fd, long length, long offset, boolean writable) throws ErrnoException {
        String call = "mmap(fd " + fd + ", length " + length + ", offset " + offset + ", MAP_SHARED)";
        if (length <= 0 || offset < 0) throw new ErrnoException(call, EINVAL);
        int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
        long addr;
        try {
            addr = mmap(0L, length, prot, MAP_SHARED, fd, offset);
        } catch (LastErrorException e) {
            throw new ErrnoException(call, e.getErrorCode());
        }
        if (addr == MAP_FAILED || addr == 0L) {
            // errno was not reported (cannot happen with a conforming libc); refuse the value anyway.
            throw new ErrnoException(call, EINVAL);
        }
        return addr;
    }

    /**
     * The size of {@code fd} when it is a regular file (a memfd, a tmpfs or hugetlbfs file),
     * else -1: for other types (devices, sockets, eventfds) the size says nothing about which
     * pages mmap may touch without SIGBUS. Uses {@code statx(fd, "", AT_EMPTY_PATH)} (an fstat),
     * not {@code lseek(SEEK_END)}: an fd received over SCM_RIGHTS shares its file offset with the
     * sender, and a seek would move the sender's offset.
     */
    public static long regularFileSize(int fd) throws ErrnoException {
        try (com.sun.jna.Memory stx = new com.sun.jna.Memory(LibC.STATX_SIZEOF)) {
            stx.clear();
            try {
                LibC.statx(fd, "", LibC.AT_EMPTY_PATH, LibC.STATX_TYPE | LibC.STATX_SIZE, com.sun.jna.Pointer.nativeValue(stx));
            } catch (LastErrorException e) {
                throw new ErrnoException("statx(fd " + fd + ")", e.getErrorCode());
            }
            int mask = stx.getInt(LibC.STATX_OFF_MASK);
            int mode = stx.getShort(LibC.STATX_OFF_MODE) & 0xFFFF;
            if ((mask & (LibC.STATX_TYPE | LibC.STATX_SIZE)) != (LibC.STATX_TYPE | LibC.STATX_SIZE)
                    || (mode & LibC.S_IFMT) != LibC.S_IFREG) {
                return -1;
            }
            return stx.getLong(LibC.STATX_OFF_SIZE);
        }
    }

    /** munmap of a range returned by {@link #mapShared}. */
    public static void unmap(long addr, long length) throws ErrnoException {
        try {
            if (munmap(addr, length) != 0) throw new ErrnoException("munmap(" + length + ")", EINVAL);
        } catch (LastErrorException e) {
            throw new ErrnoException("munmap(0x" + Long.toHexString(addr) + ", " + length + ")", e.getErrorCode());
        }
    }
}
