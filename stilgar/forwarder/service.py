"""The forwarder: from accepted requests to destinations, never losing one.

Accepted requests are appended to the spool (a 200 means the events are on
disk), then put on a :class:`DeferredQueue`. A :class:`LoopingCall` drains the
queue through its public API (``get()`` while records are pending) and routes
each request, by write key, to one *lane* per destination. The loop runs while
records come and stops at its first idle tick; a ``get()`` left waiting on the
queue restarts it when the next record arrives, so an idle collector does not
poll (stilgar/consumer.py). Whether a request may be taken (503 otherwise) is
one rule, recomputed when it can change: a record spooled, a cursor moved
(stilgar/admission.py).

A lane (stilgar/lane.py) feeds its destination and tracks what the destination
has confirmed. While it keeps up it is *live*: it takes requests straight from
the queue. When it falls behind (too many unconfirmed events or bytes in
memory) or at start-up, it *catches up*: it reads the spool from its own cursor
until it reaches the head, then turns live again. So a slow or down destination
grows only its own backlog on disk, never the memory, and never blocks another
destination. The lane's cursor (the first record not yet confirmed) is saved
durably once a second by a :class:`TimerService` child, which also updates the
gauges; segments below every cursor are deleted by the spool.

Memory is bounded in events (``forwarder.max_queue_size``) and in bytes of
encoded records (``forwarder.max_queue_bytes``) per lane, whichever comes first.
Without a spool (``spool.enabled: false``, the original's unsafe behaviour)
lanes are always live and requests stay in memory, bounded by the same two
limits (the API answers 503 beyond them).
"""

import datetime

from twisted.application import internet, service
from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from .. import metrics
from .admission import FULL_RETRY, Admission
from ..backoff import Backoff
from .consumer import QueueConsumer
from ..intake import IIntake, Unavailable
from .lane import Lane
from .recent import RecentMessages
from .record import Record

__all__ = ["Forwarder", "Record", "Backoff", "Lane", "RecentMessages"]

log = Logger(namespace="stilgar.forwarder")


def _iso(seconds):
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="seconds")


@implementer(IIntake)
class Forwarder(service.MultiService):
    """Takes accepted requests (spooling them first) and feeds every destination.

    A :class:`MultiService`: its child ``cursor_timer`` (a :class:`TimerService`)
    saves the lanes' cursors and updates the gauges every ``cursor_interval``.
    Add the forwarder alone to a service tree; it starts and stops its child.
    """

    name = "forwarder"

    def __init__(self, destinations, *, spool, stats, reactor, max_queue_size=65536,
                 max_queue_bytes=64 << 20, shutdown_timeout=10.0, drain_interval=0.005, cursor_interval=1.0,
                 backlog_ratio=0.8, recent_messages=200_000, delivery_filter=None):
        super().__init__()
        self.destinations = list(destinations)
        self.spool = spool
        self.stats = stats
        self.reactor = reactor
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.shutdown_timeout = shutdown_timeout
        self.drain_interval = drain_interval
        self.delivery_filter = delivery_filter   # at the door and per destination, or None
        self.offered_end = None     # spool position just after the last record offered to the lanes
        self.spool_error = None
        self.lanes = {}
        self.routes = {}            # write key -> names of its destinations
        for destination in self.destinations:
            for key in destination.write_keys:
                self.routes.setdefault(key, []).append(destination.name)
        self.admission = Admission(spool, self.routes, self.lanes, max_queue_size=max_queue_size,
                                   max_queue_bytes=max_queue_bytes, backlog_ratio=backlog_ratio)
        self.consumer = QueueConsumer(self._route, reactor, drain_interval)
        self.cursor_timer = internet.TimerService(cursor_interval, self._tick_safely)
        self.cursor_timer.clock = reactor
        self.cursor_timer.setName("cursors")
        self.cursor_timer.setServiceParent(self)
        self.unrouted = 0
        self.recent = RecentMessages(recent_messages)

    def load_recent(self, max_bytes=64 << 20):
        """Learn the newest spooled messageIds (start-up only: reads the spool synchronously)."""
        if self.spool is not None and self.recent.capacity:
            self.recent.load(self.spool.scan_recent(max_bytes))
            log.info("{n} recent messageIds loaded from the spool", n=len(self.recent))

    # -- IIntake ------------------------------------------------------------------

    @property
    def stopping(self):
        return self.admission.stopping

    @stopping.setter
    def stopping(self, value):
        # the web service sets it when it stops listening: requests on open connections get 503
        self.admission.stopping = value

    @property
    def queue(self):
        return self.consumer.queue

    def accepting(self, write_key):
        # called for every request at header time: cheap reads only
        return self.admission.accepting(write_key)

    def accept(self, write_key, request_id, events):
        retry_after = self.admission.refusal(write_key)
        if retry_after is not None:
            return defer.fail(Unavailable(retry_after))
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
        self.admission.spooled(pos, record.next_pos)
        self.spool_error = None
        self._enqueue(record)

    def _spool_failed(self, failure):
        self.spool_error = failure.getErrorMessage() or failure.type.__name__
        log.error("spool refused a request: {error}", error=self.spool_error)
        raise Unavailable(FULL_RETRY)

    def _enqueue(self, record):
        self.admission.queued(record)
        self.consumer.put(record)

    def queue_capacity(self):
        return self.admission.queue_capacity()

    def cursor_moved(self, lane):
        """A lane's cursor advanced (confirmations): admission may change."""
        self.admission.cursor_moved(lane)

    def distance(self, a, b):
        """Bytes on disk between two spool positions."""
        return self.admission.distance(a, b)

    # -- draining -----------------------------------------------------------------

    def drain(self):
        """Route everything queued to the lanes now; returns how many records."""
        return self.consumer.drain()

    def _route(self, records):
        for record in records:
            self.admission.dequeued(record)
            self.offered_end = record.next_pos
            if record.write_key not in self.routes:
                self.unrouted += len(record.events)
                log.warn("request {rid}: write key routes to no destination; {n} events counted as unrouted",
                         rid=record.request_id, n=len(record.events))
        # every lane sees every record, so that its cursor moves past the ones not for it
        for lane in list(self.lanes.values()):
            lane.offer(records)

    # -- the 1 s work -------------------------------------------------------------

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
            metrics.DESTINATION_BACKLOG.labels(destination=lane.name).set(lane.backlog_events())
            up = bool(lane.destination.health().get("up"))
            metrics.DESTINATION_UP.labels(destination=lane.name).set(1 if up else 0)
        if self.spool is not None:
            metrics.SPOOL_BYTES.set(self.spool.size)
            metrics.SPOOL_SKIPPED_BYTES.set(self.spool.health().get("skipped_bytes", 0))

    def _tick_safely(self):
        # the TimerService's LoopingCall stops for good at its first exception
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
        if self.spool is not None:
            self.spool.set_consumers([d.name for d in self.destinations])
        for destination in self.destinations:
            self.lanes[destination.name] = Lane(destination, self)
            d = defer.maybeDeferred(destination.start)
            d.addErrback(lambda f, n=destination.name: log.failure("destination {name} failed to start", f, name=n))
        self.admission.start(self.spool.head if self.spool is not None else None)
        for lane in self.lanes.values():
            lane.catch_up()   # replay what the last run left unconfirmed
        self.consumer.start()
        super().startService()     # the cursor timer

    @defer.inlineCallbacks
    def stopService(self):
        """Flush destinations within the shutdown timeout; what is left stays spooled.

        The spool is closed after this by its owner (``stilgar.lifecycle.SpoolService``)."""
        self.stopping = True
        service.Service.stopService(self)   # the cursor timer stops below, after the flush
        # routes what is queued; what is spooled from now on stays in the spool for the next start
        self.consumer.stop()
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
        yield self.cursor_timer.stopService()
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
        # the admission rule, and the last append did not fail (a write error is DOWN until one succeeds)
        accepting = self.admission.accepting() and self.spool_error is None
        destinations = {}
        all_up = True
        for name, lane in self.lanes.items():
            h = lane.destination.health()
            up = bool(h.get("up"))
            all_up &= up
            destinations[name] = {"status": "UP" if up else "DOWN", "since": _iso(h.get("since")),
                                  "backlog": lane.backlog_events()}
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
                              "live": lane.live, "state": lane.state.value,
                              "backlog_bytes": lane.backlog_bytes()})
                document[name] = entry
        return document
