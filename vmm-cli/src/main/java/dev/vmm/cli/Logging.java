package dev.vmm.cli;

/**
 * Configures slf4j-simple (the binding we ship) before the first logger exists: one line per
 * event on stderr with a timestamp and the thread, Netty's internals quieter than ours.
 */
final class Logging {
    private Logging() { }

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
