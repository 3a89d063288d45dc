package dev.vmm.core.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.core.options.KeyValueParser;
import dev.vmm.core.options.OptionException;
import dev.vmm.core.testing.Tools;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Image locking against real QEMU peers (docs/locking.md): the bytes vmm locks are those
 * qemu-storage-daemon 7.2 locks for the same command line (read from /proc/locks), qemu-img,
 * qemu-io and a QEMU VM are refused by vmm's locks with QEMU's words, vmm is refused by theirs,
 * {@code force-share} and {@code locking=off} behave as in QEMU, and locks go with blockdev-del.
 * The daemon runs in this JVM; its OFD locks are seen by other processes (and by a second daemon
 * in this JVM: OFD locks belong to the open file, not the process).
 */
class ImageLockTest {
    @TempDir
    Path dir;
    Daemon daemon;
    Path raw;
    Path base;
    Path top;

    @BeforeEach
    void start() throws Exception {
        Tools.require("qemu-img", "qemu-utils");
        daemon = Daemon.start();
        raw = dir.resolve("a.img");
        base = dir.resolve("b.qcow2");
        top = dir.resolve("c.qcow2");
        run(0, "qemu-img", "create", "-f", "raw", raw.toString(), "16M");
        run(0, "qemu-img", "create", "-f", "qcow2", base.toString(), "16M");
        run(0, "qemu-img", "create", "-f", "qcow2", "-b", base.toString(), "-F", "qcow2", top.toString());
    }

    @AfterEach
    void stop() {
        if (daemon != null) daemon.shutdown();
    }

    void add(Daemon d, String opts) throws Exception {
        d.blockdevAdd(KeyValueParser.parse("--blockdev", opts, null));
    }

    // ---- the same bytes as qemu-storage-daemon ----

    @Test
    void sameLockBytesAsQemuStorageDaemon() throws Exception {
        Tools.require("qemu-storage-daemon", "qemu-system-x86");
        String[][] cases = {
            {"driver=qcow2,node-name=q,file.driver=file,file.filename=" + top, null},
            {"driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + top, null},
            {"driver=qcow2,node-name=q,read-only=on,force-share=on,file.driver=file,file.filename=" + top, null},
            {"driver=qcow2,node-name=q,file.driver=file,file.filename=" + top + ",file.locking=off", null},
            {"driver=file,node-name=q,filename=" + raw, null},
            {"driver=raw,node-name=q,file.driver=file,file.filename=" + raw, "writable=on"},
            {"driver=file,node-name=q,filename=" + raw, "writable=off"},
        };
        for (String[] c : cases) {
            Daemon d = Daemon.start();
            try {
                add(d, c[0]);
                if (c[1] != null) {
                    // vmm's test export shares every permission, as QSD's vhost-user-blk export does
                    d.exportAdd(KeyValueParser.parse("--export", "type=test,id=e,node-name=q," + c[1], null));
                }
                List<String> vmm = List.of(locks(raw), locks(base), locks(top));
                d.shutdown();
                List<String> qsd = qsdLocks(c[0], c[1]);
                assertEquals(qsd, vmm, "lock bytes of a.img, b.qcow2, c.qcow2 for --blockdev " + c[0] + " export " + c[1]);
            } finally {
                d.shutdown();
            }
        }
        assertEquals(List.of("", "100 201 203", "100 101 103 201 203"), qsdLocks(cases[0][0], null), "the reference itself");
    }

    /** The lock bytes each image has while qemu-storage-daemon runs {@code blockdev} (and a vhost-user-blk export). */
    List<String> qsdLocks(String blockdev, String export) throws Exception {
        Path pid = dir.resolve("qsd.pid");
        Files.deleteIfExists(pid);
        List<String> cmd = new ArrayList<>(List.of("qemu-storage-daemon", "--blockdev", blockdev, "--pidfile", pid.toString()));
        if (export != null) {
            cmd.addAll(List.of("--export", "type=vhost-user-blk,id=e,node-name=q,addr.type=unix,addr.path=" + dir.resolve("v.sock") + "," + export));
        }
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            for (int i = 0; i < 100 && !Files.exists(pid); i++) {
                assertTrue(p.isAlive(), () -> "qemu-storage-daemon exited: " + output(p));
                Thread.sleep(50);
            }
            return List.of(locks(raw), locks(base), locks(top));
        } finally {
            p.destroy();
            p.waitFor(5, TimeUnit.SECONDS);
        }
    }

    // ---- QEMU's tools refused by vmm's locks ----

    @Test
    void writableQcow2RefusesQemuImgAndQemuIoUntilBlockdevDel() throws Exception {
        Tools.require("qemu-io", "qemu-utils");
        add(daemon, "driver=qcow2,node-name=q,file.driver=file,file.filename=" + top);
        String info = run(1, "qemu-img", "info", top.toString());
        assertTrue(info.contains("Failed to get shared \"write\" lock") && info.contains("Is another process using the image [" + top + "]?"), info);
        assertTrue(run(0, "qemu-img", "info", "-U", top.toString()).contains("file format: qcow2"));
        String io = run(1, "qemu-io", "-c", "write 0 4k", top.toString());
        assertTrue(io.contains("Failed to get \"write\" lock"), io);
        String conv = run(1, "qemu-img", "convert", "-O", "qcow2", raw.toString(), top.toString());
        assertTrue(conv.contains("lock"), conv);
        // the read-only backing file: readers welcome, writers not
        run(0, "qemu-img", "info", base.toString());
        assertTrue(run(1, "qemu-io", "-c", "write 0 4k", base.toString()).contains("Failed to get \"write\" lock"));
        daemon.blockdevDel("q");
        run(0, "qemu-img", "info", top.toString());
        run(0, "qemu-io", "-c", "write 0 4k", top.toString());
    }

    @Test
    void writableRawExportRefusesAQemuVmAndWriters() throws Exception {
        String qemu = Tools.require("qemu-system-x86_64", "qemu-system-x86");
        add(daemon, "driver=raw,node-name=r,file.driver=file,file.filename=" + raw);
        daemon.exportAdd(KeyValueParser.parse("--export", "type=test,id=e,node-name=r,writable=on", null));
        assertEquals("100 101", locks(raw));
        // a VM's virtio-blk disk does not share write: refused, as against qemu-storage-daemon
        Process vm = new ProcessBuilder(qemu, "-machine", "q35,accel=tcg", "-nodefaults", "-display", "none", "-S",
                "-drive", "file=" + raw + ",format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0")
                .redirectErrorStream(true).start();
        assertTrue(vm.waitFor(30, TimeUnit.SECONDS), "QEMU should refuse the disk and exit");
        String out = output(vm);
        assertNotEquals(0, vm.exitValue(), out);
        assertTrue(out.contains("Failed to get shared \"write\" lock"), out);
        // qemu-img convert into it shares write and the export shares everything (QSD 7.2's
        // vhost-user-blk export does too): QEMU lets it through, so vmm does
        run(0, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", base.toString(), raw.toString());
        daemon.exportDel("e", false);
        assertEquals("", locks(raw), "a raw node nobody uses holds nothing (as QEMU)");
    }

    // ---- vmm refused by QEMU's locks ----

    @Test
    void qemuIoHoldingTheImageRefusesVmmWithQemuWords() throws Exception {
        Tools.require("qemu-io", "qemu-utils");
        Process holder = new ProcessBuilder("qemu-io", "-f", "qcow2", top.toString()).redirectErrorStream(true).start();
        try {
            for (int i = 0; i < 100 && locks(top).isEmpty(); i++) Thread.sleep(50);
            assertEquals("100 101 103 201 203", locks(top), "qemu-io holds the image");
            DaemonException w = assertThrows(DaemonException.class,
                    () -> add(daemon, "driver=qcow2,node-name=q,file.driver=file,file.filename=" + top));
            assertEquals("Failed to get \"write\" lock", w.getMessage());
            assertEquals("Is another process using the image [" + top + "]?", w.hint());
            DaemonException r = assertThrows(DaemonException.class,
                    () -> add(daemon, "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + top));
            assertEquals("Failed to get shared \"write\" lock", r.getMessage());
            assertTrue(daemon.nodes().isEmpty(), "a refused blockdev-add leaves no node: " + daemon.nodes());
            add(daemon, "driver=qcow2,node-name=q,read-only=on,force-share=on,file.driver=file,file.filename=" + top);
            add(daemon, "driver=qcow2,node-name=q2,file.driver=file,file.filename=" + top + ",file.locking=off");
        } finally {
            holder.getOutputStream().close(); // qemu-io quits at end of input
            holder.waitFor(5, TimeUnit.SECONDS);
            holder.destroy();
        }
    }

    @Test
    void locksAreCheckedBeforeTheHeaderIsRead() throws Exception {
        Tools.require("qemu-io", "qemu-utils");
        Process holder = new ProcessBuilder("qemu-io", "-f", "raw", raw.toString()).redirectErrorStream(true).start();
        try {
            for (int i = 0; i < 100 && locks(raw).isEmpty(); i++) Thread.sleep(50);
            assertEquals("100 101", locks(raw), "qemu-io writes the raw image");
            // QSD 7.2 answers this, not "not in qcow2 format": QEMU attaches the file before reading it
            DaemonException e = assertThrows(DaemonException.class,
                    () -> add(daemon, "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=" + raw));
            assertEquals("Failed to get shared \"write\" lock", e.getMessage());
        } finally {
            holder.getOutputStream().close();
            holder.waitFor(5, TimeUnit.SECONDS);
            holder.destroy();
        }
    }

    @Test
    void twoDaemonsConflict() throws Exception {
        add(daemon, "driver=qcow2,node-name=q,file.driver=file,file.filename=" + top);
        Daemon other = Daemon.start();
        try {
            DaemonException e = assertThrows(DaemonException.class,
                    () -> add(other, "driver=qcow2,node-name=q,file.driver=file,file.filename=" + top));
            assertEquals("Failed to get \"write\" lock", e.getMessage());
            // the backing file is shared by readers
            add(other, "driver=qcow2,node-name=b,read-only=on,file.driver=file,file.filename=" + base);
            DaemonException r = assertThrows(DaemonException.class,
                    () -> add(other, "driver=qcow2,node-name=c,read-only=on,file.driver=file,file.filename=" + top));
            assertEquals("Failed to get shared \"write\" lock", r.getMessage());
        } finally {
            other.shutdown();
        }
        daemon.shutdown();
        daemon = null;
        run(0, "qemu-io", "-c", "write 0 4k", top.toString()); // released at exit
    }

    @Test
    void forceShareNeedsReadOnly() {
        OptionException e = assertThrows(OptionException.class,
                () -> add(daemon, "driver=file,node-name=f,filename=" + raw + ",force-share=on"));
        assertTrue(e.getMessage().contains("force-share=on can only be used with read-only images"), e.getMessage());
    }

    @Test
    void lockingAcceptsQemuValuesOnly() throws Exception {
        assertThrows(OptionException.class, () -> add(daemon, "driver=file,node-name=f,filename=" + raw + ",locking=maybe"));
        add(daemon, "driver=qcow2,node-name=q,file.driver=file,file.filename=" + top + ",file.locking=on");
        assertEquals("100 101 103 201 203", locks(top));
    }

    // ---- helpers ----

    /** The OFD lock bytes on {@code file} from /proc/locks, sorted, space-separated ("" for none). */
    static String locks(Path file) throws IOException {
        long ino = (Long) Files.getAttribute(file, "unix:ino");
        TreeSet<Long> bytes = new TreeSet<>();
        for (String line : Files.readAllLines(Path.of("/proc/locks"))) {
            String[] f = line.trim().split("\\s+");
            // "1: OFDLCK ADVISORY READ -1 fd:01:1234 100 101"
            if (f.length < 8 || !f[1].equals("OFDLCK")) continue;
            String[] dev = f[5].split(":");
            if (Long.parseLong(dev[dev.length - 1]) != ino) continue;
            long end = f[7].equals("EOF") ? Long.parseLong(f[6]) : Long.parseLong(f[7]);
            for (long b = Long.parseLong(f[6]); b <= end; b++) bytes.add(b);
        }
        StringBuilder sb = new StringBuilder();
        for (long b : bytes) sb.append(sb.length() == 0 ? "" : " ").append(b);
        return sb.toString();
    }

    /** Runs a command; {@code expect} 0 = must succeed, 1 = must fail. Returns its output. */
    static String run(int expect, String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        p.getOutputStream().close();
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), String.join(" ", cmd) + " hangs");
        String out = output(p);
        if (expect == 0) assertEquals(0, p.exitValue(), String.join(" ", cmd) + ": " + out);
        else assertNotEquals(0, p.exitValue(), String.join(" ", cmd) + " should fail: " + out);
        return out;
    }

    static String output(Process p) {
        try {
            return new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        } catch (IOException e) {
            return e.toString();
        }
    }
}
