package dev.vmm.vhostuser.frontend;

import dev.vmm.core.linux.Errno;

import dev.vmm.core.stats.LatencyHistogram;
import static dev.vmm.virtio.blk.VirtioBlk.*;

import com.sun.jna.LastErrorException;
import com.sun.jna.Pointer;
import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcMemory;
import dev.vmm.core.linux.LibcPoll;
import dev.vmm.core.linux.LibcSocket;
import dev.vmm.vhostuser.message.MemoryRegion;
import dev.vmm.vhostuser.message.VhostUserProtocolFeature;
import dev.vmm.vhostuser.message.VringAddr;
import dev.vmm.core.memory.RawMemory;
import dev.vmm.virtio.queue.VirtioRing;
import dev.vmm.virtio.queue.driver.SplitQueueDriver;
import java.io.IOException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;

/**
 * A virtio-blk driver on the front-end side of a vhost-user socket: the guest kernel's
 * {@code virtio_blk} and QEMU's {@code vhost-user-blk-pci} in one Java object, for fast device
 * tests without QEMU and for {@code ./vmm bench}. Works against any vhost-user-blk back-end
 * (ours, qemu-storage-daemon).
 *
 * <p>Guest RAM is one memfd of {@link Settings#memory} bytes at guest-physical
 * {@link #GUEST_PHYS_BASE}, mapped shared here (the mapping's address is the "front-end user
 * address" of SET_MEM_TABLE and SET_VRING_ADDR) and carved into one slice per queue: rings at the
 * slice's start, then per-request buffers (header, data, status) preallocated per slot.
 *
 * <p>Start-up follows QEMU's vhost-user-blk (hw/block/vhost-user-blk.c, hw/virtio/vhost.c):
 * GET_FEATURES, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES (MQ|REPLY_ACK|CONFIG as offered),
 * GET_QUEUE_NUM, SET_OWNER, GET_CONFIG, then at driver start SET_FEATURES, SET_MEM_TABLE and per
 * queue SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_ERR, SET_VRING_KICK,
 * SET_VRING_CALL, and last SET_VRING_ENABLE on each queue. {@link #connect} does all of it; the
 * step methods ({@link #open}, {@link #negotiate}, {@link #setMemTable}, {@link #startQueue},
 * {@link #enableQueue}) let tests stop anywhere or do things in the wrong order on purpose, and
 * {@link #connection()} / {@link Queue#driver()} hand out the raw message and ring writers for
 * malformed input.
 *
 * <p>Thread contract: the control methods on one thread at a time; each {@link Queue} on one
 * thread (different queues may run on different threads concurrently).
 */
public final class VirtioBlkFrontend implements AutoCloseable {
    /** Guest-physical address of guest RAM's first byte (not 0, so gpa/uva/offset mix-ups show). */
    public static final long GUEST_PHYS_BASE = 1L << 32;
    /** Bytes of config space we read: struct virtio_blk_config up to write_zeroes_may_unmap and padding. */
    public static final int CONFIG_READ_SIZE = 60;
    /** Status byte value we preset; still there after completion means the device did not write it. */
    public static final int STATUS_NOT_WRITTEN = 0xFF;

    /** Virtio features we ack when offered (what Linux's virtio_blk and QEMU's vhost-user-blk use). */
    public static final long WANTED_FEATURES = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_BLK_F_SIZE_MAX) | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_TOPOLOGY) | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_CONFIG_WCE) | bit(VIRTIO_BLK_F_MQ) | bit(VIRTIO_BLK_F_DISCARD)
            | bit(VIRTIO_BLK_F_WRITE_ZEROES) | bit(VIRTIO_BLK_F_RO)
            | bit(VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES);
    /** Protocol features we ack when offered (QEMU acks more; these are the ones a blk device needs). */
    public static final long WANTED_PROTOCOL_FEATURES = VhostUserProtocolFeature.mask(VhostUserProtocolFeature.MQ)
            | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.REPLY_ACK)
            | VhostUserProtocolFeature.mask(VhostUserProtocolFeature.CONFIG);

    static long bit(int n) { return 1L << n; }

    /** What the caller chooses; fluent setters. */
    public static final class Settings {
        long memory = 256L << 20;
        int queues = 1;
        int queueSize = 128;
        int depth = 32;
        int maxIoBytes = 1 << 20;
        long timeoutMs = 10_000;
        boolean indirect = true;
        boolean busyPoll;
        long dropFeatures;
        long dropProtocolFeatures;

        /** Bytes of guest RAM (default 256 MiB). */
        public Settings memory(long bytes) { this.memory = bytes; return this; }
        /** Queues to set up (default 1); at most the back-end's GET_QUEUE_NUM. */
        public Settings queues(int n) { this.queues = n; return this; }
        /** Ring size, a power of two (default 128, QEMU's vhost-user-blk default). */
        public Settings queueSize(int n) { this.queueSize = n; return this; }
        /** Request slots per queue: the most requests in flight on one queue (default 32). */
        public Settings depth(int n) { this.depth = n; return this; }
        /** Data buffer of each slot (default 1 MiB). */
        public Settings maxIoBytes(int n) { this.maxIoBytes = n; return this; }
        /** Bound of every control message and of waits for a completion (default 10 s). */
        public Settings timeoutMs(long ms) { this.timeoutMs = ms; return this; }
        /** Use one indirect table per request when INDIRECT_DESC is negotiated, as Linux does (default on). */
        public Settings indirect(boolean on) { this.indirect = on; return this; }
        /** Spin on the used ring instead of sleeping on the call eventfd; interrupts are suppressed. */
        public Settings busyPoll(boolean on) { this.busyPoll = on; return this; }
        /** Features not to ack even when offered (e.g. {@code 1L << VIRTIO_RING_F_EVENT_IDX}). */
        public Settings dropFeatures(long mask) { this.dropFeatures = mask; return this; }
        /** Protocol features not to ack (e.g. REPLY_ACK's mask). */
        public Settings dropProtocolFeatures(long mask) { this.dropProtocolFeatures = mask; return this; }
    }

    private final String socketPath;
    private final Settings settings;
    private final VhostUserFrontendConnection conn;
    private final int memfd;
    private final long memBase;
    private final long memSize;
    private final long sliceSize;
    private final Queue[] queues;
    private boolean closed;

    // ---- what negotiation found ----
    private long offeredFeatures;
    private long ackedFeatures;
    private long offeredProtocolFeatures;
    private long ackedProtocolFeatures;
    private long backendQueues = 1;
    private byte[] config = new byte[CONFIG_READ_SIZE];

    private VirtioBlkFrontend(String socketPath, Settings s, VhostUserFrontendConnection conn, int memfd, long memBase) {
        this.socketPath = socketPath;
        this.settings = s;
        this.conn = conn;
        this.memfd = memfd;
        this.memBase = memBase;
        this.memSize = s.memory;
        this.sliceSize = (s.memory / s.queues) & -4096L;
        this.queues = new Queue[s.queues];
    }

    /** Connects, negotiates, shares memory and starts and enables every queue: ready for I/O. */
    public static VirtioBlkFrontend connect(String socketPath, Settings s) throws IOException {
        VirtioBlkFrontend fe = open(socketPath, s);
        try {
            fe.negotiate();
            fe.setMemTable();
            for (int i = 0; i < s.queues; i++) fe.startQueue(i);
            for (int i = 0; i < s.queues; i++) fe.enableQueue(i, true);
            return fe;
        } catch (IOException | RuntimeException e) {
            fe.abort();
            throw e;
        }
    }

    /** Connects and creates guest memory; sends nothing. */
    public static VirtioBlkFrontend open(String socketPath, Settings s) throws IOException {
        if (s.queues < 1 || s.memory % 4096 != 0 || s.memory <= 0) throw new IllegalArgumentException("queues " + s.queues + ", memory " + s.memory);
        if (!java.nio.file.Files.exists(java.nio.file.Path.of(socketPath))) {
            throw new IOException("no vhost-user socket at " + socketPath);
        }
        int fd = LibcMemory.memfdCreate("vmm-frontend-ram");
        long base;
        try {
            LibcMemory.truncate(fd, s.memory);
            base = LibcMemory.mapShared(fd, s.memory, 0, true);
        } catch (IOException e) {
            LibC.close(fd);
            throw e;
        }
        VhostUserFrontendConnection c;
        try {
            c = VhostUserFrontendConnection.connect(socketPath, s.timeoutMs);
        } catch (IOException e) {
            unmapQuietly(base, s.memory);
            LibC.close(fd);
            throw e;
        }
        return new VirtioBlkFrontend(socketPath, s, c, fd, base);
    }

    private static void unmapQuietly(long base, long size) {
        try {
            LibcMemory.unmap(base, size);
        } catch (IOException e) {
            // nothing left to do; the process exits or the test fails elsewhere
        }
    }

    // ---------------------------------------------------------------- control plane steps

    /**
     * GET_FEATURES .. GET_CONFIG and SET_FEATURES. Fails when the back-end lacks
     * VHOST_USER_F_PROTOCOL_FEATURES or CONFIG (QEMU's device would not realize either) or offers
     * fewer queues than asked.
     */
    public void negotiate() throws IOException {
        offeredFeatures = conn.getFeatures();
        if ((offeredFeatures & bit(VhostUserProtocolFeature.VHOST_USER_F_PROTOCOL_FEATURES)) == 0) {
            throw new IOException("back-end does not offer VHOST_USER_F_PROTOCOL_FEATURES");
        }
        offeredProtocolFeatures = conn.getProtocolFeatures();
        ackedProtocolFeatures = offeredProtocolFeatures & WANTED_PROTOCOL_FEATURES & ~settings.dropProtocolFeatures;
        if ((ackedProtocolFeatures & VhostUserProtocolFeature.mask(VhostUserProtocolFeature.CONFIG)) == 0) {
            throw new IOException("back-end does not offer the CONFIG protocol feature");
        }
        conn.setProtocolFeatures(ackedProtocolFeatures);
        if ((ackedProtocolFeatures & VhostUserProtocolFeature.mask(VhostUserProtocolFeature.MQ)) != 0) {
            backendQueues = conn.getQueueNum();
        }
        if (settings.queues > backendQueues) {
            throw new IOException("asked for " + settings.queues + " queues, the back-end has " + backendQueues);
        }
        conn.setOwner();
        config = conn.getConfig(0, CONFIG_READ_SIZE, 0);
        ackedFeatures = offeredFeatures & WANTED_FEATURES & ~settings.dropFeatures;
        if ((ackedFeatures & bit(VIRTIO_F_VERSION_1)) == 0) throw new IOException("back-end does not offer VIRTIO_F_VERSION_1");
        conn.setFeatures(ackedFeatures);
    }

    /** SET_MEM_TABLE: all of guest RAM as one region. */
    public void setMemTable() throws IOException {
        conn.setMemTable(List.of(new MemoryRegion(GUEST_PHYS_BASE, memSize, memBase, 0)), new int[] {memfd});
    }

    /** The queue's driver state (rings, slots, eventfds), created on first use with the acked features. */
    public Queue queue(int index) throws IOException {
        if (index < 0 || index >= queues.length) throw new IndexOutOfBoundsException("queue " + index + " of " + queues.length);
        if (queues[index] == null) queues[index] = new Queue(this, index);
        return queues[index];
    }

    /** SET_VRING_NUM, SET_VRING_BASE (0), SET_VRING_ADDR, SET_VRING_ERR, SET_VRING_KICK, SET_VRING_CALL. */
    public void startQueue(int index) throws IOException {
        Queue q = queue(index);
        SplitQueueDriver d = q.driver;
        conn.setVringNum(index, d.queueSize());
        conn.setVringBase(index, d.availIdx());
        conn.setVringAddr(new VringAddr(index, 0, d.descUserAddr(), d.usedUserAddr(), d.availUserAddr(), 0));
        conn.setVringErr(index, q.errFd);
        conn.setVringKick(index, q.kickFd);
        conn.setVringCall(index, q.callFd);
    }

    /** SET_VRING_ENABLE. */
    public void enableQueue(int index, boolean enable) throws IOException {
        conn.setVringEnable(index, enable);
    }

    /** GET_VRING_BASE: stops the ring in the back-end; returns its next available index. */
    public int stopQueue(int index) throws IOException {
        return conn.getVringBase(index);
    }

    // ---------------------------------------------------------------- what was negotiated

    public String socketPath() { return socketPath; }
    public Settings settings() { return settings; }
    /** The message channel, for raw and malformed messages ({@link VhostUserFrontendConnection#sendRaw}). */
    public VhostUserFrontendConnection connection() { return conn; }
    public long offeredFeatures() { return offeredFeatures; }
    public long ackedFeatures() { return ackedFeatures; }
    public long offeredProtocolFeatures() { return offeredProtocolFeatures; }
    public long ackedProtocolFeatures() { return ackedProtocolFeatures; }
    public boolean hasFeature(int bit) { return (ackedFeatures & bit(bit)) != 0; }
    /** GET_QUEUE_NUM's answer (1 without MQ). */
    public long backendQueues() { return backendQueues; }
    public int queueCount() { return queues.length; }
    /** The config space bytes read by GET_CONFIG (a copy). */
    public byte[] config() { return config.clone(); }
    private ByteBuffer cfg() { return ByteBuffer.wrap(config).order(ByteOrder.LITTLE_ENDIAN); }
    /** Disk size in 512-byte sectors (config capacity). */
    public long capacitySectors() { return cfg().getLong(0); }
    public long capacityBytes() { return capacitySectors() << SECTOR_SHIFT; }
    /** Logical block size: config blk_size with VIRTIO_BLK_F_BLK_SIZE, else 512. */
    public int blockSize() { return hasFeature(VIRTIO_BLK_F_BLK_SIZE) ? cfg().getInt(20) : SECTOR_SIZE; }
    /** Config num_queues (with VIRTIO_BLK_F_MQ), else 1. */
    public int configNumQueues() { return hasFeature(VIRTIO_BLK_F_MQ) ? cfg().getShort(34) & 0xFFFF : 1; }
    /** The back-end offered VIRTIO_BLK_F_RO. */
    public boolean readOnly() { return (offeredFeatures & bit(VIRTIO_BLK_F_RO)) != 0; }
    /** Host address of guest-physical {@code gpa} (bounds-checked against guest RAM). */
    public long host(long gpa, long len) {
        long off = gpa - GUEST_PHYS_BASE;
        if (gpa < GUEST_PHYS_BASE || len < 0 || off > memSize || len > memSize - off) throw new IndexOutOfBoundsException("gpa 0x" + Long.toHexString(gpa));
        return memBase + off;
    }
    public long memoryBase() { return memBase; }
    public long memorySize() { return memSize; }

    // ---------------------------------------------------------------- teardown

    /** Clean shutdown: GET_VRING_BASE on each started ring, then close. Errors are ignored after the first. */
    @Override
    public void close() throws IOException {
        if (closed) return;
        IOException first = null;
        for (Queue q : queues) {
            if (q == null) continue;
            try {
                stopQueue(q.index);
            } catch (IOException e) {
                if (first == null) first = e;
                break; // the connection is gone or wedged; the rest would fail too
            }
        }
        abort();
        if (first != null) throw first;
    }

    /** Drops the connection without telling the back-end (as a killed QEMU would), frees everything. */
    public void abort() {
        if (closed) return;
        closed = true;
        conn.close();
        for (Queue q : queues) if (q != null) q.release();
        unmapQuietly(memBase, memSize);
        LibcSocket.closeQuietly(memfd);
    }

    // ================================================================ one queue

    /** Receives completions from {@link Queue#reap} / {@link Queue#await}; the slot's data is valid during the call. */
    @FunctionalInterface
    public interface CompletionHandler {
        void complete(int slot, int status, int usedLen, long latencyNs);
    }

    /** A finished synchronous request: status byte, used length, and the device-written data. */
    public record Completion(int status, int usedLen, byte[] data) {
        public boolean ok() { return status == VIRTIO_BLK_S_OK; }
    }

    /**
     * One virtqueue, driver side: request slots (a 16-byte header, a data buffer, a status byte
     * each, in guest RAM), the kick, call and error eventfds, and a latency histogram. Hot-path
     * methods ({@link #acquire}, {@link #submit}, {@link #notifyDevice}, {@link #reap},
     * {@link #await}) allocate nothing.
     *
     * <p>Thread contract: one thread.
     */
    public static final class Queue {
        private final VirtioBlkFrontend fe;
        final int index;
        final SplitQueueDriver driver;
        final int kickFd;
        final int callFd;
        final int errFd;
        private final boolean eventIdx;
        private final boolean useIndirect;
        private final boolean busyPoll;
        private final long timeoutMs;
        private final long scratch = RawMemory.allocate(16); // 8 bytes eventfd value, 8 bytes pollfd
        private final int depth;
        private final int maxIo;
        private final long[] hdrGpa, dataGpa, statusGpa;
        private final long[] hdrHost, dataHost, statusHost;
        private final long[] startNs;
        private final int[] headToSlot;
        private final int[] slotHead;
        private final int[] freeSlots;
        private int nFree;
        private final long[] sgGpa = new long[3];
        private final int[] sgLen = new int[3];
        private final int[] usedHeads;
        private final int[] usedLens;
        private final LatencyHistogram latencies = new LatencyHistogram();
        private boolean recordLatency = true;
        private long kicks;
        private long interrupts;
        private long bogusUsed;
        private boolean released;

        Queue(VirtioBlkFrontend fe, int index) throws IOException {
            Settings s = fe.settings;
            this.fe = fe;
            this.index = index;
            long sliceOff = (long) index * fe.sliceSize;
            this.driver = SplitQueueDriver.onSlice(s.queueSize, fe.memfd, sliceOff, fe.memBase + sliceOff, fe.sliceSize,
                    GUEST_PHYS_BASE + sliceOff, fe.ackedFeatures);
            this.eventIdx = VirtioRing.has(fe.ackedFeatures, VirtioRing.VIRTIO_F_EVENT_IDX);
            this.useIndirect = s.indirect && VirtioRing.has(fe.ackedFeatures, VirtioRing.VIRTIO_F_INDIRECT_DESC);
            this.busyPoll = s.busyPoll;
            this.timeoutMs = s.timeoutMs;
            int maxDepth = useIndirect ? s.queueSize : s.queueSize / 3;
            if (s.depth < 1 || s.depth > maxDepth) {
                throw new IllegalArgumentException("depth " + s.depth + " does not fit a ring of " + s.queueSize
                        + (useIndirect ? "" : " with 3 descriptors per request"));
            }
            this.depth = s.depth;
            this.maxIo = s.maxIoBytes;
            long need = (long) depth * (maxIo + 4096 + 128) + (long) s.queueSize * 64 + 64 * 1024;
            if (need > fe.sliceSize) {
                throw new IllegalArgumentException("guest memory too small: queue " + index + " needs about " + (need >> 20)
                        + " MiB for " + depth + " slots of " + maxIo + " bytes, its slice has " + (fe.sliceSize >> 20) + " MiB");
            }
            hdrGpa = new long[depth];
            dataGpa = new long[depth];
            statusGpa = new long[depth];
            hdrHost = new long[depth];
            dataHost = new long[depth];
            statusHost = new long[depth];
            startNs = new long[depth];
            slotHead = new int[depth];
            freeSlots = new int[depth];
            for (int i = 0; i < depth; i++) {
                long raw = driver.alloc(maxIo + 4096L);
                dataGpa[i] = (raw + 4095) & -4096L;      // page-aligned data, as a guest's page cache would have
                hdrGpa[i] = driver.alloc(16);
                statusGpa[i] = driver.alloc(1);
                dataHost[i] = driver.host(dataGpa[i], maxIo);
                hdrHost[i] = driver.host(hdrGpa[i], 16);
                statusHost[i] = driver.host(statusGpa[i], 1);
                freeSlots[depth - 1 - i] = i;
            }
            nFree = depth;
            headToSlot = new int[s.queueSize];
            java.util.Arrays.fill(headToSlot, -1);
            usedHeads = new int[s.queueSize];
            usedLens = new int[s.queueSize];
            int k = -1, c = -1, e = -1;
            try {
                k = LibcSocket.eventfd();
                c = LibcSocket.eventfd();
                e = LibcSocket.eventfd();
            } catch (LastErrorException ex) {
                for (int f : new int[] {k, c, e}) if (f >= 0) LibcSocket.closeQuietly(f);
                throw new IOException("eventfd: " + LibC.describe(ex.getErrorCode()));
            }
            kickFd = k;
            callFd = c;
            errFd = e;
            if (busyPoll) suppressInterrupts();
            else if (!eventIdx) driver.setNoInterrupt(true);   // enabled only while we sleep
        }

        public int index() { return index; }
        /** The ring writer: well-formed and malformed chains, raw indices (the hostile helpers). */
        public SplitQueueDriver driver() { return driver; }
        public int depth() { return depth; }
        public int maxIoBytes() { return maxIo; }
        public int inFlight() { return depth - nFree; }
        public int kickFd() { return kickFd; }
        public int callFd() { return callFd; }
        public int errFd() { return errFd; }
        public LatencyHistogram latencies() { return latencies; }
        public void recordLatency(boolean on) { recordLatency = on; }
        /** Kicks actually sent (after EVENT_IDX / NO_NOTIFY suppression). */
        public long kicks() { return kicks; }
        /** Call eventfd wake-ups consumed. */
        public long interrupts() { return interrupts; }
        /** Used entries naming a head we did not submit through a slot (hostile tests, a buggy device). */
        public long bogusUsed() { return bogusUsed; }
        /** Host address of slot {@code slot}'s data buffer ({@link #maxIoBytes()} bytes). */
        public long dataAddress(int slot) { return dataHost[slot]; }
        public long dataGpa(int slot) { return dataGpa[slot]; }
        public long headerGpa(int slot) { return hdrGpa[slot]; }
        public long statusGpa(int slot) { return statusGpa[slot]; }

        /** A free slot, or -1 when {@link #depth()} requests are in flight. */
        public int acquire() {
            return nFree == 0 ? -1 : freeSlots[--nFree];
        }

        /** Gives back a slot that was acquired but not submitted. */
        public void release(int slot) { freeSlots[nFree++] = slot; }

        /**
         * Publishes request {@code type} at {@code sector} with {@code dataLen} bytes of the slot's
         * buffer (0: no data descriptor), device-writable for IN and GET_ID, device-readable
         * otherwise. Does not kick: call {@link #notifyDevice()} after a batch.
         */
        public void submit(int slot, int type, long sector, int dataLen) {
            submit(slot, type, sector, dataLen, type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID);
        }

        /** {@link #submit(int, int, long, int)} with the data direction chosen by the caller. */
        public void submit(int slot, int type, long sector, int dataLen, boolean dataWritable) {
            if (dataLen < 0 || dataLen > maxIo) throw new IllegalArgumentException("data length " + dataLen);
            RawMemory.putLe32(hdrHost[slot], type);
            RawMemory.putLe32(hdrHost[slot] + 4, 0);
            RawMemory.putLe64(hdrHost[slot] + 8, sector);
            RawMemory.putByte(statusHost[slot], STATUS_NOT_WRITTEN);
            int n = 0;
            sgGpa[n] = hdrGpa[slot];
            sgLen[n++] = REQUEST_HEADER_SIZE;
            int readable = 1;
            if (dataLen > 0) {
                sgGpa[n] = dataGpa[slot];
                sgLen[n++] = dataLen;
                if (!dataWritable) readable++;
            }
            sgGpa[n] = statusGpa[slot];
            sgLen[n++] = 1;
            startNs[slot] = System.nanoTime();
            int head = useIndirect ? driver.submitIndirect(sgGpa, sgLen, readable, n) : driver.submit(sgGpa, sgLen, readable, n);
            if (head < 0) throw new IllegalStateException("ring full: " + driver.freeDescriptors() + " free descriptors");
            headToSlot[head] = slot;
            slotHead[slot] = head;
        }

        /** Writes one discard / write-zeroes segment {le64 sector, le32 num_sectors, le32 flags} at the slot's data start. */
        public void putSegment(int slot, long sector, int numSectors, int flags) {
            RawMemory.putLe64(dataHost[slot], sector);
            RawMemory.putLe32(dataHost[slot] + 8, numSectors);
            RawMemory.putLe32(dataHost[slot] + 12, flags);
        }

        /** Kicks when the device asked for it (EVENT_IDX avail_event or the used ring's NO_NOTIFY flag). */
        public void notifyDevice() {
            if (driver.needsKick()) kickNow();
        }

        /** Kicks unconditionally (also for hostile rings published through {@link #driver()}). */
        public void kickNow() {
            kicks++;
            LibcSocket.eventfdWrite(kickFd, 1, scratch);
        }

        /** Consumes what the device completed, without waiting. Returns how many. */
        public int reap(CompletionHandler h) {
            int n = driver.pollUsed(usedHeads, usedLens);
            if (n > 0 && busyPoll) suppressInterrupts();
            long now = n > 0 ? System.nanoTime() : 0;
            for (int i = 0; i < n; i++) {
                int head = usedHeads[i];
                int slot = head >= 0 && head < headToSlot.length ? headToSlot[head] : -1;
                if (slot < 0) {
                    bogusUsed++;
                    continue;
                }
                headToSlot[head] = -1;
                long lat = now - startNs[slot];
                if (recordLatency) latencies.record(lat);
                int status = RawMemory.getByte(statusHost[slot]);
                try {
                    if (h != null) h.complete(slot, status, usedLens[i], lat);
                } finally {
                    freeSlots[nFree++] = slot;
                }
            }
            return n;
        }

        /**
         * Waits until at least one request completes (or {@code timeoutMs} passes) and reaps.
         * Returns how many completed, 0 on timeout. Sleeps on the call eventfd with interrupts
         * enabled only while asleep (used_event = last seen used idx with EVENT_IDX, else
         * clearing NO_INTERRUPT), or spins with {@link Settings#busyPoll}.
         */
        public int await(CompletionHandler h, long timeoutMs) {
            int n = reap(h);
            if (n > 0) return n;
            return waitForUsed(timeoutMs) ? reap(h) : 0;
        }

        /** Waits until the device publishes a used entry we have not consumed; false on timeout. Consumes nothing. */
        public boolean waitForUsed(long timeoutMs) {
            long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
            if (busyPoll) {
                int spins = 0;
                while (driver.usedIdx() == driver.lastUsedIdx()) {
                    Thread.onSpinWait();
                    if ((++spins & 1023) == 0 && System.nanoTime() > deadline) return false;
                }
                return true;
            }
            while (true) {
                enableInterrupts();
                // Full fence: our used_event / flags store before re-reading used->idx, so a
                // completion published in between is seen here or interrupts us (§2.7.10).
                RawMemory.fullFence();
                if (driver.usedIdx() != driver.lastUsedIdx()) {
                    disableInterrupts();
                    return true;
                }
                long left = (deadline - System.nanoTime()) / 1_000_000L;
                if (left <= 0) {
                    disableInterrupts();
                    return false;
                }
                if (pollIn(callFd, (int) Math.min(left, Integer.MAX_VALUE))) {
                    LibcSocket.eventfdRead(callFd, scratch);
                    interrupts++;
                }
                disableInterrupts();
                if (driver.usedIdx() != driver.lastUsedIdx()) return true;
            }
        }

        private void enableInterrupts() {
            if (eventIdx) driver.setUsedEvent(driver.lastUsedIdx());
            else driver.setNoInterrupt(false);
        }

        private void disableInterrupts() {
            // With EVENT_IDX used_event stays behind: the device interrupts once when it passes it.
            if (!eventIdx) driver.setNoInterrupt(true);
        }

        private void suppressInterrupts() {
            if (eventIdx) driver.setUsedEvent((driver.lastUsedIdx() - 1) & 0xFFFF); // passed only after 2^16 completions
            else driver.setNoInterrupt(true);
        }

        private boolean pollIn(int fd, int timeout) {
            long p = scratch + 8;
            RawMemory.putLe32(p, fd);
            RawMemory.putLe16(p + 4, LibcPoll.POLLIN);
            RawMemory.putLe16(p + 6, 0);
            try {
                return LibcPoll.poll(p, 1, timeout) > 0;
            } catch (LastErrorException e) {
                if (e.getErrorCode() == Errno.EINTR) return false;
                throw e;
            }
        }

        /** Whether the device signalled the error eventfd (reads and resets its counter). */
        public boolean errorSignalled() {
            return LibcSocket.eventfdRead(errFd, scratch) > 0;
        }

        // ---- synchronous requests: one at a time, allocate freely (tests, verification) ----

        /**
         * Runs one request and waits for it: {@code out} is the device-readable data (or null),
         * {@code inLen} bytes of device-writable data are returned in the completion (prefilled
         * with 0x5A so that unwritten bytes show).
         */
        public Completion execute(int type, long sector, byte[] out, int inLen) throws IOException {
            if (out != null && inLen > 0) throw new IllegalArgumentException("data is either readable or writable");
            int slot = acquire();
            if (slot < 0) throw new IllegalStateException("no free slot: " + inFlight() + " requests in flight");
            int len = out != null ? out.length : inLen;
            Pointer p = new Pointer(dataHost[slot]);
            if (out != null) p.write(0, out, 0, out.length);
            else if (inLen > 0) p.setMemory(0, inLen, (byte) 0x5A);
            submit(slot, type, sector, len, out == null);
            notifyDevice();
            int[] st = {-1, -1};
            byte[] data = new byte[inLen];
            long deadline = System.nanoTime() + timeoutMs * 1_000_000L;
            while (st[0] < 0) {
                long left = Math.max(1, (deadline - System.nanoTime()) / 1_000_000L);
                int n = await((s, st2, used, lat) -> {
                    if (s == slot) {
                        st[0] = st2;
                        st[1] = used;
                        if (inLen > 0) p.read(0, data, 0, inLen);
                    }
                }, left);
                if (n == 0 && System.nanoTime() >= deadline) {
                    throw new SocketTimeoutException("queue " + index + ": " + requestName(type) + " not completed within " + timeoutMs + " ms");
                }
            }
            return new Completion(st[0], st[1], data);
        }

        public Completion read(long offset, int length) throws IOException {
            return execute(VIRTIO_BLK_T_IN, offset >>> SECTOR_SHIFT, null, length);
        }

        public Completion write(long offset, byte[] data) throws IOException {
            return execute(VIRTIO_BLK_T_OUT, offset >>> SECTOR_SHIFT, data, 0);
        }

        public Completion flush() throws IOException {
            return execute(VIRTIO_BLK_T_FLUSH, 0, null, 0);
        }

        public Completion getId() throws IOException {
            return execute(VIRTIO_BLK_T_GET_ID, 0, null, VIRTIO_BLK_ID_BYTES);
        }

        /** DISCARD (or WRITE_ZEROES with {@code zeroes}) of one segment; {@code flags} as on the wire. */
        public Completion discardOrZeroes(boolean zeroes, long sector, int numSectors, int flags) throws IOException {
            byte[] seg = ByteBuffer.allocate(DISCARD_SEGMENT_SIZE).order(ByteOrder.LITTLE_ENDIAN)
                    .putLong(sector).putInt(numSectors).putInt(flags).array();
            return execute(zeroes ? VIRTIO_BLK_T_WRITE_ZEROES : VIRTIO_BLK_T_DISCARD, 0, seg, 0);
        }

        void release() {
            if (released) return;
            released = true;
            LibcSocket.closeQuietly(kickFd);
            LibcSocket.closeQuietly(callFd);
            LibcSocket.closeQuietly(errFd);
            driver.close();
            RawMemory.free(scratch);
        }
    }
}
