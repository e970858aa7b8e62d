#!/usr/bin/env python3
"""The cost of enrichment (doc/enrichment.md) on the API's request handler, all on vs off, same run.

    python3 bench/enrich_bench.py            # about 30 s on a quiet core
    python3 bench/enrich_bench.py --quick

Each request runs the collector's own handler (``StilgarApp.events``: decoding,
JSON, validation, normalisation, enrichment, privacy, the answer) in process,
with an intake that answers at once: no HTTP parsing, no spool, no fsync. Those
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
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import payloads  # noqa: E402
from twisted.internet import defer  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from stilgar.config import parse_config  # noqa: E402
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
    stopping = False

    def accepting(self, key):
        return True

    def accept(self, key, request_id, events):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
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
