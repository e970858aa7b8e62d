#!/usr/bin/env python3
"""CPU cost of the ClickHouse destination per event, in process.

    python3 bench/destination_cpu.py                 # every mix, 7 rounds of 20 000 events
    python3 bench/destination_cpu.py --rounds 3 --events 5000 --mix track
    python3 bench/destination_cpu.py --profile track # cProfile of one round, top functions
    python3 bench/destination_cpu.py --instructions --mix track   # instructions per event (valgrind)

What is measured: ``ClickHouseDestination.write()`` of normalised events (the
dicts the spool holds), 100 per write as a server SDK's batch, through row
building, fitting every value to its column, TSV escaping, buffering by
(table, column set), cutting INSERTs and encoding their bodies (UTF-8 bytes
ready to POST), and the confirmation of every write. Not measured: gzip and
HTTP (the client is a fake that answers every INSERT at once), parsing and
normalising (done once before the rounds: bench/run and doc/performance.md
measure those). The schema is warm (tables and columns exist), as in steady
state.

Figures are CPU time (``time.process_time``) per event, the median of the
rounds, so that other load on a shared machine moves them little, with the
garbage collector on (the objects built before the rounds frozen, as
``gc.freeze()`` at the service's start does). A track event is two rows
(``tracks`` and its per-event table), a page one, an identify with a userId
two (``identifies`` and ``users``). Results: doc/clickhouse.md, "Tests".
"""

import argparse
import cProfile
import datetime
import gc
import io
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402

from bench import callgrind  # noqa: E402
from bench.payloads import _Gen  # noqa: E402
from stilgar.destinations.clickhouse import ClickHouseType  # noqa: E402
from stilgar.destinations.clickhouse.destination import ClickHouseDestination  # noqa: E402
from stilgar.events.normalise import normalise_payload  # noqa: E402
from stilgar.service import GC_THRESHOLDS  # noqa: E402
from tests.test_clickhouse_destination import FakeClickHouse  # noqa: E402

MIXES = {
    # name: (generator, event type wanted or None for the SDK's own mix)
    "track": ("server", "track"),
    "identify": ("server", "identify"),
    "page": ("browser", "page"),
    "server-mix": ("server", None),     # bench/payloads.py batch100: 85% track, 10% identify, 5% page
    "browser-mix": ("browser", None),   # single: 55% track, 40% page, 5% identify
}

_PRIVACY = type("Privacy", (), {"ip": "keep", "hash_secret": None, "drop_fields": ()})()


class InstantClickHouse(FakeClickHouse):
    """The tests' fake server; once warm, INSERTs are counted, not parsed."""

    warm = False
    bodies = 0
    body_bytes = 0

    def insert(self, body, timeout=None):
        if not self.warm:
            return super().insert(body, timeout)
        self.bodies += 1
        self.body_bytes += len(body)
        return defer.succeed(b"")


def raw_events(mix, count, seed=1):
    kind, wanted = MIXES[mix]
    g = _Gen(seed)
    out = []
    while len(out) < count:
        e = g.browser_event() if kind == "browser" else g.server_event("python")
        if wanted is None or e["type"] == wanted:
            out.append(e)
    return out


def normalised_batches(mix, count, size=100, seed=1):
    received = datetime.datetime.now(datetime.timezone.utc)
    events = raw_events(mix, count, seed)
    batches = []
    for i in range(0, len(events), size):
        batches.append(normalise_payload({"batch": events[i:i + size]}, route_type=None, received_at=received,
                                         client_ip="203.0.113.9", privacy=_PRIVACY, max_events=5000))
    return batches


def destination():
    clock = task.Clock()
    clock.advance(time.time())
    ch = InstantClickHouse("18.16.1")
    settings = ClickHouseType.parse_settings({"host": "ch", "database": "db"}, "d", lambda w: None)
    dest = ClickHouseDestination("clickhouse:db", ["k"], settings, clock, client=ch)
    dest.start()
    return dest, ch, clock


def run_round(dest, clock, batches):
    ds = [dest.write(b) for b in batches]
    dest.flush()
    clock.advance(0)
    done = []
    defer.gatherResults(ds).addBoth(done.append)
    if not done or not isinstance(done[0], list):
        raise SystemExit(f"the writes did not complete: {done}")


def fresh_rounds(mix, rounds, count):
    """The warm round's batches, then each measured round's: other events
    (ids, times, values) every round, as traffic is, so that no memo holds
    a round's values before it."""
    return [normalised_batches(mix, count, seed=seed) for seed in range(1, rounds + 2)]


def measure(mix, rounds, count):
    dest, ch, clock = destination()
    warm, *measured = fresh_rounds(mix, rounds, count)
    run_round(dest, clock, warm)       # warm: tables, columns, insert plans
    ch.warm = True
    gc.collect()
    gc.freeze()       # as the service does once started: the input events and the fixtures are not walked
    gc.set_threshold(*GC_THRESHOLDS)   # and its collection thresholds
    times = []
    for batches in measured:
        t0 = time.process_time()
        run_round(dest, clock, batches)
        times.append(time.process_time() - t0)
    events = sum(map(len, warm))
    rows = dest.inserted / (rounds + 1)     # every round writes as many events, of one mix
    return {"mix": mix, "events": events, "rows_per_event": rows / events,
            "us_per_event": statistics.median(times) / events * 1e6,
            "us_per_row": statistics.median(times) / rows * 1e6,
            "bodies": ch.bodies, "bytes_per_event": ch.body_bytes / (events * rounds)}


def profile(mix, count):
    dest, ch, clock = destination()
    warm, batches = fresh_rounds(mix, 1, count)
    run_round(dest, clock, warm)
    ch.warm = True
    prof = cProfile.Profile()
    prof.enable()
    run_round(dest, clock, batches)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


_PREPARED = 4      # rounds of events every --rounds-only run builds, however many it writes


def _rounds_only(mix, rounds, count):
    """What --instructions runs under valgrind: the warm round, then ``rounds``
    more. Every run builds the same events (``_PREPARED`` rounds), so that
    the difference of two runs is the destination's work alone."""
    dest, ch, clock = destination()
    warm, *measured = fresh_rounds(mix, _PREPARED, count)
    measured = measured[:rounds]
    run_round(dest, clock, warm)
    ch.warm = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    for batches in measured:
        run_round(dest, clock, batches)


def instructions(mix, count=2000):
    """Instructions per event (callgrind's count): a run of 4 rounds minus a
    run of 1, over 3 rounds of ``count`` events. Unlike CPU time it does not
    move with the machine's load; about a minute per mix."""
    def run(rounds):
        return callgrind.instructions(__file__, "--rounds-only", mix, rounds, count)
    return (run(_PREPARED) - run(1)) / ((_PREPARED - 1) * count)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--events", type=int, default=20000, help="events per round")
    p.add_argument("--mix", action="append", choices=sorted(MIXES), help="default: every mix")
    p.add_argument("--profile", choices=sorted(MIXES), help="print a cProfile of one round of this mix")
    p.add_argument("--instructions", action="store_true",
                   help="instructions per event under valgrind (apt-get install valgrind) instead of CPU time")
    p.add_argument("--rounds-only", nargs=3, metavar=("MIX", "ROUNDS", "EVENTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds_only:
        _rounds_only(args.rounds_only[0], int(args.rounds_only[1]), int(args.rounds_only[2]))
        return
    if args.instructions:
        print(f"CPython {sys.version.split()[0]}, instructions per event (callgrind), 100 per write")
        for mix in args.mix or list(MIXES):
            print(f"{mix:<12} {instructions(mix):>10.0f}")
        return
    if args.profile:
        profile(args.profile, args.events)
        return
    print(f"CPython {sys.version.split()[0]}, CPU time per event (median of {args.rounds} rounds of "
          f"{args.events} events, 100 per write)")
    print(f"{'mix':<12} {'rows/event':>10} {'µs/event':>9} {'µs/row':>7} {'INSERTs':>8} {'bytes/event':>11}")
    for mix in args.mix or list(MIXES):
        r = measure(mix, args.rounds, args.events)
        print(f"{r['mix']:<12} {r['rows_per_event']:>10.2f} {r['us_per_event']:>9.2f} {r['us_per_row']:>7.2f} "
              f"{r['bodies']:>8} {r['bytes_per_event']:>11.0f}")


if __name__ == "__main__":
    main()
