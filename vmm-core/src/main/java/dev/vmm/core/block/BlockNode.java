package dev.vmm.core.block;

import dev.vmm.iothread.IOThread;
import java.util.Objects;

/**
 * A named block node ({@code --blockdev node-name=...}): a driver plus its home IOThread and
 * statistics. Every request on the node runs on {@link #home()}.
 *
 * <p>Thread contract: {@link #home()}, {@link #name()}, {@link #driver()} and {@link #stats()}
 * may be read from any thread; {@link #setHome} is called by the main loop only, while the
 * node's users are quiesced (the handoff protocol). Driver calls MUST happen on the home thread.
 */
public final class BlockNode {
    private final String name;
    private final BlockDriver driver;
    private final BlockStats stats = new BlockStats();
    private volatile IOThread home;

    public BlockNode(String name, BlockDriver driver, IOThread home) {
        this.name = Objects.requireNonNull(name, "name");
        this.driver = Objects.requireNonNull(driver, "driver");
        this.home = Objects.requireNonNull(home, "home");
    }

    public String name() { return name; }

    public BlockDriver driver() { return driver; }

    public IOThread home() { return home; }

    public BlockStats stats() { return stats; }

    public long size() { return driver.size(); }

    public boolean readOnly() { return driver.readOnly(); }

    /** Moves the node's home. Main loop only, with every user of the node quiesced. */
    public void setHome(IOThread newHome) { this.home = Objects.requireNonNull(newHome); }

    @Override
    public String toString() { return "BlockNode[" + name + " on " + home.id() + "]"; }
}
