package dev.vmm.vhostuser.inflight;

/**
 * What the request engine tells a queue's in-flight record (vhost-user.rst, "Inflight I/O
 * tracking"), whatever the ring layout: {@link InflightQueue} (split), {@link InflightPackedQueue}
 * (packed). The calls follow the engine's loop: {@code popped} per buffer taken, {@code completing}
 * per completion pushed, then around the one publish of the batch {@code beforePublish} and
 * {@code published}.
 *
 * <p>Thread contract: the queue's IOThread only.
 */
public interface InflightTracker {
    /** A buffer with this head (split) or buffer id (packed) was taken from the ring. */
    void popped(int head);

    /** The buffer is about to be pushed as used (before {@code pushUsed}). */
    void completing(int head);

    /** Before the batch is published to the driver: the record of the batch is stored first. */
    void beforePublish();

    /**
     * After the batch was published; {@code lastUsedIdx} is the queue's
     * {@link dev.vmm.virtio.queue.Virtqueue#lastUsedIdx()} now.
     */
    void published(int lastUsedIdx);
}
