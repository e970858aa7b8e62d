"""The forwarder: routing, lanes, backoff, catch-up from the spool, cursors (Clock only)."""

import collections

import attr
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from stilgar.destinations import IDestination, TransientError
from stilgar.forwarder import Backoff, Forwarder, Record
from stilgar.forwarder.lane import LaneState
from stilgar.intake import Unavailable
from stilgar.spool import ISpool
from stilgar.stats import Stats


@attr.s(frozen=True, order=True)
class Pos:
    segment = attr.ib()
    offset = attr.ib()


@implementer(ISpool)
class FakeSpool:
    """The spool's API (ISpool) over a list (one segment), with durable appends at once."""

    segment_size = 1 << 20

    def __init__(self, max_size=1 << 20):
        self.records = []          # (pos, next_pos, payload)
        self.cursors = {}
        self.max_size = max_size
        self.consumers = None
        self.closed = False
        self.fail_appends = False

    @property
    def head(self):
        return self.records[-1][1] if self.records else Pos(0, 0)

    @property
    def size(self):
        return self.head.offset

    def full(self):
        return self.size >= self.max_size

    def append(self, payload):
        if self.fail_appends:
            return defer.fail(OSError(28, "No space left on device"))
        pos = self.head
        nxt = Pos(0, pos.offset + len(payload) + 8)
        self.records.append((pos, nxt, payload))
        return defer.succeed(pos)

    @staticmethod
    def bytes_between(a, b):
        return max(0, b.offset - a.offset)

    @staticmethod
    def record_end(pos, size):
        return Pos(pos.segment, pos.offset + size + 8)

    def read(self, start, max_bytes=1 << 20, max_records=None):
        out = [r for r in self.records if r[0] >= start][: max_records or 10]
        return defer.succeed(out)

    def cursor(self, name):
        return self.cursors.get(name, Pos(0, 0))

    def save_cursor(self, name, pos):
        self.cursors[name] = pos
        return defer.succeed(None)

    def set_consumers(self, names):
        self.consumers = list(names)

    def health(self):
        return {"bytes": self.size, "problems": 0}

    def status(self):
        return dict(self.health(), last_write_error=None)

    def open(self):
        pass

    def start(self):
        pass

    def scan_recent(self, max_bytes):
        return [payload for _, _, payload in self.records]

    def close(self):
        self.closed = True
        return defer.succeed(None)


class FakeSpoolTests(unittest.TestCase):

    def test_provides_ispool(self):
        self.assertTrue(verifyObject(ISpool, FakeSpool()))
        self.assertTrue(verifyObject(ISpool, SteppedSpool()))


class SteppedSpool(FakeSpool):
    """A FakeSpool whose reads run in two steps the test orders: the reader thread
    looks at the records (``look``), later its answer reaches the reactor (``answer``)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.reads = []            # [start, max_records, deferred, result or None]

    def read(self, start, max_bytes=1 << 20, max_records=None):
        d = defer.Deferred()
        self.reads.append([start, max_records, d, None])
        return d

    def look(self):
        """The reader thread runs the oldest read that has not looked yet."""
        for entry in self.reads:
            if entry[3] is None:
                entry[3] = FakeSpool.read(self, entry[0], max_records=entry[1]).result
                return True
        return False

    def answer(self):
        """The oldest read that has looked delivers its records on the reactor."""
        if self.reads and self.reads[0][3] is not None:
            _, _, d, result = self.reads.pop(0)
            d.callback(result)
            return True
        return False

    def serve(self):
        """Run and answer every read, including those the answers start."""
        while self.look() or self.answer():
            pass


@implementer(IDestination)
class FakeDestination:
    def __init__(self, name, keys, auto=True):
        self.name = name
        self.write_keys = frozenset(keys)
        self.auto = auto
        self.received = []
        self.pending = []
        self.fail = 0
        self.flushed = 0

    def start(self):
        return defer.succeed(None)

    def write(self, events):
        if self.fail:
            self.fail -= 1
            return defer.fail(TransientError("down"))
        if self.auto:
            self.received.extend(events)
            return defer.succeed(None)
        d = defer.Deferred()
        self.pending.append((events, d))
        return d

    def confirm_all(self):
        pending, self.pending = self.pending, []
        for events, d in pending:
            self.received.extend(events)
            d.callback(None)

    def flush(self):
        self.flushed += 1
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def buffered(self):
        return sum(len(e) for e, _ in self.pending)

    def health(self):
        return {"up": True, "since": 0}

    def status(self):
        return {"status": "OK"}


def events(n, kind="track", start=0):
    return [{"type": kind, "messageId": f"m{start + i}", "anonymousId": "a"} for i in range(n)]


def ids(received):
    return [e["messageId"] for e in received]


class ForwarderTests(unittest.TestCase):
    def make(self, destinations, spool=None, **kw):
        self.clock = task.Clock()
        self.stats = Stats(up_since=0)
        forwarder = Forwarder(destinations, spool=spool, stats=self.stats, reactor=self.clock, **kw)
        forwarder.startService()
        return forwarder

    def test_routes_by_write_key(self):
        one, two = FakeDestination("one", ["a", "both"]), FakeDestination("two", ["b", "both"])
        f = self.make([one, two], FakeSpool())
        for key, start in [("a", 0), ("b", 10), ("both", 20)]:
            self.successResultOf(f.accept(key, "r", events(2, start=start)))
        self.clock.advance(0.01)
        self.assertEqual(ids(one.received), ["m0", "m1", "m20", "m21"])
        self.assertEqual(ids(two.received), ["m10", "m11", "m20", "m21"])
        self.assertEqual(self.stats.forwarded["tracks"], 8)

    def test_memory_mode_bounded(self):
        dest = FakeDestination("d", ["k"], auto=False)
        f = self.make([dest], None, max_queue_size=5)
        self.successResultOf(f.accept("k", "r", events(3)))
        self.clock.advance(0.01)
        self.successResultOf(f.accept("k", "r", events(3, start=3)))
        self.clock.advance(0.01)
        self.assertFalse(f.accepting("k"))
        self.failureResultOf(f.accept("k", "r", events(1)), Unavailable)
        dest.confirm_all()
        dest.confirm_all()
        self.assertEqual(ids(dest.received), [f"m{i}" for i in range(6)])
        self.assertTrue(f.accepting("k"))

    def test_failing_destination_retried_with_backoff_without_blocking_another(self):
        bad, good = FakeDestination("bad", ["k"]), FakeDestination("good", ["k"])
        bad.fail = 3
        f = self.make([bad, good], FakeSpool())
        self.successResultOf(f.accept("k", "r", events(2)))
        self.clock.advance(0.01)
        self.assertEqual(len(good.received), 2)
        self.assertEqual(bad.received, [])
        # retries after 0.8..1.2 s, then 1.6..2.4 s, then 3.2..4.8 s (stilgar/backoff.py):
        # the 4th attempt lands in 5.6..8.4 s
        self.clock.pump([0.01] * 550)
        self.assertEqual(bad.received, [])
        self.clock.pump([0.01] * 300)
        self.assertEqual(ids(bad.received), ["m0", "m1"])

    def test_spool_failure_is_503(self):
        spool = FakeSpool()
        spool.fail_appends = True
        f = self.make([FakeDestination("d", ["k"])], spool)
        failure = self.failureResultOf(f.accept("k", "r", events(1)), Unavailable)
        self.assertEqual(failure.value.retry_after, 30)
        self.assertFalse(f.health()["acceptingEvents"])
        spool.fail_appends = False
        self.successResultOf(f.accept("k", "r", events(1)))
        self.assertTrue(f.health()["acceptingEvents"])

    def test_slow_destination_catches_up_from_spool_exactly_once(self):
        spool = FakeSpool()
        slow = FakeDestination("slow", ["k"], auto=False)
        f = self.make([slow], spool, max_queue_size=4)
        for i in range(6):
            self.successResultOf(f.accept("k", f"r{i}", events(2, start=2 * i)))
            self.clock.advance(0.01)
        lane = f.lanes["slow"]
        self.assertFalse(lane.live)           # fell behind: memory bounded
        self.assertIs(lane.state, LaneState.BEHIND)    # no read until a confirmation makes room
        self.assertEqual(f.status(True)["slow"]["state"], "behind")
        self.assertLessEqual(lane.in_flight, 4)
        while slow.pending:
            slow.confirm_all()
        self.assertEqual(ids(slow.received), [f"m{i}" for i in range(12)])
        self.assertTrue(lane.live)
        self.assertEqual(f.status(True)["slow"]["state"], "live")
        self.successResultOf(f.accept("k", "late", events(1, start=99)))
        self.clock.advance(0.01)
        slow.confirm_all()
        self.assertEqual(ids(slow.received)[-1], "m99")
        self.assertEqual(len(ids(slow.received)), 13)

    def test_lane_memory_bounded_in_bytes_then_catches_up_from_spool(self):
        spool = FakeSpool()
        slow = FakeDestination("slow", ["k"], auto=False)
        f = self.make([slow], spool, max_queue_size=10 ** 6, max_queue_bytes=1000)
        big = [{"type": "track", "messageId": f"m{i}", "p": "x" * 300} for i in range(12)]
        for i, event in enumerate(big):
            self.successResultOf(f.accept("k", f"r{i}", [event]))
            self.clock.advance(0.01)
        lane = f.lanes["slow"]
        self.assertFalse(lane.live)                # over 1000 bytes: the rest waits on disk
        one = spool.records[0][1].offset - 8
        self.assertLess(lane.in_flight_bytes, 1000 + one)
        self.assertLess(lane.in_flight, 12)
        while slow.pending:
            slow.confirm_all()
        self.assertEqual(ids(slow.received), [f"m{i}" for i in range(12)])   # none dropped
        self.assertEqual((lane.in_flight, lane.in_flight_bytes), (0, 0))
        self.assertTrue(lane.live)

    def test_memory_mode_bounded_in_bytes(self):
        dest = FakeDestination("d", ["k"], auto=False)
        f = self.make([dest], None, max_queue_size=10 ** 6, max_queue_bytes=1000)
        self.successResultOf(f.accept("k", "r", [{"type": "track", "messageId": "m0", "p": "x" * 600}]))
        self.clock.advance(0.01)
        self.assertTrue(f.accepting("k"))
        self.successResultOf(f.accept("k", "r", [{"type": "track", "messageId": "m1", "p": "x" * 600}]))
        self.assertFalse(f.accepting("k"))         # 1000 bytes held (queued + in flight)
        self.failureResultOf(f.accept("k", "r", events(1)), Unavailable)
        self.clock.advance(0.01)
        dest.confirm_all()
        self.assertTrue(f.accepting("k"))
        self.assertEqual(ids(dest.received), ["m0", "m1"])

    def test_cursor_follows_confirmations_and_replay_resumes(self):
        spool = FakeSpool()
        dest = FakeDestination("d", ["k"], auto=False)
        f = self.make([dest], spool)
        for i in range(3):     # one drain tick each: three writes
            self.successResultOf(f.accept("k", f"r{i}", events(1, start=i)))
            self.clock.advance(0.01)
        events_, d = dest.pending.pop(0)
        d.callback(None)       # only the first record confirmed
        self.clock.advance(1)  # cursor loop
        self.assertEqual(spool.cursors["d"], spool.records[1][0])
        # a new process: replays from the cursor, the confirmed record is not sent again
        again = FakeDestination("d", ["k"])
        self.make([again], spool)
        self.assertEqual(ids(again.received), ["m1", "m2"])

    def test_the_records_of_one_tick_are_one_write(self):
        spool = FakeSpool()
        dest = FakeDestination("d", ["k"], auto=False)
        f = self.make([dest], spool)
        for i in range(3):
            self.successResultOf(f.accept("k", f"r{i}", events(2, start=2 * i)))
        self.clock.advance(0.01)
        self.assertEqual([ids(e) for e, _ in dest.pending], [["m0", "m1", "m2", "m3", "m4", "m5"]])
        self.assertEqual(f.lanes["d"].backlog_events(), 6)
        events_, d = dest.pending.pop(0)
        d.errback(TransientError("busy"))       # retried whole, after the backoff
        self.clock.advance(60)
        self.assertEqual([ids(e) for e, _ in dest.pending], [["m0", "m1", "m2", "m3", "m4", "m5"]])
        dest.pending.pop(0)[1].callback(None)
        self.clock.advance(1)
        self.assertEqual(f.lanes["d"].backlog_events(), 0)
        self.assertEqual(spool.cursors["d"], spool.head)     # past all three records

    def test_backlog_over_80_percent_refuses_only_its_keys(self):
        spool = FakeSpool(max_size=1000)
        stuck = FakeDestination("stuck", ["s"], auto=False)
        fine = FakeDestination("fine", ["f"])
        f = self.make([stuck, fine], spool)
        while f.accepting("s"):
            self.successResultOf(f.accept("s", "r", events(1)))
            self.clock.advance(0.01)
        self.assertTrue(f.accepting("f"))
        self.failureResultOf(f.accept("s", "r", events(1)), Unavailable)

    def test_unrouted_records_counted(self):
        f = self.make([FakeDestination("d", ["k"])], FakeSpool())
        self.successResultOf(f.accept("gone", "r", events(3)))
        self.clock.advance(0.01)
        self.assertEqual(f.unrouted, 3)

    def test_stop_flushes_and_saves_cursors(self):
        spool = FakeSpool()
        dest = FakeDestination("d", ["k"])
        f = self.make([dest], spool)
        self.successResultOf(f.accept("k", "r", events(2)))
        d = f.stopService()
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(len(dest.received), 2)
        self.assertGreaterEqual(dest.flushed, 1)
        self.assertEqual(spool.cursors["d"], spool.head)
        self.assertFalse(spool.closed)   # its owner closes it after this (tests/test_lifecycle.py)
        self.failureResultOf(f.accept("k", "r", events(1)), Unavailable)

    def test_stop_times_out_leaving_events_spooled(self):
        spool = FakeSpool()
        dest = FakeDestination("d", ["k"], auto=False)
        f = self.make([dest], spool, shutdown_timeout=2)
        self.successResultOf(f.accept("k", "r", events(2)))
        self.clock.advance(0.01)
        d = f.stopService()
        self.assertNoResult(d)
        self.clock.advance(2.1)
        self.successResultOf(d)
        self.assertEqual(spool.cursors.get("d", spool.records[0][0]), spool.records[0][0])


class CatchUpRaceTests(unittest.TestCase):
    """The switch from catching up to live must not skip a record spooled during the last read."""

    def test_record_offered_during_the_last_read_is_delivered(self):
        clock = task.Clock()
        spool = SteppedSpool()
        dest = FakeDestination("d", ["k"], auto=False)
        f = Forwarder([dest], spool=spool, stats=Stats(up_since=0), reactor=clock)
        f.startService()                   # the lane catches up: its first read is submitted
        spool.look()                       # ... and finds the spool empty
        self.successResultOf(f.accept("k", "r1", events(1, start=1)))   # R1 answered 200
        clock.advance(0.01)                # drained: the catching-up lane ignores R1
        spool.answer()                     # the empty read reaches the reactor
        spool.serve()
        self.successResultOf(f.accept("k", "r2", events(1, start=2)))   # R2 answered 200
        clock.advance(0.01)
        spool.serve()
        dest.confirm_all()
        clock.advance(1)                   # cursor saved
        self.assertEqual(ids(dest.received), ["m1", "m2"])
        self.assertTrue(f.lanes["d"].live)
        self.assertEqual(spool.cursors["d"], spool.head)

    def test_cursor_never_passes_the_raced_record(self):
        clock = task.Clock()
        spool = SteppedSpool()
        dest = FakeDestination("d", ["k"], auto=False)
        f = Forwarder([dest], spool=spool, stats=Stats(up_since=0), reactor=clock)
        f.startService()
        spool.look()
        self.successResultOf(f.accept("k", "r1", events(1, start=1)))
        clock.advance(0.01)
        spool.answer()
        self.successResultOf(f.accept("k", "r2", events(1, start=2)))
        clock.advance(0.01)
        for events_, d in [p for p in dest.pending if ids(p[0]) == ["m2"]]:
            dest.pending.remove((events_, d))
            dest.received.extend(events_)
            d.callback(None)               # R2 confirmed first
        clock.advance(1)
        self.assertLessEqual(spool.cursors.get("d", Pos(0, 0)), spool.records[0][0])


class InterleavingTests(unittest.TestCase):
    """Random interleavings of append, drain, read steps, confirmations and failures."""

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(replayed=st.lists(st.integers(1, 3), max_size=4),
           steps=st.lists(st.tuples(st.sampled_from(
               ["append", "drain", "look", "answer", "confirm", "fail", "tick"]),
               st.integers(1, 3)), max_size=60),
           max_queue_size=st.integers(1, 6), max_queue_bytes=st.integers(1, 400))
    def test_every_record_delivered_exactly_once(self, replayed, steps, max_queue_size, max_queue_bytes):
        clock = task.Clock()
        spool = SteppedSpool()
        appended = []                      # (pos, [messageIds]) in spool order
        counter = iter(range(10 ** 6))

        def spool_one(n):
            return [f"m{next(counter)}" for _ in range(n)]

        for n in replayed:                 # left by a previous run: replayed at start-up
            mids = spool_one(n)
            record = Record("k", "old", [{"type": "track", "messageId": m} for m in mids])
            pos = self.successResultOf(spool.append(record.encode()))
            appended.append((pos, mids))
        dest = FakeDestination("d", ["k"], auto=False)
        f = Forwarder([dest], spool=spool, stats=Stats(up_since=0), reactor=clock,
                      max_queue_size=max_queue_size, max_queue_bytes=max_queue_bytes)
        f.startService()
        lane = f.lanes["d"]

        def check():
            received = ids(dest.received)
            self.assertEqual(len(received), len(set(received)), "a record delivered twice")
            done = set(received)
            undelivered = [pos for pos, mids in appended if not done.issuperset(mids)]
            if undelivered:
                self.assertLessEqual(lane.cursor(), undelivered[0], "cursor past an undelivered record")
                self.assertLessEqual(spool.cursors.get("d", Pos(0, 0)), undelivered[0])

        for step, n in steps:
            if step == "append":
                mids = spool_one(n)
                before = spool.head
                self.successResultOf(f.accept("k", "r", [{"type": "track", "messageId": m} for m in mids]))
                appended.append((before, mids))
            elif step == "drain":
                f.drain()
            elif step == "look":
                spool.look()
            elif step == "answer":
                spool.answer()
            elif step == "confirm" and dest.pending:
                events_, d = dest.pending.pop((n - 1) % len(dest.pending))
                dest.received.extend(events_)
                d.callback(None)
            elif step == "fail" and dest.pending:
                _, d = dest.pending.pop((n - 1) % len(dest.pending))
                d.errback(TransientError("down"))
            elif step == "tick":
                clock.advance(n)
            check()
        for _ in range(1000):              # settle: everything offered, read and confirmed
            f.drain()
            spool.serve()
            dest.confirm_all()
            clock.advance(1)
            if not dest.pending and not spool.reads and not lane.unconfirmed and lane.live:
                break
            check()
        check()
        self.assertEqual(sorted(ids(dest.received)), sorted(m for _, mids in appended for m in mids))
        self.assertEqual(spool.cursors.get("d", Pos(0, 0)), spool.head if appended else Pos(0, 0))


class PublicQueue:
    """DeferredQueue's public API only (put, get): a consumer reaching for ``pending`` fails."""

    def __init__(self):
        self._items = collections.deque()
        self._waiting = collections.deque()

    def put(self, obj):
        if self._waiting:
            self._waiting.popleft().callback(obj)
        else:
            self._items.append(obj)

    def get(self):
        if self._items:
            return defer.succeed(self._items.popleft())
        d = defer.Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d


class ConsumerTests(unittest.TestCase):
    """The drain loop: a consumer of the queue's public API that sleeps while idle."""

    def make(self, destinations, spool, **kw):
        self.clock = task.Clock()
        f = Forwarder(destinations, spool=spool, stats=Stats(up_since=0), reactor=self.clock, **kw)
        f.consumer.queue = PublicQueue()
        self.ticks = []
        drain = f.consumer.drain
        f.consumer.drain = lambda: self.ticks.append(drain()) or self.ticks[-1]
        f.startService()
        return f

    def test_idle_collector_does_not_poll(self):
        spool = CountingSpool()
        f = self.make([FakeDestination("d", ["k"])], spool)
        at_start = spool.measured
        self.clock.advance(10)
        self.assertEqual(self.ticks, [0])                 # the first tick only, in 10 idle seconds
        self.assertFalse(f.consumer.loop.running)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)   # the 1 s cursor/gauge loop only
        self.assertEqual(spool.measured, at_start)        # and no backlog measured per tick

    def test_a_record_wakes_the_loop_an_idle_tick_stops_it(self):
        dest = FakeDestination("d", ["k"])
        f = self.make([dest], FakeSpool())
        self.successResultOf(f.accept("k", "r", events(2)))
        self.assertTrue(f.consumer.loop.running)
        self.assertEqual(dest.received, [])               # routed at the next tick, not inside put()
        self.clock.advance(f.drain_interval)
        self.assertEqual(ids(dest.received), ["m0", "m1"])
        self.clock.advance(f.drain_interval)              # an idle tick: the loop stops
        self.assertEqual(self.ticks, [1, 0])
        self.assertFalse(f.consumer.loop.running)
        self.clock.advance(5)
        self.assertEqual(self.ticks, [1, 0])
        self.successResultOf(f.accept("k", "r", events(1, start=2)))   # re-armed by the waiting get()
        self.clock.advance(f.drain_interval)
        self.assertEqual(ids(dest.received), ["m0", "m1", "m2"])

    def test_busy_collector_drains_in_batches(self):
        dest = FakeDestination("d", ["k"])
        f = self.make([dest], FakeSpool())
        for i in range(50):
            self.successResultOf(f.accept("k", f"r{i}", events(1, start=i)))
        self.clock.advance(f.drain_interval)
        self.assertEqual(self.ticks, [50])                # one tick for the whole burst, in order
        self.assertEqual(ids(dest.received), [f"m{i}" for i in range(50)])
        for i in range(50, 60):
            self.successResultOf(f.accept("k", f"r{i}", events(1, start=i)))
            self.clock.advance(f.drain_interval / 2)
            self.assertTrue(f.consumer.loop.running)        # still busy: no stop and restart per record
        self.clock.advance(f.drain_interval)
        self.assertEqual(len(ids(dest.received)), 60)

    def test_admission_follows_confirmations_without_a_tick(self):
        spool = FakeSpool(max_size=1000)
        stuck = FakeDestination("stuck", ["s"], auto=False)
        f = self.make([stuck, FakeDestination("fine", ["f"])], spool)
        while f.accepting("s"):
            self.successResultOf(f.accept("s", "r", events(1)))   # refused once spooled: no tick needed
            self.clock.advance(f.drain_interval)
        self.assertTrue(f.accepting("f"))
        stuck.confirm_all()
        self.assertTrue(f.accepting("s"))                 # recomputed on the confirmation itself

    def test_spool_room_followed_without_a_tick(self):
        spool = FakeSpool()
        f = self.make([FakeDestination("d", ["k"])], spool)
        self.clock.advance(1)                             # idle: the drain loop sleeps
        spool.max_size = 0                                # full (say, a destination far behind)
        self.assertFalse(f.accepting("k"))
        spool.max_size = 1 << 20                          # segments deleted by the maintenance thread
        self.assertTrue(f.accepting("k"))

    def test_stop_drains_and_leaves_later_records_spooled(self):
        spool = FakeSpool()
        dest = FakeDestination("d", ["k"])
        f = self.make([dest], spool)
        self.successResultOf(f.accept("k", "r", events(1)))
        d = f.stopService()
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(ids(dest.received), ["m0"])
        f._enqueue(Record("k", "late", events(1, start=1), spool.head, spool.head))   # a late commit
        self.clock.advance(1)
        self.assertEqual(ids(dest.received), ["m0"])      # not routed after the stop


class CountingSpool(FakeSpool):
    measured = 0

    def bytes_between(self, a, b):
        self.measured += 1
        return FakeSpool.bytes_between(a, b)


class RecordTests(unittest.TestCase):
    def test_round_trip_including_huge_integers(self):
        record = Record("k", "r", [{"type": "track", "n": 2 ** 80, "s": "é\u2028"}], Pos(0, 0), Pos(0, 9))
        back = Record.decode(record.encode(), Pos(0, 0), Pos(0, 9))
        self.assertEqual(back, record)

    def test_backoff_grows_and_resets(self):
        import random
        b = Backoff(rand=random.Random(1).random)
        delays = [b.next_delay() for _ in range(12)]
        self.assertTrue(0.8 <= delays[0] <= 1.2)
        self.assertTrue(240 <= delays[-1] <= 300)
        b.reset()
        self.assertLessEqual(b.next_delay(), 1.2)


class RecentMessagesTests(unittest.TestCase):
    def test_retry_gets_the_first_received_at(self):
        from stilgar.forwarder import RecentMessages
        recent = RecentMessages(capacity=2)
        first = [{"messageId": "a", "receivedAt": "t1"}, {"messageId": "b", "receivedAt": "t1"}]
        recent.stamp(first)
        retry = [{"messageId": "a", "receivedAt": "t2"}, {"messageId": "c", "receivedAt": "t2"}]
        recent.stamp(retry)
        self.assertEqual([e["receivedAt"] for e in retry], ["t1", "t2"])
        self.assertEqual(len(recent), 2)   # bounded: the oldest ('a') is forgotten
        late = [{"messageId": "a", "receivedAt": "t3"}]
        recent.stamp(late)
        self.assertEqual(late[0]["receivedAt"], "t3")

    def test_memory_per_entry_is_fixed_whatever_the_ids(self):
        import tracemalloc
        from stilgar.forwarder import RecentMessages
        recent = RecentMessages(capacity=2000)
        n = 2000
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            batch = [{"messageId": f"{i:05d}".ljust(RecentMessages.max_id_length, "x"),
                      "receivedAt": f"2026-01-01 00:00:00.{i:06d}"} for i in range(n)]
            recent.stamp(batch)
            del batch
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(recent), n)
        # the ids (512 characters each) are not kept, only their digests (and here one stamp each)
        self.assertLess(grown / n, RecentMessages.entry_bytes)
        retry = [{"messageId": "00007".ljust(RecentMessages.max_id_length, "x"), "receivedAt": "later"}]
        recent.stamp(retry)
        self.assertEqual(retry[0]["receivedAt"], "2026-01-01 00:00:00.000007")

    def test_overlong_ids_and_odd_stamps_are_not_remembered(self):
        from stilgar.forwarder import RecentMessages
        recent = RecentMessages()
        long_id = "x" * (RecentMessages.max_id_length + 1)
        recent.stamp([{"messageId": long_id, "receivedAt": "t1"},
                      {"messageId": 7, "receivedAt": "t1"},
                      {"messageId": "ok", "receivedAt": "t" * 1000},
                      {"messageId": "ok2", "receivedAt": None}])
        self.assertEqual(len(recent), 0)
        retry = [{"messageId": long_id, "receivedAt": "t2"}]
        recent.stamp(retry)
        self.assertEqual(retry[0]["receivedAt"], "t2")

    def test_loaded_from_spooled_records(self):
        from stilgar.forwarder import RecentMessages
        recent = RecentMessages()
        recent.load([Record("k", "r", [{"messageId": "x", "receivedAt": "t0"}]).encode(), b"garbage"])
        retry = [{"messageId": "x", "receivedAt": "t9"}]
        recent.stamp(retry)
        self.assertEqual(retry[0]["receivedAt"], "t0")


class GaugeTests(unittest.TestCase):
    def test_destination_gauges_follow_health_and_backlog(self):
        from stilgar import metrics
        clock = task.Clock()
        dest = FakeDestination("gauged", ["k"], auto=False)
        f = Forwarder([dest], spool=FakeSpool(), stats=Stats(up_since=0), reactor=clock)
        f.startService()
        self.successResultOf(f.accept("k", "r", events(3)))
        clock.advance(1.01)
        up = metrics.REGISTRY.get_sample_value("stilgar_destination_up", {"destination": "gauged"})
        backlog = metrics.REGISTRY.get_sample_value("stilgar_destination_backlog", {"destination": "gauged"})
        # 3 events given and unconfirmed; the fake's buffered() counts the same 3 (not added twice)
        self.assertEqual((up, backlog), (1.0, 3.0))
        self.assertEqual(f.health()["destinations"]["gauged"]["backlog"], 3)
        dest.confirm_all()
        clock.advance(1)
        backlog = metrics.REGISTRY.get_sample_value("stilgar_destination_backlog", {"destination": "gauged"})
        self.assertEqual(backlog, 0.0)


class HealthTests(unittest.TestCase):
    def test_up_degraded_down(self):
        clock = task.Clock()
        spool = FakeSpool()
        dest = FakeDestination("d", ["k"])
        f = Forwarder([dest], spool=spool, stats=Stats(up_since=0), reactor=clock)
        f.startService()
        doc = f.health()
        self.assertEqual((doc["status"], doc["acceptingEvents"], doc["destinations"]["d"]["status"]),
                         ("UP", True, "UP"))
        dest.health = lambda: {"up": False, "since": 5}
        doc = f.health()
        self.assertEqual((doc["status"], doc["acceptingEvents"], doc["destinations"]["d"]["status"]),
                         ("DEGRADED", True, "DOWN"))
        self.assertEqual(doc["destinations"]["d"]["since"], "1970-01-01T00:00:05+00:00")
        spool.max_size = 0   # full
        doc = f.health()
        self.assertEqual((doc["status"], doc["acceptingEvents"]), ("DOWN", False))
        self.assertNotIn("last_error", str(doc))


class IdleTests(unittest.TestCase):
    """An idle forwarder wakes for its 1 s cursor/gauge work only."""

    def test_wakeups_per_second_while_idle(self):
        clock = task.Clock()
        scheduled = []
        call_later = clock.callLater
        clock.callLater = lambda delay, f, *a, **kw: scheduled.append(f) or call_later(delay, f, *a, **kw)
        spool = CountingSpool()
        f = Forwarder([FakeDestination("d", ["k"])], spool=spool, stats=Stats(up_since=0), reactor=clock)
        f.startService()
        clock.advance(1)                       # the first drain tick has run; idle from here
        before, measured = len(scheduled), spool.measured
        clock.pump([0.1] * 100)                # 10 idle seconds
        self.assertLessEqual(len(scheduled) - before, 10)   # one a second: the cursor timer
        self.assertFalse(f.consumer.loop.running)
        self.assertEqual(spool.measured, measured)          # no backlog measured while idle
        self.assertEqual(spool.cursors, {})                 # and no cursor saved: none moved

    def test_cursor_timer_is_a_child_started_and_stopped_with_the_forwarder(self):
        from twisted.application.internet import TimerService
        clock = task.Clock()
        spool = FakeSpool()
        f = Forwarder([FakeDestination("d", ["k"])], spool=spool, stats=Stats(up_since=0), reactor=clock)
        timer = f.getServiceNamed("cursors")
        self.assertIsInstance(timer, TimerService)
        self.assertEqual(list(f), [timer])
        f.startService()
        self.assertTrue(timer.running)
        self.successResultOf(f.accept("k", "r", events(1)))
        clock.advance(1.0)
        self.assertEqual(spool.cursors["d"], spool.head)    # saved by the timer's tick
        d = f.stopService()
        clock.advance(0.1)
        self.successResultOf(d)
        self.assertFalse(timer.running)
        self.assertEqual(clock.getDelayedCalls(), [])       # nothing left scheduled after a stop


class AdmissionTests(unittest.TestCase):
    """One accepting rule for requests (accept, the web's accepting) and /health."""

    def make(self, spool, destinations=None, **kw):
        self.clock = task.Clock()
        f = Forwarder(destinations or [FakeDestination("d", ["k"])], spool=spool, stats=Stats(up_since=0),
                      reactor=self.clock, **kw)
        f.startService()
        return f

    def test_stopping_set_by_the_web_service_refuses_everywhere(self):
        f = self.make(FakeSpool())
        f.stopping = True                      # what the web service does when it stops listening
        self.assertFalse(f.accepting("k"))
        self.assertEqual(self.failureResultOf(f.accept("k", "r", events(1)), Unavailable).value.retry_after, 5)
        self.assertEqual((f.health()["status"], f.health()["acceptingEvents"]), ("DOWN", False))

    def test_full_spool_refuses_everywhere_with_the_longer_retry(self):
        spool = FakeSpool()
        f = self.make(spool)
        spool.max_size = 0
        self.assertFalse(f.accepting("k"))
        self.assertEqual(self.failureResultOf(f.accept("k", "r", events(1)), Unavailable).value.retry_after, 30)
        self.assertFalse(f.health()["acceptingEvents"])

    def test_memory_bound_without_a_spool_shows_on_health(self):
        dest = FakeDestination("d", ["k"], auto=False)
        f = self.make(None, [dest], max_queue_size=2)
        self.successResultOf(f.accept("k", "r", events(2)))
        self.assertFalse(f.accepting("k"))
        self.assertEqual((f.health()["status"], f.health()["acceptingEvents"]), ("DOWN", False))
        self.clock.advance(0.01)
        dest.confirm_all()
        self.assertTrue(f.health()["acceptingEvents"])

    def test_checks_read_only_backlog_measured_when_it_can_change(self):
        spool = CountingSpool(max_size=1000)
        stuck = FakeDestination("stuck", ["s"], auto=False)
        f = self.make(spool, [stuck, FakeDestination("fine", ["f"])])
        self.successResultOf(f.accept("s", "r", events(1)))
        measured = spool.measured
        for _ in range(100):
            self.assertTrue(f.accepting("s"))
            f.health()
        self.assertEqual(spool.measured, measured)   # per request: counters only
        while f.accepting("s"):
            self.successResultOf(f.accept("s", "r", events(1)))
            self.clock.advance(f.drain_interval)      # "fine" confirms: only "stuck" falls behind
        self.assertGreater(spool.measured, measured)  # measured exactly when the bound was passed
        self.assertTrue(f.accepting("f"))


class QueueConsumerTests(unittest.TestCase):
    def test_a_failing_handler_does_not_stop_the_drain(self):
        from stilgar.forwarder.consumer import QueueConsumer
        clock = task.Clock()
        handled = []

        def handle(items):
            if items == ["bad"]:
                raise RuntimeError("a bug")
            handled.extend(items)
        consumer = QueueConsumer(handle, clock, 0.005, queue=PublicQueue())
        consumer.start()
        consumer.put("bad")
        clock.advance(0.005)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        consumer.put("good")
        clock.pump([0.005] * 3)
        self.assertEqual(handled, ["good"])
        consumer.stop()
        consumer.put("after")
        clock.advance(1)
        self.assertEqual(handled, ["good"])          # stopped: it stays queued
        self.assertEqual(clock.getDelayedCalls(), [])


class CatchUpReadTests(unittest.TestCase):
    def test_a_chunk_is_dispatched_whole_before_the_next_read(self):
        """A destination that confirms at once must not start a read from the middle of the chunk."""
        spool = FakeSpool()                 # reads return 10 records at most
        starts = []
        read = spool.read
        spool.read = lambda start, *a, **kw: starts.append(start) or read(start, *a, **kw)
        for i in range(30):
            self.successResultOf(spool.append(Record("k", f"r{i}", events(1, start=i)).encode()))
        dest = FakeDestination("d", ["k"])
        f = Forwarder([dest], spool=spool, stats=Stats(up_since=0), reactor=task.Clock())
        f.startService()                    # replays the 30 records
        self.assertEqual(ids(dest.received), [f"m{i}" for i in range(30)])
        self.assertEqual(starts, [spool.records[0][0], spool.records[10][0], spool.records[20][0], spool.head])
        self.assertTrue(f.lanes["d"].live)


class IntakeInterfaceTests(unittest.TestCase):
    def test_forwarder_provides_iintake(self):
        from zope.interface.verify import verifyObject
        from stilgar.intake import IIntake
        for spool in (FakeSpool(), None):
            f = Forwarder([FakeDestination("d", ["k"])], spool=spool, stats=Stats(up_since=0), reactor=task.Clock())
            self.assertTrue(verifyObject(IIntake, f))
