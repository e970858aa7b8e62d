"""The forwarder: from accepted requests to destinations, never losing one.

Accepted requests are appended to the spool (a 200 means the events are on
disk), then put on a :class:`DeferredQueue`. A :class:`LoopingCall` drains the
queue and routes each request, by write key, to one *lane* per destination.

A lane feeds its destination and tracks what the destination has confirmed.
While it keeps up it is *live*: it takes requests straight from the queue.
When it falls behind (too many unconfirmed events in memory) or at start-up,
it *catches up*: it reads the spool from its own cursor until it reaches the
head, then turns live again. So a slow or down destination grows only its own
backlog on disk, never the memory, and never blocks another destination. The
lane's cursor (the first record not yet confirmed) is saved durably; segments
below every cursor are deleted by the spool.

Without a spool (``spool.enabled: false``, the original's unsafe behaviour)
lanes are always live and requests stay in memory, bounded by
``forwarder.max_queue_size``.
"""

import collections
import datetime
import random

import attr
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from . import jsoncodec, metrics
from .destinations import TransientError
from .intake import IIntake, Unavailable

__all__ = ["Forwarder", "Record", "Backoff"]

log = Logger(namespace="stilgar.forwarder")


def _iso(seconds):
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


@attr.s(slots=True)
class Record:
    """One accepted request: its write key, request id and normalised events."""

    write_key = attr.ib()
    request_id = attr.ib()
    events = attr.ib()
    pos = attr.ib(default=None)         # spool position (None without a spool)
    next_pos = attr.ib(default=None)

    def encode(self):
        return jsoncodec.dumps({"k": self.write_key, "r": self.request_id, "e": self.events})

    @classmethod
    def decode(cls, payload, pos, next_pos):
        data = jsoncodec.loads(payload)
        return cls(data["k"], data["r"], data["e"], pos, next_pos)


class RecentMessages:
    """messageId -> receivedAt of the most recently accepted events, bounded.

    A client resends a request whose answer it never saw (a crash between the
    fsync and the 200, a timeout) with the same messageIds. Giving the copy the
    first copy's ``receivedAt`` makes both rows share their sort key
    ``(received_at, id)``, so ReplacingMergeTree collapses them. Filled from the
    spool's newest records at start-up, so it survives a ``kill -9``.
    """

    def __init__(self, capacity=200_000):
        self.capacity = capacity
        self._seen = collections.OrderedDict()

    def __len__(self):
        return len(self._seen)

    def stamp(self, events):
        """Reuse the first ``receivedAt`` of known messageIds; remember the others."""
        seen = self._seen
        for event in events:
            mid = event.get("messageId")
            first = seen.get(mid)
            if first is None:
                received = event.get("receivedAt")
                if received is not None:
                    seen[mid] = received
            elif first != event.get("receivedAt"):
                event["receivedAt"] = first
        while len(seen) > self.capacity:
            seen.popitem(last=False)

    def load(self, payloads):
        """Remember the events of spooled records (oldest first)."""
        for payload in payloads:
            try:
                events = jsoncodec.loads(payload)["e"]
            except (ValueError, KeyError, TypeError):
                continue
            self.stamp([e for e in events if isinstance(e, dict) and "receivedAt" in e])


@attr.s
class Backoff:
    """Exponential backoff, 1 s doubling to 5 min, with full jitter on the top half."""

    initial = attr.ib(default=1.0)
    maximum = attr.ib(default=300.0)
    rng = attr.ib(factory=random.Random, repr=False)
    failures = attr.ib(default=0)

    def next_delay(self):
        base = min(self.maximum, self.initial * (2 ** self.failures))
        self.failures += 1
        return base / 2 + self.rng.random() * base / 2

    def reset(self):
        self.failures = 0


class Lane:
    """One destination's view of the stream of accepted requests."""

    read_chunk = 1 << 20

    def __init__(self, destination, forwarder):
        self.destination = destination
        self.name = destination.name
        self.forwarder = forwarder
        self.reactor = forwarder.reactor
        self.spool = forwarder.spool
        self.max_in_flight = forwarder.max_queue_size
        self.in_flight = 0                       # events given and not confirmed
        self.unconfirmed = collections.OrderedDict()   # pos -> [next_pos, done]
        self.memory = collections.deque()        # without a spool: records waiting for room
        self.memory_events = 0
        self.backoff = Backoff()
        self.live = self.spool is None
        self.read_pos = self.spool.cursor(self.name) if self.spool is not None else None
        self.saved_cursor = self.read_pos
        self._reading = False
        self._retry_calls = set()
        self.stopped = False
        self.confirmed_events = 0

    # -- cursor ---------------------------------------------------------------

    def cursor(self):
        """Where a restart must resume: the first unconfirmed record."""
        for pos in self.unconfirmed:
            return pos
        return self.read_pos

    def backlog_bytes(self):
        if self.spool is None:
            return 0
        return self.forwarder.distance(self.cursor(), self.spool.head)

    # -- feeding ----------------------------------------------------------------

    def offer(self, record):
        """A request arrived live (from the queue)."""
        if self.stopped:
            return
        if self.spool is None:
            if record.write_key not in self.destination.write_keys:
                return
            if self.in_flight >= self.max_in_flight:
                self.memory.append(record)
                self.memory_events += len(record.events)
            else:
                self._dispatch(record)
            return
        if not self.live:
            return  # it is on disk; the catch-up reader will get to it
        if record.pos < self.read_pos:
            return  # already read from the spool while catching up
        if self.in_flight >= self.max_in_flight:
            # too far behind to keep in memory: read it back from disk later
            self.live = False
            self.catch_up()
            return
        self.read_pos = record.next_pos
        self._dispatch(record)

    def catch_up(self):
        """Read the spool from ``read_pos`` until the head, then turn live."""
        if self._reading or self.live or self.stopped or self.spool is None:
            return
        if self.in_flight >= self.max_in_flight:
            return  # resumed by a confirmation
        self._reading = True
        d = self.spool.read(self.read_pos, self.read_chunk)
        d.addCallback(self._got_records)
        d.addErrback(self._read_failed)

    def _got_records(self, records):
        self._reading = False
        if self.stopped:
            return
        if not records:
            self.live = True
            return
        for pos, next_pos, payload in records:
            if pos < self.read_pos:
                continue
            self.read_pos = next_pos
            try:
                record = Record.decode(payload, pos, next_pos)
            except (ValueError, KeyError, TypeError):
                log.error("spool record at {pos} cannot be decoded; skipped", pos=pos)
                self.forwarder.stats.reject("undecodable spool record")
                continue
            self._dispatch(record)
        self.catch_up()

    def _read_failed(self, failure):
        self._reading = False
        log.failure("reading the spool for {name} failed; retrying", failure, name=self.name)
        self._later(self.backoff.next_delay(), self.catch_up)

    def _dispatch(self, record):
        events = record.events
        if record.write_key not in self.destination.write_keys:
            # routed elsewhere (or, after a configuration change, nowhere: counted)
            self._skip(record)
            return
        if self.forwarder.delivery_filter is not None:
            # suppressed subjects and consent (stilgar/regulations/suppression.py)
            kept = self.forwarder.delivery_filter.for_destination(self.name, events)
            if len(kept) != len(events):
                if not kept:
                    self._skip(record)
                    return
                record = Record(record.write_key, record.request_id, kept, record.pos, record.next_pos)
                events = kept
        self.in_flight += len(events)
        if record.pos is not None:
            self.unconfirmed[record.pos] = [record.next_pos, False]
        self._write(record)

    def _skip(self, record):
        if record.pos is not None:
            self.unconfirmed[record.pos] = [record.next_pos, True]
            self._advance()

    def _write(self, record):
        d = defer.maybeDeferred(self.destination.write, record.events)
        d.addCallbacks(self._confirmed, self._failed, callbackArgs=(record,), errbackArgs=(record,))
        d.addErrback(lambda f: log.failure("lane {name}: bookkeeping failed (a bug)", f, name=self.name))

    def _confirmed(self, _, record):
        self.backoff.reset()
        n = len(record.events)
        self.in_flight -= n
        self.confirmed_events += n
        self.forwarder.stats.count_forwarded(record.events)
        if record.pos is not None:
            entry = self.unconfirmed.get(record.pos)
            if entry is not None:
                entry[1] = True
            self._advance()
        while self.memory and self.in_flight < self.max_in_flight:
            waiting = self.memory.popleft()
            self.memory_events -= len(waiting.events)
            self._dispatch(waiting)
        if not self.live:
            self.catch_up()

    def _failed(self, failure, record):
        if self.stopped:
            return
        if not failure.check(TransientError):
            log.failure("destination {name} failed on request {rid}; retrying", failure,
                        name=self.name, rid=record.request_id)
        delay = self.backoff.next_delay()
        self._later(delay, self._write, record)

    def _advance(self):
        while self.unconfirmed:
            pos, (next_pos, done) = next(iter(self.unconfirmed.items()))
            if not done:
                break
            self.unconfirmed.popitem(last=False)

    def _later(self, delay, f, *args):
        call = None

        def run():
            self._retry_calls.discard(call)
            f(*args)
        call = self.reactor.callLater(delay, run)
        self._retry_calls.add(call)

    def stop(self):
        self.stopped = True
        for call in list(self._retry_calls):
            if call.active():
                call.cancel()
        self._retry_calls.clear()


@implementer(IIntake)
class Forwarder(service.Service):
    """Takes accepted requests (spooling them first) and feeds every destination."""

    name = "forwarder"

    def __init__(self, destinations, *, spool, stats, reactor, max_queue_size=65536,
                 shutdown_timeout=10.0, drain_interval=0.005, cursor_interval=1.0,
                 backlog_ratio=0.8, recent_messages=200_000, delivery_filter=None):
        self.destinations = list(destinations)
        self.spool = spool
        self.stats = stats
        self.reactor = reactor
        self.max_queue_size = max_queue_size
        self.shutdown_timeout = shutdown_timeout
        self.drain_interval = drain_interval
        self.cursor_interval = cursor_interval
        self.backlog_ratio = backlog_ratio
        self.delivery_filter = delivery_filter   # at the door and per destination, or None
        self.queue = defer.DeferredQueue()
        self.queued_events = 0
        self.stopping = False
        self.spool_error = None
        self.lanes = {}
        self._routes = {}
        for destination in self.destinations:
            for key in destination.write_keys:
                self._routes.setdefault(key, []).append(destination.name)
        self._drain_loop = task.LoopingCall(self._drain_safely)
        self._drain_loop.clock = reactor
        self._cursor_loop = task.LoopingCall(self._tick_safely)
        self._cursor_loop.clock = reactor
        self.unrouted = 0
        self.recent = RecentMessages(recent_messages)
        self._spool_full = False
        self._refused_keys = frozenset()

    def load_recent(self, max_bytes=64 << 20):
        """Learn the newest spooled messageIds (start-up only: reads the spool synchronously)."""
        if self.spool is not None and self.recent.capacity:
            self.recent.load(self.spool.scan_recent(max_bytes))
            log.info("{n} recent messageIds loaded from the spool", n=len(self.recent))

    # -- IIntake ------------------------------------------------------------------

    def accepting(self, write_key):
        # called for every request at header time: only reads what refresh_room() computed
        if self.stopping:
            return False
        if self.spool is None:
            return self.queued_events + self._memory_backlog() < self.max_queue_size
        return not self._spool_full and write_key not in self._refused_keys

    def refresh_room(self):
        """Recompute which write keys must wait (spool full, a lane's backlog over the ratio)."""
        if self.spool is None:
            return
        self._spool_full = self.spool.full()
        limit = self.backlog_ratio * self.spool.max_size
        behind = {name for name, lane in self.lanes.items() if lane.backlog_bytes() > limit}
        self._refused_keys = frozenset(
            key for key, names in self._routes.items() if behind.intersection(names))

    def accept(self, write_key, request_id, events):
        if self.stopping:
            return defer.fail(Unavailable(5))
        if not self.accepting(write_key):
            return defer.fail(Unavailable(30))
        if self.delivery_filter is not None:
            events = self.delivery_filter.at_door(events)
            if not events:
                return defer.succeed(None)   # all suppressed: answered 200, stored nowhere
        if self.recent.capacity:
            self.recent.stamp(events)
        record = Record(write_key, request_id, events)
        if self.spool is None:
            self._enqueue(record)
            return defer.succeed(None)
        payload = record.encode()
        d = self.spool.append(payload)
        d.addCallbacks(self._spooled, self._spool_failed, callbackArgs=(record, len(payload)))
        return d

    def _spooled(self, pos, record, size):
        record.pos, record.next_pos = pos, self.spool.record_end(pos, size)
        if self._spool_full is False and self.spool.full():
            self._spool_full = True
        self.spool_error = None
        self._enqueue(record)

    def _spool_failed(self, failure):
        self.refresh_room()
        self.spool_error = failure.getErrorMessage() or failure.type.__name__
        log.error("spool refused a request: {error}", error=self.spool_error)
        raise Unavailable(30)

    def _enqueue(self, record):
        self.queued_events += len(record.events)
        self.queue.put(record)

    def _memory_backlog(self):
        if self.spool is not None:
            return 0
        return sum(lane.in_flight + lane.memory_events for lane in self.lanes.values())

    def queue_capacity(self):
        return max(0, self.max_queue_size - self.queued_events - self._memory_backlog())

    # -- draining -----------------------------------------------------------------

    def drain(self):
        """Route everything queued to the lanes (the LoopingCall's body)."""
        self.refresh_room()
        pending = self.queue.pending
        if not pending:
            return
        self.queue.pending = []
        for record in pending:
            self.queued_events -= len(record.events)
            # every lane sees every record, so that its cursor moves past the ones not for it
            for lane in self.lanes.values():
                lane.offer(record)
            if record.write_key not in self._routes:
                self.unrouted += len(record.events)
                log.warn("request {rid}: write key routes to no destination; {n} events counted as unrouted",
                         rid=record.request_id, n=len(record.events))

    def _drain_safely(self):
        # a LoopingCall stops for good at its first exception: events would stop flowing
        try:
            self.drain()
        except Exception:
            log.failure("forwarder drain failed (a bug); the loop goes on")

    def distance(self, a, b):
        """Bytes on disk between two spool positions."""
        if a is None or b is None:
            return 0
        return self.spool.bytes_between(a, b)

    def save_cursors(self):
        if self.spool is None:
            return defer.succeed(None)
        saves = []
        for lane in self.lanes.values():
            cursor = lane.cursor()
            if cursor != lane.saved_cursor:
                lane.saved_cursor = cursor
                saves.append(self.spool.save_cursor(lane.name, cursor))
        d = defer.DeferredList(saves, consumeErrors=True)
        d.addCallback(self._cursor_results)
        return d

    def update_gauges(self):
        """The per-destination gauges of /metrics (once a second)."""
        for lane in self.lanes.values():
            metrics.DESTINATION_BACKLOG.labels(destination=lane.name).set(
                lane.in_flight + lane.destination.buffered())
            up = bool(lane.destination.health().get("up"))
            metrics.DESTINATION_UP.labels(destination=lane.name).set(1 if up else 0)
        if self.spool is not None:
            metrics.SPOOL_BYTES.set(self.spool.size)

    def _tick_safely(self):
        try:
            self.update_gauges()
            self.save_cursors()
        except Exception:
            log.failure("saving spool cursors failed (a bug); retried in a second")

    @staticmethod
    def _cursor_results(results):
        for ok, value in results:
            if not ok:
                log.failure("saving a spool cursor failed (kept in memory, retried)", value)

    # -- service --------------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.spool is not None:
            self.spool.set_consumers([d.name for d in self.destinations])
        for destination in self.destinations:
            self.lanes[destination.name] = Lane(destination, self)
            d = defer.maybeDeferred(destination.start)
            d.addErrback(lambda f, n=destination.name: log.failure("destination {name} failed to start", f, name=n))
        for lane in self.lanes.values():
            lane.catch_up()   # replay what the last run left unconfirmed
        self._drain_loop.start(self.drain_interval, now=False)
        self._cursor_loop.start(self.cursor_interval, now=False)

    @defer.inlineCallbacks
    def stopService(self):
        """Flush destinations within the shutdown timeout; what is left stays spooled."""
        self.stopping = True
        super().stopService()
        if self._drain_loop.running:
            self._drain_loop.stop()
        self.drain()
        flushing = defer.DeferredList(
            [defer.maybeDeferred(lane.destination.flush) for lane in self.lanes.values()]
            + [self._settled(lane) for lane in self.lanes.values()], consumeErrors=True)
        timeout = self.reactor.callLater(self.shutdown_timeout, flushing.cancel)
        try:
            yield flushing
        except defer.CancelledError:
            log.warn("shutdown timeout: unconfirmed events stay in the spool for the next start")
        if timeout.active():
            timeout.cancel()
        for lane in self.lanes.values():
            lane.stop()
        if self._cursor_loop.running:
            self._cursor_loop.stop()
        yield self.save_cursors()
        yield defer.DeferredList([defer.maybeDeferred(lane.destination.stop) for lane in self.lanes.values()],
                                 consumeErrors=True)
        if self.spool is not None:
            yield self.spool.close()

    def _settled(self, lane):
        """A Deferred fired once the lane has nothing in flight (polled: cheap, shutdown only)."""
        def check():
            if lane.in_flight == 0 and (lane.live or lane.spool is None) and not lane.memory:
                loop.stop()
        loop = task.LoopingCall(check)
        loop.clock = self.reactor

        def cancel(d):
            if loop.running:
                loop.stop()
        d = defer.Deferred(cancel)
        loop.start(0.05, now=True).chainDeferred(d)
        return d

    # -- reporting -------------------------------------------------------------------

    def health(self):
        accepting = not self.stopping and (self.spool is None or not self.spool.full()) \
            and self.spool_error is None
        destinations = {}
        all_up = True
        for name, lane in self.lanes.items():
            h = lane.destination.health()
            up = bool(h.get("up"))
            all_up &= up
            destinations[name] = {"status": "UP" if up else "DOWN", "since": _iso(h.get("since")),
                                  "backlog": lane.in_flight + lane.destination.buffered()}
        status = "DOWN" if not accepting else ("UP" if all_up else "DEGRADED")
        document = {"status": status, "acceptingEvents": accepting, "destinations": destinations,
                    "spool": self._spool_health()}
        return document

    def _spool_health(self):
        if self.spool is None:
            return {"enabled": False, "bytes": 0}
        h = dict(self.spool.health())
        h.setdefault("bytes", self.spool.size)
        return h

    def status(self, with_destinations):
        document = {"spool": self._spool_health(), "unrouted": self.unrouted}
        if self.spool_error is not None:
            document["spool"]["last_error"] = self.spool_error
        if with_destinations:
            for name, lane in self.lanes.items():
                entry = dict(lane.destination.status())
                entry.update({"in_flight": lane.in_flight, "confirmed": lane.confirmed_events,
                              "live": lane.live, "backlog_bytes": lane.backlog_bytes()})
                document[name] = entry
        return document
