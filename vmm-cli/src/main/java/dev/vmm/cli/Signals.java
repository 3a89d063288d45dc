package dev.vmm.cli;

import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import sun.misc.Signal;

/**
 * SIGTERM and SIGINT start an orderly shutdown instead of the JVM's abrupt exit, so in-flight
 * requests finish, data is flushed and the exit code is 0. A second signal exits at once
 * ({@code Runtime.halt}, no finally blocks, no shutdown hooks): before that it kills the
 * {@link ChildProcesses} and runs the {@link #onHalt} clean-ups (best effort), so no QEMU or
 * socket file is left behind.
 *
 * <p>Thread contract: {@link #onTermination} and {@link #onHalt} from any thread; the handlers
 * run on the JVM's signal thread.
 */
public final class Signals {
    private static final List<Runnable> HALT_CLEANUPS = new CopyOnWriteArrayList<>();

    private Signals() { }

    static void onTermination(Runnable action) {
        Runnable once = new Runnable() {
            private boolean seen;

            @Override
            public synchronized void run() {
                if (seen) halt();
                seen = true;
                action.run();
            }
        };
        Signal.handle(new Signal("TERM"), s -> once.run());
        Signal.handle(new Signal("INT"), s -> once.run());
    }

    /** Runs {@code cleanup} (quick, must not block) if a second signal halts the process. */
    public static void onHalt(Runnable cleanup) {
        HALT_CLEANUPS.add(cleanup);
    }

    private static void halt() {
        try {
            ChildProcesses.destroyAll(2000);
        } catch (Throwable ignored) {
            // exiting anyway
        }
        for (Runnable r : HALT_CLEANUPS) {
            try {
                r.run();
            } catch (Throwable ignored) {
                // best effort: exiting anyway
            }
        }
        Runtime.getRuntime().halt(130);
    }
}
