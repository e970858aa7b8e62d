#!/usr/bin/env python3
"""The cost of enrichment (doc/enrichment.md), all on vs off, in the same run.

    python3 bench/enrich_bench.py            # the request handler in process, about 30 s
    python3 bench/enrich_bench.py --quick
    python3 bench/enrich_bench.py --api      # the whole API (twistd, HTTP, spool fsync), about 4 min

``--api`` runs the collector under wrk (Debian package) like bench/run's
api-* scenarios, enrich off and on alternately, 3 times each, for the pools
single, batch100 and relay100, and prints the collector's CPU time per
accepted event over 15 s of steady load (read from /proc and /metrics): on a
shared machine CPU per event moves far less than events per second.

Each request runs the collector's own handler (``StilgarApp.events``: decoding,
JSON, validation, normalisation, enrichment, privacy, the answer) in process,
with an intake that encodes the spool record and answers at once: no HTTP
parsing, no disk, no fsync. Those
are the same with and without enrichment, so the percentages printed are an
upper bound of the cost on the whole API (bench/run's api-* scenarios spend
most of their time there).

Traffic: browser-shaped events (bench/payloads.py) whose ``context.userAgent``
is drawn from 1,200 real-looking user agents with a Zipf law (a few browsers
dominate, a long tail, 2 % bots) and whose addresses are spread over the
fixture database's ranges; batches are those events relayed 100 at a time by a
server (each with its own ``context.ip``: payloads.py's ``relay100``). With all
enrichments on: geoip (all fields), user_agent, bots: flag. The same scenarios
over HTTP with the spool: ``bench/run --only api-relay100-w1-fsync,api-relay100-w1-fsync-enrich``.
"""

import argparse
import gzip
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import payloads  # noqa: E402
from twisted.internet import defer  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from stilgar.config import parse_config  # noqa: E402
from stilgar.forwarder import Record  # noqa: E402
from stilgar.stats import Stats  # noqa: E402
from stilgar.web.app import RequestContext, StilgarApp  # noqa: E402
from stilgar.web.routes import ROUTES  # noqa: E402
from tests.mmdb_fixture import write_mmdb  # noqa: E402

KEY = "bench-key"


class Traffic:
    """bench/payloads.py's visitors: browser events with their own user agent and address."""

    def __init__(self, seed=7):
        self.gen = payloads._Gen(seed)

    def single(self):
        e = self.gen.browser_event()
        e["context"]["userAgent"] = self.gen.visitor_agent()
        return ROUTES_BY_TYPE[e["type"]], json.dumps(e).encode(), b"", self.gen.visitor_ip()

    def batch(self, n=100):
        # what payloads.py's relay100 requests carry
        events = [self.gen.relayed_event() for _ in range(n)]
        body = gzip.compress(json.dumps({"batch": events, "sentAt": events[-1]["sentAt"]}).encode(), 6)
        return ROUTES["/v1/batch"], body, b"gzip", "10.0.0.5"


ROUTES_BY_TYPE = {r.event_type: r for r in ROUTES.values() if r.events and r.event_type and r.name == r.event_type}


class NullIntake:
    """Encodes each request as the forwarder does for the spool (the added fields cost there
    too), then answers at once."""

    stopping = False

    def accepting(self, key):
        return True

    def accept(self, key, request_id, events):
        Record(key, request_id, events).encode()
        return defer.succeed(None)


class Request:
    """What the handler touches of a twisted.web request."""

    def __init__(self, body, encoding):
        self.content = io.BytesIO(body)
        headers = {b"content-type": [b"application/json"]}
        if encoding:
            headers[b"content-encoding"] = [encoding]
        self.requestHeaders = Headers(headers)
        self.responseHeaders = Headers()
        self.method, self.uri = b"POST", b"/v1/batch"
        self.code = None

    def setResponseCode(self, code):
        self.code = code

    def setHeader(self, name, value):
        self.responseHeaders.setRawHeaders(name, [value])


def make_app(enrich, mmdb):
    data = {"destinations": [{"type": "blackhole", "write_keys": [KEY]}], "privacy": {"ip": "drop"}}
    if enrich:
        data["enrich"] = {"geoip": {"database": mmdb, "fields": ["country", "region", "city", "postal",
                                                                  "location", "timezone"]},
                          "user_agent": True, "bots": {"action": "flag"}}
    clock = Clock()
    clock.advance(time.time())
    return StilgarApp(parse_config(data), NullIntake(), Stats(up_since=clock.seconds()), clock)


def run(app, requests):
    from ipaddress import ip_address
    start = time.process_time()  # this process's CPU: other load on the machine does not count
    for route, body, encoding, ip in requests:
        request = Request(body, encoding)
        ctx = RequestContext(route=route, request_id="b", client_ip=ip_address(ip), write_key=KEY)
        app.events(request, ctx)
        assert request.code == 200, request.code
    return time.process_time() - start


# -- the whole API --------------------------------------------------------------------

TWISTD_RUN = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
CACHE = os.path.join(tempfile.gettempdir(), "stilgar-bench-cache")
ENRICH_YAML = """enrich:
  geoip: {{database: {mmdb}, fields: [country, region, city, postal, location, timezone]}}
  user_agent: true
  bots: {{action: flag}}
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepted(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("stilgar_events_accepted_total"):
                return float(line.split()[1])
    return 0.0


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_once(directory, mmdb, pool, enrich, warmup=6, measure=15):
    """µs of collector CPU per accepted event, and events/s, over ``measure`` seconds."""
    port = _free_port()
    spool = os.path.join(directory, f"spool-{port}")
    config = os.path.join(directory, f"stilgar-{port}.yml")
    with open(config, "w") as f:
        f.write(f"server: {{ip: 127.0.0.1, port: {port}, origins: [\"{payloads.ORIGIN}\"]}}\nspool: {{path: {spool}}}\n"
                f"logging: {{level: warn}}\n{ENRICH_YAML.format(mmdb=mmdb) if enrich else ''}"
                f"destinations:\n  - {{type: blackhole, write_keys: [{payloads.WRITE_KEY}]}}\n")
    server = subprocess.Popen([sys.executable, "-c", TWISTD_RUN, "-n", "--pidfile=", "stilgar", "--config", config],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        for _ in range(300):
            try:
                _accepted(port)
                break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ, BENCH_POOL=pool, BENCH_RESULT=os.path.join(directory, "wrk.json"),
                   BENCH_START="0", BENCH_DELAY_MS="0", BENCH_THREADS="1")
        wrk = subprocess.Popen(["wrk", "-t1", "-c16", f"-d{warmup + measure + 3}s", "--timeout", "10s", "-s",
                                os.path.join(HERE, "wrk", "pool.lua"), f"http://127.0.0.1:{port}/"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(warmup)
        cpu0, acc0 = _cpu_seconds(server.pid), _accepted(port)
        time.sleep(measure)
        cpu1, acc1 = _cpu_seconds(server.pid), _accepted(port)
        wrk.wait(timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    events = acc1 - acc0
    return (cpu1 - cpu0) / events * 1e6, events / measure


def api(rounds=3, kinds=("single", "batch100", "relay100")):
    with tempfile.TemporaryDirectory() as directory:
        mmdb = write_mmdb(os.path.join(directory, "city.mmdb"))
        print(f"{'pool':<10} {'off us/ev':>10} {'on us/ev':>10} {'cost':>7}  (collector CPU per event, median of"
              f" {rounds}, alternated; events/s off/on)")
        for kind in kinds:
            pool = payloads.pool(kind, {"single": 60000}.get(kind, 12000), CACHE)
            runs = {False: [], True: []}
            for _ in range(rounds):
                for enrich in (False, True):
                    runs[enrich].append(api_once(directory, mmdb, pool, enrich))
            off, on = (statistics.median(c for c, _ in runs[k]) for k in (False, True))
            rates = "/".join(f"{statistics.median(r for _, r in runs[k]):.0f}" for k in (False, True))
            print(f"{kind:<10} {off:>10.1f} {on:>10.1f} {100 * (on / off - 1):>6.1f}%  {rates}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--api", action="store_true", help="the whole API under wrk (see above)")
    parser.add_argument("--pools", default="single,batch100,relay100", help="with --api: which pools")
    parser.add_argument("--rounds", type=int, default=3, help="with --api: runs of each, off and on")
    args = parser.parse_args()
    if args.api:
        return api(args.rounds, args.pools.split(","))
    singles, batches, rounds = (3000, 60, 3) if args.quick else (10000, 200, 7)
    with tempfile.TemporaryDirectory() as directory:
        mmdb = write_mmdb(os.path.join(directory, "city.mmdb"))
        traffic = Traffic()
        workloads = {"single": ([traffic.single() for _ in range(singles)], 1),
                     "batch100": ([traffic.batch() for _ in range(batches)], 100)}
        apps = {False: make_app(False, mmdb), True: make_app(True, mmdb)}
        print(f"{'scenario':<10} {'off ev/s':>10} {'on ev/s':>10} {'cost':>7}  (best of {rounds}, alternated)")
        for name, (requests, per) in workloads.items():
            # warm up both (the first UA misses are part of the measure below: the cache starts cold)
            best = {False: float("inf"), True: float("inf")}
            for _ in range(rounds):
                for enrich in (False, True):
                    best[enrich] = min(best[enrich], run(apps[enrich], requests))
            off, on = (len(requests) * per / best[k] for k in (False, True))
            print(f"{name:<10} {off:>10.0f} {on:>10.0f} {100 * (best[True] / best[False] - 1):>6.1f}%")
        enricher = apps[True].enrichment.for_key(KEY)
        cold = make_app(True, mmdb)
        run(cold, workloads["single"][0][:2000])
        cache = cold.enrichment.for_key(KEY).ua_cache
        print(f"UA cache: {len(enricher.ua_cache)} entries, {enricher.ua_cache.bytes // 1024} KiB;"
              f" hit rate {100 * cache.hit_rate():.1f}% over the first 2000 requests from a cold cache,"
              f" {100 * enricher.ua_cache.hit_rate():.2f}% over the whole run")
        for app in (*apps.values(), cold):
            app.enrichment.stop()


if __name__ == "__main__":
    main()
