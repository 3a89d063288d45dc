package dev.vmm.cli.it;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.protocol.NbdCmd;
import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@code kill -9} during heavy NBD writes loses nothing acknowledged: several connections write
 * {@link VersionedBlock}s at a high queue depth (some with FUA, the rest covered by FLUSHes),
 * the server is SIGKILLed at a random moment, started again on the same image, and every block
 * is read back and judged by the {@link DurabilityLedger}. Several rounds per run.
 *
 * <p>What this proves: a killed process loses only what it had not yet handed to the kernel
 * (the page cache survives it), so this checks that no write is acknowledged before its
 * {@code pwrite} returned and that FUA and FLUSH replies come only after the data is written;
 * it cannot prove that {@code fdatasync} reached the platters (that needs a power cut).
 *
 * <p>Knobs: {@code -Dvmm.durability.rounds=N} (default 5), {@code -Dvmm.durability.seed=S} (the
 * seed is printed); {@code -Dvmm.it.server=qsd} runs the same checker against
 * qemu-storage-daemon.
 */
@Timeout(300)
class NbdKillDurabilityTest extends PeerTestBase {
    static final int BLOCKS = 4096; // 16 MiB
    static final int CONNECTIONS = 4;
    static final int QUEUE_DEPTH = 16;
    /** Block-versions that must be acknowledged durable in a round before the kill may come. */
    static final long MIN_DURABLE_PER_ROUND = 300;

    @Test
    void acknowledgedWritesSurviveSigkill() throws Exception {
        int rounds = Integer.getInteger("vmm.durability.rounds", 5);
        long seed = Long.getLong("vmm.durability.seed", System.nanoTime());
        System.out.printf("[durability] NBD kill -9: %d rounds, seed %d (-Dvmm.durability.seed=%d to repeat the kill times)%n",
                rounds, seed, seed);
        Random rnd = new Random(seed);
        Path image = Images.sparse(tmp.resolve("disk.img"), (long) BLOCKS * VersionedBlock.SIZE);
        DurabilityLedger ledger = null;
        long t0 = System.nanoTime();
        int killedMidIo = 0;
        for (int round = 1; round <= rounds; round++) {
            Disk d = serveDisk(image, true);
            InetSocketAddress addr = new InetSocketAddress(Net.HOST, d.port());
            if (ledger == null) {
                boolean multiConn = NbdDurabilityWriter.multiConn(addr, "disk0");
                System.out.printf("[durability] NBD_FLAG_CAN_MULTI_CONN %s: a FLUSH covers %s%n", multiConn ? "set" : "not set",
                        multiConn ? "the replies of every connection" : "its own connection's replies only");
                ledger = new DurabilityLedger(BLOCKS, CONNECTIONS, multiConn);
            } else {
                verifyAfterRestart(addr, ledger);
            }
            long before = ledger.durableBlockVersions();
            long writesBefore = ledger.writeRequests();
            NbdDurabilityWriter w = NbdDurabilityWriter.connect(addr, "disk0", ledger, CONNECTIONS, QUEUE_DEPTH, rnd.nextLong());
            long deadline = System.currentTimeMillis() + 30_000;
            while (ledger.durableBlockVersions() - before < MIN_DURABLE_PER_ROUND) {
                if (System.currentTimeMillis() > deadline || !d.server().isAlive()) {
                    w.stop();
                    fail("round " + round + ": too few durable acknowledgements (" + (ledger.durableBlockVersions() - before)
                            + ")\n" + ledger.summary() + "\n" + w.errors() + "\n--- server ---\n" + d.server().stderr());
                }
                VmmProcess.sleep(5);
            }
            VmmProcess.sleep(200 + rnd.nextInt(1300)); // a random moment in the middle of the writes
            d.server().kill();
            assertTrue(w.awaitEnd(30_000), "writers did not notice the kill");
            assertEquals(List.of(), w.errors(), "protocol errors before the kill");
            int inFlight = ledger.connectionsLost();
            killedMidIo += inFlight > 0 ? 1 : 0;
            System.out.printf("[durability] round %d: killed after %d write requests, %d block-versions durable, %d blocks with a write in flight%n",
                    round, ledger.writeRequests() - writesBefore, ledger.durableBlockVersions() - before, inFlight);
        }
        Disk last = serveDisk(image, true);
        verifyAfterRestart(new InetSocketAddress(Net.HOST, last.port()), ledger);
        System.out.printf("[durability] NBD kill -9 %s: %d rounds, %d kills in %d ms; %s%n",
                Peers.qsd() ? "qemu-storage-daemon" : "vmm", rounds, rounds, (System.nanoTime() - t0) / 1_000_000, ledger.summary());
        assertTrue(killedMidIo > 0, "no kill landed while a write was in flight; the test proved little");
        List<String> problems = ledger.problems();
        assertTrue(problems.isEmpty(), ledger.summary() + "\nfirst problems:\n  "
                + String.join("\n  ", problems.subList(0, Math.min(20, problems.size()))));
        assertEquals(0, last.server().stop(), "exit code after SIGTERM\n" + last.server().stderr());
    }

    /**
     * The checker can fail: after a round of writes that all got their replies, the image is
     * damaged behind the server's back in five ways, and the checker must name each block.
     */
    @Test
    void checkerCatchesLostStaleTornMisplacedAndUnsentBlocks() throws Exception {
        Path image = Images.sparse(tmp.resolve("disk.img"), (long) BLOCKS * VersionedBlock.SIZE);
        Disk d = serveDisk(image, true);
        InetSocketAddress addr = new InetSocketAddress(Net.HOST, d.port());
        DurabilityLedger ledger = new DurabilityLedger(BLOCKS, CONNECTIONS, NbdDurabilityWriter.multiConn(addr, "disk0"));
        NbdDurabilityWriter w = NbdDurabilityWriter.connect(addr, "disk0", ledger, CONNECTIONS, QUEUE_DEPTH, 42);
        long deadline = System.currentTimeMillis() + 30_000;
        while (ledger.durableBlockVersions() < 2000 && System.currentTimeMillis() < deadline) VmmProcess.sleep(5);
        w.stop();
        assertTrue(w.awaitEnd(30_000), "writers did not stop");
        assertEquals(List.of(), w.errors());
        assertEquals(0, d.server().stop());
        // five durable blocks, at least one of them overwritten since (for the stale copy)
        int[] pick = new int[5];
        int n = 0;
        for (int b = 0; b < BLOCKS && n < pick.length; b++) {
            if (ledger.durable(b) >= (n == 0 ? 2 : 1)) pick[n++] = b;
        }
        assertEquals(pick.length, n, "too few durable blocks to damage: " + ledger.summary());
        int stale = pick[0], lost = pick[1], torn = pick[2], misplaced = pick[3], unsent = pick[4];
        long at = VersionedBlock.SIZE;
        Images.write(image, lost * at, new byte[VersionedBlock.SIZE]);
        Images.write(image, stale * at, VersionedBlock.encode(stale, ledger.durable(stale) - 1));
        byte[] t = Images.read(image, torn * at, VersionedBlock.SIZE);
        t[1000] ^= 1;
        Images.write(image, torn * at, t);
        Images.write(image, misplaced * at, VersionedBlock.encode(misplaced + 1, ledger.durable(misplaced)));
        Images.write(image, unsent * at, VersionedBlock.encode(unsent, ledger.sent(unsent) + 1));

        Disk again = serveDisk(image, true);
        verifyAfterRestart(new InetSocketAddress(Net.HOST, again.port()), ledger);
        List<String> problems = ledger.problems();
        assertEquals(5, problems.size(), String.join("\n", problems));
        for (int b : pick) {
            assertTrue(problems.stream().anyMatch(p -> p.startsWith("block " + b + " ") || p.startsWith("block " + b + ":")), "block " + b + " not reported: " + problems);
        }
        System.out.println("[durability] the checker reports damage as it should:\n  " + String.join("\n  ", problems));
    }

    /**
     * Reads every block through the restarted server, has it FLUSH (so that what it serves is
     * the floor of the next round), then judges each block.
     */
    static void verifyAfterRestart(InetSocketAddress addr, DurabilityLedger ledger) throws Exception {
        int chunk = 256; // blocks per READ: 1 MiB
        VersionedBlock.Found[] found = new VersionedBlock.Found[ledger.blocks()];
        try (NbdClient c = NbdClient.open(addr, "disk0")) {
            for (int b = 0; b < ledger.blocks(); b += chunk) {
                int n = Math.min(chunk, ledger.blocks() - b);
                byte[] data = c.read((long) b * VersionedBlock.SIZE, n * VersionedBlock.SIZE, 0);
                for (int i = 0; i < n; i++) found[b + i] = VersionedBlock.decode(data, i * VersionedBlock.SIZE);
            }
            assertEquals(0, c.request(0, NbdCmd.NBD_CMD_FLUSH, 0, 0, null).error(), "FLUSH after the restart");
            c.disconnect();
        }
        for (int b = 0; b < found.length; b++) ledger.verifyAndRebase(b, found[b]);
    }
}
