"""Admission: may a request be taken now? The one rule, for the API and ``/health``.

A request is refused (503 with ``Retry-After``) while the forwarder stops, while
the spool is full (or, without a spool, while memory holds its bound), and for
the write keys routed to a destination whose unconfirmed backlog on disk
passed ``backlog_ratio`` of the spool (doc/durability.md). The checks run for
every request at header time, so they only read state; that state is
recomputed when it can change (a record spooled or dequeued, a lane's cursor
moved), never polled.
"""

__all__ = ["Admission", "STOPPING_RETRY", "FULL_RETRY"]

STOPPING_RETRY = 5     # seconds: this process is going away; a restarted one answers soon
FULL_RETRY = 30        # seconds: a destination or the disk must catch up first


class Admission:
    """Whether requests may be taken now, per write key, and when to come back if not."""

    def __init__(self, spool, routes, lanes, *, max_queue_size, max_queue_bytes, backlog_ratio):
        self.spool = spool
        self.routes = routes            # write key -> names of the destinations it goes to
        self.lanes = lanes              # the forwarder's lanes by name (filled when it starts)
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self.backlog_ratio = backlog_ratio
        self.stopping = False
        self.queued_events = 0          # accepted, not yet routed to the lanes
        self.queued_bytes = 0
        self.spool_end = None           # end of the last record spooled (as the reactor saw it)
        # per lane: bytes on disk from its cursor to spool_end, an upper bound (confirmations
        # are not subtracted) made exact whenever it passes the limit
        self._backlog = {}
        self._behind = frozenset()      # lanes whose backlog is over the limit
        self._refused_keys = frozenset()

    # -- the rule (per request: reads only) ------------------------------------------

    def refusal(self, write_key=None):
        """None when a request (for ``write_key``, if given) may be taken now, else its Retry-After."""
        if self.stopping:
            return STOPPING_RETRY
        if self.spool is None:
            events, size = self.memory_backlog()
            if (self.queued_events + events >= self.max_queue_size
                    or self.queued_bytes + size >= self.max_queue_bytes):
                return FULL_RETRY
            return None
        # spool.full() is arithmetic on two counters (no lock): read live, it follows
        # appends, failures and segment deletions at once
        if self.spool.full() or write_key in self._refused_keys:
            return FULL_RETRY
        return None

    def accepting(self, write_key=None):
        return self.refusal(write_key) is None

    # -- what changes it -----------------------------------------------------------------

    def queued(self, record):
        self.queued_events += len(record.events)
        self.queued_bytes += record.size

    def dequeued(self, record):
        self.queued_events -= len(record.events)
        self.queued_bytes -= record.size

    def start(self, spool_end):
        """The lanes exist: measure every backlog once."""
        self.spool_end = spool_end
        if self.spool is None:
            return
        for name, lane in self.lanes.items():
            self._backlog[name] = self.distance(lane.cursor(), spool_end)
        self._update_behind()

    def spooled(self, pos, next_pos):
        """A record was spooled at ``pos``: every lane's backlog grows by it (it lies after every cursor)."""
        self.spool_end = next_pos
        framed = next_pos.offset - pos.offset
        limit = self._limit()
        crossed = False
        for name, lane in self.lanes.items():
            backlog = self._backlog.get(name, 0) + framed
            if backlog > limit and name not in self._behind:
                backlog = self.distance(lane.cursor(), next_pos)   # exact before refusing
                crossed |= backlog > limit
            self._backlog[name] = backlog
        if crossed:
            self._update_behind()

    def cursor_moved(self, lane):
        """A lane's cursor advanced (confirmations): its backlog shrank."""
        if lane.name in self._behind:      # otherwise its bound stays an upper bound: cheap
            backlog = self._backlog[lane.name] = self.distance(lane.cursor(), self.spool_end)
            if backlog <= self._limit():
                self._update_behind()

    def _limit(self):
        return self.backlog_ratio * self.spool.max_size

    def _update_behind(self):
        limit = self._limit()
        behind = frozenset(name for name, backlog in self._backlog.items() if backlog > limit)
        if behind != self._behind:
            self._behind = behind
            self._refused_keys = frozenset(
                key for key, names in self.routes.items() if behind.intersection(names))

    # -- measures ----------------------------------------------------------------------

    def distance(self, a, b):
        """Bytes on disk between two spool positions."""
        if a is None or b is None:
            return 0
        return self.spool.bytes_between(a, b)

    def memory_backlog(self):
        """(events, bytes) held by the lanes without a spool (nothing is on disk then)."""
        if self.spool is not None:
            return 0, 0
        lanes = self.lanes.values()
        return (sum(lane.in_flight + lane.memory_events for lane in lanes),
                sum(lane.in_flight_bytes + lane.memory_bytes for lane in lanes))

    def queue_capacity(self):
        return max(0, self.max_queue_size - self.queued_events - self.memory_backlog()[0])
