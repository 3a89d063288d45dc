package dev.vmm.nbd.protocol;

/**
 * The {@code base:} metadata namespace and the {@code base:allocation} context flags.
 *
 * <p>Spec: <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#the-base-metadata-namespace">The base: metadata namespace</a>,
 * <a href="https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md#baseallocation-metadata-context">base:allocation metadata context</a>.
 * Clients MUST ignore unknown flags; servers SHOULD send the remaining bits as zero.
 */
public final class NbdMetaContext {
    private NbdMetaContext() {}

    /** The "base:" namespace prefix; as a query it is a wildcard for LIST and ignored by SET. */
    public static final String BASE_NAMESPACE = "base:";
    /** The one context the spec defines: basic allocation status. */
    public static final String BASE_ALLOCATION = "base:allocation";

    /**
     * QEMU's namespace ({@code docs/interop/nbd.txt} in QEMU); as a LIST query it lists QEMU's
     * contexts that the export offers.
     */
    public static final String QEMU_NAMESPACE = "qemu:";
    /**
     * QEMU's allocation depth context: one 32-bit value per extent, 0 when no layer of the chain
     * allocates it, 1 when the exported node does, n + 1 when its n-th backing node does.
     */
    public static final String QEMU_ALLOCATION_DEPTH = "qemu:allocation-depth";

    /**
     * Prefix of QEMU's dirty-bitmap contexts, {@code qemu:dirty-bitmap:NAME}, one per bitmap an
     * export publishes ({@code bitmaps=[...]}); as a LIST query it lists them all.
     */
    public static final String QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:";

    /** bit 0: extent is a hole (unallocated); clear = allocated or unknown. */
    public static final int NBD_STATE_HOLE = 1 << 0;
    /** bit 1: extent reads as zeroes; clear = contents unknown. */
    public static final int NBD_STATE_ZERO = 1 << 1;

    /** qemu:dirty-bitmap: bit 0, the extent is dirty in the bitmap (QEMU's NBD_STATE_DIRTY); clear = clean. */
    public static final int NBD_STATE_DIRTY = 1 << 0;

    private static final String[] NAMES = {"NBD_STATE_HOLE", "NBD_STATE_ZERO"};

    /** Log form of base:allocation status flags, bits joined with '|'. */
    public static String name(int flags) {
        return Names.flags("NBD_STATE", flags, NAMES);
    }
}
