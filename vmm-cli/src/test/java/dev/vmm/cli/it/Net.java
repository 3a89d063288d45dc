package dev.vmm.cli.it;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;

/** Ports, unix socket paths and NBD URIs. */
public final class Net {
    public static final String HOST = "127.0.0.1";

    private Net() {}

    /** A TCP port that was free a moment ago (bind port 0, close). */
    public static int freePort() {
        try (ServerSocket s = new ServerSocket()) {
            s.setReuseAddress(true);
            s.bind(new InetSocketAddress(HOST, 0));
            return s.getLocalPort();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /**
     * A fresh directory directly under /tmp for unix sockets: sun_path holds at most 107 bytes,
     * and JUnit's @TempDir paths can be long. The caller deletes it.
     */
    public static Path shortSocketDir() {
        try {
            return Files.createTempDirectory(Path.of("/tmp"), "vit");
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** True when something accepts TCP connections on 127.0.0.1:port. */
    public static boolean listening(int port) {
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress(HOST, port), 1000);
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    public static String inetServer(int port) {
        return "addr.type=inet,addr.host=" + HOST + ",addr.port=" + port;
    }

    public static String unixServer(Path socket) {
        return "addr.type=unix,addr.path=" + socket;
    }

    public static String uri(int port, String export) {
        return "nbd://" + HOST + ":" + port + "/" + export;
    }

    public static String unixUri(Path socket, String export) {
        return "nbd+unix:///" + export + "?socket=" + socket;
    }
}
