"""Spool throughput: appends/s and MB/s, fsync on and off.

    python bench/spool_bench.py [--dir DIR] [--seconds 3] [--concurrency 64]

``concurrency`` appenders each wait for their append before the next (like
HTTP requests waiting for their 200). Payloads: 40 KB (a request of ~100
events) and 300 B (a single small event). DIR must be on the disk under test
(the default is a temporary directory in the current one, not /tmp, which may
be a tmpfs).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402

from stilgar.spool import BEGINNING, Spool  # noqa: E402


@defer.inlineCallbacks
def scenario(base, fsync, size, seconds, concurrency):
    path = tempfile.mkdtemp(dir=base, prefix="spool-bench-")
    fsyncs = [0]

    def counting_fsync(fd):
        fsyncs[0] += 1
        os.fsync(fd)

    s = Spool(path, fsync=fsync, max_size=64 << 30, _fsync=counting_fsync)
    s.open()
    s.start()
    payload = os.urandom(size // 2).hex().encode()[:size]
    count = [0]
    deadline = time.monotonic() + seconds
    start_fsyncs = fsyncs[0]

    @defer.inlineCallbacks
    def appender():
        while time.monotonic() < deadline:
            yield s.append(payload)
            count[0] += 1

    t0 = time.monotonic()
    yield defer.gatherResults([appender() for _ in range(concurrency)])
    elapsed = time.monotonic() - t0
    commits = fsyncs[0] - start_fsyncs
    # read it all back
    t1 = time.monotonic()
    pos, read = BEGINNING, 0
    while True:
        recs = yield s.read(pos, max_bytes=4 << 20)
        if not recs:
            break
        read += len(recs)
        pos = recs[-1][1]
    read_elapsed = time.monotonic() - t1
    yield s.close()
    shutil.rmtree(path)
    n = count[0]
    print("fsync=%-5s payload=%6d B  %8.0f appends/s  %7.1f MB/s  %5.0f fsyncs/s  "
          "(%.0f appends/fsync)  read back %8.0f rec/s"
          % (fsync, size, n / elapsed, n * size / elapsed / 1e6, commits / elapsed,
             n / max(commits, 1) if fsync else float("nan"), read / max(read_elapsed, 1e-9)))


@defer.inlineCallbacks
def main(args):
    base = args.dir or tempfile.mkdtemp(dir=os.getcwd(), prefix=".spool-bench-")
    try:
        for fsync in (True, False):
            for size in (40000, 300):
                yield scenario(base, fsync, size, args.seconds, args.concurrency)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    task.react(lambda _reactor: main(args))
