package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@code kill -9} of the server while NBD clients write to a qcow2 image: after every kill
 * {@code qemu-img check} finds at most leaked clusters (exit 0 or 3, never 2: corruption), and
 * every write acknowledged as durable (FUA, or covered by a FLUSH) reads back from
 * {@code qemu-img convert -O raw} of the image ({@link DurabilityLedger} judges each block).
 *
 * <p>Two images: sparse with 64 KiB clusters (every first write allocates: L2 tables and
 * refcounts change under the writes), and one over a raw backing file that holds version 1 of
 * every block (every first write to a cluster copies the rest of it from the backing file).
 *
 * <p>vmm only ({@link Server#primary}); {@code -Dvmm.it.qcow2.servers=qsd} runs the same harness
 * against qemu-storage-daemon. Knobs: {@code -Dvmm.qcow2.kill.rounds=N} (default 3 per image),
 * {@code -Dvmm.qcow2.kill.seed=S} (printed).
 */
@Timeout(300)
class Qcow2KillTest extends PeerTestBase {
    static final int BLOCKS = 2048; // 8 MiB of VersionedBlocks
    static final int CONNECTIONS = 4;
    static final int QUEUE_DEPTH = 16;
    static final long MIN_DURABLE_PER_ROUND = 200;

    @Test
    void sparse64k() throws Exception {
        Path img = Qcow2Peers.create(tmp.resolve("sparse.qcow2"), "cluster_size=64k", (long) BLOCKS * VersionedBlock.SIZE);
        killRounds(img, false);
    }

    @Test
    void overRawBacking() throws Exception {
        Path base = Images.sparse(tmp.resolve("base.raw"), (long) BLOCKS * VersionedBlock.SIZE);
        byte[] all = new byte[BLOCKS * VersionedBlock.SIZE];
        for (int b = 0; b < BLOCKS; b++) System.arraycopy(VersionedBlock.encode(b, 1), 0, all, b * VersionedBlock.SIZE, VersionedBlock.SIZE);
        Images.write(base, 0, all);
        Path img = Qcow2Peers.createOver(tmp.resolve("overlay.qcow2"), "cluster_size=64k", base, "raw");
        killRounds(img, true);
    }

    private void killRounds(Path image, boolean backingHoldsVersion1) throws Exception {
        Server server = Server.primary();
        int rounds = Integer.getInteger("vmm.qcow2.kill.rounds", 3);
        long seed = Long.getLong("vmm.qcow2.kill.seed", System.nanoTime());
        System.out.printf("[qcow2] %s kill -9 of %s: %d rounds, seed %d (-Dvmm.qcow2.kill.seed=%d to repeat)%n",
                server, image.getFileName(), rounds, seed, seed);
        Random rnd = new Random(seed);
        DurabilityLedger ledger = null;
        int killedMidIo = 0;
        List<String> checks = new ArrayList<>();
        for (int round = 1; round <= rounds; round++) {
            int port = Net.freePort();
            List<String> args = new ArrayList<>(List.of("--nbd-server", Net.inetServer(port)));
            args.addAll(Qcow2Peers.qcow2Blockdev("disk0", image, ""));
            args.addAll(Qcow2Peers.nbdExport("disk0", true, ""));
            VmmProcess p = serve(server, args);
            InetSocketAddress addr = new InetSocketAddress(Net.HOST, port);
            if (ledger == null) {
                ledger = new DurabilityLedger(BLOCKS, CONNECTIONS, NbdDurabilityWriter.multiConn(addr, "disk0"));
                if (backingHoldsVersion1) for (int b = 0; b < BLOCKS; b++) ledger.baseline(b, 1);
            }
            long before = ledger.durableBlockVersions();
            NbdDurabilityWriter w = NbdDurabilityWriter.connect(addr, "disk0", ledger, CONNECTIONS, QUEUE_DEPTH, rnd.nextLong());
            long deadline = System.currentTimeMillis() + 60_000;
            while (ledger.durableBlockVersions() - before < MIN_DURABLE_PER_ROUND) {
                if (System.currentTimeMillis() > deadline || !p.isAlive()) {
                    w.stop();
                    w.awaitEnd(10_000);
                    fail("round " + round + ": too few durable acknowledgements (" + (ledger.durableBlockVersions() - before)
                            + ")\n" + ledger.summary() + "\n" + w.errors() + "\n--- server ---\n" + p.stderr());
                }
                VmmProcess.sleep(5);
            }
            VmmProcess.sleep(100 + rnd.nextInt(900)); // a random moment in the middle of the writes
            p.kill();
            assertTrue(w.awaitEnd(30_000), "writers did not notice the kill");
            assertEquals(List.of(), w.errors(), "protocol errors before the kill");
            int inFlight = ledger.connectionsLost();
            killedMidIo += inFlight > 0 ? 1 : 0;

            Run.Result check = Qcow2Peers.check(image);
            checks.add("round " + round + ": qemu-img check exit " + check.exit());
            if (check.exit() != 0 && check.exit() != 3) {
                fail("round " + round + ": qemu-img check exit " + check.exit() + " (0: clean, 3: leaks only; 2: corruption)\n"
                        + check.describe() + "\n--- server ---\n" + p.stderr());
            }
            verifyFromFile(image, ledger);
            System.out.printf("[qcow2] %s round %d: %d blocks with a write in flight at the kill; %s; %s%n", server, round, inFlight,
                    checks.get(checks.size() - 1), ledger.summary());
        }
        assertTrue(killedMidIo > 0, "no kill landed while a write was in flight; the test proved little");
        List<String> problems = ledger.problems();
        assertTrue(problems.isEmpty(), ledger.summary() + "\nfirst problems:\n  "
                + String.join("\n  ", problems.subList(0, Math.min(20, problems.size()))));
        // and the image still serves after the last kill
        Run.Result last = Qcow2Peers.check(image);
        assertTrue(last.exit() == 0 || last.exit() == 3, last.describe());
    }

    /** Judges every block of {@code qemu-img convert -O raw} of the (closed) image. */
    private void verifyFromFile(Path image, DurabilityLedger ledger) throws Exception {
        Path raw = Qcow2Peers.toRaw("qcow2", image.toString(), tmp.resolve("after-kill.raw"));
        byte[] all = Images.read(raw, 0, ledger.blocks() * VersionedBlock.SIZE);
        for (int b = 0; b < ledger.blocks(); b++) ledger.verifyAndRebase(b, VersionedBlock.decode(all, b * VersionedBlock.SIZE));
        Files.delete(raw);
    }
}
