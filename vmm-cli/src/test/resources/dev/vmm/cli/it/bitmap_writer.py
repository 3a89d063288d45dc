#!/usr/bin/python3
"""Writes seeded random writes, zero writes and trims to an NBD export until STOP exists (or
COUNT requests were made), and appends each acknowledged request's range to LOG as
"offset length" lines: the ranges every dirty bitmap of the export's node must now cover.
Prints the number of requests on exit.

usage: bitmap_writer.py URI LOG STOP SEED COUNT
"""
import os
import random
import sys

import nbd

uri, log, stop, seed, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
n = 0
with open(log, "w") as out:
    while not os.path.exists(stop) and (count == 0 or n < count):
        length = rng.randint(1, 256) * 512
        off = rng.randrange(0, (size - length) // 512 + 1) * 512
        kind = rng.random()
        if kind < 0.8:
            h.pwrite(rng.randbytes(length), off)
        elif kind < 0.9 or not h.can_trim():
            h.zero(length, off)
        else:
            h.trim(length, off)
        out.write("%d %d\n" % (off, length))
        n += 1
h.flush()
h.shutdown()
print(n)
