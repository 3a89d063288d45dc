package dev.vmm.cli;

import sun.misc.Signal;

/**
 * SIGTERM and SIGINT start an orderly shutdown instead of the JVM's abrupt exit, so in-flight
 * requests finish, data is flushed and the exit code is 0. A second signal exits at once.
 */
final class Signals {
    private Signals() { }

    static void onTermination(Runnable action) {
        Runnable once = new Runnable() {
            private boolean seen;

            @Override
            public synchronized void run() {
                if (seen) Runtime.getRuntime().halt(130);
                seen = true;
                action.run();
            }
        };
        Signal.handle(new Signal("TERM"), s -> once.run());
        Signal.handle(new Signal("INT"), s -> once.run());
    }
}
