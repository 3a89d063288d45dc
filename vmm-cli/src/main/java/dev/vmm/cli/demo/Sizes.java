package dev.vmm.cli.demo;

import java.util.Locale;

/** Sizes as the demo prints them (the user's are parsed by {@code Options.parseSize}). Stateless. */
public final class Sizes {
    private Sizes() {}

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
