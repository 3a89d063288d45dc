package dev.vmm.cli;

/** Placeholder so that the integration tests compile; replaced by the real launcher on merge. */
public final class Main {
    public static void main(String[] a) {
        System.err.println("not yet");
        System.exit(1);
    }
}
