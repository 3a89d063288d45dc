package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.vmm.cli.it.Images;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * What the guest makes of the device's config space and identity: logical block size 4096, a
 * size that is not a multiple of 4 KiB, the serial (GET_ID) and the write cache mode
 * (CONFIG_WCE, i.e. SET_CONFIG of the writeback byte). One boot per test.
 */
class GuestDeviceConfigTest extends GuestTestBase {
    static final long MiB = Images.MiB;

    /** busybox sh: write COUNT random blocks of BS at block SEEK with O_DIRECT, report the sha of what was written as KEY. */
    static String write(String key, long bs, long seek, long count) {
        return String.format("dd if=/dev/urandom of=/tmp/%1$s bs=%2$d count=%4$d iflag=fullblock 2>/dev/null%n"
                + "dd if=/tmp/%1$s of=/dev/vda bs=%2$d seek=%3$d count=%4$d oflag=direct conv=notrunc 2>/tmp/err"
                + " || vmmtest error \"write %1$s $(cat /tmp/err)\"%n"
                + "vmmtest %1$s $(sha256sum < /tmp/%1$s | cut -d' ' -f1)%n", key, bs, seek, count);
    }

    @Test
    void logicalBlockSize4096() throws Exception {
        long size = 64 * MiB;
        Path image = Images.sparse(dir.resolve("disk.img"), size);
        VhostUserBlkServer.Export export = new VhostUserBlkServer.Export(image, socket(), true, 1).withLogicalBlockSize(4096);
        long lastBlock = size / 4096 - 1;
        String w = "vmmtest lbs $(cat /sys/block/vda/queue/logical_block_size)\n"
                + "vmmtest pbs $(cat /sys/block/vda/queue/physical_block_size)\n"
                + "vmmtest size $(blockdev --getsize64 /dev/vda)\n"
                + write("wa", 4096, 5, 1) + write("wb", 65536, 100, 4) + write("wc", 4096, lastBlock, 1)
                // a 512-byte O_DIRECT write is below the logical block size: the kernel refuses it with EINVAL,
                // and busybox dd then retries without O_DIRECT, so it may land through the page cache
                // (read-modify-write of block 0): either way, block 0 must hold what the guest reads
                + "head -c 512 /tmp/wa > /tmp/small; vmmtest small $(sha256sum < /tmp/small | cut -d' ' -f1)\n"
                + "dd if=/tmp/small of=/dev/vda bs=512 seek=1 count=1 oflag=direct conv=notrunc 2>/dev/null; vmmtest small_rc $?\n"
                + "sync\necho 3 > /proc/sys/vm/drop_caches\n"
                + readSha("r0", 4096, 0, 4096)
                + readSha("ra", 4096, 5 * 4096, 4096) + readSha("rb", 65536, 100 * 65536, 4 * 65536)
                + readSha("rc", 4096, lastBlock * 4096, 4096);
        GuestRun run = boot(export, w);
        String why = why(run);
        System.out.printf("[guest] %s: logical_block_size %s, physical_block_size %s, 512-byte direct write rc %s%n", server.name(),
                run.result("lbs"), run.result("pbs"), run.result("small_rc"));
        assertEquals("4096", run.result("lbs"), why);
        assertEquals(Long.toString(size), run.result("size"), why);
        assertEquals(Images.sha256(image, 0, 4096), run.result("r0"), "block 0 as the guest reads it and in the image\n" + why);
        if ("0".equals(run.result("small_rc"))) {
            assertEquals(run.result("small"), Images.sha256(image, 512, 512), "the 512-byte write went missing\n" + why);
        } else {
            assertTrue(Images.isZero(image, 0, 4096), "a refused 512-byte write changed block 0\n" + why);
        }
        assertEquals(run.result("wa"), run.result("ra"), why);
        assertEquals(run.result("wa"), Images.sha256(image, 5 * 4096, 4096), why);
        assertEquals(run.result("wb"), run.result("rb"), why);
        assertEquals(run.result("wb"), Images.sha256(image, 100 * 65536, 4 * 65536), why);
        assertEquals(run.result("wc"), run.result("rc"), why);
        assertEquals(run.result("wc"), Images.sha256(image, lastBlock * 4096, 4096), why);
        assertTrue(Images.isZero(image, 4096, 4096 * 4), "blocks 1-4 were never written\n" + why);
    }

    @Test
    void oddSizeLastSectorIsUsable() throws Exception {
        long size = 64 * MiB + 512;
        Path image = Images.sparse(dir.resolve("disk.img"), size);
        VhostUserBlkServer.Export export = new VhostUserBlkServer.Export(image, socket(), true, 1);
        long last = size / 512 - 1;
        String w = "vmmtest size $(blockdev --getsize64 /dev/vda)\n"
                + "vmmtest sectors $(cat /sys/block/vda/size)\n"
                + write("wlast", 512, last, 1)
                + write("wbefore", 4096, (64 * MiB - 4096) / 4096, 1)
                // one sector past the end: the guest must get an error (ENOSPC), not a silent wrap
                + "dd if=/dev/urandom of=/dev/vda bs=512 seek=" + (last + 1) + " count=1 oflag=direct conv=notrunc 2>/tmp/err;"
                + " vmmtest past_rc $?; vmmtest past_err \"$(head -1 /tmp/err)\"\n"
                + "echo 3 > /proc/sys/vm/drop_caches\n"
                + readSha("rlast", 512, last * 512, 512)
                + readSha("rbefore", 4096, 64 * MiB - 4096, 4096)
                + "vmmtest tail_bytes $(dd if=/dev/vda bs=512 skip=" + (last - 1) + " iflag=direct 2>/dev/null | wc -c)\n";
        GuestRun run = boot(export, w);
        String why = why(run);
        System.out.printf("[guest] %s: size %s, past-the-end write rc %s (%s)%n", server.name(), run.result("size"),
                run.result("past_rc"), run.result("past_err"));
        assertEquals(Long.toString(size), run.result("size"), why);
        assertEquals(Long.toString(size / 512), run.result("sectors"), why);
        assertEquals(run.result("wlast"), run.result("rlast"), why);
        assertEquals(run.result("wlast"), Images.sha256(image, last * 512, 512), why);
        assertEquals(run.result("wbefore"), run.result("rbefore"), why);
        assertEquals(run.result("wbefore"), Images.sha256(image, 64 * MiB - 4096, 4096), why);
        assertEquals("1024", run.result("tail_bytes"), "reading from two sectors before the end\n" + why);
        assertNotEquals("0", run.result("past_rc"), why);
        assertEquals(size, Files.size(image), "the image grew\n" + why);
    }

    @Test
    void serialIsTheExportId() throws Exception {
        // 20 bytes: exactly VIRTIO_BLK_ID_BYTES, so the device sends no NUL terminator
        String id = "serial-0123456789abc";
        Path image = Images.sparse(dir.resolve("disk.img"), 16 * MiB);
        VhostUserBlkServer.Export export = new VhostUserBlkServer.Export(image, socket(), true, 1).withId(id);
        GuestRun run = boot(export, "vmmtest serial \"$(cat /sys/block/vda/serial)\"\n"
                + "vmmtest serial_len $(cat /sys/block/vda/serial | wc -c)\n");
        System.out.printf("[guest] %s: serial '%s' (%s bytes; sysfs adds no newline)%n", server.name(), run.result("serial"), run.result("serial_len"));
        // qemu-storage-daemon 7.2 answers GET_ID with a fixed "vhost_user_blk", whatever the export id
        String expected = isQsd() ? "vhost_user_blk" : id;
        assertEquals(expected, run.result("serial"), why(run));
    }

    @Test
    void writeCacheModeCanBeSwitched() throws Exception {
        Path image = Images.sparse(dir.resolve("disk.img"), 16 * MiB);
        VhostUserBlkServer.Export export = new VhostUserBlkServer.Export(image, socket(), true, 1);
        String w = "vmmtest wc \"$(cat /sys/block/vda/queue/write_cache)\"\n"
                + "vmmtest cache_type \"$(cat /sys/block/vda/cache_type)\"\n"
                + "vmmtest fua $(cat /sys/block/vda/queue/fua)\n"
                // virtio_blk's cache_type attribute writes the config's writeback byte (CONFIG_WCE)
                + "echo 'write through' > /sys/block/vda/cache_type; vmmtest set_rc $?\n"
                + "vmmtest wc2 \"$(cat /sys/block/vda/queue/write_cache)\"\n"
                + "vmmtest cache_type2 \"$(cat /sys/block/vda/cache_type)\"\n"
                + write("w1", 65536, 10, 16)
                + "echo 'write back' > /sys/block/vda/cache_type; vmmtest set2_rc $?\n"
                + "vmmtest wc3 \"$(cat /sys/block/vda/queue/write_cache)\"\n"
                + write("w2", 65536, 40, 16)
                + "sync\necho 3 > /proc/sys/vm/drop_caches\n"
                + readSha("r1", 65536, 10 * 65536, 16 * 65536) + readSha("r2", 65536, 40 * 65536, 16 * 65536);
        GuestRun run = boot(export, w);
        String why = why(run);
        System.out.printf("[guest] %s: write_cache '%s', cache_type '%s', fua %s -> set rc %s -> '%s' / '%s' -> back: '%s'%n", server.name(),
                run.result("wc"), run.result("cache_type"), run.result("fua"), run.result("set_rc"), run.result("wc2"),
                run.result("cache_type2"), run.result("wc3"));
        // qemu-storage-daemon 7.2 starts its vhost-user-blk device in writethrough (config wce = 0);
        // ours starts in writeback, as QEMU's own virtio-blk does by default
        String initial = isQsd() ? "write through" : "write back";
        assertEquals(initial, run.result("wc"), why);
        assertEquals(initial, run.result("cache_type"), why);
        assertEquals("0", run.result("set_rc"), why);
        assertEquals("write through", run.result("wc2"), why);
        assertEquals("write through", run.result("cache_type2"), why);
        assertEquals("0", run.result("set2_rc"), why);
        assertEquals("write back", run.result("wc3"), why);
        assertEquals(run.result("w1"), run.result("r1"), why);
        assertEquals(run.result("w1"), Images.sha256(image, 10 * 65536, 16 * 65536), why);
        assertEquals(run.result("w2"), run.result("r2"), why);
        assertEquals(run.result("w2"), Images.sha256(image, 40 * 65536, 16 * 65536), why);
        if (!isQsd()) {
            String log = server.log();
            assertTrue(log.contains("writethrough") && log.contains("writeback"),
                    "the server did not log both cache mode changes (SET_CONFIG not seen)\n" + why);
        }
    }
}
