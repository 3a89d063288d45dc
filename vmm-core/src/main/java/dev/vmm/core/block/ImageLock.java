package dev.vmm.core.block;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import dev.vmm.core.linux.Errno;
import dev.vmm.core.linux.LibC;

/**
 * QEMU's image locking (block/file-posix.c, {@code raw_apply_lock_bytes} / {@code
 * raw_check_lock_bytes}) on one open image file, so that vmm, QEMU, qemu-img, qemu-io and
 * qemu-storage-daemon see each other's use of an image: shared (read) OFD locks on single bytes,
 * byte {@value #RAW_LOCK_PERM_BASE}+bit for each permission this user holds and byte
 * {@value #RAW_LOCK_SHARED_BASE}+bit for each permission it does not share with others. A user
 * that wants a permission tests (F_OFD_GETLK, exclusive) that nobody locks its "shared" byte; a
 * user that does not share one tests that nobody locks its "perm" byte. OFD locks belong to the
 * open file description: they are released when the fd is closed, and a process's own locks on
 * another description of the same file conflict like anyone's (two vmm nodes over one image see
 * each other, as two QEMU nodes do).
 *
 * <p>Changes go in two steps, as QEMU's {@code raw_handle_perm_lock}: {@link #prepare} takes the
 * union of the old and the new bytes and checks the new permissions ({@link #abort} goes back);
 * {@link #commit} drops what only the old state needed. Neither abort nor commit can conflict:
 * they only unlock.
 *
 * <p>Thread contract: the daemon's control plane, under the daemon's lock (one graph change at a
 * time); never on the data path. The fd is the driver's; the owner closes it only after the node
 * left the daemon's table, so no lock call races with the close.
 */
public final class ImageLock {
    // ---- permission bits, QEMU's BLK_PERM_* (include/block/block-common.h, QEMU 7.2) ----
    public static final int BLK_PERM_CONSISTENT_READ = 0x01;
    public static final int BLK_PERM_WRITE = 0x02;
    public static final int BLK_PERM_WRITE_UNCHANGED = 0x04;
    public static final int BLK_PERM_RESIZE = 0x08;
    /**
     * Every permission QEMU 7.2 knows. BLK_PERM_GRAPH_MOD (0x10, bytes 104/204) was removed in
     * QEMU 6.1: no QEMU this daemon meets locks or tests those bytes.
     */
    public static final int BLK_PERM_ALL = 0x0f;
    private static final String[] PERM_NAMES = {"consistent read", "write", "write unchanged", "resize"};

    /** First "perm" byte: permissions the holder has. */
    public static final int RAW_LOCK_PERM_BASE = 100;
    /** First "shared" byte: permissions the holder does not share. */
    public static final int RAW_LOCK_SHARED_BASE = 200;

    /** {@code locking=} of a file node. */
    public enum Mode {
        /** On where OFD locks work (QEMU: where the kernel has them; without them QEMU warns and uses none). */
        AUTO,
        ON,
        OFF;

        public static Mode parse(String s) {
            return valueOf(s.toUpperCase(java.util.Locale.ROOT));
        }
    }

    /** A permission another user holds or refuses: QEMU's error text, with its hint. */
    public static final class ConflictException extends Exception {
        private static final long serialVersionUID = 1L;
        private final String hint;

        ConflictException(String message, String filename) {
            super(message, null, false, false);
            this.hint = "Is another process using the image [" + filename + "]?";
        }

        /** QEMU's hint line (printed by the CLI, not part of QMP's {@code desc}). */
        public String hint() { return hint; }
    }

    private static volatile Boolean ofdSupported;

    private final int fd;
    private final String filename;
    private final boolean enabled;
    /** Bytes locked now: bit i of {@code heldPerm} is byte 100+i, of {@code heldUnshared} byte 200+i. */
    private int heldPerm, heldUnshared;
    /** The state before {@link #prepare}, for {@link #abort}; the prepared one, for {@link #commit}. */
    private int oldPerm, oldUnshared, newPerm, newUnshared;
    /** The permissions last committed (what {@code query} tools and tests look at). */
    private int perm, shared = BLK_PERM_ALL;

    /**
     * @param fd       the image's fd (its open file description carries the locks)
     * @param filename the name shown in the hint, as the user gave it
     */
    public ImageLock(int fd, String filename, Mode mode) throws BlockException {
        this.fd = fd;
        this.filename = filename;
        boolean ofd = ofdSupported(fd);
        if (mode == Mode.ON && !ofd) {
            throw new BlockException(Errno.ENOTSUP, "locking=on: the kernel or file system of '" + filename + "' has no OFD locks");
        }
        this.enabled = mode != Mode.OFF && ofd;
    }

    /** False for {@code locking=off} (and {@code auto} without OFD locks): every call does nothing. */
    public boolean enabled() { return enabled; }

    /** Committed permissions held. */
    public int perm() { return perm; }

    /** Committed permissions shared with other users. */
    public int shared() { return shared; }

    /**
     * Takes the bytes of {@code newPerm}/{@code newShared} on top of the current ones and checks
     * that no other user conflicts. On failure nothing changed.
     *
     * @throws ConflictException QEMU's {@code Failed to get "write" lock} or {@code Failed to get shared "write" lock}
     */
    public void prepare(int wantPerm, int wantShared) throws BlockException, ConflictException {
        oldPerm = heldPerm;
        oldUnshared = heldUnshared;
        newPerm = wantPerm & BLK_PERM_ALL;
        newUnshared = ~wantShared & BLK_PERM_ALL;
        if (!enabled) return;
        try {
            applyBytes(oldPerm | newPerm, oldUnshared | newUnshared);
            checkBytes(newPerm, wantShared);
        } catch (BlockException | ConflictException e) {
            abort();
            throw e;
        }
    }

    /**
     * Tests, without taking anything, whether another user conflicts with {@code wantPerm} /
     * {@code wantShared}: a format node checks its file before it reads the image, as QEMU
     * attaches its file child (with these permissions) before the format driver opens.
     */
    public void check(int wantPerm, int wantShared) throws BlockException, ConflictException {
        if (enabled) checkBytes(wantPerm & BLK_PERM_ALL, wantShared);
    }

    /** Goes back to the state before {@link #prepare}. */
    public void abort() {
        if (!enabled) return;
        try {
            applyBytes(oldPerm, oldUnshared);
        } catch (BlockException e) {
            // unlocking only: fails only with a closed fd, which holds no locks any more
        }
    }

    /** Keeps exactly the prepared bytes. */
    public void commit() {
        perm = newPerm;
        shared = ~newUnshared & BLK_PERM_ALL;
        if (!enabled) return;
        try {
            applyBytes(newPerm, newUnshared);
        } catch (BlockException e) {
            // as abort
        }
    }

    /** The name of a single permission bit, as QEMU's {@code bdrv_perm_names}. */
    public static String permName(int bit) {
        return PERM_NAMES[Integer.numberOfTrailingZeros(bit)];
    }

    /** Locks and unlocks bytes so that exactly {@code permBits}/{@code unsharedBits} are held (QEMU's raw_apply_lock_bytes). */
    private void applyBytes(int permBits, int unsharedBits) throws BlockException {
        for (int i = 0; i < PERM_NAMES.length; i++) {
            int bit = 1 << i;
            setByte(RAW_LOCK_PERM_BASE + i, (permBits & bit) != 0, (heldPerm & bit) != 0);
            heldPerm = (heldPerm & ~bit) | (permBits & bit);
            setByte(RAW_LOCK_SHARED_BASE + i, (unsharedBits & bit) != 0, (heldUnshared & bit) != 0);
            heldUnshared = (heldUnshared & ~bit) | (unsharedBits & bit);
        }
    }

    private void setByte(int off, boolean want, boolean held) throws BlockException {
        if (want == held) return;
        try {
            flock(fd, LibC.F_OFD_SETLK, want ? LibC.F_RDLCK : LibC.F_UNLCK, off);
        } catch (LastErrorException e) {
            throw new BlockException(e.getErrorCode(), (want ? "Failed to lock byte " : "Failed to unlock byte ") + off
                    + ": " + LibC.describe(e.getErrorCode()));
        }
    }

    /** QEMU's raw_check_lock_bytes: perms first ("shared" bytes of others), then what we do not share ("perm" bytes). */
    private void checkBytes(int wantPerm, int wantShared) throws BlockException, ConflictException {
        for (int i = 0; i < PERM_NAMES.length; i++) {
            int bit = 1 << i;
            if ((wantPerm & bit) != 0 && lockedByOthers(RAW_LOCK_SHARED_BASE + i)) {
                throw new ConflictException("Failed to get \"" + PERM_NAMES[i] + "\" lock", filename);
            }
        }
        for (int i = 0; i < PERM_NAMES.length; i++) {
            int bit = 1 << i;
            if ((wantShared & bit) == 0 && lockedByOthers(RAW_LOCK_PERM_BASE + i)) {
                throw new ConflictException("Failed to get shared \"" + PERM_NAMES[i] + "\" lock", filename);
            }
        }
    }

    /** QEMU's qemu_lock_fd_test(fd, off, 1, exclusive): would a write lock on the byte conflict? Our own locks never do. */
    private boolean lockedByOthers(int off) throws BlockException {
        try (Memory fl = new Memory(LibC.FLOCK_SIZEOF)) {
            fl.clear();
            fl.setShort(LibC.FLOCK_OFF_TYPE, LibC.F_WRLCK);
            fl.setShort(LibC.FLOCK_OFF_WHENCE, (short) LibC.SEEK_SET);
            fl.setLong(LibC.FLOCK_OFF_START, off);
            fl.setLong(LibC.FLOCK_OFF_LEN, 1);
            LibC.fcntl(fd, LibC.F_OFD_GETLK, Pointer.nativeValue(fl));
            return fl.getShort(LibC.FLOCK_OFF_TYPE) != LibC.F_UNLCK;
        } catch (LastErrorException e) {
            throw new BlockException(e.getErrorCode(), "Failed to get lock byte " + off + ": " + LibC.describe(e.getErrorCode()));
        }
    }

    private static void flock(int fd, int cmd, short type, long off) {
        try (Memory fl = new Memory(LibC.FLOCK_SIZEOF)) {
            fl.clear();
            fl.setShort(LibC.FLOCK_OFF_TYPE, type);
            fl.setShort(LibC.FLOCK_OFF_WHENCE, (short) LibC.SEEK_SET);
            fl.setLong(LibC.FLOCK_OFF_START, off);
            fl.setLong(LibC.FLOCK_OFF_LEN, 1);
            LibC.fcntl(fd, cmd, Pointer.nativeValue(fl));
        }
    }

    /** Whether F_OFD_GETLK works on this fd (QEMU's qemu_has_ofd_lock probes once per process; the file system can matter too). */
    private static boolean ofdSupported(int fd) {
        Boolean known = ofdSupported;
        if (known != null) return known;
        boolean ok;
        try (Memory fl = new Memory(LibC.FLOCK_SIZEOF)) {
            fl.clear();
            fl.setShort(LibC.FLOCK_OFF_TYPE, LibC.F_WRLCK);
            fl.setLong(LibC.FLOCK_OFF_START, 0);
            fl.setLong(LibC.FLOCK_OFF_LEN, 0);
            LibC.fcntl(fd, LibC.F_OFD_GETLK, Pointer.nativeValue(fl));
            ok = true;
        } catch (LastErrorException e) {
            ok = e.getErrorCode() != Errno.EINVAL; // EINVAL: a kernel without OFD locks
        }
        if (ok) ofdSupported = true;
        return ok;
    }
}
