package dev.vmm.virtio.memory;

import dev.vmm.core.linux.Errno;

import dev.vmm.core.memory.RawMemory;
import java.util.Arrays;
import java.util.Comparator;

import com.sun.jna.LastErrorException;

import dev.vmm.core.linux.LibC;
import dev.vmm.core.linux.LibcMemory;

/**
 * The guest's RAM as a vhost-user frontend shares it: regions described by {@code SET_MEM_TABLE}
 * or {@code ADD_MEM_REG} (fd, guest physical address, size, frontend userspace address, mmap
 * offset), each mapped {@code MAP_SHARED} into this process.
 *
 * <p><b>Memory safety.</b> The guest chooses every address we are asked to touch. The only way
 * from a guest value to a host address is {@link #gpaToHost} / {@link #uvaToHost}, which return
 * an address only when the WHOLE range {@code [addr, addr + len)} lies inside one mapped region;
 * otherwise they throw. There is no partial translation. Callers access at most {@code len}
 * bytes from the returned address.
 *
 * <p><b>The files behind the regions.</b> A region must lie inside its file when it is mapped
 * ({@link #addRegion} checks with statx), but a front-end can still shrink an unsealed memfd
 * afterwards, and a page beyond the new end raises SIGBUS when touched. The device touches guest
 * memory only through the kernel (preadv/pwritev: EFAULT) and {@link RawMemory} (Unsafe), whose
 * faults HotSpot turns into an {@link InternalError} that the queue worker catches and answers
 * by stopping that queue; no guest-memory access goes through a JNA native memcpy, which would
 * kill the JVM. Unsealed memfds are therefore accepted (QEMU's memory-backend-file cannot seal,
 * its memory-backend-memfd seals by default), as in libvhost-user. See
 * {@code VhostUserGuestMemorySafetyTest}.
 *
 * <p><b>Thread contract.</b> Regions change on the control plane (the vhost-user connection's
 * thread) and only while the device is stopped or quiesced: a region is unmapped when it is
 * removed, so no IOThread may still hold an address inside it; a device with requests in flight
 * (the kernel or an I/O thread writing into guest memory) uses {@link #retire} and unmaps once
 * they completed. Mutators are
 * {@code synchronized} among themselves. Lookups run on the device's IOThread without locks:
 * the region table is an immutable object published through a {@code volatile} field (a lookup
 * reads it once and searches that snapshot), and a lookup allocates nothing.
 *
 * <p><b>Ownership of fds.</b> {@link #addRegion} takes ownership of the fd and closes it before
 * returning, on success (the mapping keeps the file alive) and on failure alike.
 */
public final class GuestMemory implements AutoCloseable {
    /** Most regions at once: libvhost-user's {@code VHOST_USER_MAX_RAM_SLOTS} (509). */
    public static final int MAX_REGIONS = 509;
    /** Largest accepted region (256 TiB): beyond any real guest, far from 64-bit overflow. */
    public static final long MAX_REGION_SIZE = 1L << 48;

    /** One mapped region. Immutable. */
    private static final class Region {
        final long gpa, size, uva, mmapOffset;
        /** What to munmap. */
        final long mapBase, mapLength;
        /** Host address of the region's first byte (gpa / uva). */
        final long host;

        Region(long gpa, long size, long uva, long mmapOffset, long mapBase, long mapLength, long host) {
            this.gpa = gpa; this.size = size; this.uva = uva; this.mmapOffset = mmapOffset;
            this.mapBase = mapBase; this.mapLength = mapLength; this.host = host;
        }
    }

    /** Immutable lookup table: two sorted views (by gpa, by uva) as flat arrays. */
    private static final class Table {
        static final Table EMPTY = new Table(new Region[0]);

        final Region[] regions; // sorted by gpa
        final long[] gpaStart, gpaSize, gpaHost;
        final long[] uvaStart, uvaSize, uvaHost;
        final long totalSize;

        Table(Region[] regions) {
            this.regions = regions.clone();
            Arrays.sort(this.regions, Comparator.comparingLong(r -> r.gpa));
            int n = regions.length;
            gpaStart = new long[n]; gpaSize = new long[n]; gpaHost = new long[n];
            long total = 0;
            for (int i = 0; i < n; i++) {
                Region r = this.regions[i];
                gpaStart[i] = r.gpa; gpaSize[i] = r.size; gpaHost[i] = r.host;
                total += r.size;
            }
            Region[] byUva = this.regions.clone();
            Arrays.sort(byUva, Comparator.comparingLong(r -> r.uva));
            uvaStart = new long[n]; uvaSize = new long[n]; uvaHost = new long[n];
            for (int i = 0; i < n; i++) {
                uvaStart[i] = byUva[i].uva; uvaSize[i] = byUva[i].size; uvaHost[i] = byUva[i].host;
            }
            totalSize = total;
        }
    }

    /** Published table; replaced (never mutated) by the control plane. */
    private volatile Table table = Table.EMPTY;

    /**
     * Maps a region. Refuses: size ≤ 0 or over {@link #MAX_REGION_SIZE}; negative addresses or
     * offset; {@code gpa + size} or {@code uva + size} overflowing; overlap with an existing
     * region in guest-physical OR user address space; more than {@link #MAX_REGIONS}; an fd that
     * is not a regular file, or a file shorter than {@code mmapOffset + size} (touching a page
     * beyond EOF would raise SIGBUS); a file the kernel will not map writable (a memfd sealed
     * with F_SEAL_WRITE or F_SEAL_FUTURE_WRITE, a read-only fd): the used ring must be writable.
     * The fd is closed in every case (see class doc).
     */
    public synchronized void addRegion(int fd, long guestPhysAddr, long size, long userAddr, long mmapOffset)
            throws GuestMemoryException {
        try {
            String what = String.format("region gpa=0x%x size=0x%x uva=0x%x offset=0x%x",
                    guestPhysAddr, size, userAddr, mmapOffset);
            if (size <= 0 || size > MAX_REGION_SIZE) throw new GuestMemoryException(what + ": bad size");
            if (guestPhysAddr < 0 || userAddr < 0 || mmapOffset < 0) {
                throw new GuestMemoryException(what + ": negative address or offset");
            }
            // Signed overflow check on the exclusive ends; all terms are non-negative here.
            if (guestPhysAddr > Long.MAX_VALUE - size || userAddr > Long.MAX_VALUE - size
                    || mmapOffset > Long.MAX_VALUE - size) {
                throw new GuestMemoryException(what + ": end overflows");
            }
            Table t = table;
            if (t.regions.length >= MAX_REGIONS) throw new GuestMemoryException(what + ": more than " + MAX_REGIONS + " regions");
            for (Region r : t.regions) {
                if (overlaps(r.gpa, r.size, guestPhysAddr, size)) throw new GuestMemoryException(what + ": overlaps guest-physical range of another region");
                if (overlaps(r.uva, r.size, userAddr, size)) throw new GuestMemoryException(what + ": overlaps user-address range of another region");
            }
            // Pages of a MAP_SHARED mapping beyond the end of the file raise SIGBUS when touched.
            long fileSize;
            try {
                fileSize = LibcMemory.regularFileSize(fd);
            } catch (LibcMemory.ErrnoException e) {
                throw new GuestMemoryException(what + ": " + e.getMessage());
            }
            if (fileSize < 0) throw new GuestMemoryException(what + ": not a regular file (memfd, tmpfs or hugetlbfs)");
            if (fileSize < mmapOffset + size) {
                throw new GuestMemoryException(what + ": file has only " + fileSize + " bytes");
            }
            // Map from the page that holds mmapOffset; host = base + (mmapOffset - aligned).
            long page = LibcMemory.pageSize();
            long aligned = mmapOffset - (mmapOffset % page);
            long delta = mmapOffset - aligned;
            long mapBase;
            try {
                mapBase = LibcMemory.mapShared(fd, size + delta, aligned, true);
            } catch (LibcMemory.ErrnoException e) {
                if (e.errno() != Errno.EINVAL || aligned == 0) throw new GuestMemoryException(what + ": " + e.getMessage());
                // hugetlbfs wants huge-page-aligned offsets: map from 0 as libvhost-user does.
                try {
                    mapBase = LibcMemory.mapShared(fd, size + mmapOffset, 0, true);
                } catch (LibcMemory.ErrnoException e2) {
                    throw new GuestMemoryException(what + ": " + e2.getMessage());
                }
                delta = mmapOffset;
            }
            Region region = new Region(guestPhysAddr, size, userAddr, mmapOffset, mapBase, size + delta, mapBase + delta);
            Region[] next = Arrays.copyOf(t.regions, t.regions.length + 1);
            next[t.regions.length] = region;
            table = new Table(next);
        } finally {
            try {
                LibC.close(fd);
            } catch (LastErrorException ignored) {
                // Already closed or never valid; the mapping (if any) does not need it.
            }
        }
    }

    private static boolean overlaps(long aStart, long aSize, long bStart, long bSize) {
        // Both ranges are non-empty and end without overflow.
        return aStart < bStart + bSize && bStart < aStart + aSize;
    }

    /**
     * Unmaps the region with exactly this guest-physical address, size and user address
     * ({@code REM_MEM_REG}). Returns false (and changes nothing) when there is none.
     */
    public boolean removeRegion(long guestPhysAddr, long size, long userAddr) {
        Retired r = retireRegion(guestPhysAddr, size, userAddr);
        if (r == null) return false;
        r.unmap();
        return true;
    }

    /**
     * Takes the region with exactly this guest-physical address, size and user address out of
     * the table but leaves it mapped until {@link Retired#unmap()}: for a device whose requests in
     * flight still point into it. Null (and nothing changes) when there is none.
     */
    public synchronized Retired retireRegion(long guestPhysAddr, long size, long userAddr) {
        Table t = table;
        for (int i = 0; i < t.regions.length; i++) {
            Region r = t.regions[i];
            if (r.gpa == guestPhysAddr && r.size == size && r.uva == userAddr) {
                Region[] next = new Region[t.regions.length - 1];
                System.arraycopy(t.regions, 0, next, 0, i);
                System.arraycopy(t.regions, i + 1, next, i, t.regions.length - i - 1);
                table = new Table(next);
                return new Retired(new Region[] {r});
            }
        }
        return null;
    }

    /** Unmaps every region ({@code SET_MEM_TABLE} replaces the table; reset; close). */
    public void clear() {
        retire().unmap();
    }

    /**
     * Takes every region out of the table, leaving them mapped until {@link Retired#unmap()}:
     * lookups fail from now on (new requests cannot reach the old memory), while addresses handed
     * out before stay valid for the kernel and the requests in flight that hold them (a device
     * reset or disconnect with I/O in flight: unmapping then would let a read land in whatever
     * the kernel maps at those addresses next).
     */
    public synchronized Retired retire() {
        Table t = table;
        table = Table.EMPTY;
        return new Retired(t.regions);
    }

    /**
     * Regions of every GuestMemory in this process taken out of their table by {@link #retire}/
     * {@link #retireRegion} and not yet unmapped (tests: 0 once every device released its memory).
     */
    public static int retiredRegions() {
        return RETIRED_REGIONS.get();
    }

    private static final java.util.concurrent.atomic.AtomicInteger RETIRED_REGIONS = new java.util.concurrent.atomic.AtomicInteger();

    /**
     * Regions out of the table, still mapped. {@link #unmap()} once nothing points into them any
     * more; idempotent; any thread.
     */
    public final class Retired {
        private Region[] regions;

        private Retired(Region[] regions) {
            this.regions = regions;
            RETIRED_REGIONS.addAndGet(regions.length);
        }

        /** Number of regions it holds until unmapped. */
        public synchronized int size() { return regions == null ? 0 : regions.length; }

        public synchronized void unmap() {
            if (regions == null) return;
            Region[] rs = regions;
            regions = null;
            for (Region r : rs) unmapQuietly(r);
            RETIRED_REGIONS.addAndGet(-rs.length);
        }
    }

    @Override
    public void close() {
        clear();
    }

    private static void unmapQuietly(Region r) {
        try {
            LibcMemory.unmap(r.mapBase, r.mapLength);
        } catch (LibcMemory.ErrnoException e) {
            // munmap of our own mapping cannot fail short of a bug; nothing more to release.
            throw new IllegalStateException(e);
        }
    }

    /**
     * Host address of the guest-physical range {@code [gpa, gpa + len)}, which must lie entirely
     * inside one region; {@code len} must be positive. Lock-free, allocation-free on success.
     */
    public long gpaToHost(long gpa, long len) throws GuestMemoryException {
        Table t = table;
        long host = lookup(t.gpaStart, t.gpaSize, t.gpaHost, gpa, len);
        if (host == 0) throw new GuestMemoryException(String.format("guest-physical range 0x%x+0x%x is not inside guest memory", gpa, len));
        return host;
    }

    /** Like {@link #gpaToHost} for the frontend's userspace addresses (vring addresses). */
    public long uvaToHost(long uva, long len) throws GuestMemoryException {
        Table t = table;
        long host = lookup(t.uvaStart, t.uvaSize, t.uvaHost, uva, len);
        if (host == 0) throw new GuestMemoryException(String.format("user-address range 0x%x+0x%x is not inside guest memory", uva, len));
        return host;
    }

    /** True when {@code [gpa, gpa + len)} lies inside one region (no exception on miss). */
    public boolean isMapped(long gpa, long len) {
        Table t = table;
        return lookup(t.gpaStart, t.gpaSize, t.gpaHost, gpa, len) != 0;
    }

    /**
     * Binary search for the last region starting at or below {@code addr} (regions do not
     * overlap, so it is the only candidate), then an overflow-free containment check:
     * {@code off = addr - start} is in {@code [0, size)} and {@code len <= size - off}.
     * Returns 0 for "not mapped" (mmap never returns 0 for our mappings).
     */
    private static long lookup(long[] start, long[] size, long[] host, long addr, long len) {
        if (len <= 0) return 0;
        int lo = 0, hi = start.length - 1, found = -1;
        while (lo <= hi) {
            int mid = (lo + hi) >>> 1;
            if (start[mid] <= addr) { found = mid; lo = mid + 1; } else { hi = mid - 1; }
        }
        if (found < 0) return 0; // also covers negative addr: every start is >= 0
        long off = addr - start[found]; // >= 0, no overflow: both non-negative
        if (off >= size[found] || len > size[found] - off) return 0;
        return host[found] + off;
    }

    /** Number of mapped regions. */
    public int regionCount() { return table.regions.length; }

    /** Sum of the regions' sizes in bytes. */
    public long regionsSize() { return table.totalSize; }
}
