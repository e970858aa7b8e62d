"""The forwarder's CPU per event while catching up a spooled backlog.

    python bench/forwarder_cpu.py [--events 500000] [--batch 50] [--confirm now|later]
                                  [--dir DIR] [--max-queue-size 65536] [--profile N]

Spools ``--events`` normalised track events (records of ``--batch`` events, as
the API writes them) with a real :class:`stilgar.spool.Spool` (fsync off: the
disk is not what is measured), then starts a :class:`Forwarder` over that
spool with one in-process destination that confirms every write at once
(``now``) or at the next reactor turn (``later``, like a destination that
answers for a whole INSERT), and runs until every event is confirmed and the
lane is live again (issue 11's "catch-up").

Prints CPU time per event (``time.thread_time`` of the reactor thread: the
forwarder's own work, and ``time.process_time``: plus the spool's reader
thread), never wall time as a target: the machine is shared. The destination
does nothing but count, so the figures are the forwarder's (and the reactor's)
alone. The objects built so far are frozen first (``gc.freeze()``), as the
service does once started: with ``later``, the events survive the young
generations until confirmed, and the collections are a good part of the cost.
"""

import argparse
import cProfile
import gc
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402
from zope.interface import implementer  # noqa: E402

from stilgar.destinations import IDestination  # noqa: E402
from stilgar.forwarder import Forwarder, Record  # noqa: E402
from stilgar.spool import Spool  # noqa: E402
from stilgar.service import GC_THRESHOLDS  # noqa: E402
from stilgar.stats import Stats  # noqa: E402


def track_event(i):
    """A normalised track event of the usual size (about 600 bytes of JSON)."""
    return {
        "type": "track", "event": "Product Viewed", "messageId": f"9f0c8b6e-1d2a-4c3b-8e7f-{i:012d}",
        "anonymousId": "3a1f5c2e-8b9d-4e6f-a7b8-c9d0e1f2a3b4", "userId": f"user-{i % 977}",
        "channel": "server", "rudderId": "5d9b1c2a-3e4f-5a6b-7c8d-9e0f1a2b3c4d",
        "originalTimestamp": "2026-12-01T10:00:00.000Z", "sentAt": "2026-12-01T10:00:01.000Z",
        "timestamp": "2026-12-01T10:00:00.000Z", "receivedAt": "2026-12-01T10:00:01.123Z",
        "request_ip": "203.0.113.7",
        "properties": {"product_id": f"p-{i % 501}", "price": 19.99, "currency": "EUR", "quantity": 1},
        "context": {"library": {"name": "analytics-python", "version": "2.0.2"}, "locale": "en-GB",
                    "traits": {"plan": "pro"}, "ip": "203.0.113.7"},
        "integrations": {"All": True},
    }


@implementer(IDestination)
class CountingDestination:
    """Confirms every write, at once or at the next reactor turn; counts events and writes."""

    def __init__(self, reactor, later):
        self.name, self.write_keys = "fast", frozenset(["k"])
        self.reactor, self.later = reactor, later
        self.events = self.writes = 0
        self.done = defer.Deferred()
        self.expected = None
        self.waiting = []          # confirmed together at the next reactor turn (one "INSERT")

    def write(self, events):
        self.events += len(events)
        self.writes += 1
        if self.expected is not None and self.events >= self.expected and not self.done.called:
            self.reactor.callLater(0, self.done.callback, None)
        if not self.later:
            return defer.succeed(None)
        d = defer.Deferred()
        if not self.waiting:
            self.reactor.callLater(0, self._confirm)
        self.waiting.append(d)
        return d

    def _confirm(self):
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def start(self):
        return defer.succeed(None)

    flush = stop = start

    def buffered(self):
        return 0

    def health(self):
        return {"up": True, "since": 0}

    def status(self):
        return {"status": "OK"}


@defer.inlineCallbacks
def fill(reactor, path, total, batch):
    spool = Spool(path, fsync=False, max_size=16 << 30, reactor=reactor)
    spool.open()
    spool.start()
    pending, n, r = [], 0, 0
    while n < total:
        count = min(batch, total - n)
        payload = Record("k", f"r{r}", [track_event(n + i) for i in range(count)]).encode()
        pending.append(spool.append(payload))
        n, r = n + count, r + 1
        if len(pending) >= 500:
            yield defer.gatherResults(pending)
            pending = []
    yield defer.gatherResults(pending)
    yield spool.close()
    return spool.size


@defer.inlineCallbacks
def main(reactor, args):
    path = tempfile.mkdtemp(dir=args.dir, prefix="forwarder-cpu-")
    try:
        size = yield fill(reactor, path, args.events, args.batch)
        spool = Spool(path, fsync=False, max_size=16 << 30, reactor=reactor)
        spool.open()
        spool.start()
        reads = [0]
        read = spool.read
        spool.read = lambda *a, **kw: reads.__setitem__(0, reads[0] + 1) or read(*a, **kw)
        dest = CountingDestination(reactor, args.confirm == "later")
        dest.expected = args.events
        forwarder = Forwarder([dest], spool=spool, stats=Stats(up_since=time.time()), reactor=reactor,
                              max_queue_size=args.max_queue_size, recent_messages=0)
        lane_live = lambda: all(lane.live for lane in forwarder.lanes.values())   # noqa: E731
        # as the service does once started (stilgar/service.py): the long-lived objects leave the collector's sight
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        profile = cProfile.Profile() if args.profile else None
        thread0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        forwarder.startService()
        yield dest.done
        while not lane_live():
            yield task.deferLater(reactor, 0.001, lambda: None)
        thread1, process1, wall1 = time.thread_time(), time.process_time(), time.perf_counter()
        if profile is not None:
            profile.disable()
        yield forwarder.stopService()
        n = dest.events
        print(f"catch-up of {n} events ({args.batch} per record, {size / n:.0f} spooled bytes per event), "
              f"destination confirms {args.confirm}, {dest.writes} writes, {reads[0]} spool reads")
        print(f"  reactor thread CPU: {(thread1 - thread0) / n * 1e6:6.2f} us/event  (the forwarder)")
        print(f"  process CPU:        {(process1 - process0) / n * 1e6:6.2f} us/event  (+ spool reader thread)")
        print(f"  wall: {wall1 - wall0:.2f} s, {n / (wall1 - wall0):,.0f} events/s (shared machine: indicative)")
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--confirm", choices=("now", "later"), default="now")
    parser.add_argument("--max-queue-size", type=int, default=65536)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile the catch-up (slower) and print its N costliest functions")
    parser.add_argument("--dir", default=None, help="where the spool goes (default: the system's temp dir)")
    arguments = parser.parse_args()
    assert threading.current_thread() is threading.main_thread()
    task.react(main, [arguments])
