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
server (each with its own ``context.ip``). With all enrichments on: geoip (all
fields), user_agent, bots: flag.
"""

import argparse
import gzip
import io
import json
import os
import random
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


def user_agents(rng, count=1200):
    """Distinct user agents, most popular first."""
    out = []
    for major in range(131, 100, -1):
        for build in range(0, 40, 3):
            out.append(f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       f"Chrome/{major}.0.{6700 - build}.{build} Safari/537.36")
            out.append(f"Mozilla/5.0 (iPhone; CPU iPhone OS {major - 113}_{build % 7} like Mac OS X) "
                       f"AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{major - 113}.{build % 7} "
                       f"Mobile/15E148 Safari/604.1")
            out.append(f"Mozilla/5.0 (Linux; Android {major - 117}; K) AppleWebKit/537.36 (KHTML, like Gecko) "
                       f"Chrome/{major}.0.{6700 - build}.{build} Mobile Safari/537.36")
            out.append(f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_{build % 8}) AppleWebKit/605.1.15 "
                       f"(KHTML, like Gecko) Version/{major - 113}.{build % 5} Safari/605.1.15")
            out.append(f"Mozilla/5.0 (X11; Linux x86_64; rv:{major}.0) Gecko/20100101 Firefox/{major}.0")
    out = out[:count]
    bots = ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
            "+http://www.bing.com/bingbot.htm) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/131.0.0.0 Safari/537.36"]
    return out, bots


class Traffic:
    def __init__(self, seed=7):
        self.rng = random.Random(seed)
        self.humans, self.bots = user_agents(self.rng)
        # Zipf weights over the human agents
        self.weights = [1 / (i + 1) ** 1.1 for i in range(len(self.humans))]
        self.gen = payloads._Gen(seed)
        self.networks = ["192.0.2.", "198.51.100.", "203.0.113.", "127.0.0."]

    def agent(self):
        if self.rng.random() < 0.02:
            return self.rng.choice(self.bots)
        return self.rng.choices(self.humans, self.weights)[0]

    def ip(self):
        return self.rng.choice(self.networks) + str(self.rng.randrange(1, 255))

    def event(self):
        e = self.gen.browser_event()
        e["context"]["userAgent"] = self.agent()
        return e

    def single(self):
        e = self.event()
        return ROUTES_BY_TYPE[e["type"]], json.dumps(e).encode(), b"", self.ip()

    def batch(self, n=100):
        events = []
        for _ in range(n):
            e = self.event()
            e["context"]["ip"] = self.ip()
            events.append(e)
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
    start = time.perf_counter()
    for route, body, encoding, ip in requests:
        request = Request(body, encoding)
        ctx = RequestContext(route=route, request_id="b", client_ip=ip_address(ip), write_key=KEY)
        app.events(request, ctx)
        assert request.code == 200, request.code
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    singles, batches, rounds = (3000, 60, 3) if args.quick else (10000, 200, 5)
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
