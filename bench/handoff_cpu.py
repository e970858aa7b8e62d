#!/usr/bin/env python3
"""CPU of one hand-off to the spool's writer thread and back, two ways.

    python3 bench/handoff_cpu.py [--jobs N]

The spool's writer runs each commit job on a one-thread Twisted ThreadPool
(stilgar/spool/threads.py); a job is started when a record comes to an idle
writer. This measures a job's round trip (callInThread, the thread wakes, runs
the job, signals back) against a hand-off to a thread that stays alive,
waiting on a Condition: what a persistent writer thread would save per commit.
CPU time of the process (every thread) and wall time, per round trip.
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from stilgar.spool.threads import io_pool  # noqa: E402


def _measure(n, send):
    done = threading.Event()
    t0, w0 = time.process_time(), time.monotonic()
    for _ in range(n):
        done.clear()
        send(done.set)
        done.wait()
    return (time.process_time() - t0) / n * 1e6, (time.monotonic() - w0) / n * 1e6


def thread_pool(n):
    pool = io_pool("bench-handoff")
    pool.start()
    try:
        return _measure(n, pool.callInThread)
    finally:
        pool.stop()


def persistent_thread(n):
    cond, jobs = threading.Condition(), []

    def worker():
        while True:
            with cond:
                while not jobs:
                    cond.wait()
                job = jobs.pop()
            if job is None:
                return
            job()

    def send(job):
        with cond:
            jobs.append(job)
            cond.notify()

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        return _measure(n, send)
    finally:
        send(None)
        t.join()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=5000)
    n = p.parse_args().jobs
    for name, way in (("ThreadPool job", thread_pool), ("persistent thread", persistent_thread)):
        cpu, wall = way(n)
        print(f"{name:18s} {cpu:6.1f} µs CPU, {wall:6.1f} µs wall per round trip ({n} round trips)")


if __name__ == "__main__":
    main()
