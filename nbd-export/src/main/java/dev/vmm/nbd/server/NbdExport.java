package dev.vmm.nbd.server;

import dev.vmm.core.bitmap.DirtyBitmap;
import dev.vmm.core.block.BlockNode;
import dev.vmm.nbd.protocol.NbdMetaContext;
import dev.vmm.nbd.protocol.NbdTransmissionFlags;
import io.netty.channel.Channel;
import java.util.List;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * One NBD export ({@code --export type=nbd,...}): a name clients ask for and the block node it
 * serves. Its clients are served on the node's home IOThread once their handshake is done.
 *
 * <p>Thread contract: immutable configuration, readable from any thread; the client set is
 * concurrent (added on the main loop at GO, removed on the IOThread at close).
 */
public final class NbdExport {
    /** Largest payload a client may send or ask for: bounds what one request can make us allocate. */
    public static final int MAX_PAYLOAD = 32 * 1024 * 1024;
    /** Preferred request size announced in NBD_INFO_BLOCK_SIZE. */
    public static final int PREFERRED_BLOCK_SIZE = 4096;

    private final String id;
    private final String name;
    private final String description;
    private final BlockNode node;
    private final boolean writable;
    /** QEMU's {@code allocation-depth=on}: the export offers {@code qemu:allocation-depth}. */
    private final boolean allocationDepth;
    /** The dirty bitmaps published as {@code qemu:dirty-bitmap:NAME}, in the order given; context i+FIRST_BITMAP_ID. */
    private final List<DirtyBitmap> bitmaps;
    private final Set<Channel> clients = ConcurrentHashMap.newKeySet();
    private final dev.vmm.core.stats.ExportStats stats = new dev.vmm.core.stats.ExportStats();

    public NbdExport(String id, String name, String description, BlockNode node, boolean writable) {
        this(id, name, description, node, writable, false);
    }

    public NbdExport(String id, String name, String description, BlockNode node, boolean writable, boolean allocationDepth) {
        this(id, name, description, node, writable, allocationDepth, List.of());
    }

    /**
     * An export publishing {@code bitmaps} (found and checked by {@link ExportBitmaps#resolve});
     * their bits are read on the node's home thread, which is theirs too (they belong to the node
     * or to a node below it, and a graph has one home).
     */
    public NbdExport(String id, String name, String description, BlockNode node, boolean writable, boolean allocationDepth,
            List<DirtyBitmap> bitmaps) {
        this.allocationDepth = allocationDepth;
        this.bitmaps = List.copyOf(bitmaps);
        this.id = Objects.requireNonNull(id, "id");
        this.name = Objects.requireNonNull(name, "name");
        this.description = description;
        this.node = Objects.requireNonNull(node, "node");
        if (writable && node.readOnly()) {
            throw new IllegalArgumentException("node '" + node.name() + "' is read-only, the export cannot be writable");
        }
        this.writable = writable;
    }

    public String id() { return id; }
    public String name() { return name; }
    /** Human-readable description, or null. */
    public String description() { return description; }
    public BlockNode node() { return node; }
    public boolean writable() { return writable; }
    /** Whether clients may select {@code qemu:allocation-depth}. */
    public boolean allocationDepth() { return allocationDepth; }
    /** The published dirty bitmaps, in the order of {@code bitmaps=[...]}. */
    public List<DirtyBitmap> bitmaps() { return bitmaps; }
    /** The context name of bitmap {@code i}: {@code qemu:dirty-bitmap:NAME}. */
    public String bitmapContext(int i) { return NbdMetaContext.QEMU_DIRTY_BITMAP + bitmaps.get(i).name(); }
    public Set<Channel> clients() { return clients; }
    /** Requests, bytes, errors and in-flight count of this export's clients. */
    public dev.vmm.core.stats.ExportStats stats() { return stats; }

    /**
     * Transmission flags for a client of this export. Only what works is advertised: write-side
     * commands are left out on read-only exports, DF only with structured replies.
     * CAN_MULTI_CONN holds because every connection to a node shares one file descriptor on one
     * thread: a FLUSH on any connection is an fdatasync of the same file.
     */
    public int transmissionFlags(boolean structuredReplies) {
        int f = NbdTransmissionFlags.NBD_FLAG_HAS_FLAGS | NbdTransmissionFlags.NBD_FLAG_SEND_FLUSH
                | NbdTransmissionFlags.NBD_FLAG_CAN_MULTI_CONN | NbdTransmissionFlags.NBD_FLAG_SEND_CACHE;
        if (writable) {
            f |= NbdTransmissionFlags.NBD_FLAG_SEND_FUA | NbdTransmissionFlags.NBD_FLAG_SEND_TRIM
                    | NbdTransmissionFlags.NBD_FLAG_SEND_WRITE_ZEROES | NbdTransmissionFlags.NBD_FLAG_SEND_FAST_ZERO;
        } else {
            f |= NbdTransmissionFlags.NBD_FLAG_READ_ONLY;
        }
        if (structuredReplies) f |= NbdTransmissionFlags.NBD_FLAG_SEND_DF;
        return f;
    }

    @Override
    public String toString() { return "NbdExport[" + id + " name=" + name + " node=" + node.name() + "]"; }
}
