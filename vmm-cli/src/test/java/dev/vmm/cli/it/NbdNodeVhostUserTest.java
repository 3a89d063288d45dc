package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.daemon.Daemon;
import dev.vmm.core.options.KeyValueParser;
import dev.vmm.vhostuser.frontend.BlkWorkload;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * A {@code driver=nbd} node served to a virtio-blk frontend over vhost-user (in-process daemon,
 * the test frontend as the guest): stamped writes read back right, and the remote nbdkit killed
 * and restarted under the frontend's writes with {@code reconnect-delay=5} gives the frontend no
 * error and loses no write.
 */
@Timeout(180)
class NbdNodeVhostUserTest extends PeerTestBase {
    static final long SIZE = 16L << 20;

    Process nbdkit(Path sock, Path img) throws Exception {
        Files.deleteIfExists(sock);
        Process p = background(new ProcessBuilder(Peers.require("nbdkit"), "--foreground", "--exit-with-parent", "-U", sock.toString(), "file", img.toString())
                .redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.appendTo(tmp.resolve("nbdkit.log").toFile())).start());
        for (int i = 0; i < 2000 && !Files.exists(sock); i++) Thread.sleep(10);
        assertTrue(Files.exists(sock), "nbdkit listens");
        return p;
    }

    @Test
    void guestIoThroughAnNbdNodeSurvivesAServerRestart() throws Exception {
        Assumptions.assumeFalse(Peers.qsd(), "in-process vmm");
        Path dir = socketDir();
        Path img = tmp.resolve("remote.img");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(SIZE);
        }
        Path kitSock = dir.resolve("kit.sock");
        Process kit = nbdkit(kitSock, img);
        Daemon daemon = Daemon.start();
        closeLater(() -> daemon.shutdown(false));
        daemon.addIOThread("iot0");
        daemon.blockdevAdd(KeyValueParser.parse("--blockdev", "driver=nbd,node-name=n0,server.type=unix,server.path=" + kitSock + ",reconnect-delay=5", null));
        String vub = dir.resolve("vub.sock").toString();
        daemon.exportAdd(KeyValueParser.parse("--export", "type=vhost-user-blk,id=vub0,node-name=n0,writable=on,iothread=iot0,addr.type=unix,addr.path=" + vub, "type"));
        VirtioBlkFrontend fe = VirtioBlkFrontend.connect(vub, new VirtioBlkFrontend.Settings().memory(64L << 20).depth(16).maxIoBytes(1 << 20).timeoutMs(20_000));
        closeLater(fe::abort);
        VirtioBlkFrontend.Queue q = fe.queue(0);
        assertEquals(0, BlkWorkload.prefill(q, 0, SIZE, 8, true), "prefill through the NBD node");

        CompletableFuture<BlkWorkload.Result> writes = CompletableFuture.supplyAsync(() -> {
            try {
                return new BlkWorkload(q, new BlkWorkload.Spec(BlkWorkload.Pattern.RANDWRITE, 4096, 8, 0, SIZE,
                        TimeUnit.SECONDS.toNanos(4), 0, 200, 7, 64, false)).run();
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        Thread.sleep(800);
        kit.destroyForcibly();
        kit.waitFor(10, TimeUnit.SECONDS);
        Thread.sleep(1000);
        nbdkit(kitSock, img);
        BlkWorkload.Result w = writes.get(120, TimeUnit.SECONDS);
        assertTrue(w.valid(), "no guest error, every sampled write reads back: " + w.firstError + " / " + w.firstVerifyFailure);
        assertTrue(w.ios > 0 && w.verified > 0, "writes done: " + w.ios + ", verified " + w.verified);
        BlkWorkload.Result r = new BlkWorkload(q, new BlkWorkload.Spec(BlkWorkload.Pattern.RANDREAD, 4096, 8, 0, SIZE,
                TimeUnit.MILLISECONDS.toNanos(500), 0, 0, 3, 0, true)).run();
        assertTrue(r.valid() && r.ios > 0, "stamped reads after the restart: " + r.firstWrongRead + " / " + r.firstError);
    }
}
