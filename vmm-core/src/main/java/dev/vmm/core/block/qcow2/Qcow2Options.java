package dev.vmm.core.block.qcow2;

/**
 * The {@code --blockdev driver=qcow2,...} keys that change how the driver works (QEMU's names).
 *
 * <p>Thread contract: immutable.
 *
 * @param readOnly          open the image read-only (no header or metadata writes, not even
 *                          clearing a dirty bit)
 * @param l2CacheSize       {@code l2-cache-size} in bytes, or -1 for the default (as QEMU: enough to
 *                          map the whole image, at most 32 MiB)
 * @param refcountCacheSize {@code refcount-cache-size} in bytes, or -1 for the default
 * @param lazyRefcounts     {@code lazy-refcounts}: accepted and ignored; the driver never uses lazy
 *                          refcounts (its metadata writes are ordered instead, see docs/qcow2.md)
 * @param passDiscardRequest {@code pass-discard-request}: a guest discard also punches the freed
 *                          clusters in the file
 */
public record Qcow2Options(boolean readOnly, long l2CacheSize, long refcountCacheSize, Boolean lazyRefcounts,
                           boolean passDiscardRequest) {
    public static Qcow2Options defaults(boolean readOnly) {
        return new Qcow2Options(readOnly, -1, -1, null, true);
    }
}
