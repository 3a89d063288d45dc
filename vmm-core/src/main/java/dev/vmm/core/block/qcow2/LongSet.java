package dev.vmm.core.block.qcow2;

import java.util.Arrays;

/**
 * A set of non-negative longs (open addressing, linear probing), so the overlap checks on the
 * data path allocate nothing. Thread contract: confined to the owning driver's home thread.
 */
final class LongSet {
    private static final long EMPTY = -1;
    private static final long TOMB = -2;
    private long[] keys = new long[64];
    private int used;
    private int size;

    private static int hash(long k, int mask) {
        long x = k * 0x9E3779B97F4A7C15L;
        return (int) (x ^ (x >>> 32)) & mask;
    }

    {
        Arrays.fill(keys, EMPTY);
    }

    boolean contains(long k) {
        int mask = keys.length - 1;
        for (int i = hash(k, mask); ; i = (i + 1) & mask) {
            long v = keys[i];
            if (v == k) return true;
            if (v == EMPTY) return false;
        }
    }

    void add(long k) {
        if (contains(k)) return;
        if ((used + 1) * 2 > keys.length) rehash(keys.length * 2);
        int mask = keys.length - 1;
        for (int i = hash(k, mask); ; i = (i + 1) & mask) {
            if (keys[i] == EMPTY || keys[i] == TOMB) {
                if (keys[i] == EMPTY) used++;
                keys[i] = k;
                size++;
                return;
            }
        }
    }

    void remove(long k) {
        int mask = keys.length - 1;
        for (int i = hash(k, mask); ; i = (i + 1) & mask) {
            long v = keys[i];
            if (v == EMPTY) return;
            if (v == k) {
                keys[i] = TOMB;
                size--;
                return;
            }
        }
    }

    int size() { return size; }

    private void rehash(int cap) {
        long[] old = keys;
        keys = new long[cap];
        Arrays.fill(keys, EMPTY);
        used = 0;
        size = 0;
        for (long v : old) if (v >= 0) add(v);
    }
}
