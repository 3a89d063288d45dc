package dev.vmm.core.net;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcSocket;
import java.nio.charset.StandardCharsets;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * sd_notify(3) without libsystemd: one datagram with newline-separated {@code KEY=VALUE} lines
 * sent to the unix datagram socket named by {@code NOTIFY_SOCKET} (a path, or an abstract
 * address written with a leading '@'). Without the variable it does nothing, as sd_notify.
 * {@code NOTIFY_SOCKET} stays set: systemd's own services keep it for STOPPING=1 too.
 *
 * <p>Thread contract: stateless, any thread.
 */
public final class SdNotify {
    private static final Logger LOG = LoggerFactory.getLogger(SdNotify.class);
    /** offsetof(struct sockaddr_un, sun_path). */
    private static final int SUN_PATH_OFFSET = 2;

    private SdNotify() { }

    /** Sends {@code state} (e.g. {@code "READY=1\nMAINPID=123"}) to {@code NOTIFY_SOCKET}; false when unset or on failure (logged). */
    public static boolean notify(String state) {
        return notify(System.getenv("NOTIFY_SOCKET"), state);
    }

    /** As {@link #notify(String)}, to the socket {@code address} (a path or '@abstract'); false when null or empty. */
    public static boolean notify(String address, String state) {
        if (address == null || address.isEmpty()) return false;
        byte[] path = address.getBytes(StandardCharsets.UTF_8);
        if (path[0] != '/' && path[0] != '@') {
            LOG.warn("NOTIFY_SOCKET={}: neither a path nor an abstract address ('@...'); not notified", address);
            return false;
        }
        if (path.length > LibcSocket.SUN_PATH_MAX) {
            LOG.warn("NOTIFY_SOCKET={}: longer than a unix socket address may be; not notified", address);
            return false;
        }
        byte[] msg = state.getBytes(StandardCharsets.UTF_8);
        int fd = -1;
        try (Memory addr = new Memory(LibcSocket.SOCKADDR_UN_SIZEOF); Memory buf = new Memory(Math.max(1, msg.length))) {
            addr.clear();
            addr.setShort(0, (short) LibcSocket.AF_UNIX);
            addr.write(SUN_PATH_OFFSET, path, 0, path.length);
            // An abstract address starts with a NUL byte and is exactly as long as given (unix(7)).
            if (path[0] == '@') addr.setByte(SUN_PATH_OFFSET, (byte) 0);
            int len = path[0] == '@' ? SUN_PATH_OFFSET + path.length : LibcSocket.SOCKADDR_UN_SIZEOF;
            buf.write(0, msg, 0, msg.length);
            fd = LibcSocket.socket(LibcSocket.AF_UNIX, LibcSocket.SOCK_DGRAM | LibcSocket.SOCK_CLOEXEC, 0);
            LibcSocket.connect(fd, Pointer.nativeValue(addr), len);
            LibcSocket.write(fd, Pointer.nativeValue(buf), msg.length);
            LOG.debug("sd_notify {}: {}", address, state.replace('\n', ' '));
            return true;
        } catch (LastErrorException e) {
            LOG.warn("sd_notify to NOTIFY_SOCKET={} failed: {}", address, LibC.describe(e.getErrorCode()));
            return false;
        } finally {
            LibcSocket.closeQuietly(fd);
        }
    }
}
