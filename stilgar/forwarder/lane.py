"""A lane: one destination's view of the stream of accepted requests.

While it keeps up it is *live*: it takes requests straight from the queue.
When it falls behind (too many unconfirmed events or bytes in memory) or at
start-up, it *catches up*: it reads the spool from its own cursor until it
reaches the head, then turns live again (doc/durability.md, "Destinations read
at their own pace"). Its cursor, the first record not yet confirmed, only
moves past confirmed (or skipped) records.
"""

import collections
import enum

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ..backoff import Backoff
from ..destinations import TransientError
from .record import Record

__all__ = ["Lane", "LaneState"]

log = Logger(namespace="stilgar.forwarder")


class LaneState(enum.Enum):
    LIVE = "live"          # takes requests straight from the queue
    BEHIND = "behind"      # reads its backlog from the spool; no read running
    READING = "reading"    # a spool read runs, or its chunk is being dispatched
    STOPPED = "stopped"    # for good: nothing more is written or retried


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
        self.unconfirmed = collections.OrderedDict()   # pos -> confirmed (or skipped), oldest first
        self.memory = collections.deque()        # without a spool: records waiting for room
        self.memory_events = 0
        self.memory_bytes = 0
        self.backoff = Backoff()
        self.state = LaneState.LIVE if self.spool is None else LaneState.BEHIND
        self.read_pos = self.spool.cursor(self.name) if self.spool is not None else None
        self.saved_cursor = self.read_pos
        self._retry_calls = set()
        self.confirmed_events = 0

    # -- cursor ---------------------------------------------------------------

    @property
    def live(self):
        return self.state is LaneState.LIVE

    def cursor(self):
        """Where a restart must resume: the first unconfirmed record."""
        for pos in self.unconfirmed:
            return pos
        return self.read_pos

    def backlog_events(self):
        """Events given to the destination and not confirmed yet (``/health``'s backlog).

        The destination's ``buffered()`` counts a subset of these (taken, not yet
        confirmed), so it is not added; records still in the spool behind a catching-up
        lane are counted in bytes (:meth:`backlog_bytes`, ``/status``).
        """
        return self.in_flight

    def backlog_bytes(self):
        if self.spool is None:
            return 0
        return self.forwarder.distance(self.cursor(), self.spool.head)

    # -- feeding ----------------------------------------------------------------

    def full(self):
        """True when the destination holds as much unconfirmed data as memory may (events or bytes)."""
        return self.in_flight >= self.max_in_flight or self.in_flight_bytes >= self.max_in_flight_bytes

    def offer(self, records):
        """Requests that arrived live (from the queue), oldest first: what this
        lane takes of them goes to its destination in one write."""
        if self.state is LaneState.STOPPED:
            return
        batch = []
        for record in records:
            if self.spool is None:
                if record.write_key not in self.destination.write_keys:
                    continue
                if self.full():
                    self.memory.append(record)
                    self.memory_events += len(record.events)
                    self.memory_bytes += record.size
                else:
                    self._dispatch(record, batch)
                continue
            if self.state is not LaneState.LIVE:
                break       # it is on disk; the catch-up reader will get to it
            if record.pos < self.read_pos:
                continue    # already read from the spool while catching up
            if self.full():
                # too far behind to keep in memory: read it back from disk later
                self.state = LaneState.BEHIND
                break
            self.read_pos = record.next_pos
            self._dispatch(record, batch)
        self._write(batch)
        if not self.live:
            self.catch_up()

    def catch_up(self):
        """Read the spool from ``read_pos`` until the head, then turn live."""
        if self.state is not LaneState.BEHIND or self.spool is None:
            return
        if self.full():
            return  # resumed by a confirmation
        self.state = LaneState.READING
        # no more than the room left (the spool returns at least one record)
        room = max(1, self.max_in_flight_bytes - self.in_flight_bytes)
        d = self.spool.read(self.read_pos, min(self.read_chunk, room))
        d.addCallback(self._got_records, self.forwarder.offered_end)
        d.addErrback(self._read_failed)

    def _got_records(self, records, offered_before):
        if self.state is not LaneState.READING:
            return      # stopped meanwhile
        if not records:
            self.state = LaneState.BEHIND
            self._reached_head(offered_before)
            return
        # still "reading" while the chunk is dispatched: a confirmation that comes at once
        # must not start the next read from the middle of this chunk (it would read the
        # rest again); the read below starts after the chunk
        batch = []
        try:
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
                self._dispatch(record, batch)
            self._write(batch)
        finally:
            if self.state is LaneState.READING:
                self.state = LaneState.BEHIND
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
            self.state = LaneState.LIVE
        else:
            self.catch_up()

    def _read_failed(self, failure):
        if self.state is not LaneState.READING:
            return      # stopped meanwhile
        self.state = LaneState.BEHIND
        log.failure("reading the spool for {name} failed; retrying", failure, name=self.name)
        self._later(self.backoff.next_delay(), self.catch_up)

    def _dispatch(self, record, batch):
        """Count ``record`` in flight and add it to ``batch`` (the next write),
        or skip it: not for this destination, or nothing left once filtered."""
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
            self.unconfirmed[record.pos] = False
        batch.append(record)

    def _skip(self, record):
        if record.pos is not None:
            self.unconfirmed[record.pos] = True
            self._advance()

    def _write(self, records):
        """One write of the events of ``records`` (dispatched together: the
        records of a drain tick, or of a spool chunk); confirmed or retried together."""
        if not records:
            return
        events = records[0].events if len(records) == 1 else [e for r in records for e in r.events]
        d = defer.maybeDeferred(self.destination.write, events)
        d.addCallbacks(self._confirmed, self._failed, callbackArgs=(records,), errbackArgs=(records,))
        d.addErrback(lambda f: log.failure("lane {name}: bookkeeping failed (a bug)", f, name=self.name))

    def _confirmed(self, _, records):
        self.backoff.reset()
        moved = False
        for record in records:
            n = len(record.events)
            self.in_flight -= n
            self.in_flight_bytes -= record.size
            self.confirmed_events += n
            self.forwarder.stats.count_forwarded(record.events)
            if record.pos is not None:
                if record.pos in self.unconfirmed:
                    self.unconfirmed[record.pos] = True
                moved = True
        if moved:
            self._advance()
        batch = []
        while self.memory and not self.full():
            waiting = self.memory.popleft()
            self.memory_events -= len(waiting.events)
            self.memory_bytes -= waiting.size
            self._dispatch(waiting, batch)
        self._write(batch)
        if not self.live:
            self.catch_up()

    def _failed(self, failure, records):
        if self.state is LaneState.STOPPED:
            return
        if not failure.check(TransientError):
            log.failure("destination {name} failed on request {rid}; retrying", failure,
                        name=self.name, rid=records[0].request_id)
        delay = self.backoff.next_delay()
        self._later(delay, self._write, records)

    def _advance(self):
        unconfirmed = self.unconfirmed
        moved = False
        while unconfirmed:
            pos, done = next(iter(unconfirmed.items()))
            if not done:
                break
            unconfirmed.popitem(last=False)
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
        self.state = LaneState.STOPPED
        for call in list(self._retry_calls):
            if call.active():
                call.cancel()
        self._retry_calls.clear()
