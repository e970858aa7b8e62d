#!/usr/bin/env python3
"""CPU time of one single-event request through the web layer, next to a bare twisted.web Site.

    python3 bench/web_cpu.py [--requests N] [--rounds R] [--profile]

Each request is a browser-shaped ``POST /v1/<type>`` (bench/payloads.py ``single``) written
into ``StilgarApp.site()`` over an in-memory transport on one kept-alive connection: the
channel, the gate, the Klein endpoint, decoding, JSON, normalisation and the answer. The
intake answers at once (no spool): what is measured is the web layer's own cost. The bare
row is a plain ``Site`` with a resource answering ``OK`` (bench/baseline_twisted.py), fed
the same bytes; it keeps twisted's defaults, as bench/baseline_twisted.py does, so it parses
every POST's Content-Type for a form (about a third of its cost here), which Stilgar's site
does not (``parsePOSTFormSubmission=False``). CPU time (``time.process_time``), best of R rounds, so that a shared machine
disturbs it less than wall time; prints microseconds of CPU per request and the ratio.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import payloads  # noqa: E402
from baseline_twisted import OK  # noqa: E402  (the bare row's resource)
from twisted.internet import defer  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.web import server  # noqa: E402
from zope.interface import implementer  # noqa: E402

from stilgar.config import parse_config  # noqa: E402
from stilgar.intake import IIntake  # noqa: E402
from stilgar.stats import Stats  # noqa: E402
from stilgar.web.app import StilgarApp  # noqa: E402

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


@implementer(IIntake)
class NullIntake:
    """Accepts everything at once: the spool's cost is not the web layer's."""

    stopping = False

    def accepting(self, write_key):
        return True

    def accept(self, write_key, request_id, events):
        return defer.succeed(None)


def stilgar_site():
    config = parse_config({"destinations": [{"type": "blackhole", "write_keys": [payloads.WRITE_KEY]}],
                           "server": {"origins": [payloads.ORIGIN]}})
    clock = Clock()
    clock.advance(time.time())
    return StilgarApp(config, NullIntake(), Stats(up_since=clock.seconds()), clock).site()


def bare_site():
    site = server.Site(OK(), reactor=Clock())
    site.log = lambda request: None
    return site


def connect(site):
    site.startFactory()
    channel = site.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    channel.makeConnection(transport)
    return channel, transport


def run(site, requests):
    """CPU seconds to answer ``requests`` on one connection; checks every answer is a 200."""
    channel, transport = connect(site)
    started = time.process_time()
    for raw in requests:
        channel.dataReceived(raw)
        out = transport.value()
        if not out.startswith(b"HTTP/1.1 200 "):
            raise SystemExit(f"unexpected answer: {out[:200]!r}")
        transport.clear()
    spent = time.process_time() - started
    channel.connectionLost(None)
    return spent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one round of the Stilgar site")
    args = parser.parse_args()
    requests = list(payloads.requests("single", args.requests))
    if args.profile:
        site = stilgar_site()
        cProfile.runctx("run(site, requests)", globals(), {"site": site, "requests": requests}, "/tmp/web_cpu.prof")
        pstats.Stats("/tmp/web_cpu.prof").sort_stats("tottime").print_stats(30)
        return
    sites = {"stilgar": stilgar_site(), "bare": bare_site()}
    run(sites["stilgar"], requests[:200])   # warm the caches (labels, enrich, routes)
    best = {name: min(run(site, requests) for _ in range(args.rounds)) for name, site in sites.items()}
    per = {name: 1e6 * spent / len(requests) for name, spent in best.items()}
    for name in ("bare", "stilgar"):
        print(f"{name:8} {per[name]:7.1f} us CPU per request (best of {args.rounds} x {len(requests)})")
    print(f"stilgar/bare rate {per['bare'] / per['stilgar']:.1%} (target >= 85%, doc/performance.md)")


if __name__ == "__main__":
    main()
