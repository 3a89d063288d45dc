package dev.vmm.cli;

import java.io.PrintWriter;
import java.util.List;
import java.util.Locale;

/**
 * Configures slf4j-simple (the binding we ship) before the first logger exists: one line per
 * event on stderr with a timestamp and the thread, Netty's internals quieter than ours.
 * Called on the process's main thread, before any other thread or logger exists.
 */
final class Logging {
    /** What {@code --log-level} accepts (any case): slf4j-simple's levels, quietest first. */
    static final List<String> LEVELS = List.of("error", "warn", "info", "debug", "trace");

    private Logging() { }

    /**
     * True when {@code level} is one of {@link #LEVELS}; else prints one line to {@code err}:
     * {@code <command>: --log-level: expected error, warn, info, debug or trace, got 'x'}.
     */
    static boolean checkLevel(String level, String command, PrintWriter err) {
        if (LEVELS.contains(level.toLowerCase(Locale.ROOT))) return true;
        err.println(command + ": --log-level: expected " + String.join(", ", LEVELS.subList(0, LEVELS.size() - 1))
                + " or " + LEVELS.get(LEVELS.size() - 1) + ", got '" + level + "'");
        return false;
    }

    static void configure(String level) {
        set("org.slf4j.simpleLogger.logFile", "System.err");
        set("org.slf4j.simpleLogger.defaultLogLevel", level);
        set("org.slf4j.simpleLogger.showDateTime", "true");
        set("org.slf4j.simpleLogger.dateTimeFormat", "yyyy-MM-dd'T'HH:mm:ss.SSS");
        set("org.slf4j.simpleLogger.showThreadName", "true");
        set("org.slf4j.simpleLogger.showShortLogName", "true");
        set("org.slf4j.simpleLogger.levelInBrackets", "true");
        set("org.slf4j.simpleLogger.log.io.netty", level.equals("debug") || level.equals("trace") ? "info" : "warn");
    }

    private static void set(String key, String value) {
        if (System.getProperty(key) == null) System.setProperty(key, value);
    }
}
