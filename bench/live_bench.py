#!/usr/bin/env python3
"""The live view's cost: single-event API throughput without debug code, with it and nobody
watching, and with one subscriber reading /debug/events -- in the same run (doc/debugging.md).

    bench/live_bench.py                      # 3 interleaved rounds of 5 s each, spool without fsync
    bench/live_bench.py --rounds 5 --duration 10 --spool fsync
    bench/live_bench.py --base <git rev>     # the tree without debug code (default: merge-base with main)

"No debug code" is the base revision's tree (``git archive``), run from a temporary directory;
the other two run this tree. Variants alternate within each round (A B C, A B C, ...), so that
slow phases of a shared machine hit them alike; the median of the rounds is reported. The load
is bench/run's: wrk replaying the SDK-shaped single-event pool (bench/payloads.py).
"""

import argparse
import http.client
import importlib.machinery
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from stilgar.live import LiveHub  # noqa: E402


def load_bench_run():
    loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(HERE, "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class Subscriber(threading.Thread):
    """Reads /debug/events as fast as it comes; counts items."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.items = 0
        self.bytes = 0
        self.connection = None
        self.ready = threading.Event()

    def run(self):
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        self.connection.request("GET", "/debug/events?kind=event")
        response = self.connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"/debug/events answered {response.status}")
        self.ready.set()
        try:
            for line in response:
                self.bytes += len(line)
                if line.startswith(b"data: "):
                    self.items += 1
        except (OSError, ValueError, http.client.HTTPException):
            pass

    def stop(self):
        if self.connection is not None and self.connection.sock is not None:
            self.connection.sock.close()


def export_tree(rev, directory):
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5, help="seconds measured per variant and round")
    p.add_argument("--warmup", type=float, default=1)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--spool", choices=("fsync", "nofsync", "off"), default="nofsync")
    p.add_argument("--base", default=None, help="revision without debug code (default: merge-base with main)")
    p.add_argument("--max-rate", type=int, default=50, help="debug.max_rate of the subscribed run")
    args = p.parse_args()

    bench = load_bench_run()
    base = args.base or subprocess.run(["git", "-C", ROOT, "merge-base", "HEAD", "main"], check=True,
                                       capture_output=True, text=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="stilgar-live-bench-")
    old_tree = os.path.join(work, "base-tree")
    os.makedirs(old_tree)
    export_tree(base, old_tree)
    pool = bench.payloads.pool("single", 60000, bench.CACHE)
    scenario = bench.S("live", "stilgar", "single", spool=args.spool)
    variants = [("no debug code", old_tree, False), ("debug, no subscriber", ROOT, False),
                ("debug, 1 subscriber", ROOT, True)]
    results = {name: [] for name, _, _ in variants}
    start = 0
    try:
        for round_ in range(args.rounds):
            for name, tree, subscribed in variants:
                directory = os.path.join(work, f"r{round_}-{name.replace(' ', '_').replace(',', '')}")
                os.makedirs(directory)
                port = bench.free_port()
                config = bench.write_config(directory, port, scenario, None, None)
                if subscribed:
                    with open(config, "a") as f:
                        f.write(f"debug:\n  max_rate: {args.max_rate}\n")
                # the tree's stilgar first on sys.path (the installed twistd plugin imports it)
                run = f"import sys; sys.path.insert(0, {tree!r}); " + bench.TWISTD_RUN
                argv = [sys.executable, "-c", run, "-n", "--pidfile=", "stilgar", "--config", config]
                server = bench.Server(argv, port, os.path.join(directory, "server.log"))
                server.start()
                watcher = None
                try:
                    if subscribed:
                        watcher = Subscriber(port)
                        watcher.start()
                        if not watcher.ready.wait(10):
                            raise RuntimeError("the subscriber did not connect")
                    if args.warmup:
                        w = bench.run_wrk(pool, port, args.warmup, args.connections, start)
                        start += w["requests"] + args.connections + 1
                    cpu0 = bench.cpu_seconds(server.proc.pid)
                    r = bench.run_wrk(pool, port, args.duration, args.connections, start)
                    cpu = bench.cpu_seconds(server.proc.pid) - cpu0
                    start += r["requests"] + args.connections + 1
                finally:
                    if watcher is not None:
                        watcher.stop()
                    server.stop()
                seconds = r["duration_us"] / 1e6
                ok = r["requests"] - sum(r["errors"].values())
                rate = ok / seconds
                cpu_us = cpu * 1e6 / ok if ok else float("nan")
                results[name].append((rate, cpu_us))
                extra = f", {watcher.items} items streamed" if watcher is not None else ""
                print(f"round {round_ + 1} {name:22s} {rate:8.0f} requests/s {cpu_us:7.1f} µs CPU/request"
                      f" (errors {sum(r['errors'].values())}{extra})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nbase revision (no debug code): {base[:12]}; spool {args.spool}; {args.connections} connections; "
          f"median of {args.rounds} rounds of {args.duration:g} s")
    # Throughput swings with whatever else the machine runs; the server's CPU time per request
    # (user + system, from /proc) is steadier, and comparing it within each round (the variants
    # ran back to back) removes the drift between rounds: the median of those ratios is the verdict.
    reference = results["no debug code"]
    summary = {}
    for name, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        paired_rate = statistics.median(r / ref[0] - 1 for (r, _), ref in zip(runs, reference))
        paired_cpu = statistics.median(c / ref[1] - 1 for (_, c), ref in zip(runs, reference))
        summary[name] = {"requests_per_s": round(rate), "cpu_us_per_request": round(cpu, 1),
                         "throughput_vs_no_debug_code": round(paired_rate, 4),
                         "cpu_vs_no_debug_code": round(paired_cpu, 4)}
        print(f"  {name:22s} {rate:8.0f} requests/s {100 * paired_rate:+6.1f} %   "
              f"{cpu:7.1f} µs CPU/request {100 * paired_cpu:+6.1f} %")
    check = timeit.timeit("if hub.subscribers: pass", globals={"hub": LiveHub(clock=None)}, number=1_000_000)
    print(f"  the hot-path check itself (`if hub.subscribers:`, nobody watching): {check * 1000:.0f} ns, "
          f"{100 * check / statistics.median(c for _, c in reference):.4f} % of a request's CPU")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
