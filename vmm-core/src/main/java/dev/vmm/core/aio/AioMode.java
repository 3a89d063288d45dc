package dev.vmm.core.aio;

import java.util.Locale;

/**
 * QEMU's {@code aio=} key of {@code driver=file}: how file I/O is made asynchronous.
 * {@code native} is Linux AIO in QEMU; here it is served by io_uring (the kernel's successor to
 * Linux AIO, with the same O_DIRECT requirement kept so that command lines behave as in QEMU).
 * Thread contract: constants only, any thread.
 */
public enum AioMode {
    THREADS("threads"),
    NATIVE("native"),
    IO_URING("io_uring");

    private final String key;

    AioMode(String key) { this.key = key; }

    /** The value as written on the command line and shown by QMP. */
    public String key() { return key; }

    /** Parses a command-line value; null when it is none of {@code threads|native|io_uring}. */
    public static AioMode parse(String s) {
        for (AioMode m : values()) if (m.key.equals(s.toLowerCase(Locale.ROOT))) return m;
        return null;
    }
}
