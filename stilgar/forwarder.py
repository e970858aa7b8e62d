"""The forwarder: from accepted requests to destinations, never losing one.

Accepted requests are appended to the spool (a 200 means the events are on
disk), then put on a :class:`DeferredQueue`. A :class:`LoopingCall` drains the
queue through its public API (``get()`` while records are pending) and routes
each request, by write key, to one *lane* per destination. The loop runs while
records come and stops at its first idle tick; a ``get()`` left waiting on the
queue restarts it when the next record arrives, so an idle collector does not
poll. Which write keys wait for a slow destination (503) is recomputed when it
can change: a record spooled, a cursor moved.

A lane feeds its destination and tracks what the destination has confirmed.
While it keeps up it is *live*: it takes requests straight from the queue.
When it falls behind (too many unconfirmed events or bytes in memory) or at start-up,
it *catches up*: it reads the spool from its own cursor until it reaches the
head, then turns live again. So a slow or down destination grows only its own
backlog on disk, never the memory, and never blocks another destination. The
lane's cursor (the first record not yet confirmed) is saved durably; segments
below every cursor are deleted by the spool.

Memory is bounded in events (``forwarder.max_queue_size``) and in bytes of
encoded records (``forwarder.max_queue_bytes``) per lane, whichever comes first.
Without a spool (``spool.enabled: false``, the original's unsafe behaviour)
lanes are always live and requests stay in memory, bounded by the same two
limits (the API answers 503 beyond them).
"""

import collections
import datetime
import hashlib

import attr
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from . import jsoncodec, metrics
from .backoff import Backoff
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
    size = attr.ib(default=0, eq=False)  # bytes of its encoded form (what memory bounds count)

    def encode(self):
        return jsoncodec.dumps({"k": self.write_key, "r": self.request_id, "e": self.events})

    @classmethod
    def decode(cls, payload, pos, next_pos):
        data = jsoncodec.loads(payload)
        return cls(data["k"], data["r"], data["e"], pos, next_pos, len(payload))


class RecentMessages:
    """messageId -> receivedAt of the most recently accepted events, bounded.

    A client resends a request whose answer it never saw (a crash between the
    fsync and the 200, a timeout) with the same messageIds. Giving the copy the
    first copy's ``receivedAt`` makes both rows share their sort key
    ``(received_at, id)``, so ReplacingMergeTree collapses them. Filled from the
    spool's newest records at start-up, so it survives a ``kill -9``.

    Memory is a fixed size per entry whatever the clients send: the key is a
    16-byte BLAKE2b digest of the messageId, the value a ``receivedAt`` text
    (the collector's own timestamp, shared by the events of a request). Ids
    longer than ``max_id_length`` characters and odd ``receivedAt`` values are
    not remembered (SDKs send 36-character UUIDs).
    """

    max_id_length = 512
    max_stamp_length = 40
    entry_bytes = 250       # measured upper bound per entry (tests/test_forwarder.py)

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
            if not isinstance(mid, str) or len(mid) > self.max_id_length:
                continue
            key = hashlib.blake2b(mid.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            first = seen.get(key)
            if first is None:
                received = event.get("receivedAt")
                if isinstance(received, str) and len(received) <= self.max_stamp_length:
                    seen[key] = received
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
        self.max_in_flight_bytes = forwarder.max_queue_bytes
        self.in_flight = 0                       # events given and not confirmed
        self.in_flight_bytes = 0                 # their records' encoded bytes
        self.unconfirmed = collections.OrderedDict()   # pos -> [next_pos, done]
        self.memory = collections.deque()        # without a spool: records waiting for room
        self.memory_events = 0
        self.memory_bytes = 0
        self.backoff = Backoff()
        self.live = self.spool is None
        self.read_pos = self.spool.cursor(self.name) if self.spool is not None else None
        self.saved_cursor = self.read_pos
        # bytes on disk from the cursor to the last spooled record, for admission: an upper
        # bound (confirmations are not subtracted), made exact whenever it passes the limit
        self.backlog = 0
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

    def full(self):
        """True when the destination holds as much unconfirmed data as memory may (events or bytes)."""
        return self.in_flight >= self.max_in_flight or self.in_flight_bytes >= self.max_in_flight_bytes

    def offer(self, record):
        """A request arrived live (from the queue)."""
        if self.stopped:
            return
        if self.spool is None:
            if record.write_key not in self.destination.write_keys:
                return
            if self.full():
                self.memory.append(record)
                self.memory_events += len(record.events)
                self.memory_bytes += record.size
            else:
                self._dispatch(record)
            return
        if not self.live:
            return  # it is on disk; the catch-up reader will get to it
        if record.pos < self.read_pos:
            return  # already read from the spool while catching up
        if self.full():
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
        if self.full():
            return  # resumed by a confirmation
        self._reading = True
        # no more than the room left (the spool returns at least one record)
        room = max(1, self.max_in_flight_bytes - self.in_flight_bytes)
        d = self.spool.read(self.read_pos, min(self.read_chunk, room))
        d.addCallback(self._got_records, self.forwarder.offered_end)
        d.addErrback(self._read_failed)

    def _got_records(self, records, offered_before):
        self._reading = False
        if self.stopped:
            return
        if not records:
            self._reached_head(offered_before)
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

    def _reached_head(self, offered_before):
        """A read found nothing after ``read_pos``: turn live unless it may have missed a record.

        While catching up the lane ignores what the drain offers it. A record
        spooled and offered while the read was running (after the reader looked
        at the spool, before this callback) is on disk and already past the
        queue: going live now would skip it for good. So the lane turns live
        only if every record offered so far lies before ``read_pos``, or was
        offered before the read started (then the read saw it if it was
        readable; an unreadable one was reported by the spool). Otherwise it
        reads again.
        """
        offered = self.forwarder.offered_end
        if offered is None or self.read_pos >= offered or offered == offered_before:
            self.live = True
        else:
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
                record = attr.evolve(record, events=kept)   # same size: the bound stays an upper bound
                events = kept
        self.in_flight += len(events)
        self.in_flight_bytes += record.size
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
        self.in_flight_bytes -= record.size
        self.confirmed_events += n
        self.forwarder.stats.count_forwarded(record.events)
        if record.pos is not None:
            entry = self.unconfirmed.get(record.pos)
            if entry is not None:
                entry[1] = True
            self._advance()
        while self.memory and not self.full():
            waiting = self.memory.popleft()
            self.memory_events -= len(waiting.events)
            self.memory_bytes -= waiting.size
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
        moved = False
        while self.unconfirmed:
            pos, (next_pos, done) = next(iter(self.unconfirmed.items()))
            if not done:
                break
            self.unconfirmed.popitem(last=False)
            moved = True
        if moved:
            self.forwarder.cursor_moved(self)

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
                 max_queue_bytes=64 << 20, shutdown_timeout=10.0, drain_interval=0.005, cursor_interval=1.0,
                 backlog_ratio=0.8, recent_messages=200_000, delivery_filter=None):
        self.destinations = list(destinations)
        self.spool = spool
        self.stats = stats
        self.reactor = reactor
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.shutdown_timeout = shutdown_timeout
        self.drain_interval = drain_interval
        self.cursor_interval = cursor_interval
        self.backlog_ratio = backlog_ratio
        self.delivery_filter = delivery_filter   # at the door and per destination, or None
        self.queue = defer.DeferredQueue()
        self.queued_events = 0
        self.queued_bytes = 0
        self.offered_end = None     # spool position just after the last record offered to the lanes
        self.stopping = False
        self.spool_error = None
        self.lanes = {}
        self._routes = {}
        for destination in self.destinations:
            for key in destination.write_keys:
                self._routes.setdefault(key, []).append(destination.name)
        # runs while records come, stopped by an idle tick, restarted by the get() waiting on the queue
        self._drain_loop = task.LoopingCall(self._drain_safely)
        self._drain_loop.clock = reactor
        self._waiter = None       # the queue.get() waiting for the next record
        self._arrived = []        # what that get() handed over, for the next tick
        self._cursor_loop = task.LoopingCall(self._tick_safely)
        self._cursor_loop.clock = reactor
        self.unrouted = 0
        self.recent = RecentMessages(recent_messages)
        self._behind = frozenset()        # lanes whose backlog is over the ratio
        self._refused_keys = frozenset()
        self.spool_end = None             # end of the last record spooled (as the reactor saw it)

    def load_recent(self, max_bytes=64 << 20):
        """Learn the newest spooled messageIds (start-up only: reads the spool synchronously)."""
        if self.spool is not None and self.recent.capacity:
            self.recent.load(self.spool.scan_recent(max_bytes))
            log.info("{n} recent messageIds loaded from the spool", n=len(self.recent))

    # -- IIntake ------------------------------------------------------------------

    def accepting(self, write_key):
        # called for every request at header time: cheap reads only
        if self.stopping:
            return False
        if self.spool is None:
            events, size = self._memory_backlog()
            return (self.queued_events + events < self.max_queue_size
                    and self.queued_bytes + size < self.max_queue_bytes)
        # spool.full() is arithmetic on two counters (no lock): read live, it follows
        # appends, failures and segment deletions at once
        return not self.spool.full() and write_key not in self._refused_keys

    # Which keys wait for a lane's backlog changes only when a record is spooled or
    # a lane's cursor moves: it is recomputed then, not polled.

    def refresh_room(self):
        """Recompute which write keys must wait for a lane's backlog over the ratio."""
        if self.spool is None:
            return
        for lane in self.lanes.values():
            lane.backlog = self.distance(lane.cursor(), self.spool_end)
        self._update_behind()

    def cursor_moved(self, lane):
        """A lane's cursor advanced (confirmations): its backlog shrank."""
        if lane.name in self._behind:      # otherwise its bound stays an upper bound: cheap
            lane.backlog = self.distance(lane.cursor(), self.spool_end)
            if lane.backlog <= self._backlog_limit():
                self._update_behind()

    def _backlog_limit(self):
        return self.backlog_ratio * self.spool.max_size

    def _update_behind(self):
        limit = self._backlog_limit()
        behind = frozenset(name for name, lane in self.lanes.items() if lane.backlog > limit)
        if behind != self._behind:
            self._behind = behind
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
        payload = record.encode()
        record.size = len(payload)
        if self.spool is None:
            self._enqueue(record)
            return defer.succeed(None)
        d = self.spool.append(payload)
        d.addCallbacks(self._spooled, self._spool_failed, callbackArgs=(record, len(payload)))
        return d

    def _spooled(self, pos, record, size):
        record.pos, record.next_pos = pos, self.spool.record_end(pos, size)
        self.spool_end = record.next_pos
        # every lane's backlog grows by the record (appended after every cursor)
        framed = record.next_pos.offset - pos.offset
        limit = self._backlog_limit()
        crossed = False
        for lane in self.lanes.values():
            lane.backlog += framed
            if lane.backlog > limit and lane.name not in self._behind:
                lane.backlog = self.distance(lane.cursor(), self.spool_end)   # exact before refusing
                crossed |= lane.backlog > limit
        if crossed:
            self._update_behind()
        self.spool_error = None
        self._enqueue(record)

    def _spool_failed(self, failure):
        self.spool_error = failure.getErrorMessage() or failure.type.__name__
        log.error("spool refused a request: {error}", error=self.spool_error)
        raise Unavailable(30)

    def _enqueue(self, record):
        self.queued_events += len(record.events)
        self.queued_bytes += record.size
        self.queue.put(record)

    def _memory_backlog(self):
        """(events, bytes) held by the lanes without a spool (nothing is on disk then)."""
        if self.spool is not None:
            return 0, 0
        lanes = self.lanes.values()
        return (sum(lane.in_flight + lane.memory_events for lane in lanes),
                sum(lane.in_flight_bytes + lane.memory_bytes for lane in lanes))

    def queue_capacity(self):
        return max(0, self.max_queue_size - self.queued_events - self._memory_backlog()[0])

    # -- draining -----------------------------------------------------------------

    def _take(self):
        """Everything queued, oldest first, through the queue's public API.

        ``get()`` fires at once while records are pending; the first one that
        does not is kept waiting: it hands over the next record and restarts
        the drain loop if an idle tick stopped it.
        """
        records, self._arrived = self._arrived, []
        while self._waiter is None:
            d = self.queue.get()
            if d.called:
                d.addCallback(records.append)
            else:
                self._waiter = d
                d.addCallback(self._record_arrived)
                d.addErrback(lambda f: f.trap(defer.CancelledError))   # stopService
        return records

    def _record_arrived(self, record):
        self._waiter = None
        self._arrived.append(record)
        if not self._drain_loop.running and self.running and not self.stopping:
            # the first tick in drain_interval: what arrives meanwhile is routed with it
            self._drain_loop.start(self.drain_interval, now=False)

    def drain(self):
        """Route everything queued to the lanes (the LoopingCall's body); returns how many."""
        pending = self._take()
        for record in pending:
            self.queued_events -= len(record.events)
            self.queued_bytes -= record.size
            self.offered_end = record.next_pos
            # every lane sees every record, so that its cursor moves past the ones not for it
            for lane in self.lanes.values():
                lane.offer(record)
            if record.write_key not in self._routes:
                self.unrouted += len(record.events)
                log.warn("request {rid}: write key routes to no destination; {n} events counted as unrouted",
                         rid=record.request_id, n=len(record.events))
        return len(pending)

    def _drain_safely(self):
        # a LoopingCall stops for good at its first exception: events would stop flowing
        try:
            if not self.drain() and self._drain_loop.running:
                self._drain_loop.stop()     # idle: the waiting get() restarts it
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
            metrics.SPOOL_SKIPPED_BYTES.set(self.spool.health().get("skipped_bytes", 0))

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
        if self.spool is not None:
            self.spool_end = self.spool.head
        self.refresh_room()
        for lane in self.lanes.values():
            lane.catch_up()   # replay what the last run left unconfirmed
        # one first tick routes anything queued already and leaves a get() waiting
        self._drain_loop.start(self.drain_interval, now=False)
        self._cursor_loop.start(self.cursor_interval, now=False)

    @defer.inlineCallbacks
    def stopService(self):
        """Flush destinations within the shutdown timeout; what is left stays spooled.

        The spool is closed after this by its owner (``stilgar.lifecycle.SpoolService``)."""
        self.stopping = True
        super().stopService()
        if self._drain_loop.running:
            self._drain_loop.stop()
        self.drain()
        if self._waiter is not None:
            waiter, self._waiter = self._waiter, None
            waiter.cancel()   # what is spooled from now on stays in the spool for the next start
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

    def _spool_health(self, details=False):
        """The spool's counts and states; with ``details`` (``/status`` only) its error texts too."""
        if self.spool is None:
            return {"enabled": False, "bytes": 0}
        h = dict(self.spool.status() if details else self.spool.health())
        h.setdefault("bytes", self.spool.size)
        return h

    def status(self, with_destinations):
        document = {"spool": self._spool_health(details=True), "unrouted": self.unrouted}
        if self.spool_error is not None:
            document["spool"]["last_error"] = self.spool_error
        if with_destinations:
            for name, lane in self.lanes.items():
                entry = dict(lane.destination.status())
                entry.update({"in_flight": lane.in_flight, "confirmed": lane.confirmed_events,
                              "live": lane.live, "backlog_bytes": lane.backlog_bytes()})
                document[name] = entry
        return document
