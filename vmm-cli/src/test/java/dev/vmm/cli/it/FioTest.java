package dev.vmm.cli.it;

import static dev.vmm.cli.it.Images.MiB;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** fio's nbd engine (libnbd): random writes at queue depth 16 verified, then a verified read pass. */
@Timeout(180)
class FioTest extends PeerTestBase {

    private Run.Result fio(String uri, String name, String... extra) throws Exception {
        Path json = tmp.resolve(name + ".json");
        List<String> cmd = new ArrayList<>(List.of(Peers.fioWithNbd(), "--name=" + name, "--ioengine=nbd",
                "--uri=" + uri, "--bs=4k", "--iodepth=16", "--size=64m", "--verify=crc32c",
                "--randseed=4242", "--output-format=json", "--output=" + json));
        cmd.addAll(List.of(extra));
        Run.Result r = Run.cmd(cmd).dir(tmp).timeoutSeconds(120).expect(0); // fio leaves verify state files in its cwd
        String out = Files.readString(json);
        // every job reports "error" : 0; a verify failure or an I/O error makes it non-zero
        assertTrue(out.contains("\"error\"") && !out.matches("(?s).*\"error\"\\s*:\\s*[1-9].*"),
                r.describe() + "\n--- json ---\n" + out);
        return r;
    }

    @Test
    void randomWritesAtDepth16VerifyAndReadBackVerifies() throws Exception {
        Disk d = serveDisk(Images.sparse(tmp.resolve("disk.img"), 64 * MiB), true);
        fio(d.uri(), "randwrite", "--rw=randwrite", "--do_verify=1");
        fio(d.uri(), "randread", "--rw=randread");
        d.server().assertAlive();
    }
}
