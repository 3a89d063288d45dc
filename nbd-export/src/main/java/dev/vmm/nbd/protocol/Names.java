package dev.vmm.nbd.protocol;

/** Formatting helpers shared by the constant holders' {@code name} methods. */
final class Names {
    private Names() {}

    /** {@code "<prefix>_UNKNOWN(<value>)"}, the log form of a value the spec does not define. */
    static String unknown(String prefix, long value) {
        return prefix + "_UNKNOWN(" + value + ")";
    }

    /**
     * Joins the names of the set bits of {@code flags} with {@code '|'}; bits without a name are
     * collected into one {@code "<prefix>_UNKNOWN(0x..)"} entry. Zero renders as {@code "0"}.
     *
     * @param names name of bit {@code i} at index {@code i}, or {@code null} if undefined
     */
    static String flags(String prefix, int flags, String[] names) {
        if (flags == 0) {
            return "0";
        }
        StringBuilder sb = new StringBuilder();
        int unknown = 0;
        for (int bit = 0; bit < 32; bit++) {
            int mask = 1 << bit;
            if ((flags & mask) == 0) {
                continue;
            }
            String n = bit < names.length ? names[bit] : null;
            if (n == null) {
                unknown |= mask;
                continue;
            }
            if (sb.length() > 0) {
                sb.append('|');
            }
            sb.append(n);
        }
        if (unknown != 0) {
            if (sb.length() > 0) {
                sb.append('|');
            }
            sb.append(prefix).append("_UNKNOWN(0x").append(Integer.toHexString(unknown)).append(')');
        }
        return sb.toString();
    }
}
