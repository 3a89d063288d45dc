package dev.vmm.virtio.queue;

/**
 * The device side of one virtqueue, whatever its layout ({@link SplitVirtqueue}; a packed
 * queue implements the same calls). The request engine pops chains, does the I/O, pushes
 * completions, publishes them in batches and asks whether the driver wants an interrupt.
 *
 * <p>Typical loop on the IOThread, after a kick:
 * <pre>{@code
 * do {
 *     q.disableNotification();
 *     while (q.pop(chain)) { ...; q.pushUsed(chain.head(), written); }
 * } while (q.enableNotification());   // re-check after re-enabling: no lost kick
 * q.publishUsed();
 * if (q.needsNotify()) signal(callFd);
 * }</pre>
 *
 * <p>Thread contract: all methods MUST be called on the device's IOThread (or with the device
 * stopped, by the control plane for {@link #setLastAvailIdx}/{@link #lastAvailIdx}). No method
 * allocates on success.
 */
public interface Virtqueue {
    /** Queue size (number of descriptors / ring entries). */
    int size();

    /**
     * Takes the next available buffer into {@code out}. Returns false when none is available.
     * Every address in {@code out} was checked to lie in guest memory.
     *
     * @throws VirtqueueException {@link VirtqueueException.Kind#REQUEST} with the consumed head
     *         that must still be completed, or {@link VirtqueueException.Kind#BROKEN}
     */
    boolean pop(DescriptorChain out) throws VirtqueueException;

    /**
     * Adds a completion: buffer {@code head} (as popped) with {@code writtenLength} bytes written
     * by the device. Not visible to the driver until {@link #publishUsed()}.
     */
    void pushUsed(int head, int writtenLength);

    /** Makes all pushed completions visible to the driver (one release store). */
    void publishUsed();

    /**
     * After {@link #publishUsed()}: whether the driver wants a used-buffer notification for what
     * was published since the last call (EVENT_IDX's used_event, or NO_INTERRUPT).
     */
    boolean needsNotify();

    /**
     * Asks the driver to notify (kick) on new buffers; returns true if buffers became available
     * meanwhile, so the caller pops again instead of waiting for a kick that may never come.
     */
    boolean enableNotification();

    /** Asks the driver not to kick while the device is processing the queue anyway. */
    void disableNotification();

    /** Next avail index the device will read (vhost-user GET_VRING_BASE). */
    int lastAvailIdx();

    /** Sets the next avail index to read (vhost-user SET_VRING_BASE); 16-bit value. */
    void setLastAvailIdx(int idx);

    /** Next used index the device will write (= used->idx after {@link #publishUsed()}). */
    int lastUsedIdx();

    /** True once the queue threw {@link VirtqueueException.Kind#BROKEN}. */
    boolean isBroken();
}
