package dev.vmm.cli;

import dev.vmm.core.options.Options;
import dev.vmm.core.stats.LatencyHistogram;
import dev.vmm.vhostuser.frontend.BlkWorkload;
import dev.vmm.vhostuser.frontend.VirtioBlkFrontend;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/**
 * {@code vmm bench}: client-side benchmarks. {@code vmm bench vhost-user} drives a vhost-user-blk
 * back-end (ours or qemu-storage-daemon) with the Java front-end {@link VirtioBlkFrontend}: one
 * thread per queue, each keeping {@code --iodepth} requests in flight, like fio's
 * {@code --numjobs=queues --iodepth=N}.
 *
 * <p>Thread contract: {@link VhostUser#call} runs on the main thread, which prints progress while
 * the queue threads run.
 */
@Command(name = "bench", description = "Client-side benchmarks.",
        subcommands = {BenchCommand.VhostUser.class, BenchCommand.StampImage.class, CommandLine.HelpCommand.class})
public final class BenchCommand implements Runnable {
    /** Exit code of a run that completed but had failed requests or wrong data: its figures are not a result. */
    public static final int EXIT_NOT_A_RESULT = 3;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
    boolean help;

    @Override
    public void run() {
        spec.commandLine().usage(spec.commandLine().getOut());
    }

    /** "4k", "1M", "256M", "512" (bytes): {@link Options#parseSize}, and more than 0. */
    static long parseSize(String s, String what) {
        try {
            long v = Options.parseSize(s);
            if (v > 0) return v;
        } catch (NumberFormatException e) {
            // the same message for every bad size, below
        }
        throw new CommandLine.ParameterException(new CommandLine(new BenchCommand()), "invalid " + what + " '" + s + "' (e.g. 4k, 1M, 256M)");
    }

    @Command(name = "vhost-user", sortOptions = false, usageHelpAutoWidth = true,
            description = {"Benchmark a vhost-user-blk backend through the Java front-end (no QEMU): IOPS, MiB/s,"
                    + " p50/p99/p99.9 latency and the client's heap allocation per request.",
                    "The backend may be ours (vmm serve --export type=vhost-user-blk,...) or qemu-storage-daemon."
                    + " WRITE WORKLOADS AND --prefill OVERWRITE THE DISK."},
            footer = {"",
                    "Correctness: only requests that complete with status OK (and, for checked reads, with the right data)"
                    + " count in IOPS, MiB/s and latency. Failed requests (any status but OK, in ramp, run or drain), reads"
                    + " with wrong data and written blocks that read back wrong are counted and printed separately;"
                    + " if there is any, the run is NOT A RESULT: a line saying so goes to stderr and the exit code is 3.",
                    "",
                    "Data pattern: every 512-byte sector of the disk carries a 16-byte stamp, le64 (0x68636e65626d6d76 XOR"
                    + " its byte offset) then le64 generation. Writes stamp every sector they write. Reads (--read-check, the"
                    + " default) poison the stamps of the sectors they check in the buffer before submitting and check them"
                    + " on completion: all 8 sectors of a 4 KiB read, 8 sectors spread over a larger one (a different"
                    + " sector each request). Cost: 8 stores and 8 loads of 8 bytes per read, 2 stores per written sector,"
                    + " on the client thread; no copies. The disk must be stamped first: --prefill (writes the whole region"
                    + " through the backend, not measured), or an image file written by 'vmm bench stamp-image'; before a"
                    + " checked read run three blocks are probed and an unstamped disk stops the run. With --verify N a"
                    + " write run reads back N written blocks afterwards and checks every sector's stamp and generation.",
                    "",
                    "Flushes: --flush-every N queues a FLUSH after every N writes (like fio --fsync=N with an asynchronous"
                    + " engine); flushes are reported separately (count, per second, latency) and not counted in IOPS.",
                    "",
                    "Exit codes: 0 a valid result; 1 bad arguments or the backend could not be reached; 3 not a result."})
    static final class VhostUser implements Callable<Integer> {
        @CommandLine.Spec
        CommandLine.Model.CommandSpec spec;

        @Option(names = "--socket", required = true, paramLabel = "PATH", description = "The backend's vhost-user socket.")
        Path socket;

        @Option(names = "--rw", paramLabel = "MODE", defaultValue = "randread",
                description = "randread, randwrite, read or write (default ${DEFAULT-VALUE}).")
        String rw;

        @Option(names = "--bs", paramLabel = "SIZE", defaultValue = "4k", description = "Request size (default ${DEFAULT-VALUE}).")
        String bs;

        @Option(names = "--iodepth", paramLabel = "N", defaultValue = "32", description = "Requests in flight per queue (default ${DEFAULT-VALUE}).")
        int iodepth;

        @Option(names = "--runtime", paramLabel = "SEC", defaultValue = "10", description = "Measured seconds (default ${DEFAULT-VALUE}).")
        double runtime;

        @Option(names = "--ramp", paramLabel = "SEC", defaultValue = "1", description = "Unmeasured warm-up seconds (default ${DEFAULT-VALUE}).")
        double ramp;

        @Option(names = "--queues", paramLabel = "N", defaultValue = "1",
                description = "Virtqueues, one thread each (default ${DEFAULT-VALUE}); the export's num-queues must be at least this.")
        int queues;

        @Option(names = "--memory", paramLabel = "SIZE", defaultValue = "256M", description = "Guest RAM shared with the backend (default ${DEFAULT-VALUE}).")
        String memory;

        @Option(names = "--size", paramLabel = "SIZE", description = "Bytes of the disk to use from offset 0 (default: all of it).")
        String size;

        @Option(names = "--queue-size", paramLabel = "N", defaultValue = "128", description = "Ring size (default ${DEFAULT-VALUE}, QEMU's).")
        int queueSize;

        @Option(names = "--poll", description = "Busy-poll the used ring instead of sleeping on the call eventfd (latency runs).")
        boolean poll;

        @Option(names = "--verify", paramLabel = "N", defaultValue = "1000",
                description = "After a write run, read back up to N written blocks and check their stamps (default ${DEFAULT-VALUE}; 0: off).")
        int verify;

        @Option(names = "--read-check", negatable = true, defaultValue = "true", fallbackValue = "true",
                description = "Check the stamps of what reads return (default on; the disk must be stamped, see below)."
                        + " --no-read-check: reads are NOT checked, and the output says so.")
        boolean readCheck;

        @Option(names = "--prefill", description = "Before the run, stamp the whole region (--size, default the disk) through the"
                + " backend: sequential writes of up to 1 MiB, then a flush. Not measured.")
        boolean prefill;

        @Option(names = "--flush-every", paramLabel = "N", defaultValue = "0",
                description = "With randwrite or write: a FLUSH after every N writes (default ${DEFAULT-VALUE}: none).")
        int flushEvery;

        @Option(names = "--json", description = "Print one JSON object instead of text.")
        boolean json;

        @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
        boolean help;

        @Override
        public Integer call() throws Exception {
            PrintWriter out = spec.commandLine().getOut();
            PrintWriter err = spec.commandLine().getErr();
            if (!Files.exists(socket)) {
                err.println("vmm bench vhost-user: no vhost-user socket at " + socket);
                err.flush();
                return 1;
            }
            BlkWorkload.Pattern pattern;
            try {
                pattern = BlkWorkload.Pattern.valueOf(rw.toUpperCase(Locale.ROOT));
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(spec.commandLine(), "invalid --rw '" + rw + "' (randread, randwrite, read, write)");
            }
            long bsBytes = parseSize(bs, "--bs");
            if (bsBytes % 512 != 0 || bsBytes > (64L << 20)) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--bs must be a multiple of 512 up to 64M");
            }
            if (iodepth < 1 || iodepth > 32768) throw new CommandLine.ParameterException(spec.commandLine(), "--iodepth must be 1..32768");
            if (queues < 1) throw new CommandLine.ParameterException(spec.commandLine(), "--queues must be at least 1");
            if (runtime <= 0 || ramp < 0) throw new CommandLine.ParameterException(spec.commandLine(), "--runtime must be > 0 and --ramp >= 0");
            if (flushEvery < 0) throw new CommandLine.ParameterException(spec.commandLine(), "--flush-every must be >= 0");
            if (flushEvery > 0 && !pattern.write()) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--flush-every goes with --rw randwrite or write");
            }
            int qsize = Math.max(queueSize, Integer.highestOneBit(Math.max(1, iodepth - 1)) << 1);
            long mem = parseSize(memory, "--memory");
            // --prefill writes in requests of up to 1 MiB through the same slots
            int maxIo = (int) (prefill ? Math.max(bsBytes, PREFILL_CHUNK) : bsBytes);
            VirtioBlkFrontend.Settings settings = new VirtioBlkFrontend.Settings().memory(mem).queues(queues)
                    .queueSize(qsize).depth(iodepth).maxIoBytes(maxIo).busyPoll(poll).timeoutMs(30_000);
            VirtioBlkFrontend fe;
            try {
                fe = VirtioBlkFrontend.connect(socket.toString(), settings);
            } catch (IllegalArgumentException e) {
                err.println("vmm bench vhost-user: " + e.getMessage() + " (raise --memory)");
                err.flush();
                return 1;
            }
            try {
                return run(fe, pattern, bsBytes, out, err);
            } finally {
                fe.close();
            }
        }

        private int run(VirtioBlkFrontend fe, BlkWorkload.Pattern pattern, long bsBytes, PrintWriter out, PrintWriter err) throws Exception {
            long disk = fe.capacityBytes();
            long region = size == null ? disk : Math.min(disk, parseSize(size, "--size"));
            if (pattern.write() && fe.readOnly()) {
                err.println("vmm bench vhost-user: the export is read-only (VIRTIO_BLK_F_RO); use --rw randread or read");
                err.flush();
                return 1;
            }
            long perQueue = (region / queues) / bsBytes * bsBytes;
            if (perQueue / bsBytes < iodepth) {
                err.println("vmm bench vhost-user: disk of " + disk + " bytes is too small for " + queues + " x " + iodepth + " requests of " + bsBytes);
                err.flush();
                return 1;
            }
            if (flushEvery > 0 && !fe.hasFeature(dev.vmm.virtio.blk.VirtioBlk.VIRTIO_BLK_F_FLUSH)) {
                err.println("vmm bench vhost-user: the backend does not offer VIRTIO_BLK_F_FLUSH; --flush-every cannot be used");
                err.flush();
                return 1;
            }
            if (prefill) {
                long t0 = System.nanoTime();
                long failed = BlkWorkload.prefill(fe.queue(0), 0, region / 512 * 512, Math.min(iodepth, 8),
                        fe.hasFeature(dev.vmm.virtio.blk.VirtioBlk.VIRTIO_BLK_F_FLUSH));
                if (!json) {
                    out.printf(Locale.ROOT, "prefill: stamped %,d bytes in %.1f s%n", region / 512 * 512, (System.nanoTime() - t0) / 1e9);
                    out.flush();
                }
                if (failed > 0) {
                    err.println("vmm bench vhost-user: NOT A RESULT: " + failed + " requests of the prefill failed");
                    err.flush();
                    return EXIT_NOT_A_RESULT;
                }
            }
            boolean checking = readCheck && !pattern.write();
            if (checking) {
                for (int i = 0; i < queues; i++) {
                    String bad = BlkWorkload.probeStamped(fe.queue(i), i * perQueue, perQueue, (int) bsBytes);
                    if (bad != null) {
                        err.println("vmm bench vhost-user: the disk is not stamped, so reads cannot be checked: " + bad
                                + ". Stamp it first: run once with --prefill (or serve an image made by 'vmm bench stamp-image');"
                                + " or pass --no-read-check (reads are then not checked).");
                        err.flush();
                        return 1;
                    }
                }
            }
            List<BlkWorkload> jobs = new ArrayList<>();
            long runtimeNs = (long) (runtime * 1e9);
            long rampNs = (long) (ramp * 1e9);
            for (int i = 0; i < queues; i++) {
                jobs.add(new BlkWorkload(fe.queue(i), new BlkWorkload.Spec(pattern, (int) bsBytes, iodepth, i * perQueue, perQueue,
                        runtimeNs, rampNs, verify, 0x9E3779B97F4A7C15L * (i + 1) ^ System.nanoTime(), flushEvery, checking)));
            }
            BlkWorkload.Result[] results = new BlkWorkload.Result[queues];
            Throwable[] failures = new Throwable[queues];
            List<Thread> threads = new ArrayList<>();
            for (int i = 0; i < queues; i++) {
                int qi = i;
                Thread t = new Thread(() -> {
                    try {
                        results[qi] = jobs.get(qi).run();
                    } catch (Throwable e) {
                        failures[qi] = e;
                    }
                }, "bench-queue-" + i);
                threads.add(t);
                t.start();
            }
            boolean tty = System.console() != null && !json;
            long t0 = System.nanoTime();
            long lastDone = 0;
            long lastT = t0;
            for (Thread t : threads) {
                while (t.isAlive()) {
                    t.join(1000);
                    if (tty && t.isAlive()) {
                        long done = 0;
                        for (BlkWorkload j : jobs) done += j.progress();
                        long now = System.nanoTime();
                        double rate = (done - lastDone) * 1e9 / Math.max(1, now - lastT);
                        double el = (now - t0) / 1e9;
                        err.printf(Locale.ROOT, "\r  %5.1f / %.0f s  %,12.0f IOPS  %,10.1f MiB/s   ", el, ramp + runtime, rate, rate * bsBytes / (1 << 20));
                        err.flush();
                        lastDone = done;
                        lastT = now;
                    }
                }
            }
            if (tty) {
                err.print("\r" + " ".repeat(60) + "\r");
                err.flush();
            }
            for (Throwable f : failures) {
                if (f != null) throw f instanceof Exception e ? e : new RuntimeException(f);
            }
            BlkWorkload.Result total = new BlkWorkload.Result();
            for (BlkWorkload.Result r : results) total.add(r);
            print(fe, pattern, bsBytes, total, checking, out);
            if (!total.valid()) {
                err.println("vmm bench vhost-user: NOT A RESULT: " + notAResult(total));
                err.flush();
                return EXIT_NOT_A_RESULT;
            }
            return 0;
        }

        /** "2 requests failed (first: ...), 1 read returned wrong data (first: ...)". */
        static String notAResult(BlkWorkload.Result r) {
            List<String> parts = new ArrayList<>();
            if (r.errors > 0) parts.add(r.errors + (r.errors == 1 ? " request" : " requests") + " failed (first: " + r.firstError + ")");
            if (r.wrongReads > 0) parts.add(r.wrongReads + (r.wrongReads == 1 ? " read" : " reads") + " returned wrong data (first: " + r.firstWrongRead + ")");
            if (r.verifyFailures > 0) parts.add(r.verifyFailures + " of " + r.verified + " written blocks read back wrong (first: " + r.firstVerifyFailure + ")");
            return String.join("; ", parts);
        }

        private void print(VirtioBlkFrontend fe, BlkWorkload.Pattern pattern, long bsBytes, BlkWorkload.Result r, boolean checking, PrintWriter out) {
            LatencyHistogram h = r.latencies;
            LatencyHistogram fh = r.flushLatencies;
            double p50 = h.percentile(50) / 1e3, p99 = h.percentile(99) / 1e3, p999 = h.percentile(99.9) / 1e3;
            double allocPerReq = r.allocatedBytes < 0 || r.ios == 0 ? -1 : (double) r.allocatedBytes / r.ios;
            double kicksPerReq = r.ios == 0 ? 0 : (double) r.kicks / r.ios;
            double irqPerReq = r.ios == 0 ? 0 : (double) r.interrupts / r.ios;
            if (json) {
                out.printf(Locale.ROOT, "{\"socket\":\"%s\",\"rw\":\"%s\",\"bs\":%d,\"iodepth\":%d,\"queues\":%d,\"poll\":%s,"
                                + "\"runtime_s\":%.3f,\"ios\":%d,\"bytes\":%d,\"iops\":%.1f,\"mib_s\":%.2f,"
                                + "\"lat_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p99_9\":%.1f,\"mean\":%.1f,\"min\":%.1f,\"max\":%.1f},"
                                + "\"valid\":%s,\"errors\":%d,\"first_error\":%s,\"read_check\":%s,\"checked_reads\":%d,\"wrong_reads\":%d,"
                                + "\"first_wrong_read\":%s,\"verified\":%d,\"verify_failures\":%d,\"first_verify_failure\":%s,"
                                + "\"flush_every\":%d,\"flushes\":%d,\"flush_iops\":%.1f,\"flush_lat_us\":{\"p50\":%.1f,\"p99\":%.1f},"
                                + "\"alloc_bytes_per_request\":%.2f,"
                                + "\"kicks_per_request\":%.3f,\"interrupts_per_request\":%.3f,"
                                + "\"features\":\"0x%x\",\"protocol_features\":\"0x%x\",\"capacity_bytes\":%d}%n",
                        jsonEscape(socket.toString()), pattern.spelling(), bsBytes, iodepth, queues, poll, r.elapsedNs / 1e9, r.ios, r.bytes,
                        r.iops(), r.mibPerSec(), p50, p99, p999, h.mean() / 1e3, h.min() / 1e3, h.max() / 1e3,
                        r.valid(), r.errors, jsonString(r.firstError), checking, r.checkedReads, r.wrongReads, jsonString(r.firstWrongRead),
                        r.verified, r.verifyFailures, jsonString(r.firstVerifyFailure),
                        flushEvery, r.flushes, r.flushesPerSec(), fh.percentile(50) / 1e3, fh.percentile(99) / 1e3,
                        allocPerReq, kicksPerReq, irqPerReq, fe.ackedFeatures(), fe.ackedProtocolFeatures(), fe.capacityBytes());
            } else {
                out.printf(Locale.ROOT, "vhost-user %s: %s bs=%d iodepth=%d queues=%d%s, %.1f s%n", socket, pattern.spelling(), bsBytes, iodepth,
                        queues, poll ? " (busy poll)" : "", r.elapsedNs / 1e9);
                out.printf(Locale.ROOT, "  IOPS %,.0f   %,.1f MiB/s   requests %,d (OK ones only)%n", r.iops(), r.mibPerSec(), r.ios);
                out.printf(Locale.ROOT, "  latency (us): p50 %.1f  p99 %.1f  p99.9 %.1f  mean %.1f  max %.1f%n", p50, p99, p999, h.mean() / 1e3, h.max() / 1e3);
                if (flushEvery > 0) {
                    out.printf(Locale.ROOT, "  flushes %,d (one per %d writes, %,.0f/s), flush latency (us): p50 %.1f  p99 %.1f%n", r.flushes, flushEvery,
                            r.flushesPerSec(), fh.percentile(50) / 1e3, fh.percentile(99) / 1e3);
                }
                out.printf(Locale.ROOT, "  failed requests %d%s%n", r.errors, r.firstError == null ? "" : " (first: " + r.firstError + ")");
                if (!pattern.write()) {
                    if (checking) {
                        out.printf(Locale.ROOT, "  read check: %,d reads checked, %d wrong%s%n", r.checkedReads, r.wrongReads,
                                r.firstWrongRead == null ? "" : " (first: " + r.firstWrongRead + ")");
                    } else {
                        out.println("  read check: off (--no-read-check): the data of the reads was NOT checked");
                    }
                }
                out.printf(Locale.ROOT, "  client: %s bytes allocated per request, %.3f kicks and %.3f interrupts per request%n",
                        allocPerReq < 0 ? "n/a" : String.format(Locale.ROOT, "%.2f", allocPerReq), kicksPerReq, irqPerReq);
                if (r.verified > 0 || r.verifyFailures > 0) {
                    out.printf(Locale.ROOT, "  verify: %d blocks read back, %d wrong%s%n", r.verified, r.verifyFailures,
                            r.firstVerifyFailure == null ? "" : " (first: " + r.firstVerifyFailure + ")");
                }
            }
            out.flush();
        }

        private static String jsonEscape(String s) {
            return s.replace("\\", "\\\\").replace("\"", "\\\"");
        }

        private static String jsonString(String s) {
            return s == null ? "null" : "\"" + jsonEscape(s) + "\"";
        }
    }

    /** Largest request --prefill and stamp-image write. */
    static final int PREFILL_CHUNK = 1 << 20;

    @Command(name = "stamp-image", sortOptions = false, usageHelpAutoWidth = true,
            description = {"Write a raw image for checked benchmark reads: random data, every 512-byte sector starting with"
                    + " its stamp (see 'vmm bench vhost-user --help'), every byte written (fully allocated, not sparse), then fsync.",
                    "An existing FILE is overwritten in place (its size is kept unless --size is given). Serve the image and run"
                    + " 'vmm bench vhost-user' with its default --read-check."})
    static final class StampImage implements Callable<Integer> {
        @CommandLine.Spec
        CommandLine.Model.CommandSpec spec;

        @CommandLine.Parameters(index = "0", paramLabel = "FILE", description = "The image file.")
        Path file;

        @Option(names = "--size", paramLabel = "SIZE", description = "Image size, a multiple of 512 (default: the existing file's size).")
        String size;

        @Option(names = "--seed", paramLabel = "N", description = "Seed of the random filler (default: random).")
        Long seed;

        @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help and exit.")
        boolean help;

        @Override
        public Integer call() throws Exception {
            PrintWriter out = spec.commandLine().getOut();
            long bytes;
            if (size != null) {
                bytes = parseSize(size, "--size");
            } else if (Files.exists(file)) {
                bytes = Files.size(file);
            } else {
                throw new CommandLine.ParameterException(spec.commandLine(), file + " does not exist: give --size");
            }
            if (bytes % 512 != 0 || bytes == 0) throw new CommandLine.ParameterException(spec.commandLine(), "the size must be a multiple of 512 above 0");
            long t0 = System.nanoTime();
            stamp(file, bytes, seed != null ? seed : System.nanoTime());
            out.printf(Locale.ROOT, "stamped %s: %,d bytes in %.1f s%n", file, bytes, (System.nanoTime() - t0) / 1e9);
            out.flush();
            return 0;
        }

        /** Writes {@code bytes} bytes of random data with {@link dev.vmm.vhostuser.frontend.BlkStamp} stamps (generation 0) to {@code file}, then fsyncs. */
        static void stamp(Path file, long bytes, long seed) throws java.io.IOException {
            java.util.SplittableRandom rnd = new java.util.SplittableRandom(seed);
            java.nio.ByteBuffer buf = java.nio.ByteBuffer.allocateDirect(PREFILL_CHUNK).order(java.nio.ByteOrder.LITTLE_ENDIAN);
            try (java.nio.channels.FileChannel ch = java.nio.channels.FileChannel.open(file, java.nio.file.StandardOpenOption.CREATE,
                    java.nio.file.StandardOpenOption.WRITE)) {
                for (long off = 0; off < bytes; off += PREFILL_CHUNK) {
                    int len = (int) Math.min(PREFILL_CHUNK, bytes - off);
                    buf.clear();
                    for (int i = 0; i < len; i += 8) buf.putLong(i, rnd.nextLong());
                    buf.limit(len);
                    dev.vmm.vhostuser.frontend.BlkStamp.stamp(buf, off, 0);
                    long pos = off;
                    while (buf.hasRemaining()) pos += ch.write(buf, pos);
                }
                ch.truncate(bytes);
                ch.force(true);
            }
        }
    }
}
