package dev.vmm.cli.guest;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

/**
 * A tiny static x86-64 Linux program, built byte by byte, that opens a device {@code O_WRONLY}
 * and makes one system call on it: what busybox cannot do. busybox 1.35's {@code blkdiscard} has
 * no {@code -z} and its {@code fallocate} only preallocates (mode 0), so without this the guest
 * could never send a virtio-blk WRITE_ZEROES request:
 *
 * <ul>
 *   <li>{@link #zeroOut} is {@code ioctl(fd, BLKZEROOUT, {offset, length})}: the kernel sends
 *       WRITE_ZEROES <em>without</em> the UNMAP flag (it passes {@code BLKDEV_ZERO_NOUNMAP});</li>
 *   <li>{@link #punchHole} is {@code fallocate(fd, PUNCH_HOLE|KEEP_SIZE, offset, length)}: on a
 *       block device the kernel sends WRITE_ZEROES <em>with</em> UNMAP;</li>
 *   <li>{@link #discard} is {@code ioctl(fd, BLKDISCARD, ...)}, as {@code blkdiscard}.</li>
 * </ul>
 *
 * The program exits with 0 on success, else with the errno (of {@code open} or of the call).
 * Arguments are baked into the binary; {@link #shellInstall} gives the busybox {@code sh} lines
 * that write it to a file in the guest (base64 in the workload script). Stateless.
 *
 * <p>The code (72 bytes, loaded at {@value #BASE}):
 * <pre>
 *   mov eax, 2; lea rdi, [path]; mov esi, 1 (O_WRONLY); xor edx, edx; syscall   ; open
 *   test eax, eax; js fail
 *   mov edi, eax; mov rax, [nr]; mov rsi, [a1]; mov rdx, [a2]; mov r10, [a3]; syscall
 * fail:
 *   mov edi, eax; neg edi; mov eax, 60; syscall                                  ; exit(-ret)
 * </pre>
 */
final class BlockSyscall {
    static final long BASE = 0x400000;
    static final int SYS_IOCTL = 16;
    static final int SYS_FALLOCATE = 285;
    /** {@code _IO(0x12, 119)} */
    static final long BLKDISCARD = 0x1277;
    /** {@code _IO(0x12, 127)} */
    static final long BLKZEROOUT = 0x127f;
    static final long FALLOC_FL_KEEP_SIZE = 1;
    static final long FALLOC_FL_PUNCH_HOLE = 2;
    static final long FALLOC_FL_ZERO_RANGE = 0x10;

    private static final int EHDR = 64;
    private static final int PHDR = 56;
    private static final int CODE = EHDR + PHDR; // 120
    private static final int CODE_LEN = 72;
    private static final int DATA = CODE + CODE_LEN; // 192: nr, a1, a2, a3, range[2], path
    private static final int NR = DATA;
    private static final int A1 = DATA + 8;
    private static final int A2 = DATA + 16;
    private static final int A3 = DATA + 24;
    private static final int RANGE = DATA + 32;
    private static final int PATH = DATA + 48;

    private BlockSyscall() {}

    static byte[] zeroOut(String device, long offset, long length) {
        return build(device, SYS_IOCTL, BLKZEROOUT, BASE + RANGE, 0, offset, length);
    }

    static byte[] discard(String device, long offset, long length) {
        return build(device, SYS_IOCTL, BLKDISCARD, BASE + RANGE, 0, offset, length);
    }

    static byte[] punchHole(String device, long offset, long length) {
        return build(device, SYS_FALLOCATE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, 0, 0);
    }

    static byte[] zeroRange(String device, long offset, long length) {
        return build(device, SYS_FALLOCATE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length, 0, 0);
    }

    /** busybox sh lines writing {@code program} to {@code path} and making it executable. */
    static String shellInstall(byte[] program, String path) {
        return "echo '" + Base64.getEncoder().encodeToString(program) + "' | base64 -d > " + path + "\nchmod 755 " + path + "\n";
    }

    static byte[] build(String device, long nr, long a1, long a2, long a3, long range0, long range1) {
        byte[] path = (device + "\0").getBytes(StandardCharsets.UTF_8);
        int size = PATH + path.length;
        ByteBuffer b = ByteBuffer.allocate(size).order(ByteOrder.LITTLE_ENDIAN);
        // ELF header
        b.put(new byte[] {0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0});
        b.putShort((short) 2);          // ET_EXEC
        b.putShort((short) 0x3e);       // EM_X86_64
        b.putInt(1);                    // EV_CURRENT
        b.putLong(BASE + CODE);         // e_entry
        b.putLong(EHDR);                // e_phoff
        b.putLong(0);                   // e_shoff
        b.putInt(0);                    // e_flags
        b.putShort((short) EHDR);
        b.putShort((short) PHDR);
        b.putShort((short) 1);          // e_phnum
        b.putShort((short) 64);         // e_shentsize
        b.putShort((short) 0);          // e_shnum
        b.putShort((short) 0);          // e_shstrndx
        // program header: one PT_LOAD of the whole file, R+X
        b.putInt(1);
        b.putInt(5);
        b.putLong(0);
        b.putLong(BASE);
        b.putLong(BASE);
        b.putLong(size);
        b.putLong(size);
        b.putLong(0x1000);
        if (b.position() != CODE) throw new AssertionError(b.position());
        // code
        b.put(new byte[] {(byte) 0xb8, 2, 0, 0, 0});                          // mov eax, 2 (open)
        ripRelative(b, new byte[] {0x48, (byte) 0x8d, 0x3d}, PATH);           // lea rdi, [path]
        b.put(new byte[] {(byte) 0xbe, 1, 0, 0, 0});                          // mov esi, O_WRONLY
        b.put(new byte[] {0x31, (byte) 0xd2});                                // xor edx, edx
        b.put(new byte[] {0x0f, 0x05});                                       // syscall
        b.put(new byte[] {(byte) 0x85, (byte) 0xc0});                         // test eax, eax
        int js = b.position();
        b.put(new byte[] {0x78, 0});                                          // js fail (patched)
        b.put(new byte[] {(byte) 0x89, (byte) 0xc7});                         // mov edi, eax
        ripRelative(b, new byte[] {0x48, (byte) 0x8b, 0x05}, NR);             // mov rax, [nr]
        ripRelative(b, new byte[] {0x48, (byte) 0x8b, 0x35}, A1);             // mov rsi, [a1]
        ripRelative(b, new byte[] {0x48, (byte) 0x8b, 0x15}, A2);             // mov rdx, [a2]
        ripRelative(b, new byte[] {0x4c, (byte) 0x8b, 0x15}, A3);             // mov r10, [a3]
        b.put(new byte[] {0x0f, 0x05});                                       // syscall
        int fail = b.position();
        b.put(js + 1, (byte) (fail - (js + 2)));
        b.put(new byte[] {(byte) 0x89, (byte) 0xc7});                         // mov edi, eax
        b.put(new byte[] {(byte) 0xf7, (byte) 0xdf});                         // neg edi
        b.put(new byte[] {(byte) 0xb8, 60, 0, 0, 0});                         // mov eax, 60 (exit)
        b.put(new byte[] {0x0f, 0x05});                                       // syscall
        while (b.position() < DATA) b.put((byte) 0xcc);                       // int3 padding
        b.putLong(nr).putLong(a1).putLong(a2).putLong(a3).putLong(range0).putLong(range1);
        b.put(path);
        return b.array();
    }

    /** An instruction {@code opcode} with a rip-relative disp32 to file offset {@code target}. */
    private static void ripRelative(ByteBuffer b, byte[] opcode, int target) {
        b.put(opcode);
        int next = b.position() + 4;
        b.putInt(target - next);
    }
}
