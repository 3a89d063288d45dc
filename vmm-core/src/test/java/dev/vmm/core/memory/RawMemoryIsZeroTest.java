package dev.vmm.core.memory;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.jna.Memory;
import com.sun.jna.Pointer;
import org.junit.jupiter.api.Test;

/** {@link RawMemory#isZero} (detect-zeroes): every length and every position of a single non-zero byte, at odd addresses too. */
class RawMemoryIsZeroTest {
    @Test
    void findsAnyNonZeroByteAtAnyLengthAndAlignment() {
        try (Memory m = new Memory(256)) {
            long base = Pointer.nativeValue(m);
            for (int start = 0; start < 8; start++) {
                for (int len = 0; len <= 100; len++) {
                    m.clear();
                    long a = base + start;
                    assertTrue(RawMemory.isZero(a, len), "zeros, start " + start + " len " + len);
                    for (int i = 0; i < len; i++) {
                        m.clear();
                        m.setByte(start + i, (byte) 1);
                        assertFalse(RawMemory.isZero(a, len), "start " + start + " len " + len + " byte " + i);
                    }
                    // bytes just outside the range do not count
                    m.clear();
                    if (start > 0) m.setByte(start - 1, (byte) 1);
                    m.setByte(start + len, (byte) 1);
                    assertTrue(RawMemory.isZero(a, len), "outside, start " + start + " len " + len);
                }
            }
        }
    }
}
