#!/usr/bin/python3
"""Writes random data, zeroes and trims to an NBD export until STOP exists, and applies every
acknowledged request to REFERENCE (a raw file of the export's size), so that after the run the
image behind the export must equal REFERENCE. Requests are sequential: the order of acknowledged
writes is the order in which they land. Prints the number of requests on exit.

usage: nbd_writer.py URI REFERENCE STOP SEED [MAX_KIB]
"""
import os
import random
import sys

import nbd

uri, reference, stop, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
max_kib = int(sys.argv[5]) if len(sys.argv) > 5 else 256
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
ref = os.open(reference, os.O_RDWR)
n = 0
while not os.path.exists(stop):
    length = rng.randint(1, max_kib * 2) * 512
    off = rng.randrange(0, (size - length) // 512 + 1) * 512
    kind = rng.random()
    if kind < 0.85:
        data = rng.randbytes(length)
        h.pwrite(data, off)
        os.pwrite(ref, data, off)
    elif kind < 0.95 or not h.can_trim():
        h.zero(length, off)
        os.pwrite(ref, bytes(length), off)
    else:
        # A trim leaves undefined contents: read back what the server now says and keep that.
        h.trim(length, off)
        os.pwrite(ref, h.pread(length, off), off)
    n += 1
h.flush()
h.shutdown()
os.close(ref)
print(n)
