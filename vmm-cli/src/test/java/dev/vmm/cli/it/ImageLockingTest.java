package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Image locking end to end (docs/locking.md): {@code vmm serve} and qemu-storage-daemon 7.2 run
 * the same command lines, and QEMU's tools, a QEMU VM and a second server meet the same answer
 * from both. The {@code qsd} runs are the reference: if one of them fails, the expectation is
 * wrong, not vmm.
 */
@Timeout(180)
class ImageLockingTest extends PeerTestBase {

    private VmmProcess start(boolean qsd, String label, String... args) {
        VmmProcess p = VmmProcess.start(tmp, label, List.of(args), qsd);
        return p;
    }

    private Path qcow2(String name) {
        Path p = tmp.resolve(name);
        Run.cmd(Peers.require("qemu-img"), "create", "-f", "qcow2", p.toString(), "16M").expect(0);
        return p;
    }

    @ParameterizedTest(name = "qsd={0}")
    @ValueSource(booleans = {false, true})
    void servedQcow2RefusesQemuImgQemuIoAVmAndASecondServer(boolean qsd) {
        String qemuImg = Peers.require("qemu-img");
        Path img = qcow2("d.qcow2");
        Path sock = Net.shortSocketDir().resolve("nbd.sock");
        try (VmmProcess s = start(qsd, "holder", "--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename=" + img,
                "--nbd-server", "addr.type=unix,addr.path=" + sock, "--export", "type=nbd,id=e,node-name=d,writable=on")) {
            Run.Result info = Run.cmd(qemuImg, "info", img.toString()).expect(1);
            assertTrue(info.stderr().contains("Failed to get shared \"write\" lock"), info.describe());
            assertTrue(info.stderr().contains("Is another process using the image [" + img + "]?"), info.describe());
            Run.cmd(qemuImg, "info", "-U", img.toString()).expect(0);
            Run.Result io = Run.cmd(Peers.require("qemu-io"), "-c", "write 0 4k", img.toString()).expect(1);
            assertTrue(io.stderr().contains("Failed to get \"write\" lock"), io.describe());
            Run.Result conv = Run.cmd(qemuImg, "convert", "-O", "qcow2", img.toString(), img.toString()).expect(1);
            assertTrue(conv.stderr().contains("lock"), conv.describe());
            Run.Result vm = Run.cmd(Peers.require("qemu-system-x86_64"), "-machine", "none", "-nodefaults", "-display", "none", "-S",
                    "-drive", "file=" + img + ",format=qcow2,if=none,id=d0").timeoutSeconds(30).expectAny();
            assertNotEquals(0, vm.exit(), vm.describe());
            assertTrue(vm.stderr().contains("Failed to get \"write\" lock"), vm.describe());
            // a second server: refused at start-up with QEMU's two lines, exit 1
            Run.Result second = VmmProcess.runToExit(List.of("--blockdev", "driver=qcow2,node-name=d,file.driver=file,file.filename=" + img), 60,
                    qsd);
            assertEquals(1, second.exit(), second.describe());
            assertTrue(second.stderr().contains("Failed to get \"write\" lock\nIs another process using the image [" + img + "]?"),
                    second.describe());
            // a read-only force-share user is served
            try (VmmProcess ro = start(qsd, "reader", "--blockdev",
                    "driver=qcow2,node-name=d,read-only=on,force-share=on,file.driver=file,file.filename=" + img)) {
                ro.assertAlive();
            }
            s.assertAlive();
        }
        // released at exit
        Run.cmd(qemuImg, "info", img.toString()).expect(0);
        Run.cmd(Peers.require("qemu-io"), "-c", "write 0 4k", img.toString()).expect(0);
    }

    @ParameterizedTest(name = "qsd={0}")
    @ValueSource(booleans = {false, true})
    void writableNbdExportOfARawImageRefusesResizeAndAVmDisk(boolean qsd) {
        Path img = Images.sparse(tmp.resolve("d.img"), 16 << 20);
        Path src = qcow2("src.qcow2");
        Path sock = Net.shortSocketDir().resolve("nbd.sock");
        try (VmmProcess s = start(qsd, "holder", "--blockdev", "driver=file,node-name=d,filename=" + img,
                "--nbd-server", "addr.type=unix,addr.path=" + sock, "--export", "type=nbd,id=e,node-name=d,writable=on")) {
            // QEMU's NBD export does not share resize: qemu-img convert (which resizes its target) is refused
            Run.Result conv = Run.cmd(Peers.require("qemu-img"), "convert", "-f", "qcow2", "-O", "raw", src.toString(), img.toString()).expect(1);
            assertTrue(conv.stderr().contains("Failed to get \"resize\" lock"), conv.describe());
            // a VM's disk does not share write
            Run.Result vm = Run.cmd(Peers.require("qemu-system-x86_64"), "-machine", "q35,accel=tcg", "-nodefaults", "-display", "none", "-S",
                    "-drive", "file=" + img + ",format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0").timeoutSeconds(60).expectAny();
            assertNotEquals(0, vm.exit(), vm.describe());
            assertTrue(vm.stderr().contains("Failed to get shared \"write\" lock"), vm.describe());
            // readers are served (a raw file shares write with them, as in QEMU)
            Run.cmd(Peers.require("qemu-img"), "info", img.toString()).expect(0);
            s.assertAlive();
        }
    }

    /** {@code vmm qmp --socket S ARGS} (our client speaks to both servers). */
    private static List<String> qmp(Path socket, String... args) {
        List<String> cmd = new java.util.ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        String flags = System.getProperty("vmm.jvm.flags", "").strip();
        if (!flags.isEmpty() && !flags.startsWith("${")) cmd.addAll(java.util.Arrays.asList(flags.split("\\s+")));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), "dev.vmm.cli.Main", "qmp", "--socket", socket.toString()));
        cmd.addAll(java.util.Arrays.asList(args));
        return cmd;
    }

    @ParameterizedTest(name = "qsd={0}")
    @ValueSource(booleans = {false, true})
    void qmpBlockdevAddTakesTheLocksAndBlockdevDelReleasesThem(boolean qsd) throws Exception {
        String qemuImg = Peers.require("qemu-img");
        Path img = qcow2("d.qcow2");
        Path dir = Net.shortSocketDir();
        Path mon = dir.resolve("qmp.sock");
        try (VmmProcess s = start(qsd, "qmp", "--chardev", "socket,id=m,path=" + mon + ",server=on,wait=off", "--monitor", "chardev=m")) {
            String[] add = {"blockdev-add", "driver=qcow2", "node-name=d", "file.driver=file", "file.filename=" + img};
            Run.cmd(qmp(mon, add)).expect(0);
            Run.Result info = Run.cmd(qemuImg, "info", img.toString()).expect(1);
            assertTrue(info.stderr().contains("Failed to get shared \"write\" lock"), info.describe());
            Run.cmd(qmp(mon, "blockdev-del", "node-name=d")).expect(0);
            Run.cmd(qemuImg, "info", img.toString()).expect(0);
            // held by qemu-io: QMP's answer is QEMU's message, without the command line's hint
            Process holder = new ProcessBuilder(Peers.require("qemu-io"), "-f", "qcow2", img.toString()).redirectErrorStream(true).start();
            try {
                for (int i = 0; i < 100 && Run.cmd(qemuImg, "info", img.toString()).expectAny().exit() == 0; i++) Thread.sleep(50);
                Run.Result refused = Run.cmd(qmp(mon, add)).expect(1);
                assertTrue(refused.stdout().contains("{\"class\":\"GenericError\",\"desc\":\"Failed to get \\\"write\\\" lock\"}"),
                        refused.describe());
                assertFalse(refused.stdout().contains("Is another process"), refused.describe());
            } finally {
                holder.getOutputStream().close();
                holder.waitFor(5, java.util.concurrent.TimeUnit.SECONDS);
                holder.destroy();
            }
            s.assertAlive();
        } finally {
            deleteTree(dir);
        }
    }

    @ParameterizedTest(name = "qsd={0}")
    @ValueSource(booleans = {false, true})
    void lockingOffTakesNoLock(boolean qsd) {
        Path img = qcow2("d.qcow2");
        try (VmmProcess s = start(qsd, "holder", "--blockdev",
                "driver=qcow2,node-name=d,file.driver=file,file.filename=" + img + ",file.locking=off")) {
            Run.Result io = Run.cmd(Peers.require("qemu-io"), "-c", "write 0 4k", img.toString()).expect(0);
            assertFalse(io.stderr().contains("lock"), io.describe());
            s.assertAlive();
        }
    }
}
