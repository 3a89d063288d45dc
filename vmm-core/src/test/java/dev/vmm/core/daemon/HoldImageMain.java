package dev.vmm.core.daemon;

import dev.vmm.core.options.KeyValueParser;

/**
 * A daemon in a child JVM for tests that {@code kill -9} it: opens the {@code --blockdev} given
 * as the argument, prints {@code ready}, then waits until killed. Main thread only.
 */
public final class HoldImageMain {
    private HoldImageMain() {}

    public static void main(String[] args) throws Exception {
        Daemon d = Daemon.start();
        d.blockdevAdd(KeyValueParser.parse("--blockdev", args[0], null));
        System.out.println("ready");
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
