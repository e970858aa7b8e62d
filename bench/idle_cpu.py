"""CPU of an idle collector: ``twistd -n stilgar`` with no traffic, measured from /proc.

    python bench/idle_cpu.py [--seconds 60] [--warmup 5] [--workers 1]

Starts a collector from this tree (blackhole destination, spool in a temporary
directory), waits until ``/health`` answers and ``--warmup`` seconds more, then
reads utime+stime of the process (and of its workers, with ``--workers`` > 1)
from ``/proc/<pid>/stat`` before and after ``--seconds`` without a request,
and prints the share of one core. Issue 11's target: at most 0.5 %.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "import sys, twisted.plugins; twisted.plugins.__path__.insert(0, %r); "
          "from twisted.scripts.twistd import run; sys.exit(run())" % os.path.join(ROOT, "twisted_plugins")]
CONFIG = """
server:
  ip: 127.0.0.1
  port: {port}
  workers: {workers}
spool:
  path: {spool}
logging:
  level: warn
destinations:
  - type: blackhole
    write_keys: [idle-key]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def family(pid):
    """The process and its children (the workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return [pid] + children


def main(args):
    directory = tempfile.mkdtemp(prefix="stilgar-idle-")
    port = free_port()
    config = os.path.join(directory, "stilgar.yml")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=port, workers=args.workers, spool=os.path.join(directory, "spool")))
    process = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "stilgar", "--config", config], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    sys.exit("the collector did not start")
                time.sleep(0.2)
        time.sleep(args.warmup)
        pids = family(process.pid)
        before, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(args.seconds)
        used, elapsed = cpu_seconds(pids) - before, time.monotonic() - t0
        print(f"idle collector ({len(pids)} process(es)), {elapsed:.0f} s without traffic: "
              f"{used:.2f} s of CPU, {100 * used / elapsed:.3f} % of a core")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--workers", type=int, default=1)
    main(parser.parse_args())
