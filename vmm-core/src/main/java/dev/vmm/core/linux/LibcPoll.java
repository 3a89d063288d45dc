package dev.vmm.core.linux;

import com.sun.jna.LastErrorException;
import com.sun.jna.Native;
import com.sun.jna.NativeLibrary;
import com.sun.jna.Platform;

/**
 * poll(2) with JNA direct mapping, for threads that wait on a few fds outside an event loop
 * (the Java vhost-user frontend waiting on call eventfds). The caller owns the native array:
 * <pre>
 * struct pollfd { int fd @0; short events @4; short revents @6; }   8 bytes
 * </pre>
 * Nothing is allocated per call. Thread contract: any thread.
 */
public final class LibcPoll {
    private LibcPoll() {}

    static {
        Native.register(LibcPoll.class, NativeLibrary.getInstance(Platform.C_LIBRARY_NAME));
    }

    /** There is data to read. */
    public static final short POLLIN = 0x1;
    /** Error condition (revents only). */
    public static final short POLLERR = 0x8;
    /** Hang up (revents only). */
    public static final short POLLHUP = 0x10;
    /** sizeof(struct pollfd). */
    public static final int POLLFD_SIZEOF = 8;

    /** poll(2): {@code fds} points at {@code nfds} pollfd structs; returns how many have revents, 0 on timeout. */
    public static native int poll(long fds, long nfds, int timeoutMs) throws LastErrorException;
}
