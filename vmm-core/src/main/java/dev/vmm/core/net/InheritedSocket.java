package dev.vmm.core.net;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcSocket;
import java.io.IOException;
import java.net.SocketAddress;

/**
 * A listening socket the daemon did not create: a descriptor inherited from the parent
 * ({@code addr.type=fd,addr.str=N}, {@code --chardev socket,fd=N}) or handed over by systemd
 * socket activation ({@link SocketActivation}). Servers accept on it as on a socket they bound
 * themselves, but never remove a socket file for it: the file belongs to whoever bound it.
 *
 * <p>Made by {@link #adopt}, which checks that the descriptor is a listening stream socket and
 * marks it close-on-exec and non-blocking. Thread contract: immutable, any thread.
 */
public final class InheritedSocket extends SocketAddress {
    private static final long serialVersionUID = 1L;

    private final int fd;
    private final int family;
    private final String label;

    private InheritedSocket(int fd, int family, String label) {
        this.fd = fd;
        this.family = family;
        this.label = label;
    }

    /** The descriptor (owned by the server that listens on it from now on). */
    public int fd() { return fd; }

    /** AF_UNIX, AF_INET or AF_INET6. */
    public int family() { return family; }

    /** True for a unix-domain socket. */
    public boolean unix() { return family == LibcSocket.AF_UNIX; }

    /**
     * Checks that {@code fd} is a listening stream socket (unix, IPv4 or IPv6) and takes it over:
     * close-on-exec (so no child inherits it) and non-blocking (the event loop's accept).
     *
     * @param label how errors and log lines name it, e.g. {@code "fd 3"} or {@code "fd 3 (LISTEN_FDNAMES 'nbd')"}
     * @throws IOException naming {@code label} and what is wrong with it
     */
    public static InheritedSocket adopt(int fd, String label) throws IOException {
        if (fd < 0) throw new IOException(label + " is not a file descriptor number");
        int listening;
        int type;
        int family;
        try {
            listening = LibcSocket.intSockopt(fd, LibcSocket.SOL_SOCKET, LibcSocket.SO_ACCEPTCONN);
            type = LibcSocket.intSockopt(fd, LibcSocket.SOL_SOCKET, LibcSocket.SO_TYPE);
            family = LibcSocket.intSockopt(fd, LibcSocket.SOL_SOCKET, LibcSocket.SO_DOMAIN);
        } catch (LastErrorException e) {
            if (e.getErrorCode() == Errno.EBADF) throw new IOException(label + " is not open (was it passed to this process?)");
            if (e.getErrorCode() == Errno.ENOTSOCK) throw new IOException(label + " is not a socket");
            throw new IOException(label + ": " + LibC.describe(e.getErrorCode()));
        }
        if (type != LibcSocket.SOCK_STREAM) throw new IOException(label + " is not a stream socket (SOCK_STREAM)");
        if (family != LibcSocket.AF_UNIX && family != LibcSocket.AF_INET && family != LibcSocket.AF_INET6) {
            throw new IOException(label + " is not a unix, IPv4 or IPv6 socket (address family " + family + ")");
        }
        if (listening != 1) throw new IOException(label + " is a socket, but not a listening one (call listen(2) before passing it)");
        try {
            LibcSocket.fcntl(fd, LibcSocket.F_SETFD, LibcSocket.FD_CLOEXEC);
            int fl = LibcSocket.fcntl(fd, LibcSocket.F_GETFL, 0);
            LibcSocket.fcntl(fd, LibcSocket.F_SETFL, fl | LibcSocket.O_NONBLOCK);
        } catch (LastErrorException e) {
            throw new IOException(label + ": " + LibC.describe(e.getErrorCode()));
        }
        return new InheritedSocket(fd, family, label);
    }

    @Override
    public String toString() {
        return label + (unix() ? ", unix" : family == LibcSocket.AF_INET ? ", tcp" : ", tcp6");
    }
}
