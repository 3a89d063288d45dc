package dev.vmm.virtio.blk;

import dev.vmm.core.block.IoCompletion;
import dev.vmm.virtio.queue.DescriptorChain;
import dev.vmm.virtio.queue.IovecArray;

/**
 * One virtio-blk request from pop to used entry: its descriptor chain, the iovecs handed to the
 * block driver, what {@link VirtioBlkRequests#parse} read from the guest, and where its status
 * byte goes. It is its own {@link IoCompletion}, so completing allocates nothing.
 *
 * <p>Pooled per queue by {@link QueueWorker} (at most {@link QueueWorker#MAX_IN_FLIGHT}, never
 * more than the queue size): while a request is in flight the kernel (io_uring) or an
 * {@code aio=threads} worker reads {@link #iov} and the guest memory it points to, so neither
 * is reused or freed before {@link #ioDone} ran.
 *
 * <p>Thread contract: the queue's home IOThread only.
 */
final class VirtioBlkRequest implements IoCompletion {
    /** What to count when the request succeeds ({@code BlockStats}/{@code ExportStats}). */
    static final int OP_NONE = 0, OP_READ = 1, OP_WRITE = 2, OP_FLUSH = 3, OP_DISCARD = 4, OP_ZEROES = 5, OP_OTHER = 6;

    private final QueueWorker worker;
    /** Filled by the virtqueue's pop: every segment was bounds-checked against guest memory. */
    final DescriptorChain chain = new DescriptorChain(VirtioBlkRequests.MAX_SEGMENTS + 2);
    /** The data part as iovecs into guest memory; valid until completion. */
    final IovecArray iov = new IovecArray(VirtioBlkRequests.MAX_SEGMENTS);

    // ---- set by parse ----
    /** Head (split) or buffer id (packed) to push as used. */
    int head;
    /** Request type as the guest wrote it (VIRTIO_BLK_T_*), for logs. */
    int type;
    long sector;
    /** Byte offset and length on the disk of the I/O to submit (data, or a discard/zeroes range). */
    long offset;
    long length;
    /** Iovec count of the data part. */
    int iovcnt;
    /** WRITE_ZEROES with VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP. */
    boolean unmap;
    /** The status when no I/O is needed, or VIRTIO_BLK_S_OK before the I/O. */
    int status;
    /** Bytes the device writes into the chain's writable part before the status byte (IN, GET_ID). */
    long dataWritten;
    /** Host address of the status byte (the chain's last byte, device-writable), or 0: none. */
    long statusAddr;
    /** OP_*: which counters a success bumps. */
    int op;

    // ---- set by the worker ----
    /** System.nanoTime() at pop: latency is pop to completion. */
    long startNs;
    /** Accepted by the driver and not completed: guards against a second completion. */
    boolean submitted;
    /** Next free request in the worker's pool. */
    VirtioBlkRequest nextFree;

    VirtioBlkRequest(QueueWorker worker) {
        this.worker = worker;
    }

    /** The block driver finished this request (home thread, later than the submitting call). */
    @Override
    public void ioDone(int errno) {
        worker.ioDone(this, errno);
    }

    /** Frees the native iovec array; only once the request is no longer in flight. */
    void free() {
        iov.close();
    }
}
