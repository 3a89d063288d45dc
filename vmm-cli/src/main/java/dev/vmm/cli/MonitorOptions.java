package dev.vmm.cli;

import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.options.OptionException.Kind;
import dev.vmm.core.options.Options;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * serve's QMP monitor options, in qemu-storage-daemon's syntax: {@code --chardev
 * socket,id=ID,path=PATH,server=on,wait=off} plus {@code --monitor [chardev=]ID[,mode=control]},
 * and our shorthand {@code --qmp PATH}. Resolves them to the socket paths to listen on.
 *
 * <p>Thread contract: used once, on the CLI thread.
 */
final class MonitorOptions {
    private MonitorOptions() {}

    static final String HELP = """
              --chardev socket
                id=ID                    the character device's id, for --monitor chardev=ID
                path=PATH                unix socket to listen on (created mode 0600; a stale socket is replaced)
                fd=N|NAME                instead of path: a listening unix socket passed by the parent (descriptor
                                         number), or by systemd socket activation (a LISTEN_FDNAMES name)
                server=on                required: the daemon listens
                wait=off                 the default here: start-up never waits for a monitor client (wait=on is refused)
              --monitor
                chardev=ID               serve QMP on this --chardev (also written '--monitor ID')
                mode=control             the only mode (QMP); readline is refused
                id=ID                    accepted for QEMU compatibility
              --qmp PATH                 shorthand for --chardev socket,id=..,path=PATH,server=on,wait=off --monitor ..""";

    /** Where one monitor listens: a socket file it creates, or an inherited listening socket. */
    record Endpoint(Path path, dev.vmm.core.net.InheritedSocket socket) { }

    /** The monitor endpoints, in command-line order ({@code --monitor}s, then {@code --qmp}s). */
    static List<Endpoint> resolve(List<String> chardevs, List<String> monitors, List<String> qmps) throws OptionException {
        Map<String, Endpoint> byId = new LinkedHashMap<>();
        for (String text : chardevs) {
            Options o = KeyValueParser.parse("--chardev", text, "backend");
            String backend = o.choice("backend", null, "socket");
            if (backend == null) throw new OptionException(Kind.MISSING, "--chardev", "backend", "the backend is missing (e.g. 'socket,id=mon0,path=/run/qmp.sock,server=on,wait=off')");
            String id = o.required("id");
            if (o.has("host") || o.has("port")) {
                throw new OptionException(Kind.INVALID, "--chardev", o.has("host") ? "host" : "port",
                        "only unix socket chardevs (path=...) are supported, not TCP");
            }
            String path = o.has("fd") ? null : o.required("path");
            String fd = o.has("fd") ? o.required("fd") : null;
            if (fd != null && o.has("path")) {
                throw new OptionException(Kind.INVALID, "--chardev", "fd", "give 'path' or 'fd', not both");
            }
            if (!o.bool("server", false)) {
                throw new OptionException(Kind.INVALID, "--chardev", "server", "'server' must be on: the daemon listens for monitor clients");
            }
            if (o.bool("wait", false)) {
                throw new OptionException(Kind.INVALID, "--chardev", "wait", "'wait=on' is not supported: give wait=off (start-up never waits for a monitor client)");
            }
            o.checkAllConsumed();
            Endpoint e;
            if (fd != null) {
                try {
                    e = new Endpoint(null, dev.vmm.core.net.SocketActivation.current().claim(fd));
                } catch (java.io.IOException ex) {
                    throw new OptionException(Kind.INVALID, "--chardev", "fd", "'fd': " + ex.getMessage());
                }
                if (!e.socket().unix()) throw new OptionException(Kind.INVALID, "--chardev", "fd", "'fd': " + e.socket() + " is not a unix socket");
            } else {
                checkPath("--chardev", "path", path);
                e = new Endpoint(Path.of(path), null);
            }
            if (byId.containsKey(id)) {
                throw new OptionException(Kind.INVALID, "--chardev", "id", "a chardev with id '" + id + "' exists already");
            }
            byId.put(id, e);
        }
        List<Endpoint> out = new ArrayList<>();
        Map<String, Boolean> used = new LinkedHashMap<>();
        for (String text : monitors) {
            Options o = KeyValueParser.parse("--monitor", text, "chardev");
            String chardev = o.required("chardev");
            o.choice("mode", "control", "control");
            if (o.bool("pretty", false)) throw new OptionException(Kind.INVALID, "--monitor", "pretty", "'pretty=on' is not supported");
            o.optional("id", null);
            o.checkAllConsumed();
            Endpoint p = byId.get(chardev);
            if (p == null) {
                throw new OptionException(Kind.INVALID, "--monitor", "chardev", "chardev '" + chardev
                        + "' does not exist (give --chardev socket,id=" + chardev + ",path=PATH,server=on,wait=off)");
            }
            if (used.put(chardev, true) != null) {
                throw new OptionException(Kind.INVALID, "--monitor", "chardev", "chardev '" + chardev + "' is used by another --monitor already");
            }
            out.add(p);
        }
        for (String id : byId.keySet()) {
            if (!used.containsKey(id)) {
                throw new OptionException(Kind.INVALID, "--chardev", "id", "chardev '" + id + "' is not used by any --monitor (add --monitor chardev=" + id + ")");
            }
        }
        for (String q : qmps) {
            checkPath("--qmp", null, q);
            out.add(new Endpoint(Path.of(q), null));
        }
        List<Path> seen = new ArrayList<>();
        for (Endpoint e : out) {
            if (e.path() == null) continue;
            Path p = e.path();
            Path abs = p.toAbsolutePath().normalize();
            if (seen.contains(abs)) throw new OptionException(Kind.INVALID, "--monitor", null, "two monitors on the same socket " + p);
            seen.add(abs);
        }
        return out;
    }

    private static void checkPath(String option, String key, String path) throws OptionException {
        String what = key == null ? "the socket path" : "'" + key + "'";
        if (path.isEmpty()) throw new OptionException(Kind.INVALID, option, key, what + " must not be empty");
        if (path.getBytes(StandardCharsets.UTF_8).length > 107) {
            throw new OptionException(Kind.INVALID, option, key, what + " is longer than the 107 bytes a unix socket path may have");
        }
    }
}
