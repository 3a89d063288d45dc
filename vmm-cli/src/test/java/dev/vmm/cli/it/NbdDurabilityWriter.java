package dev.vmm.cli.it;

import dev.vmm.nbd.client.NbdClient;
import dev.vmm.nbd.protocol.NbdCmd;
import dev.vmm.nbd.protocol.NbdCmdFlags;
import dev.vmm.nbd.protocol.NbdTransmissionFlags;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;

/**
 * Writes {@link VersionedBlock}s over several NBD connections at a high queue depth until the
 * server goes away (killed) or {@link #stop} is called, recording every request and reply in
 * a {@link DurabilityLedger}.
 *
 * <p>Each connection owns a contiguous share of the blocks and mixes single-block writes,
 * 32 KiB writes (one {@code pwrite}) and 128 KiB writes (the server's streamed path, written
 * piecewise as the payload arrives); about a third carry FUA, and every {@value #FLUSH_EVERY}
 * requests a FLUSH follows. Requests are pipelined: a sender thread keeps up to
 * {@code queueDepth} in flight, a reader thread matches replies by cookie.
 *
 * <p>Thread contract: {@link #connect}, {@link #stop} and {@link #awaitEnd} are called by the
 * test thread; each connection then runs its own sender and reader threads, which share only
 * the (synchronized) ledger.
 */
public final class NbdDurabilityWriter {
    static final int FLUSH_EVERY = 24;

    /** One request in flight: a write of {@code versions.length} blocks from {@code first}, or a FLUSH. */
    private record Op(boolean flush, int first, long[] versions, boolean fua, long snapshot) {}

    private final DurabilityLedger ledger;
    private final List<Conn> conns = new ArrayList<>();
    private volatile boolean stopping;

    private NbdDurabilityWriter(DurabilityLedger ledger) {
        this.ledger = ledger;
    }

    /** Whether the export offers NBD_FLAG_CAN_MULTI_CONN (asks one throw-away connection). */
    public static boolean multiConn(InetSocketAddress address, String export) throws IOException {
        try (NbdClient c = NbdClient.open(address, export)) {
            return (c.transmissionFlags() & NbdTransmissionFlags.NBD_FLAG_CAN_MULTI_CONN) != 0;
        }
    }

    /** Opens {@code connections} connections and starts writing on each. */
    public static NbdDurabilityWriter connect(InetSocketAddress address, String export, DurabilityLedger ledger,
            int connections, int queueDepth, long seed) throws IOException {
        NbdDurabilityWriter w = new NbdDurabilityWriter(ledger);
        int share = ledger.blocks() / connections;
        for (int i = 0; i < connections; i++) {
            w.conns.add(w.new Conn(i, NbdClient.open(address, export), i * share, share, queueDepth, seed + i));
        }
        for (Conn c : w.conns) c.start();
        return w;
    }

    /** Sends nothing more, waits for the replies of what is in flight, then disconnects. */
    public void stop() {
        stopping = true;
    }

    /**
     * Waits for every sender and reader to end (they end when the server dies or after
     * {@link #stop}); returns false if one is still running after {@code timeoutMs}.
     */
    public boolean awaitEnd(long timeoutMs) throws InterruptedException {
        long deadline = System.currentTimeMillis() + timeoutMs;
        boolean all = true;
        for (Conn c : conns) {
            for (Thread t : List.of(c.sender, c.reader)) {
                t.join(Math.max(1, deadline - System.currentTimeMillis()));
                all &= !t.isAlive();
            }
        }
        if (!all) conns.forEach(Conn::close);
        return all;
    }

    /** Errors other than losing the server (which is what a kill does). */
    public List<String> errors() {
        List<String> e = new ArrayList<>();
        for (Conn c : conns) {
            if (c.error != null) e.add("connection " + c.index + ": " + c.error);
        }
        return e;
    }

    /**
     * One connection: a sender, a reader, and the cookies in flight between them; the client's
     * documented split (simple replies: a WRITE or FLUSH reply is 16 bytes).
     */
    private final class Conn {
        final int index;
        final NbdClient client;
        final int firstBlock;
        final int blocks;
        final Semaphore window;
        final int queueDepth;
        final SplittableRandom rnd;
        final Map<Long, Op> inFlight = new ConcurrentHashMap<>();
        final Thread sender;
        final Thread reader;
        volatile boolean readerDone;
        volatile String error;

        Conn(int index, NbdClient client, int firstBlock, int blocks, int queueDepth, long seed) {
            this.index = index;
            this.client = client;
            this.firstBlock = firstBlock;
            this.blocks = blocks;
            this.queueDepth = queueDepth;
            this.window = new Semaphore(queueDepth);
            this.rnd = new SplittableRandom(seed);
            this.sender = new Thread(this::send, "nbd-durability-send-" + index);
            this.reader = new Thread(this::receive, "nbd-durability-recv-" + index);
            sender.setDaemon(true);
            reader.setDaemon(true);
        }

        void start() {
            reader.start();
            sender.start();
        }

        void close() {
            try {
                client.abort(); // the sender or reader may be blocked in it
            } catch (IOException ignored) {
                // closing a socket whose peer is dead
            }
        }

        private void send() {
            long cookie = 0;
            int sinceFlush = 0;
            try {
                while (!stopping && !readerDone) {
                    if (!window.tryAcquire(50, TimeUnit.MILLISECONDS)) continue;
                    Op op;
                    if (sinceFlush >= FLUSH_EVERY) {
                        op = new Op(true, 0, null, false, ledger.flushSnapshot());
                        sinceFlush = 0;
                    } else {
                        op = nextWrite();
                        if (op == null) {
                            window.release();
                            Thread.onSpinWait();
                            continue;
                        }
                        sinceFlush++;
                    }
                    long c = ++cookie;
                    inFlight.put(c, op); // before sending: the reply may come back at once
                    write(c, op);
                    if (window.availablePermits() == 0 || rnd.nextInt(4) == 0) client.flushOutput();
                }
                client.flushOutput();
                // stop(): let every reply come back, then hang up politely
                while (!readerDone && !window.tryAcquire(queueDepth, 50, TimeUnit.MILLISECONDS)) {
                    // waiting for replies
                }
                if (!readerDone) {
                    client.writeRequest(0, NbdCmd.NBD_CMD_DISC, ++cookie, 0, 0, null);
                    client.flushOutput();
                }
            } catch (IOException e) {
                // the server died: the reader sees it too
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            } finally {
                if (stopping) close();
            }
        }

        /** A write of 1, 8 or 32 blocks with none in flight, or null if the random pick collides. */
        private Op nextWrite() {
            int roll = rnd.nextInt(100);
            int count = roll < 80 ? 1 : roll < 95 ? 8 : 32;
            int first = firstBlock + rnd.nextInt(blocks - count + 1);
            boolean fua = rnd.nextInt(3) == 0;
            long[] versions = ledger.reserve(first, count, fua);
            return versions == null ? null : new Op(false, first, versions, fua, 0);
        }

        private void write(long cookie, Op op) throws IOException {
            if (op.flush()) {
                client.writeRequest(0, NbdCmd.NBD_CMD_FLUSH, cookie, 0, 0, null);
                return;
            }
            int len = op.versions().length * VersionedBlock.SIZE;
            ByteBuffer payload = ByteBuffer.allocate(len);
            for (int i = 0; i < op.versions().length; i++) VersionedBlock.encode(op.first() + i, op.versions()[i], payload);
            client.writeRequest(op.fua() ? NbdCmdFlags.NBD_CMD_FLAG_FUA : 0, NbdCmd.NBD_CMD_WRITE, cookie,
                    (long) op.first() * VersionedBlock.SIZE, len, payload.array());
        }

        private void receive() {
            try {
                while (true) {
                    NbdClient.Reply reply = client.readReply(0);
                    int err = reply.error();
                    long cookie = reply.cookie();
                    Op op = inFlight.remove(cookie);
                    if (op == null) {
                        error = "reply for unknown cookie " + cookie;
                        return;
                    }
                    if (op.flush()) {
                        if (err == 0) {
                            ledger.flushReplied(index, op.snapshot());
                        } else {
                            ledger.problem("FLUSH failed with NBD error " + err);
                        }
                    } else if (err == 0) {
                        ledger.writeReplied(index, op.first(), op.versions(), op.fua());
                    } else {
                        ledger.writeFailed(op.first(), op.versions(), err);
                    }
                    window.release();
                }
            } catch (NbdClient.ProtocolException e) {
                error = e.getMessage(); // e.g. a bad reply magic: not what a kill does
            } catch (IOException e) {
                // EOF or reset: the server is gone (killed), or stop() hung up
            } finally {
                readerDone = true;
            }
        }
    }
}
