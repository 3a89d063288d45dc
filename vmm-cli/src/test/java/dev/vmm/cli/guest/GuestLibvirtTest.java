package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import dev.vmm.core.testing.Tools;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * A guest that libvirt defines and starts: a {@code <disk type='vhostuser'>} on the server's
 * socket with shared memfd memory, the way a libvirt-managed VM gets a disk from vmm (or from
 * qemu-storage-daemon). libvirt generates the QEMU command line, so this checks that what
 * libvirt asks of a vhost-user-blk backend (its device properties, its memory backend, its
 * start-up order) works with ours, not only our own {@link GuestLauncher} line.
 *
 * <p>libvirt runs here as {@code virt-qemu-run} (Debian's libvirt 9.0, package
 * {@code libvirt-daemon}): libvirt's QEMU driver in embedded mode, in a private root folder, with
 * no daemon, no systemd and no virtlogd. It still resolves the compiled-in default user and group
 * {@code libvirt-qemu} at start-up, which {@code .ci/run} creates (the package
 * {@code libvirt-daemon-system} would too, with services this machine does not run). The domain
 * XML is the one in docs/libvirt.md.
 *
 * <p>virt-qemu-run does not exit when the guest powers off (seen here with 9.0: QEMU is gone, the
 * process stays), so the test waits for the workload's exit line on the console, then stops it.
 */
class GuestLibvirtTest extends GuestTestBase {

    /** The domain of docs/libvirt.md with this test's paths. */
    static String domainXml(Path vmlinuz, Path initrd, Path socket, Path console) {
        return """
                <domain type='qemu'>
                  <name>vmm-guest</name>
                  <memory unit='MiB'>256</memory>
                  <memoryBacking>
                    <source type='memfd'/>
                    <access mode='shared'/>
                  </memoryBacking>
                  <vcpu>1</vcpu>
                  <os>
                    <type arch='x86_64' machine='pc'>hvm</type>
                    <kernel>%s</kernel>
                    <initrd>%s</initrd>
                    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
                  </os>
                  <features><acpi/></features>
                  <on_poweroff>destroy</on_poweroff>
                  <on_reboot>destroy</on_reboot>
                  <on_crash>destroy</on_crash>
                  <devices>
                    <emulator>/usr/bin/qemu-system-x86_64</emulator>
                    <disk type='vhostuser' device='disk'>
                      <driver name='qemu' type='raw' queues='1'/>
                      <source type='unix' path='%s'>
                        <reconnect enabled='yes' timeout='1'/>
                      </source>
                      <target dev='vda' bus='virtio'/>
                    </disk>
                    <serial type='file'>
                      <source path='%s'/>
                      <target port='0'/>
                    </serial>
                  </devices>
                </domain>
                """.formatted(vmlinuz, initrd, socket, console);
    }

    /** libvirt's qemu.conf for the embedded driver: run QEMU as the caller, log QEMU's stdio to files instead of virtlogd. */
    static final String QEMU_CONF = String.join("\n",
            "user = \"root\"",
            "group = \"root\"",
            "dynamic_ownership = 0",
            "remember_owner = 0",
            "security_driver = \"none\"",
            "stdio_handler = \"file\"",
            "");

    @Test
    void libvirtDefinedGuestWritesThroughTheVhostUserDisk() throws Exception {
        String virtQemuRun = Tools.require("virt-qemu-run", "libvirt-daemon");
        Tools.require("virsh", "libvirt-clients"); // not run: its package brings the QEMU driver's dependencies
        if (!Files.exists(Path.of("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so"))) {
            Tools.missing("libvirt's QEMU driver", "libvirt-daemon-driver-qemu");
        }
        GuestKernel kernel = TestGuests.kernel();
        long size = GuestBootTest.IMAGE_SIZE;
        Path image = Images.sparse(dir.resolve("disk.img"), size);
        server.start(VhostUserBlkServer.Export.writable(image, socket()));

        List<GuestBootTest.Range> ranges = GuestBootTest.ranges(size);
        Path initrd = Initramfs.build(kernel, GuestBootTest.workload(ranges), dir.resolve("initrd.gz"));
        Path root = dir.resolve("libvirt");
        Files.createDirectories(root.resolve("etc"));
        Files.writeString(root.resolve("etc/qemu.conf"), QEMU_CONF);
        Path console = dir.resolve("console.log");
        Path xml = dir.resolve("domain.xml");
        Files.writeString(xml, domainXml(kernel.vmlinuz(), initrd, socket(), console));

        Path runLog = dir.resolve("virt-qemu-run.log");
        long t0 = System.nanoTime();
        Process p = new ProcessBuilder(virtQemuRun, "--root", root.toString(), xml.toString())
                .redirectErrorStream(true).redirectOutput(runLog.toFile()).start();
        String text = "";
        long deadline = System.nanoTime() + Duration.ofSeconds(150).toNanos();
        try {
            while (System.nanoTime() < deadline) {
                text = Files.exists(console) ? Files.readString(console, StandardCharsets.ISO_8859_1) : "";
                if (text.contains(Initramfs.RESULT_PREFIX + "exit=") || !p.isAlive()) break;
                Thread.sleep(200);
            }
        } finally {
            p.destroy(); // SIGTERM: virt-qemu-run stops QEMU if it still runs and cleans up its root
            if (!p.waitFor(30, TimeUnit.SECONDS)) p.destroyForcibly().waitFor();
        }
        long ms = (System.nanoTime() - t0) / 1_000_000;
        text = Files.exists(console) ? Files.readString(console, StandardCharsets.ISO_8859_1) : "";
        String qemuLog = dir.resolve("libvirt/log/qemu/vmm-guest.log").toFile().exists()
                ? Files.readString(root.resolve("log/qemu/vmm-guest.log")) : "(no QEMU log)";
        var results = GuestRun.parseResults(text);
        String why = "--- console ---\n" + text + "\n--- virt-qemu-run ---\n" + Files.readString(runLog)
                + "\n--- QEMU command line and log (libvirt's) ---\n" + qemuLog
                + "\n--- " + server.name() + " log ---\n" + server.log();
        System.out.printf("[guest] %s %s: libvirt start, boot and workload %d ms%n", getClass().getSimpleName(), server.name(), ms);

        assertTrue(qemuLog.contains("vhost-user-blk-pci"), "libvirt did not start QEMU with a vhost-user-blk device\n" + why);
        assertEquals("ok", results.get("boot"), why);
        assertEquals("0", results.get("exit"), why);
        assertEquals(null, results.get("error"), why);
        assertEquals(Long.toString(size), results.get("size"), why);
        List<String> mismatches = new ArrayList<>();
        for (int i = 0; i < ranges.size(); i++) {
            GuestBootTest.Range r = ranges.get(i);
            String written = results.get("w" + i);
            String read = results.get("r" + i);
            String host = Images.sha256(image, r.offset(), r.length());
            assertNotNull(written, why);
            if (!written.equals(read) || !written.equals(host)) {
                mismatches.add(String.format("range %d (%d bytes at %d): written %s, read back %s, image %s",
                        i, r.length(), r.offset(), written, read, host));
            }
        }
        assertEquals(List.of(), mismatches, why);
    }
}
