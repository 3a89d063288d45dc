package dev.vmm.core.block;

import dev.vmm.iothread.IOThread;
import java.util.ArrayDeque;

/**
 * Completions that a forwarding driver gives itself, without I/O ({@code discard=ignore}):
 * delivered from a later task on the home thread, as the {@link IoCompletion} contract requires
 * (never inside the submitting call: virtio-blk marks a request submitted only after the call
 * returns), and counted in flight until then, so that a move's drain waits for them and none is
 * delivered on a thread that is no longer the home.
 *
 * <p>Thread contract: the node's home IOThread, as the driver that owns it.
 */
final class LaterCompletions {
    private IOThread home;
    private int pending;
    private final ArrayDeque<Runnable> idleWaiters = new ArrayDeque<>();

    /** The driver's {@code attach}: only while none is pending. */
    void attach(IOThread newHome) {
        if (pending != 0) throw new IllegalStateException("attached to " + newHome.id() + " with " + pending + " completion(s) pending");
        home = newHome;
    }

    int pending() { return pending; }

    /** Accepts a request answered with {@code errno} without I/O; {@code below} is the driver underneath. */
    void complete(IoCompletion done, int errno, BlockDriver below) throws BlockException {
        IOThread h = home;
        if (h == null) throw new BlockException(dev.vmm.core.linux.Errno.EIO, "not attached to an IOThread");
        pending++;
        h.loop().execute(() -> {
            pending--;
            try {
                done.ioDone(errno);
            } finally {
                if (pending == 0) {
                    while (!idleWaiters.isEmpty()) below.whenIdle(idleWaiters.poll());
                }
            }
        });
    }

    /** The driver's {@code whenIdle}: once none is pending here and {@code below} is idle too. */
    void whenIdle(Runnable idle, BlockDriver below) {
        if (pending == 0) below.whenIdle(idle);
        else idleWaiters.add(idle);
    }
}
