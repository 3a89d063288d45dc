package dev.vmm.cli.it;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.List;

/**
 * What a crash checker knows about each block of an image of {@link VersionedBlock}s: the
 * highest version sent, the highest acknowledged, and the highest whose durability was
 * acknowledged; and, after a crash, whether what the disk holds is allowed.
 *
 * <p>Durability rules (NBD proto.md, "Ordering of messages and writes"; virtio-blk is the same
 * with its FLUSH): a write is durable once its FUA reply arrived, or once a FLUSH reply arrived
 * for a FLUSH that was sent after the write's reply had arrived. With
 * {@code NBD_FLAG_CAN_MULTI_CONN} the FLUSH covers replies received on every connection,
 * without it only those of its own connection.
 *
 * <p>After a crash, block {@code b} may hold: zeros if no version was ever durable; else a
 * valid version {@code v} of block {@code b} with {@code durable[b] <= v <= sent[b]}. A block
 * that fails its checksum is tolerated only while a write to it was in flight without a
 * reply (a write is not atomic: a multi-block write may be cut anywhere, as on real disks),
 * and counted apart.
 *
 * <p>The caller keeps at most one write in flight per block, so versions of a block reach
 * the server in order. Thread-safe: every method is synchronized (writers of several
 * connections and their reply readers share one ledger).
 */
public final class DurabilityLedger {
    /** A reply that is not durable yet: the versions it acknowledged, in reply order. */
    private record Pending(long seq, int first, long[] versions) {}

    private final int blocks;
    private final boolean multiConn;
    private final long[] sent;
    private final long[] acked;
    private final long[] durable;
    private final boolean[] inFlight;
    /** Torn by a write cut short in an earlier crash, and not written successfully since. */
    private final boolean[] torn;
    private final List<ArrayDeque<Pending>> pending = new ArrayList<>();
    /** Increments on each write reply: a FLUSH covers the replies numbered below its snapshot. */
    private long replySeq;
    private final List<String> problems = new ArrayList<>();

    // counters for the report
    private long writeRequests;
    private long blockWrites;
    private long fuaRequests;
    private long flushRequests;
    private long writeReplies;
    private long flushReplies;
    private long durableBlockVersions;
    private long blocksVerified;
    private long blocksAhead;
    private long tornInFlight;
    private long blocksInFlightAtKills;

    public DurabilityLedger(int blocks, int connections, boolean multiConn) {
        this.blocks = blocks;
        this.multiConn = multiConn;
        sent = new long[blocks];
        acked = new long[blocks];
        durable = new long[blocks];
        inFlight = new boolean[blocks];
        torn = new boolean[blocks];
        for (int i = 0; i < connections; i++) pending.add(new ArrayDeque<>());
    }

    public int blocks() {
        return blocks;
    }

    /**
     * Block {@code b} starts out holding {@code version} (e.g. from a backing file): sent,
     * acknowledged and durable. Call before any write.
     */
    public synchronized void baseline(int b, long version) {
        sent[b] = version;
        acked[b] = version;
        durable[b] = version;
    }

    /**
     * Reserves {@code [first, first + count)} for one write and returns the next version of
     * each block, or null if a write to one of them is still in flight.
     */
    public synchronized long[] reserve(int first, int count, boolean fua) {
        for (int b = first; b < first + count; b++) {
            if (inFlight[b]) return null;
        }
        long[] v = new long[count];
        for (int i = 0; i < count; i++) {
            inFlight[first + i] = true;
            v[i] = ++sent[first + i];
        }
        writeRequests++;
        blockWrites += count;
        if (fua) fuaRequests++;
        return v;
    }

    /** The write's reply arrived on {@code connection} without an error. */
    public synchronized void writeReplied(int connection, int first, long[] versions, boolean fua) {
        writeReplies++;
        for (int i = 0; i < versions.length; i++) {
            int b = first + i;
            inFlight[b] = false;
            torn[b] = false;
            acked[b] = Math.max(acked[b], versions[i]);
        }
        if (fua) {
            makeDurable(first, versions);
        } else {
            pending.get(connection).add(new Pending(replySeq, first, versions));
        }
        replySeq++;
    }

    /** A write failed (error reply): it proves nothing, and a good server should not do it. */
    public synchronized void writeFailed(int first, long[] versions, int error) {
        for (int i = 0; i < versions.length; i++) inFlight[first + i] = false;
        problem("write of blocks " + first + ".." + (first + versions.length - 1) + " failed with NBD error " + error);
    }

    /** Call right before sending a FLUSH; pass the result to {@link #flushReplied}. */
    public synchronized long flushSnapshot() {
        flushRequests++;
        return replySeq;
    }

    /** A FLUSH sent with {@code snapshot} was answered without an error on {@code connection}. */
    public synchronized void flushReplied(int connection, long snapshot) {
        flushReplies++;
        for (int c = 0; c < pending.size(); c++) {
            if (!multiConn && c != connection) continue;
            ArrayDeque<Pending> q = pending.get(c);
            while (!q.isEmpty() && q.peek().seq() < snapshot) {
                Pending p = q.poll();
                makeDurable(p.first(), p.versions());
            }
        }
    }

    private void makeDurable(int first, long[] versions) {
        for (int i = 0; i < versions.length; i++) {
            int b = first + i;
            if (versions[i] > durable[b]) {
                durable[b] = versions[i];
                durableBlockVersions++;
            }
        }
    }

    /** Block-versions acknowledged durable so far (each counted once). */
    public synchronized long durableBlockVersions() {
        return durableBlockVersions;
    }

    /**
     * Checks what block {@code b} holds after a crash; records a problem if it is not allowed.
     * Then takes it as the block's new floor: call only after the restarted server flushed.
     * Forgets what was in flight (the writers of the crashed server are gone).
     */
    public synchronized void verifyAndRebase(int b, VersionedBlock.Found f) {
        blocksVerified++;
        boolean unrepliedWrite = sent[b] > acked[b];
        switch (f.kind()) {
            case ZERO -> {
                if (durable[b] > 0) problem("block " + b + " is zeros but version " + durable[b] + " was acknowledged durable");
            }
            case CORRUPT -> {
                if (unrepliedWrite || torn[b]) {
                    tornInFlight++;
                } else {
                    problem("block " + b + ": " + f.detail() + " (no write to it was in flight; durable version "
                            + durable[b] + ", last sent " + sent[b] + ")");
                }
            }
            case VALID -> {
                if (f.block() != b) {
                    problem("block " + b + " holds " + f + " (misplaced write)");
                } else if (f.version() > sent[b]) {
                    problem("block " + b + " holds version " + f.version() + ", but only up to " + sent[b] + " were sent");
                } else if (f.version() < durable[b]) {
                    problem("block " + b + " holds version " + f.version() + " but version " + durable[b]
                            + " was acknowledged durable (lost write)");
                } else if (f.version() > durable[b]) {
                    blocksAhead++;
                }
            }
        }
        // The restarted server flushed what it serves: that is the floor from now on. Versions
        // keep counting from sent[b], so a version of before the crash can never pass for a new one.
        boolean valid = f.kind() == VersionedBlock.Kind.VALID && f.block() == b;
        durable[b] = valid ? f.version() : 0;
        torn[b] = f.kind() == VersionedBlock.Kind.CORRUPT;
        acked[b] = sent[b]; // nothing is in flight any more
        inFlight[b] = false;
    }

    /**
     * The server died: drops every reply still waiting for a FLUSH (its connection is gone) and
     * returns how many blocks had a write in flight without a reply.
     */
    public synchronized int connectionsLost() {
        for (ArrayDeque<Pending> q : pending) q.clear();
        int n = 0;
        for (int b = 0; b < blocks; b++) {
            if (inFlight[b]) n++;
        }
        blocksInFlightAtKills += n;
        return n;
    }

    public synchronized void problem(String p) {
        if (problems.size() < 1000) problems.add(p);
    }

    public synchronized List<String> problems() {
        return List.copyOf(problems);
    }

    /** One line with every counter, for the test's output and docs/reliability.md. */
    public synchronized String summary() {
        return String.format("write requests %d (%d blocks, %d with FUA), replies %d; flushes %d (replied %d); "
                        + "block-versions acknowledged durable %d; blocks with a write in flight at the kills %d; "
                        + "blocks verified %d (%d newer than durable, %d torn while in flight); problems %d",
                writeRequests, blockWrites, fuaRequests, writeReplies, flushRequests, flushReplies,
                durableBlockVersions, blocksInFlightAtKills, blocksVerified, blocksAhead, tornInFlight, problems.size());
    }

    /** The highest version of block {@code b} acknowledged durable (0: none). */
    public synchronized long durable(int b) {
        return durable[b];
    }

    /** The highest version of block {@code b} ever sent (0: none). */
    public synchronized long sent(int b) {
        return sent[b];
    }

    public synchronized long writeRequests() {
        return writeRequests;
    }

    public synchronized long blocksVerified() {
        return blocksVerified;
    }
}
