package dev.vmm.core.net;

import com.sun.jna.LastErrorException;
import dev.vmm.core.linux.LibcSocket;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Sockets handed over at start: systemd socket activation ({@code LISTEN_PID}, {@code LISTEN_FDS},
 * {@code LISTEN_FDNAMES}; sd_listen_fds(3)), as qemu-nbd and nbdkit accept it, and plain
 * inherited descriptors ({@code addr.type=fd,addr.str=N}).
 *
 * <p>The variables are read once per process and then removed from the C environment (so no
 * child sees sockets that are not its own), even when {@code LISTEN_PID} names another process.
 * Activated descriptors start at 3 ({@code SD_LISTEN_FDS_START}). Each is claimed by at most one
 * listener: by number or by its {@code LISTEN_FDNAMES} name ({@link #claim}), or in order by the
 * listeners that take "the next one" ({@link #claimNext}); see docs/systemd.md for the mapping.
 *
 * <p>Thread contract: control plane; every method is synchronized.
 */
public final class SocketActivation {
    private static final Logger LOG = LoggerFactory.getLogger(SocketActivation.class);
    /** The first activated descriptor (sd-daemon.h SD_LISTEN_FDS_START). */
    public static final int SD_LISTEN_FDS_START = 3;

    /** One activated descriptor and its name ({@code "unknown"} when LISTEN_FDNAMES does not say, as systemd). */
    public record Fd(int fd, String name) { }

    private static SocketActivation current;

    private final List<Fd> fds;
    private final List<Integer> claimed = new ArrayList<>();

    SocketActivation(List<Fd> fds) {
        this.fds = List.copyOf(fds);
    }

    /** This process's activation, read (and unset) on first use. */
    public static synchronized SocketActivation current() {
        if (current == null) {
            current = parse(System.getenv(), LibcSocket.getpid());
            for (String v : new String[] {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}) {
                try {
                    LibcSocket.unsetenv(v);
                } catch (LastErrorException ignored) {
                    // EINVAL only for a bad name: cannot happen with these
                }
            }
            if (!current.fds.isEmpty()) LOG.info("socket activation: {} socket(s) passed: {}", current.fds.size(), current.fds);
        }
        return current;
    }

    /** The descriptors {@code env} hands to process {@code pid}; none when the variables are absent, malformed or for another pid. */
    static SocketActivation parse(Map<String, String> env, long pid) {
        String listenPid = env.get("LISTEN_PID");
        String listenFds = env.get("LISTEN_FDS");
        if (listenPid == null || listenFds == null) return new SocketActivation(List.of());
        long p;
        int n;
        try {
            p = Long.parseLong(listenPid.strip());
            n = Integer.parseInt(listenFds.strip());
        } catch (NumberFormatException e) {
            LOG.warn("socket activation: ignoring malformed LISTEN_PID={} LISTEN_FDS={}", listenPid, listenFds);
            return new SocketActivation(List.of());
        }
        if (p != pid) {
            LOG.warn("socket activation: LISTEN_PID={} is not this process ({}): the sockets are not ours, ignored", p, pid);
            return new SocketActivation(List.of());
        }
        if (n < 0 || n > 1024) {
            LOG.warn("socket activation: ignoring LISTEN_FDS={}", n);
            return new SocketActivation(List.of());
        }
        String names = env.get("LISTEN_FDNAMES");
        String[] parts = names == null ? new String[0] : names.split(":", -1);
        List<Fd> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            String name = i < parts.length && !parts[i].isEmpty() ? parts[i] : "unknown";
            out.add(new Fd(SD_LISTEN_FDS_START + i, name));
        }
        return new SocketActivation(out);
    }

    /** Every activated descriptor, claimed or not. */
    public synchronized List<Fd> fds() { return fds; }

    /** The activated descriptors no listener has claimed yet. */
    public synchronized List<Fd> unclaimed() {
        List<Fd> out = new ArrayList<>();
        for (Fd f : fds) if (!claimed.contains(f.fd())) out.add(f);
        return out;
    }

    /**
     * The socket {@code str} names: a descriptor number (activated or simply inherited), or the
     * name of an activated one in {@code LISTEN_FDNAMES}. Checked to be a listening stream socket.
     *
     * @throws IOException for an unknown name, a descriptor claimed by another listener, or a
     *     descriptor that is not a listening socket (see {@link InheritedSocket#adopt})
     */
    public synchronized InheritedSocket claim(String str) throws IOException {
        if (str == null || str.isEmpty()) throw new IOException("'addr.str' must be a file descriptor number or a LISTEN_FDNAMES name");
        Fd match = null;
        int fd;
        if (str.chars().allMatch(Character::isDigit)) {
            try {
                fd = Integer.parseInt(str);
            } catch (NumberFormatException e) {
                throw new IOException("file descriptor " + str + " is out of range");
            }
            for (Fd f : fds) if (f.fd() == fd) match = f;
            if (fd <= 2) throw new IOException("file descriptor " + fd + " is standard input, output or error, not a listening socket");
        } else {
            for (Fd f : fds) {
                if (f.name().equals(str) && !claimed.contains(f.fd())) {
                    match = f;
                    break;
                }
            }
            if (match == null) {
                for (Fd f : fds) if (f.name().equals(str)) match = f; // all of that name are taken: say so below
            }
            if (match == null) {
                throw new IOException("no socket named '" + str + "' was passed"
                        + (fds.isEmpty() ? " (no systemd socket activation: LISTEN_FDS/LISTEN_PID are not set for this process)"
                                : " (LISTEN_FDNAMES: " + String.join(", ", fds.stream().map(Fd::name).distinct().toList()) + ")"));
            }
            fd = match.fd();
        }
        if (claimed.contains(fd)) throw new IOException("file descriptor " + fd + " is used by another listener already");
        String label = match == null ? "file descriptor " + fd : "file descriptor " + fd + " (socket activation, name '" + match.name() + "')";
        InheritedSocket s = InheritedSocket.adopt(fd, label);
        claimed.add(fd);
        return s;
    }

    /** The first activated descriptor nobody claimed, taken over; null when none is left. */
    public synchronized InheritedSocket claimNext() throws IOException {
        List<Fd> left = unclaimed();
        if (left.isEmpty()) return null;
        return claim(Integer.toString(left.get(0).fd()));
    }

    /** True when a listener has claimed descriptor {@code fd}. */
    public synchronized boolean isClaimed(int fd) { return claimed.contains(fd); }
}
