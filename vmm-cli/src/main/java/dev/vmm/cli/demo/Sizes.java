package dev.vmm.cli.demo;

import java.util.Locale;

/** Sizes as the user writes them ({@code 1G}, {@code 512M}) and as the demo prints them. Stateless. */
public final class Sizes {
    private Sizes() {}

    /** {@code 1G}, {@code 64M}, {@code 4096}, {@code 2GiB}: binary units; null for anything else. */
    public static Long parse(String s) {
        String t = s.strip().toUpperCase(Locale.ROOT);
        if (t.endsWith("IB")) t = t.substring(0, t.length() - 2);
        else if (t.endsWith("B") && t.length() > 1 && !Character.isDigit(t.charAt(t.length() - 2))) t = t.substring(0, t.length() - 1);
        int shift = 0;
        if (!t.isEmpty()) {
            switch (t.charAt(t.length() - 1)) {
                case 'K' -> shift = 10;
                case 'M' -> shift = 20;
                case 'G' -> shift = 30;
                case 'T' -> shift = 40;
                default -> { }
            }
        }
        if (shift > 0) t = t.substring(0, t.length() - 1);
        if (!t.matches("\\d{1,15}")) return null;
        long v = Long.parseLong(t);
        return v > (Long.MAX_VALUE >> shift) ? null : v << shift;
    }

    /** {@code 1 GiB}, {@code 1.5 GiB}, {@code 512 MiB}, {@code 4096 bytes}. */
    public static String human(long bytes) {
        String[] units = {"KiB", "MiB", "GiB", "TiB"};
        for (int i = units.length - 1; i >= 0; i--) {
            long unit = 1L << (10 * (i + 1));
            if (bytes >= unit) {
                return bytes % unit == 0 ? bytes / unit + " " + units[i]
                        : String.format(Locale.ROOT, "%.1f %s", bytes / (double) unit, units[i]);
            }
        }
        return bytes + " bytes";
    }
}
