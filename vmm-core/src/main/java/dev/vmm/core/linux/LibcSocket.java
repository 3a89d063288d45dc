package dev.vmm.core.linux;

import static dev.vmm.core.linux.Errno.*;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;
import com.sun.jna.Platform;
import com.sun.jna.Pointer;
import java.nio.charset.StandardCharsets;

/**
 * Unix-domain sockets with {@code SCM_RIGHTS} and eventfds (memfds: {@link LibcMemory}): the libc calls of the
 * vhost-user control plane, bound with JNA direct mapping like {@link LibC} ({@code long}
 * native addresses, no {@code Pointer}s, one JNI transition per call).
 *
 * <p>Calls declared {@code throws LastErrorException} report failure through it, errno in
 * {@link LastErrorException#getErrorCode()}. Thread contract: every static method may be called
 * from any thread; a {@link MsgBuffer} belongs to one thread at a time.
 *
 * <p>Struct layouts (x86_64 Linux, glibc) are written by hand into preallocated native memory:
 * <pre>
 * struct sockaddr_un { u16 sun_family; char sun_path[108]; }                      110 bytes
 * struct iovec       { void *iov_base @0; size_t iov_len @8; }                       16 bytes
 * struct msghdr      { void *msg_name @0; u32 msg_namelen @8; (pad 4)
 *                      struct iovec *msg_iov @16; size_t msg_iovlen @24;
 *                      void *msg_control @32; size_t msg_controllen @40;
 *                      int msg_flags @48; (pad 4) }                                  56 bytes
 * struct cmsghdr     { size_t cmsg_len @0; int cmsg_level @8; int cmsg_type @12;
 *                      data @16 }  CMSG_LEN(n) = 16 + n, CMSG_SPACE(n) = 16 + align8(n)
 * </pre>
 * See unix(7), cmsg(3), recvmsg(2), eventfd(2).
 */
public final class LibcSocket {
    private LibcSocket() {}

    static {
        Native.register(LibcSocket.class, NativeLibrary.getInstance(Platform.C_LIBRARY_NAME));
    }

    // ---- errno values ----

    // ---- socket(2) ----
    /** Unix-domain sockets. */
    public static final int AF_UNIX = 1;
    /** Byte-stream socket (vhost-user uses SOCK_STREAM). */
    public static final int SOCK_STREAM = 1;
    /** Non-blocking (also O_NONBLOCK and EFD_NONBLOCK). */
    public static final int SOCK_NONBLOCK = 0x800;
    /** Close on exec (also O_CLOEXEC and EFD_CLOEXEC). */
    public static final int SOCK_CLOEXEC = 0x80000;
    /** Level of socket options and of SCM_RIGHTS control messages. */
    public static final int SOL_SOCKET = 1;
    /** Control message type carrying file descriptors. */
    public static final int SCM_RIGHTS = 1;
    /** setsockopt: receive timeout (struct timeval). */
    public static final int SO_RCVTIMEO = 20;
    /** setsockopt: send timeout (struct timeval). */
    public static final int SO_SNDTIMEO = 21;
    /** getsockopt: credentials of the connected peer (struct ucred { pid_t pid; uid_t uid; gid_t gid; }, 12 bytes). */
    public static final int SO_PEERCRED = 17;
    /** SO_TYPE: the socket type (SOCK_STREAM, SOCK_DGRAM), socket(7). */
    public static final int SO_TYPE = 3;
    /** SO_ACCEPTCONN: 1 when the socket is listening, socket(7). */
    public static final int SO_ACCEPTCONN = 30;
    /** SO_DOMAIN: the socket's address family, socket(7). */
    public static final int SO_DOMAIN = 39;
    /** IPv4 sockets. */
    public static final int AF_INET = 2;
    /** IPv6 sockets. */
    public static final int AF_INET6 = 10;
    /** Datagram sockets (sd_notify). */
    public static final int SOCK_DGRAM = 2;

    // ---- recvmsg/sendmsg flags (bits/socket.h) ----
    /** msg_flags on return: control data was truncated, some fds were dropped by the kernel. */
    public static final int MSG_CTRUNC = 0x8;
    /** msg_flags on return: normal data was truncated (datagram only). */
    public static final int MSG_TRUNC = 0x20;
    /** Do not block this call. */
    public static final int MSG_DONTWAIT = 0x40;
    /** Do not raise SIGPIPE when the peer has gone. */
    public static final int MSG_NOSIGNAL = 0x4000;
    /** Received fds get FD_CLOEXEC atomically. */
    public static final int MSG_CMSG_CLOEXEC = 0x40000000;

    // ---- eventfd(2), fcntl(2) ----
    /** eventfd: non-blocking. */
    public static final int EFD_NONBLOCK = 0x800;
    /** eventfd: close on exec. */
    public static final int EFD_CLOEXEC = 0x80000;
    /** fcntl: get fd flags (FD_CLOEXEC); EBADF when the fd is not open. */
    public static final int F_GETFD = 1;
    /** fcntl: set the descriptor flags (FD_CLOEXEC). */
    public static final int F_SETFD = 2;
    /** fcntl: get file status flags. */
    public static final int F_GETFL = 3;
    /** fcntl: set file status flags. */
    public static final int F_SETFL = 4;
    /** File status flag: non-blocking. */
    public static final int O_NONBLOCK = 0x800;
    /** fd flag: close on exec. */
    public static final int FD_CLOEXEC = 1;

    // ---- sizes ----
    /** Size of struct sockaddr_un. */
    public static final int SOCKADDR_UN_SIZEOF = 110;
    /** Longest path sun_path holds, without its terminating NUL. */
    public static final int SUN_PATH_MAX = 107;
    /** Size of struct msghdr. */
    public static final int MSGHDR_SIZEOF = 56;
    /** Size of struct cmsghdr (the header before the data). */
    public static final int CMSGHDR_SIZEOF = 16;

    // ---- sockets ----

    /** socket(2). */
    public static native int socket(int domain, int type, int protocol) throws LastErrorException;

    /** bind(2) to the sockaddr at {@code addr}. */
    public static native int bind(int fd, long addr, int addrlen) throws LastErrorException;

    /** listen(2). */
    public static native int listen(int fd, int backlog) throws LastErrorException;

    /** accept4(2); {@code addr} and {@code addrlen} may be 0. */
    public static native int accept4(int fd, long addr, long addrlen, int flags) throws LastErrorException;

    /** connect(2) to the sockaddr at {@code addr}. */
    public static native int connect(int fd, long addr, int addrlen) throws LastErrorException;

    /** recvmsg(2) with the msghdr at {@code msg}; returns bytes read, 0 at EOF. */
    public static native long recvmsg(int fd, long msg, int flags) throws LastErrorException;

    /** sendmsg(2) with the msghdr at {@code msg}; returns bytes written. */
    public static native long sendmsg(int fd, long msg, int flags) throws LastErrorException;

    /** setsockopt(2). */
    public static native int setsockopt(int fd, int level, int optname, long optval, int optlen) throws LastErrorException;

    /** shutdown(2); how: 0 read, 1 write, 2 both. */
    public static native int shutdown(int fd, int how) throws LastErrorException;

    /** getsockopt(2); {@code optlen} points to a socklen_t holding the buffer size. */
    public static native int getsockopt(int fd, int level, int optname, long optval, long optlen) throws LastErrorException;

    /**
     * The peer of a connected unix socket as {@code pid=P,uid=U} (SO_PEERCRED, unix(7)), for log
     * lines; {@code "?"} when the kernel cannot tell.
     */
    public static String peerCredentials(int fd) {
        try (Memory m = new Memory(16)) {
            m.setInt(12, 12); // socklen_t in, after the 12-byte struct ucred
            getsockopt(fd, SOL_SOCKET, SO_PEERCRED, Pointer.nativeValue(m), Pointer.nativeValue(m) + 12);
            return "pid=" + m.getInt(0) + ",uid=" + m.getInt(4);
        } catch (LastErrorException e) {
            return "?";
        }
    }

    // ---- fds ----

    /** close(2). */
    public static native int close(int fd) throws LastErrorException;

    /** read(2). */
    public static native long read(int fd, long buf, long count) throws LastErrorException;

    /** write(2). */
    public static native long write(int fd, long buf, long count) throws LastErrorException;

    /** fcntl(2) with an int argument (F_GETFD, F_GETFL, F_SETFL). */
    public static native int fcntl(int fd, int cmd, int arg) throws LastErrorException;

    /** eventfd(2). */
    public static native int eventfd(int initval, int flags) throws LastErrorException;


    // ---- paths ----

    /** chmod(2). */
    public static native int chmod(String path, int mode) throws LastErrorException;

    /** fchmod(2). */
    public static native int fchmod(int fd, int mode) throws LastErrorException;

    /** unlink(2). */
    public static native int unlink(String path) throws LastErrorException;

    // ---- process ----

    /** unsetenv(3): removes a variable from the C environment (what exec'd children inherit). */
    public static native int unsetenv(String name) throws LastErrorException;

    /** getpid(2). */
    public static native int getpid();

    /**
     * An int socket option (getsockopt(2) with a 4-byte value), e.g. SO_ACCEPTCONN.
     *
     * @throws LastErrorException ENOTSOCK for a descriptor that is not a socket, EBADF for a closed one
     */
    public static int intSockopt(int fd, int level, int optname) throws LastErrorException {
        try (Memory m = new Memory(8)) {
            m.setInt(4, 4); // socklen_t in
            getsockopt(fd, level, optname, Pointer.nativeValue(m), Pointer.nativeValue(m) + 4);
            return m.getInt(0);
        }
    }

    // ---- helpers ----

    /** Closes {@code fd} if it is not negative, ignoring errors (cleanup paths only). */
    public static void closeQuietly(int fd) {
        if (fd < 0) return;
        try {
            close(fd);
        } catch (LastErrorException ignored) {
            // EBADF would be a double close: a bug, but cleanup must go on
        }
    }

    /** True when {@code fd} is an open descriptor of this process (fcntl F_GETFD succeeds). */
    public static boolean isOpen(int fd) {
        if (fd < 0) return false;
        try {
            fcntl(fd, F_GETFD, 0);
            return true;
        } catch (LastErrorException e) {
            return false;
        }
    }

    /** A new eventfd with EFD_NONBLOCK | EFD_CLOEXEC and counter 0. */
    public static int eventfd() throws LastErrorException {
        return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    }

    /**
     * Reads and resets an eventfd's 8-byte counter: returns it, or 0 when it was 0 (EAGAIN on
     * a non-blocking eventfd). {@code scratch} is 8 bytes of native memory.
     */
    public static long eventfdRead(int fd, long scratch) throws LastErrorException {
        try {
            long n = read(fd, scratch, 8);
            return n == 8 ? io.netty.util.internal.PlatformDependent.getLong(scratch) : 0; // 8 bytes we own
        } catch (LastErrorException e) {
            if (e.getErrorCode() == EAGAIN) return 0;
            throw e;
        }
    }

    /** Adds {@code value} to an eventfd's counter. {@code scratch} is 8 bytes of native memory. */
    public static void eventfdWrite(int fd, long value, long scratch) throws LastErrorException {
        io.netty.util.internal.PlatformDependent.putLong(scratch, value); // 8 bytes we own; no allocation
        write(fd, scratch, 8);
    }

    /**
     * A struct sockaddr_un for {@code path} (AF_UNIX, NUL-terminated path). Throws
     * IllegalArgumentException when the path does not fit in sun_path.
     */
    public static Memory sockaddrUn(String path) {
        byte[] p = path.getBytes(StandardCharsets.UTF_8);
        if (p.length == 0 || p.length > SUN_PATH_MAX) {
            throw new IllegalArgumentException("unix socket path must be 1.." + SUN_PATH_MAX + " bytes: " + path);
        }
        Memory m = new Memory(SOCKADDR_UN_SIZEOF);
        m.clear();
        m.setShort(0, (short) AF_UNIX);
        m.write(2, p, 0, p.length);
        return m;
    }

    /** Sets SO_RCVTIMEO and SO_SNDTIMEO (struct timeval: tv_sec u64, tv_usec u64) on a blocking socket. */
    public static void setTimeouts(int fd, long timeoutMs) throws LastErrorException {
        try (Memory tv = new Memory(16)) {
            tv.setLong(0, timeoutMs / 1000);
            tv.setLong(8, (timeoutMs % 1000) * 1000);
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, Pointer.nativeValue(tv), 16);
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, Pointer.nativeValue(tv), 16);
        }
    }

    /**
     * Preallocated native memory for one recvmsg/sendmsg at a time: a msghdr, one iovec, a
     * control buffer with room for {@code maxFds} descriptors, and a data area. Nothing is
     * allocated per call. Thread contract: one thread at a time.
     *
     * <p>After {@link #recv}, {@link #fdCount()} descriptors are in {@link #fd(int)}; they
     * belong to the caller. When the kernel set MSG_CTRUNC (more fds than room, the rest were
     * closed by the kernel) {@link #truncated()} is true and the fds that did arrive are still
     * reported, so the caller can close them.
     */
    public static final class MsgBuffer implements AutoCloseable {
        private final Memory mem;
        private final long base;
        private final int dataCapacity;
        private final int maxFds;
        private final int controlCapacity;
        private final int[] fds;
        private int fdCount;
        private boolean truncated;

        // offsets inside mem
        private static final int OFF_MSGHDR = 0;
        private static final int OFF_IOVEC = MSGHDR_SIZEOF;          // 56
        private static final int OFF_CONTROL = OFF_IOVEC + 16;        // 72, 8-aligned
        private final int offData;

        /** Room for {@code dataCapacity} bytes of data and {@code maxFds} descriptors per call. */
        public MsgBuffer(int dataCapacity, int maxFds) {
            if (dataCapacity <= 0 || maxFds <= 0) throw new IllegalArgumentException("capacities must be positive");
            this.dataCapacity = dataCapacity;
            this.maxFds = maxFds;
            this.controlCapacity = CMSGHDR_SIZEOF + align8(4 * maxFds);
            this.offData = OFF_CONTROL + controlCapacity;
            this.mem = new Memory(offData + (long) dataCapacity);
            this.mem.clear();
            this.base = Pointer.nativeValue(mem);
            this.fds = new int[maxFds];
        }

        private static int align8(int n) { return (n + 7) & ~7; }

        /** Native address of the data area ({@link #dataCapacity()} bytes). */
        public long data() { return base + offData; }

        public int dataCapacity() { return dataCapacity; }

        public int maxFds() { return maxFds; }

        /** The data area as JNA memory, for reading/writing bytes. */
        public Pointer dataPointer() { return mem.share(offData, dataCapacity); }

        public int fdCount() { return fdCount; }

        public int fd(int i) {
            if (i < 0 || i >= fdCount) throw new IndexOutOfBoundsException(i);
            return fds[i];
        }

        public boolean truncated() { return truncated; }

        private void prepare(int off, int len, int controlLen) {
            if (off < 0 || len < 0 || off + len > dataCapacity) {
                throw new IndexOutOfBoundsException("data range " + off + "+" + len + " outside " + dataCapacity);
            }
            mem.setLong(OFF_IOVEC, data() + off);
            mem.setLong(OFF_IOVEC + 8, len);
            mem.setLong(OFF_MSGHDR, 0);                  // msg_name
            mem.setLong(OFF_MSGHDR + 8, 0);              // msg_namelen + pad
            mem.setLong(OFF_MSGHDR + 16, base + OFF_IOVEC);
            mem.setLong(OFF_MSGHDR + 24, 1);             // msg_iovlen
            mem.setLong(OFF_MSGHDR + 32, controlLen == 0 ? 0 : base + OFF_CONTROL);
            mem.setLong(OFF_MSGHDR + 40, controlLen);
            mem.setLong(OFF_MSGHDR + 48, 0);             // msg_flags + pad
        }

        /**
         * recvmsg of at most {@code len} bytes into the data area at {@code off}, always with
         * MSG_CMSG_CLOEXEC. Returns the bytes read (0 at EOF) or -1 when the socket has nothing
         * (EAGAIN). Received fds: {@link #fdCount()} / {@link #fd(int)}.
         */
        public long recv(int sock, int off, int len, int flags) throws LastErrorException {
            fdCount = 0;
            truncated = false;
            prepare(off, len, controlCapacity);
            mem.setMemory(OFF_CONTROL, controlCapacity, (byte) 0);
            long n;
            try {
                n = recvmsg(sock, base + OFF_MSGHDR, flags | MSG_CMSG_CLOEXEC);
            } catch (LastErrorException e) {
                if (e.getErrorCode() == EAGAIN) return -1;
                throw e;
            }
            int msgFlags = mem.getInt(OFF_MSGHDR + 48);
            truncated = (msgFlags & MSG_CTRUNC) != 0;
            long controlLen = mem.getLong(OFF_MSGHDR + 40);   // the kernel writes back what it filled
            int c = 0;
            while (c + CMSGHDR_SIZEOF <= controlLen) {
                long cmsgLen = mem.getLong(OFF_CONTROL + c);
                if (cmsgLen < CMSGHDR_SIZEOF || c + cmsgLen > controlLen) break;
                int level = mem.getInt(OFF_CONTROL + c + 8);
                int type = mem.getInt(OFF_CONTROL + c + 12);
                if (level == SOL_SOCKET && type == SCM_RIGHTS) {
                    int n4 = (int) ((cmsgLen - CMSGHDR_SIZEOF) / 4);
                    for (int i = 0; i < n4; i++) {
                        int fd = mem.getInt(OFF_CONTROL + c + CMSGHDR_SIZEOF + 4L * i);
                        if (fdCount < maxFds) fds[fdCount++] = fd; else { closeQuietly(fd); truncated = true; }
                    }
                }
                c += align8((int) cmsgLen);
            }
            return n;
        }

        /**
         * sendmsg of {@code len} bytes from the data area at {@code off} with the given fds as
         * one SCM_RIGHTS message ({@code nfds} may be 0). MSG_NOSIGNAL is always added. Returns
         * the bytes written (possibly fewer than {@code len}) or -1 on EAGAIN.
         */
        public long send(int sock, int off, int len, int[] sendFds, int nfds, int flags) throws LastErrorException {
            if (nfds < 0 || nfds > maxFds) throw new IllegalArgumentException("nfds " + nfds + " > " + maxFds);
            int controlLen = nfds == 0 ? 0 : CMSGHDR_SIZEOF + align8(4 * nfds);
            prepare(off, len, controlLen);
            if (nfds > 0) {
                mem.setMemory(OFF_CONTROL, controlCapacity, (byte) 0);
                mem.setLong(OFF_CONTROL, CMSGHDR_SIZEOF + 4L * nfds);   // CMSG_LEN
                mem.setInt(OFF_CONTROL + 8, SOL_SOCKET);
                mem.setInt(OFF_CONTROL + 12, SCM_RIGHTS);
                for (int i = 0; i < nfds; i++) mem.setInt(OFF_CONTROL + CMSGHDR_SIZEOF + 4L * i, sendFds[i]);
            }
            try {
                return sendmsg(sock, base + OFF_MSGHDR, flags | MSG_NOSIGNAL);
            } catch (LastErrorException e) {
                if (e.getErrorCode() == EAGAIN) return -1;
                throw e;
            }
        }

        @Override
        public void close() {
            mem.close();
        }
    }
}
