#!/usr/bin/env python3
"""CPU per event of parsing + normalising SDK-shaped requests, in process.

    python3 bench/events_cpu.py              # about 20 s
    python3 bench/events_cpu.py --quick      # about 5 s
    python3 bench/events_cpu.py --msgspec    # also the decoders alone: orjson, msgspec, msgspec typed
    python3 bench/events_cpu.py --profile single   # cProfile of one shape

For each shape of bench/payloads.py (the bodies as the web layer hands them
over: decompressed, headers gone) it runs ``parse_json(body, cut_deep=True)``
then ``normalise_payload(...)`` as ``StilgarApp.events`` does (default
privacy: ``ip: drop``; no enrichment), over a pool of distinct requests, and
prints the median of several rounds of CPU time (``time.process_time``, not
wall time: the machine is shared) divided by the events handled. Issue 11's
target is 6 µs per track event.

Shapes: ``single`` (the browser SDK: one event per ``/v1/<type>``, full browser
context, ~1.4 KB), ``track1`` (the same, track only), ``batch20`` (Node SDK,
mixed types, ``originalTimestamp`` + ``sentAt``), ``batch100`` (Python SDK,
mixed, ``timestamp`` only: the end-to-end scenario's payload), ``track100``
(the same, track events only), ``relay100`` (browser events relayed 100 at a
time, each with ``context.ip``).

``--msgspec`` adds, per shape, the cost of decoding alone with each
candidate: orjson (plus the byte scan for integers beyond 64 bits it needs
to stay exact), msgspec untyped (what ``stilgar.jsoncodec`` uses) and
msgspec typed (``msgspec.Struct`` for the batch and the event envelope:
ids, type, datetimes, context typed and checked in C; unknown keys, which
doc/events.md keeps verbatim, are lost). doc/performance.md ("msgspec")
has the figures and the decision.
"""

import argparse
import cProfile
import datetime
import gzip
import os
import pstats
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import payloads  # noqa: E402

from stilgar.config import PrivacyConfig  # noqa: E402
from stilgar.events import normalise_payload, parse_json  # noqa: E402

SHAPES = ("single", "track1", "batch20", "batch100", "track100", "relay100")
PRIVACY = PrivacyConfig()
RECEIVED = datetime.datetime.now(datetime.timezone.utc)


def _track100(count):
    """Python SDK batches of 100 track events (the end-to-end scenario's main shape)."""
    gen = payloads._Gen(7)
    out = []
    for _ in range(count):
        events = []
        while len(events) < 100:
            event = gen.server_event("python")
            if event["type"] == "track":
                events.append(event)
        sent = payloads._iso(gen.t0 + 61, micro=True)
        out.append((None, payloads._dumps({"batch": events, "sentAt": sent})))
    return out


def _bodies(shape, count):
    """[(route type or None, body bytes)] of ``count`` distinct requests."""
    if shape == "track100":
        return _track100(count)
    kind = "single" if shape == "track1" else shape
    out = []
    for raw in payloads.requests(kind, count * (4 if shape == "track1" else 1), seed=7):
        head, body = raw.split(b"\r\n\r\n", 1)
        path = head.split(b" ", 2)[1].decode()
        if b"Content-Encoding: gzip" in head:
            body = gzip.decompress(body)
        route = path.rsplit("/", 1)[1]
        route = None if route == "batch" else route
        if shape == "track1" and route != "track":
            continue
        out.append((route, body))
    return out[:count]


def _handle(route, body):
    payload, cuts = parse_json(body, cut_deep=True)
    return normalise_payload(payload, route_type=route, received_at=RECEIVED, client_ip="203.0.113.9",
                             privacy=PRIVACY, max_events=5000, cut=cuts > 0)


def _events_per_pass(pool):
    return sum(len(_handle(route, body)) for route, body in pool)


def _round(pool, passes, work):
    t0 = time.process_time()
    for _ in range(passes):
        for route, body in pool:
            work(route, body)
    return time.process_time() - t0


def measure(pool, work, events, rounds, budget):
    """Median µs of CPU per event over ``rounds`` rounds of about ``budget`` s each."""
    once = max(_round(pool, 1, work), 1e-6)
    passes = max(1, int(budget / once))
    per_event = [_round(pool, passes, work) / (passes * events) * 1e6 for _ in range(rounds)]
    return statistics.median(per_event), min(per_event), max(per_event)


def _decoders():
    """{name: decode(route, body)} of the decoders compared by ``--msgspec``."""
    import msgspec
    import orjson
    from typing import Any, List, Optional, Union

    from stilgar.events.jsonparse import _has_big_int

    Id = Union[str, int, float, bool, None]

    class Event(msgspec.Struct):  # the envelope typed; unknown keys are dropped (!)
        type: Optional[str] = None
        messageId: Id = None
        anonymousId: Id = None
        userId: Id = None
        channel: Id = None
        event: Id = None
        sentAt: Any = None
        timestamp: Any = None
        originalTimestamp: Any = None
        context: Optional[dict] = None
        properties: Any = None
        traits: Any = None
        integrations: Any = None

    class Batch(msgspec.Struct):
        batch: Optional[List[Union[Event, Any]]] = None
        sentAt: Any = None

    typed = {None: msgspec.json.Decoder(Batch).decode, "x": msgspec.json.Decoder(Event).decode}
    untyped = msgspec.json.Decoder().decode

    def orjson_scan(route, body):  # orjson needs the big-integer scan to be exact
        _has_big_int(body)
        return orjson.loads(body)

    return {"orjson+int scan": orjson_scan,
            "msgspec": lambda route, body: untyped(body),
            "msgspec typed": lambda route, body: typed[None if route is None else "x"](body)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    ap.add_argument("--msgspec", action="store_true", help="also time msgspec's envelope decoding")
    ap.add_argument("--profile", metavar="SHAPE", help="cProfile one shape instead of timing")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, default all")
    args = ap.parse_args(argv)
    rounds, budget, count = (3, 0.3, 100) if args.quick else (5, 0.8, 300)

    if args.profile:
        pool = _bodies(args.profile, count)
        prof = cProfile.Profile()
        prof.enable()
        _round(pool, 20, _handle)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        return 0

    decoders = _decoders() if args.msgspec else {}
    print(f"CPU µs per event (time.process_time, median of {rounds} rounds; min-max), "
          f"Python {sys.version.split()[0]}")
    print(f"{'shape':10} {'events':>6}  {'parse+normalise':>22}" + "".join(
        f"  {name + ' (decode only)':>28}" for name in decoders))
    for shape in args.shapes.split(","):
        pool = _bodies(shape, count)
        events = _events_per_pass(pool)
        med, lo, hi = measure(pool, _handle, events, rounds, budget)
        line = f"{shape:10} {events / len(pool):6.0f}  {med:7.2f} ({lo:5.2f}-{hi:5.2f})"
        for decode in decoders.values():
            dmed, dlo, dhi = measure(pool, decode, events, rounds, budget)
            line += f"       {dmed:7.2f} ({dlo:5.2f}-{dhi:5.2f})"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
