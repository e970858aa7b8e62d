"""The insert pipeline: when a flush starts, the INSERT slots, natural
batching, retries of refused batches (doc/clickhouse.md, "Batching, retries,
backpressure" and "Who retries what").

Once a flush has started, each free slot (at most ``max_parallel_queries``
INSERTs in flight) takes the oldest of the flush's groups with everything
waiting in it, up to ``max_insert_rows`` / ``max_insert_bytes``: rows arriving
while the slots are busy leave with their group's INSERT, so the number of
INSERTs follows the server's pace, not the event rate. Rows whose group has
left wait for the next start (:class:`.batches.PendingRows`).
"""

from collections import deque

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ... import metrics
from .batches import PendingRows
from .client import is_transient
from .router import MAX_ROUNDS
from .tsv import encode_body

__all__ = ["InsertPipeline"]

log = Logger()


@attr.s(eq=False)
class InsertPipeline:
    name = attr.ib()
    settings = attr.ib()
    reactor = attr.ib()
    client = attr.ib()
    schema = attr.ib()                  # the SchemaManager
    link = attr.ib(default=None)        # set by the destination
    router = attr.ib(default=None)
    evolver = attr.ib(default=None)
    pending = attr.ib(factory=PendingRows)
    retries = attr.ib(factory=deque)    # batches to send again first (transient failure, split halves)
    inflight = attr.ib(default=0)
    flush_requested = attr.ib(default=False)
    _waiters = attr.ib(factory=list)
    _idle_timer = attr.ib(default=None)
    _soon = attr.ib(default=None)

    # -- when a flush starts -------------------------------------------------------

    def after_add(self):
        p = self.pending
        if p.flushing:
            # a flush is under way: these rows ride on their group's next INSERT if it is
            # still to leave; the threshold reached again (or flush()) brings the others in
            if self.flush_requested or self._thresholds_reached():
                p.start_flush()
            if self.client.free_slots() > 0:
                self.dispatch()
        elif self._thresholds_reached():
            self.flush_pending()
        elif self.flush_requested:
            if self._soon is None:
                self._soon = self.reactor.callLater(0, self._flush_soon)
        elif self._idle_timer is None:
            self._idle_timer = self.reactor.callLater(self.settings.cache_idle_timeout, self._on_idle)

    def _thresholds_reached(self):
        """The rows reach ``cache_threshold`` or their bytes ``cache_max_bytes``: a flush may start."""
        return self.pending.full(self.settings.cache_threshold, self.settings.cache_max_bytes)

    def _flush_soon(self):
        self._soon = None
        self.flush_pending()

    def _on_idle(self):
        self._idle_timer = None
        self.flush_pending()

    def flush_pending(self):
        if self._idle_timer is not None:
            if self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = None
        self.pending.start_flush()
        self.dispatch()

    def flush(self):
        """Everything pending attempted: fires when idle (or at once when down)."""
        self.flush_requested = True
        self.flush_pending()
        return self._when_idle()

    # -- the slots -----------------------------------------------------------------

    def dispatch(self):
        """Fill the free request slots (the client's: ``max_parallel_queries``
        for every request together): retried batches first, then (while a
        flush is under way) the oldest group, taking every row waiting in it up
        to the per-INSERT caps."""
        s = self.settings
        p = self.pending
        free = self.client.free_slots
        while self.link.up:
            while self.link.up and free() > 0:
                if self.retries:
                    batch = self.retries.popleft()
                elif p.flushing:
                    batch = p.take_one(s.max_insert_rows, s.max_insert_bytes)
                    if batch is None:
                        break
                else:
                    break
                self.inflight += 1
                self._send(batch)
            if p.flushing or not p.rows:
                break
            # the flush is over; the rows that came meanwhile wait for the next start
            if self.flush_requested or self._thresholds_reached():
                p.start_flush()
                if free() > 0:
                    continue
            elif self._idle_timer is None:
                self._idle_timer = self.reactor.callLater(s.cache_idle_timeout, self._on_idle)
            break
        self.check_idle()

    def _send(self, batch):
        batch.attempts += 1
        t0 = self.reactor.seconds()
        d = self.client.insert(encode_body(batch.plan.header, batch.lines))
        d.addCallbacks(self._sent, self._send_failed, callbackArgs=(batch, t0), errbackArgs=(batch,))
        d.addErrback(self.link.bug)

    def _sent(self, _, batch, t0):
        self.inflight -= 1
        self.link.failures = 0
        metrics.INSERT_LATENCY.labels(self.name).observe(self.reactor.seconds() - t0)
        self.router.confirm(batch.rows, batch.table)
        self.dispatch()

    def _send_failed(self, f, batch):
        self.inflight -= 1
        err = f.value
        if is_transient(err) or getattr(err, "code", None) == 81:
            # unreachable, overloaded, refused credentials, or the database is
            # gone: keep the rows, re-initialise with backoff
            self.retries.appendleft(batch)
            self.link.mark_down(err)
            return
        self.link.last_error = str(err)
        if not batch.refreshed:
            log.warn("ClickHouse {destination}: INSERT into {table} refused ({error}); refreshing its schema",
                     destination=self.name, table=batch.table, error=str(err))
            batch.refreshed = True
            d = self._refresh(batch)
            d.addErrback(self.link.bug)
            return
        if len(batch.rows) == 1:
            row = batch.rows[0]
            log.warn("ClickHouse {destination}: row {row_id} of {table} refused: {error}",
                     destination=self.name, row_id=row.row_id, table=batch.table, error=str(err))
            self.router.discard_whole(row, f"refused by ClickHouse: {err}")
        else:
            a, b = batch.halves()
            self.retries.appendleft(b)
            self.retries.appendleft(a)
        self.dispatch()

    @defer.inlineCallbacks
    def _refresh(self, batch):
        """A refused INSERT: re-read its table, encode its rows again and send them once more."""
        self.inflight += 1      # in flight until re-sent (a flush waits for it); the re-read takes its own slots
        try:
            yield self.evolver.load(batch.table)
        except Exception as e:
            # keep the rows whatever happened; retried after a re-initialisation
            self.inflight -= 1
            batch.refreshed = False
            self.retries.appendleft(batch)
            self.link.mark_down(e)
            return
        self.inflight -= 1
        self._reencode(batch)
        self.dispatch()

    def _reencode(self, batch):
        schema = self.schema.tables.get(batch.table)
        keep_rows, keep_lines = [], []
        plan = None
        for row in batch.rows:
            if schema is None or not schema.valid:
                self.router.route(row)
                continue
            r = self.router.encode(row, schema, row.rounds < MAX_ROUNDS)
            if r is None:
                continue
            if plan is None:
                plan = r[0]
            if r[0].columns != plan.columns:
                self.pending.add(batch.table, r[0], r[1], row)
                self.after_add()
                continue
            keep_rows.append(row)
            keep_lines.append(r[1])
        if keep_rows:
            batch.plan = plan
            batch.rows = keep_rows
            batch.lines = keep_lines
            batch.bytes = sum(map(len, keep_lines))
            self.retries.appendleft(batch)

    # -- flush waiters ---------------------------------------------------------------

    def idle(self):
        return (not self.retries and not self.inflight and not self.pending.rows
                and not self.router.preinit and self.evolver.idle())

    def _when_idle(self):
        if not self.link.up or self.idle():
            self.flush_requested = False
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def check_idle(self):
        if self._waiters and (not self.link.up or self.idle()):
            waiters, self._waiters = self._waiters, []
            self.flush_requested = False
            for d in waiters:
                d.callback(None)

    def cancel(self):
        for attr_name in ("_idle_timer", "_soon"):
            call = getattr(self, attr_name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, attr_name, None)

    def buffered_rows(self):
        return self.pending.rows + sum(len(b.rows) for b in self.retries)

    def buffered_bytes(self):
        return self.pending.bytes + sum(b.bytes for b in self.retries)
