package dev.vmm.cli.demo;

import java.io.PrintWriter;
import java.util.function.Consumer;

/**
 * Prints the demo's numbered steps as they happen, one line each:
 * {@code [1/6] image demo.img (1 GiB, sparse) ... ok (2 ms)}. Progress of a slow step (a kernel
 * download) goes on indented lines below it, and the outcome then gets a line of its own.
 *
 * <p>Thread contract: one thread at a time (the demo's main thread).
 */
public final class Steps {
    private final PrintWriter out;
    private int total;
    private int done;
    private int failed;

    public Steps(PrintWriter out, int total) {
        this.out = out;
        this.total = total;
    }

    /** Changes the number of steps announced (when a part of the demo turns out to be skipped). */
    public void total(int total) {
        this.total = total;
    }

    /** Steps that ended with {@link Step#fail}. */
    public int failed() {
        return failed;
    }

    /** Prints {@code [n/total] what ...} and returns the open step. */
    public Step begin(String what) {
        done++;
        out.print("[" + done + "/" + total + "] " + what + " ...");
        out.flush();
        return new Step();
    }

    /** A free line between steps (hints, URIs), indented as step details. */
    public void note(String line) {
        out.println(line);
        out.flush();
    }

    /** One step: ended exactly once with {@link #ok} or {@link #fail}. */
    public final class Step implements Consumer<String> {
        private final long t0 = System.nanoTime();
        private boolean lineOpen = true;

        /** A progress line of this step. */
        @Override
        public void accept(String progress) {
            if (lineOpen) out.println();
            lineOpen = false;
            out.println("      " + progress);
            out.flush();
        }

        public void ok() {
            ok(null);
        }

        /** Ends the step; {@code detail} (may be null) follows the timing. */
        public void ok(String detail) {
            end("ok", detail);
        }

        /** Ends the step because the user stopped the demo (Ctrl-C): not a failure. */
        public void interrupted() {
            end("interrupted", null);
        }

        public void fail(String why) {
            failed++;
            end("FAILED", why);
        }

        private void end(String outcome, String detail) {
            long ms = (System.nanoTime() - t0) / 1_000_000;
            String text = outcome + " (" + ms + " ms)" + (detail == null ? "" : ": " + detail);
            out.println(lineOpen ? " " + text : "      ... " + text);
            lineOpen = false;
            out.flush();
        }
    }
}
