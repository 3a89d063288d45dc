package dev.vmm.core.testing;

import dev.vmm.core.block.BlockDriver;
import dev.vmm.core.block.BlockException;
import dev.vmm.core.block.ForwardingBlockDriver;
import dev.vmm.core.block.IoCompletion;
import java.util.ArrayList;
import java.util.List;

/**
 * A test driver that holds asynchronous completions: each request goes to the real driver at
 * once, but while {@link #hold} is on its completion is kept instead of delivered, until the test
 * releases it (in any order it likes). The requests count as in flight until delivered, so a
 * drain ({@code BlockNode.drain}) waits for them too. It also records how many requests were in
 * flight at most, for bound checks.
 *
 * <p>Thread contract: like every driver, the {@link BlockDriver} methods run on the node's home
 * IOThread; the test calls {@link #held()}, {@link #release} and {@link #hold} there too (submit a
 * task to the home), except {@link #maxInFlight()} and {@link #heldCount()}, which are volatile
 * reads for polling from the test thread.
 */
public final class HoldingDriver extends ForwardingBlockDriver {
    /** A completion the real driver delivered and the test holds. */
    public record Held(long offset, String op, IoCompletion done, int errno) {}

    private boolean hold;
    private final List<Held> held = new ArrayList<>();
    private final List<Runnable> idleWaiters = new ArrayList<>();
    /** Accepted and not yet delivered to the caller. */
    private int outstanding;
    private volatile int maxInFlight;
    private volatile int heldCount;

    public HoldingDriver(BlockDriver d) {
        super(d);
    }

    /** Holds completions from now on ({@code true}), or delivers later ones at once. */
    public void hold(boolean on) { this.hold = on; }

    /** The completions held, in the order the real driver delivered them. */
    public List<Held> held() { return List.copyOf(held); }

    public int heldCount() { return heldCount; }

    /** Most requests accepted and not yet delivered at any one time. */
    public int maxInFlight() { return maxInFlight; }

    /** Delivers one held completion. */
    public void release(Held h) {
        if (!held.remove(h)) throw new IllegalArgumentException("not held: " + h);
        heldCount = held.size();
        deliver(h.done(), h.errno());
    }

    /** Delivers every held completion, the last held first. */
    public void releaseAllReversed() {
        List<Held> all = held();
        for (int i = all.size() - 1; i >= 0; i--) release(all.get(i));
    }

    private IoCompletion wrap(long offset, String op, IoCompletion done) {
        outstanding++;
        if (outstanding > maxInFlight) maxInFlight = outstanding;
        return errno -> {
            if (hold) {
                held.add(new Held(offset, op, done, errno));
                heldCount = held.size();
            } else {
                deliver(done, errno);
            }
        };
    }

    private void deliver(IoCompletion done, int errno) {
        outstanding--;
        try {
            done.ioDone(errno);
        } finally {
            if (inFlight() == 0 && !idleWaiters.isEmpty()) {
                List<Runnable> w = List.copyOf(idleWaiters);
                idleWaiters.clear();
                w.forEach(Runnable::run);
            }
        }
    }

    /** A call the real driver refused was never accepted. */
    private void refused() {
        outstanding--;
    }

    @Override
    public void read(long o, long a, int l, IoCompletion c) throws BlockException {
        IoCompletion w = wrap(o, "read", c);
        try { d.read(o, a, l, w); } catch (BlockException e) { refused(); throw e; }
    }

    @Override
    public void write(long o, long a, int l, boolean fua, IoCompletion c) throws BlockException {
        IoCompletion w = wrap(o, "write", c);
        try { d.write(o, a, l, fua, w); } catch (BlockException e) { refused(); throw e; }
    }

    @Override
    public void readv(long o, long iov, int n, long t, IoCompletion c) throws BlockException {
        IoCompletion w = wrap(o, "readv", c);
        try { d.readv(o, iov, n, t, w); } catch (BlockException e) { refused(); throw e; }
    }

    @Override
    public void writev(long o, long iov, int n, long t, boolean fua, IoCompletion c) throws BlockException {
        IoCompletion w = wrap(o, "writev", c);
        try { d.writev(o, iov, n, t, fua, w); } catch (BlockException e) { refused(); throw e; }
    }

    @Override
    public void flush(IoCompletion c) throws BlockException {
        IoCompletion w = wrap(0, "flush", c);
        try { d.flush(w); } catch (BlockException e) { refused(); throw e; }
    }

    @Override
    public void discard(long o, long l, IoCompletion c) throws BlockException {
        IoCompletion w = wrap(o, "discard", c);
        try { d.discard(o, l, w); } catch (BlockException e) { refused(); throw e; }
    }

    @Override
    public void writeZeroes(long o, long l, boolean u, boolean f, boolean fua, IoCompletion c) throws BlockException {
        IoCompletion w = wrap(o, "writeZeroes", c);
        try { d.writeZeroes(o, l, u, f, fua, w); } catch (BlockException e) { refused(); throw e; }
    }

    @Override
    public int inFlight() { return outstanding; }

    @Override
    public void whenIdle(Runnable idle) {
        if (inFlight() == 0) idle.run(); else idleWaiters.add(idle);
    }
}
