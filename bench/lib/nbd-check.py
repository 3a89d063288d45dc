#!/usr/bin/python3
# bench/lib/nbd-check.py URI IMAGE [SHIFT] — a data check of an NBD export of IMAGE (libnbd's
# Python binding, Debian's python3-libnbd; run with the python3 that has it, not a pyenv one).
#
# fio's nbd engine does not check what it reads, so bench/direct runs this once per NBD server
# session, after the measured rows, while the server still serves:
#   1. 32 random 4 KiB blocks are written (random data) and flushed; each must then be in IMAGE at
#      its offset (read from the file, not through the server) and read back through the server.
#   2. 256 random 4 KiB reads and 8 random 1 MiB reads through the server must equal IMAGE's
#      bytes at the same offset (+ SHIFT: a deliberately wrong check for bench/direct --x-self-test).
# Prints one line; exit 0: all equal, 3: wrong data (the session's rows are not a result),
# 1: the check itself failed (connection, I/O error).
import os
import random
import sys

try:
    import nbd
except ImportError:
    print("nbd-check: the libnbd Python binding is missing (apt-get install python3-libnbd)")
    sys.exit(1)


def main():
    uri, image = sys.argv[1], sys.argv[2]
    shift = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    fd = os.open(image, os.O_RDONLY)
    rnd = random.Random()
    wrong = []

    def compare(what, off, got, want):
        if got != want:
            first = next(i for i in range(min(len(got), len(want))) if got[i] != want[i]) if len(got) == len(want) else 0
            wrong.append("%s at byte %d: first difference at +%d" % (what, off, first))

    blocks = size // 4096
    written = {}
    for _ in range(32):
        off = rnd.randrange(blocks) * 4096
        data = os.urandom(4096)
        h.pwrite(data, off)
        written[off] = data
    h.flush()
    for off, data in written.items():
        compare("written block, in the file", off, os.pread(fd, 4096, off), data)
        compare("written block, read back through the server", off, h.pread(4096, off), data)
    reads = 0
    for n, length in ((256, 4096), (8, 1 << 20)):
        for _ in range(n):
            off = rnd.randrange((size - length) // 4096 + 1) * 4096
            want = os.pread(fd, length, off + shift)
            compare("read of %d bytes" % length, off, h.pread(length, off), want)
            reads += 1
    h.shutdown()
    os.close(fd)
    if wrong:
        print("nbd-check: WRONG DATA: %d of %d checks differ (first: %s)" % (len(wrong), reads + 2 * len(written), wrong[0]))
        sys.exit(3)
    print("nbd-check: ok: %d written blocks and %d reads (256 x 4 KiB, 8 x 1 MiB) equal the image file" % (len(written), reads))


if __name__ == "__main__":
    try:
        main()
    except nbd.Error as e:
        print("nbd-check: failed: %s" % e)
        sys.exit(1)
