#!/usr/bin/python3
"""libnbd checks driven by the vmm-cli real-peer tests (dev.vmm.cli.it).

usage: nbd_checks.py CHECK key=value ...
Every check raises (exit code 1, traceback on stderr) on the first wrong answer and prints
"ok CHECK" at the end. 'qsd=1' relaxes the expectations where vmm goes beyond
qemu-storage-daemon 7.2 (see the comments marked QSD).
"""
import errno
import os
import random
import sys
import time

import nbd

MiB = 1024 * 1024


def args():
    a = dict(kv.split("=", 1) for kv in sys.argv[2:])
    a["qsd"] = a.get("qsd", "0") == "1"
    global QSD
    QSD = a["qsd"]
    return a


QSD = False


def expect_error(what, errnum, fn):
    try:
        fn()
    except nbd.Error as e:
        # QSD 7.2 answers EINVAL where the spec (and the issue) asks for ENOSPC or EPERM
        if e.errnum != errnum and not (QSD and e.errnum == errno.EINVAL):
            raise AssertionError("%s: expected %s, got errnum %s (%s)"
                                 % (what, errno.errorcode[errnum], e.errnum, e.string))
        return
    raise AssertionError("%s: expected %s, got success" % (what, errno.errorcode[errnum]))


def connect(uri, strict=True, meta=True):
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    if not strict:
        h.set_strict_mode(0)
    return h


def extents(h, offset, count):
    """[(offset, length, flags)] of base:allocation for [offset, offset+count)."""
    out = []

    def cb(metacontext, off, entries, err):
        assert metacontext == nbd.CONTEXT_BASE_ALLOCATION, metacontext
        pos = off
        for i in range(0, len(entries), 2):
            out.append((pos, entries[i], entries[i + 1]))
            pos += entries[i]
        return 0

    h.block_status(count, offset, cb)
    assert out and out[0][0] == offset, out
    return out


def covered(ext, offset, count):
    """The extents restricted to [offset, offset+count); asserts they cover it."""
    res = []
    end = offset + count
    for (o, ln, fl) in ext:
        if o >= end:
            break
        res.append((o, min(o + ln, end) - o, fl))
    assert sum(r[1] for r in res) == count, ("block status does not cover the range", ext, offset, count)
    return res


def check_negotiation(a):
    base = a["base"]  # nbd://host:port  or  nbd+unix:// ... handled by the caller giving full uris
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(base + "/disk0")
    listed = []
    h.opt_list(lambda name, desc: listed.append((name, desc)) or 0)
    names = dict(listed)
    assert set(names) == {"disk0", "ro"}, listed
    assert names["disk0"] == "writable disk", listed

    h.set_export_name("ro")
    h.opt_info()
    assert h.get_size() == int(a["rosize"]), h.get_size()
    assert h.is_read_only(), "ro export not read-only"

    h.set_export_name("nope")
    try:
        h.opt_info()
        raise AssertionError("NBD_OPT_INFO on an unknown export succeeded")
    except nbd.Error:
        pass

    h.set_export_name("disk0")
    h.set_full_info(True)
    h.opt_info()
    assert h.get_size() == int(a["size"]), h.get_size()
    assert not h.is_read_only()
    assert h.get_export_description() == "writable disk", h.get_export_description()
    bs_min = h.get_block_size(nbd.SIZE_MINIMUM)
    bs_max = h.get_block_size(nbd.SIZE_MAXIMUM)
    assert bs_min in (0, 1, 512, 4096), bs_min
    assert bs_max == 0 or bs_max >= 1 * MiB, bs_max

    ctx = []
    h.opt_list_meta_context(lambda name: ctx.append(name) or 0)
    assert "base:allocation" in ctx, ctx
    if hasattr(h, "opt_set_meta_context"):  # libnbd >= 1.16
        sel = []
        h.add_meta_context("base:allocation")
        h.opt_set_meta_context(lambda name: sel.append(name) or 0)
        assert sel == ["base:allocation"], sel

    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.opt_go()
    assert h.get_structured_replies_negotiated()
    assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    assert h.pread(512, 0) == bytes(512)
    h.shutdown()

    # NBD_OPT_ABORT ends negotiation cleanly; a new connection works afterwards
    h2 = nbd.NBD()
    h2.set_opt_mode(True)
    h2.connect_uri(base + "/disk0")
    h2.opt_abort()
    h3 = connect(base + "/disk0")
    assert h3.get_size() == int(a["size"])
    h3.shutdown()


def check_blockstatus(a):
    h = connect(a["uri"])
    size = h.get_size()
    assert size >= 16 * MiB, size
    h.pwrite(b"\x55" * (8 * MiB), 0)
    h.flush()
    ext = covered(extents(h, 0, 8 * MiB), 0, 8 * MiB)
    assert all(fl & nbd.STATE_HOLE == 0 for (_, _, fl) in ext), ("written data reported as hole", ext)

    # trim: reads back as zero; vmm punches a hole (QSD: discard=ignore keeps the data allocated)
    h.trim(1 * MiB, 1 * MiB)
    h.flush()
    if not a["qsd"]:
        ext = covered(extents(h, 1 * MiB, 1 * MiB), 1 * MiB, 1 * MiB)
        assert all(fl == nbd.STATE_HOLE | nbd.STATE_ZERO for (_, _, fl) in ext), ("trim", ext)
        assert h.pread(MiB, MiB) == bytes(MiB)

    # write zeroes, unmap allowed: reads as zero and status says zero
    h.zero(1 * MiB, 3 * MiB)
    assert h.pread(1 * MiB, 3 * MiB) == bytes(1 * MiB)
    ext = covered(extents(h, 3 * MiB, 1 * MiB), 3 * MiB, 1 * MiB)
    assert all(fl & nbd.STATE_ZERO for (_, _, fl) in ext), ("zero", ext)

    # write zeroes with NO_HOLE: reads as zero and status says zero. (Whether it is a "hole" is
    # the filesystem's word: ext4 reports fallocate(ZERO_RANGE)'s unwritten extents as holes.)
    h.zero(1 * MiB, 5 * MiB, nbd.CMD_FLAG_NO_HOLE)
    assert h.pread(1 * MiB, 5 * MiB) == bytes(1 * MiB)
    ext = covered(extents(h, 5 * MiB, 1 * MiB), 5 * MiB, 1 * MiB)
    assert all(fl & nbd.STATE_ZERO for (_, _, fl) in ext), ("zero NO_HOLE", ext)
    if h.can_fast_zero():
        try:
            h.zero(4096, 6 * MiB, nbd.CMD_FLAG_FAST_ZERO)
            assert h.pread(4096, 6 * MiB) == bytes(4096)
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP, e  # allowed answer to FAST_ZERO
    assert h.pread(4096, 7 * MiB) == b"\x55" * 4096, "neighbour of the zeroed ranges changed"

    # REQ_ONE: at most one extent
    one = []
    h.block_status(8 * MiB, 0, lambda m, o, e, err: one.append(list(e)) or 0, nbd.CMD_FLAG_REQ_ONE)
    assert len(one) == 1 and len(one[0]) == 2, one

    # a large read over a never-written region comes back as OFFSET_HOLE chunks
    chunks = []

    def chunk(buf, offset, status, err):
        chunks.append((offset, len(buf), status))
        return 0

    buf = h.pread_structured(4 * MiB, 12 * MiB, chunk)
    assert buf == bytes(4 * MiB)
    assert sum(c[1] for c in chunks) == 4 * MiB, chunks
    assert any(c[2] == nbd.READ_HOLE for c in chunks), ("no OFFSET_HOLE chunk for a hole", chunks)

    # DF: one chunk, no fragmentation
    chunks.clear()
    buf = h.pread_structured(1 * MiB, 12 * MiB, chunk, nbd.CMD_FLAG_DF)
    assert buf == bytes(MiB)
    assert len(chunks) == 1 and chunks[0][1] == MiB, ("DF read fragmented", chunks)
    h.shutdown()


def check_errors(a):
    h = connect(a["uri"], strict=False)
    size = h.get_size()
    h.pwrite(b"\x77" * 4096, 0)
    expect_error("read past end", errno.EINVAL, lambda: h.pread(4096, size - 2048))
    assert h.pread(4096, 0) == b"\x77" * 4096, "connection unusable after read past end"
    expect_error("read starting past end", errno.EINVAL, lambda: h.pread(512, size + 4096))
    assert h.pread(4096, 0) == b"\x77" * 4096
    expect_error("write past end", errno.ENOSPC, lambda: h.pwrite(b"\x11" * 8192, size - 4096))
    assert h.pread(4096, 0) == b"\x77" * 4096, "connection unusable after write past end (payload not consumed?)"
    expect_error("write zeroes past end", errno.ENOSPC, lambda: h.zero(8192, size - 4096))
    expect_error("trim past end", errno.EINVAL, lambda: h.trim(8192, size - 4096))
    expect_error("unknown command flag", errno.EINVAL, lambda: h.pread(512, 0, 1 << 12))
    assert h.pread(4096, 0) == b"\x77" * 4096
    # many errors in flight and a write after them still land
    for i in range(32):
        expect_error("repeated write past end", errno.ENOSPC, lambda: h.pwrite(b"\x22" * 65536, size))
    h.pwrite(b"\x33" * 4096, 4096)
    assert h.pread(4096, 4096) == b"\x33" * 4096
    h.shutdown()

    r = connect(a["rouri"], strict=False)
    rosize = r.get_size()
    assert r.is_read_only()
    before = r.pread(65536, 0)
    expect_error("write on read-only export", errno.EPERM, lambda: r.pwrite(b"\x44" * 65536, 0))
    assert r.pread(65536, 0) == before, "connection unusable after EPERM (payload not consumed?)"
    expect_error("write zeroes on read-only export", errno.EPERM, lambda: r.zero(4096, 0))
    expect_error("trim on read-only export", errno.EPERM, lambda: r.trim(4096, 0))
    assert r.pread(65536, 0) == before
    assert rosize > 0
    r.flush()  # flush on a read-only export is allowed (or at least harmless) when advertised
    r.shutdown()


def check_readonly(a):
    r = connect(a["uri"], strict=False)
    assert r.is_read_only()
    assert not r.can_trim() or a["qsd"]  # QSD 7.2 advertises TRIM on read-only exports
    size = r.get_size()
    before = r.pread(min(size, 4 * MiB), 0)
    expect_error("write", errno.EPERM, lambda: r.pwrite(b"\x44" * 65536, 0))
    expect_error("write FUA", errno.EPERM, lambda: r.pwrite(b"\x44" * 4096, 65536, nbd.CMD_FLAG_FUA))
    expect_error("write zeroes", errno.EPERM, lambda: r.zero(65536, 0))
    expect_error("trim", errno.EPERM, lambda: r.trim(65536, 0))
    assert r.pread(min(size, 4 * MiB), 0) == before
    r.shutdown()


def check_multiconn(a):
    A = connect(a["uri"])
    B = connect(a["uri"])
    if not a["qsd"]:  # QSD 7.2: multi-conn is off on writable exports by default
        assert A.can_multi_conn() and B.can_multi_conn(), "CAN_MULTI_CONN not advertised"
    rnd = random.Random(7)
    for i in range(64):
        off = rnd.randrange(0, A.get_size() // 4096 - 16) * 4096
        data = rnd.randbytes(4096 * rnd.randint(1, 16))
        w, r = (A, B) if i % 2 == 0 else (B, A)
        w.pwrite(data, off)
        w.flush()
        got = r.pread(len(data), off)
        assert got == data, "write+flush on one connection not visible on the other (round %d)" % i
    A.shutdown()
    B.shutdown()


def check_goodclient(a):
    """Verified I/O until the file 'stop' appears (or 'seconds' pass); prints the rounds done."""
    h = connect(a["uri"])
    rnd = random.Random(int(a.get("seed", "1")))
    size = h.get_size()
    deadline = time.time() + float(a.get("seconds", "60"))
    rounds = 0
    while time.time() < deadline and not os.path.exists(a["stop"]):
        off = rnd.randrange(0, size // 4096 - 64) * 4096
        data = rnd.randbytes(4096 * rnd.randint(1, 64))
        h.pwrite(data, off)
        if h.pread(len(data), off) != data:
            raise AssertionError("read back differs at %d" % off)
        if rounds % 16 == 0:
            h.flush()
        rounds += 1
        if rounds == 1:
            print("started", flush=True)
    h.flush()
    h.shutdown()
    assert rounds > 10, rounds
    print("rounds", rounds)


if __name__ == "__main__":
    check = sys.argv[1]
    globals()["check_" + check](args())
    print("ok", check)
