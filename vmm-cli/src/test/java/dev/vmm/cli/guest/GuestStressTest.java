package dev.vmm.cli.guest;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import dev.vmm.cli.it.Images;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * A longer load with two vCPUs and two queues: 32 MiB of random data written with
 * {@code oflag=direct bs=64k} and read back with {@code iflag=direct}, then a concurrent mix
 * (two writers pinned to different vCPUs, hence different queues, with different block sizes
 * and offsets, plus a reader of the 32 MiB region, all in the background, then {@code wait}).
 * Guest and host checksums must agree; the guest also reports the interrupt count of each queue
 * so a run shows that both carried requests.
 */
class GuestStressTest extends GuestTestBase {
    static final long MiB = Images.MiB;

    @Test
    void directIoStressOnTwoQueues() throws Exception {
        Path image = Images.sparse(dir.resolve("disk.img"), 96 * MiB);
        VhostUserBlkServer.Export export = new VhostUserBlkServer.Export(image, socket(), true, 2);
        String w = "vmmtest mq $(ls /sys/block/vda/mq | wc -l)\n"
                + "t() { cut -d' ' -f1 /proc/uptime | tr -d .; }\n" // centiseconds since boot
                + "dd if=/dev/urandom of=/tmp/big bs=1M count=32 iflag=fullblock 2>/dev/null\n"
                + "dd if=/dev/urandom of=/tmp/a bs=1M count=8 iflag=fullblock 2>/dev/null\n"
                + "dd if=/dev/urandom of=/tmp/b bs=1M count=8 iflag=fullblock 2>/dev/null\n"
                + "vmmtest big $(sha256sum < /tmp/big | cut -d' ' -f1)\n"
                + "vmmtest a $(sha256sum < /tmp/a | cut -d' ' -f1)\n"
                + "vmmtest b $(sha256sum < /tmp/b | cut -d' ' -f1)\n"
                + "s=$(t)\n"
                + "dd if=/tmp/big of=/dev/vda bs=64k oflag=direct conv=notrunc 2>/tmp/err || vmmtest error \"big write $(cat /tmp/err)\"\n"
                + "vmmtest write_cs $(($(t) - s))\n"
                + "echo 3 > /proc/sys/vm/drop_caches\n"
                + "s=$(t)\n"
                + "vmmtest rbig $(dd if=/dev/vda bs=64k count=512 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)\n"
                + "vmmtest read_cs $(($(t) - s))\n"
                + "s=$(t)\n"
                + "taskset 1 dd if=/tmp/a of=/dev/vda bs=64k seek=640 oflag=direct conv=notrunc 2>/tmp/ea || echo fail > /tmp/fa &\n"
                + "taskset 2 dd if=/tmp/b of=/dev/vda bs=16k seek=3584 oflag=direct conv=notrunc 2>/tmp/eb || echo fail > /tmp/fb &\n"
                + "taskset 2 sh -c 'dd if=/dev/vda bs=128k count=256 iflag=direct 2>/dev/null | sha256sum | cut -d\" \" -f1 > /tmp/rr' &\n"
                + "wait\n"
                + "vmmtest mix_cs $(($(t) - s))\n"
                + "[ -e /tmp/fa ] && vmmtest error \"writer a: $(cat /tmp/ea)\"\n"
                + "[ -e /tmp/fb ] && vmmtest error \"writer b: $(cat /tmp/eb)\"\n"
                + "vmmtest rmix $(cat /tmp/rr)\n"
                + "echo 3 > /proc/sys/vm/drop_caches\n"
                + readSha("ra", 65536, 40 * MiB, 8 * MiB)
                + readSha("rb", 65536, 56 * MiB, 8 * MiB)
                + "vmmtest irq_req0 $(grep 'req.0' /proc/interrupts | tr -s ' ' | cut -d' ' -f3,4 | tr ' ' +)\n"
                + "vmmtest irq_req1 $(grep 'req.1' /proc/interrupts | tr -s ' ' | cut -d' ' -f3,4 | tr ' ' +)\n";

        GuestRun run = boot(export, w, 2, l -> l);
        String why = why(run);
        System.out.printf("[guest] %s stress: 32 MiB direct write %s cs, read %s cs; mix %s cs; interrupts (cpu0+cpu1) queue 0: %s, queue 1: %s%n",
                server.name(), run.result("write_cs"), run.result("read_cs"), run.result("mix_cs"), run.result("irq_req0"), run.result("irq_req1"));
        assertEquals("2", run.result("mq"), why);
        assertNotNull(run.result("big"), why);
        assertEquals(run.result("big"), run.result("rbig"), "32 MiB read back in the guest\n" + why);
        assertEquals(run.result("big"), Images.sha256(image, 0, 32 * MiB), "32 MiB in the image\n" + why);
        assertEquals(run.result("big"), run.result("rmix"), "the concurrent reader\n" + why);
        assertEquals(run.result("a"), run.result("ra"), why);
        assertEquals(run.result("a"), Images.sha256(image, 40 * MiB, 8 * MiB), why);
        assertEquals(run.result("b"), run.result("rb"), why);
        assertEquals(run.result("b"), Images.sha256(image, 56 * MiB, 8 * MiB), why);
    }
}
