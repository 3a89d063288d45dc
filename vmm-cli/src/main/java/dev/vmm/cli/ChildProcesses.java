package dev.vmm.cli;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * The child processes this JVM started and must not outlive it (the demo's QEMU), so the path
 * that ends the process without running finally blocks or shutdown hooks ({@link Signals}'s
 * second signal, {@code Runtime.halt}) can still kill them: QEMU gets a terminal's SIGINT only
 * when it came from the terminal's process group, not from {@code kill}.
 *
 * <p>Thread contract: any thread; {@link #destroyAll} typically runs on the JVM's signal thread.
 */
public final class ChildProcesses {
    private static final Set<Process> CHILDREN = ConcurrentHashMap.newKeySet();

    private ChildProcesses() { }

    /** Tracks {@code p} until it exits. */
    public static Process register(Process p) {
        CHILDREN.add(p);
        p.onExit().thenRun(() -> CHILDREN.remove(p));
        return p;
    }

    /** SIGKILLs every child still running and waits up to {@code waitMillis} in all for them to be gone. */
    public static void destroyAll(long waitMillis) {
        for (Process p : CHILDREN) p.destroyForcibly();
        long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(waitMillis);
        for (Process p : CHILDREN) {
            try {
                p.waitFor(Math.max(0, end - System.nanoTime()), TimeUnit.NANOSECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
        }
    }
}
