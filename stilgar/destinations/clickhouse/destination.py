"""The ``clickhouse`` destination: routing rows to the buffer, schema work,
INSERT jobs, retries, health (contract section 4).

Flow: write(events) -> rows (:mod:`.rows`) -> each row is encoded against the
cached table schema (:mod:`.schema`, :mod:`.coltypes`) into the buffer
(:mod:`.cache`), or parked for schema work (:mod:`.evolution`) when its table
or a column is missing or a column must widen. Once a flush has started, each
free slot (at most ``max_parallel_queries``) takes a whole group as one INSERT
(natural batching, doc/clickhouse.md "Batching"). A write's Deferred fires when
every one of its rows is confirmed (HTTP 200) or recorded in rudder_discards.
"""

import datetime
import random as _random
from collections import Counter, deque

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from ... import metrics
from ...backoff import backoff_delay
from ..base import IDestination
from .cache import Buffer
from .client import ClickHouseError, Client, TransportError, is_transient
from .coltypes import misfit_reason, widen_type
from .ddlrate import SchemaChangeBudget
from .evolution import plan_changes
from .naming import DISCARDS_TABLE, quote_string
from .rows import build_rows, discard_row, whole_row_discard
from .schema import table_kind
from .schemas import SchemaManager
from .tsv import encode_body, parse_tsv

__all__ = ["ClickHouseDestination", "MAX_ROUNDS"]

log = Logger()

NODE_CHECK_INTERVAL = 2.0  # seconds between probes of the nodes marked down
MAX_ROUNDS = 3            # schema-change rounds a row may trigger before values are discarded


class Ticket:
    """What one write() waits for."""

    __slots__ = ("pending", "events", "deferred")

    def __init__(self, pending, events):
        self.pending = pending
        self.events = events
        self.deferred = defer.Deferred()


def _iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_METRIC_FIELDS = {
    "active_queries": "Query",
    "active_mutations": "PartMutation",
    "delayed_inserts": "DelayedInserts",
    "async_insert_active_threads": "AsyncInsertThreadsActive",
    "pending_async_inserts": "PendingAsyncInsert",
}


@implementer(IDestination)
class ClickHouseDestination:
    on_discards = staticmethod(lambda name, rows: None)   # replaced by the live hub's at assembly

    def __init__(self, name, write_keys, settings, reactor, client=None, rand=_random.random):
        self.name = name
        self.write_keys = frozenset(write_keys)
        self.settings = settings
        self.reactor = reactor
        self._client = client if client is not None else Client(reactor, settings)
        self._rand = rand
        self._db = settings.database
        self._schema = SchemaManager(name, settings, self._client)
        self._new_event_tables = set()  # per-event tables waiting to be created
        self._node_watch = None         # several nodes: probes the down ones (LoopingCall)
        self._preinit = []
        self._waiting = {}
        self._working = set()
        self._ddl_errors = {}
        self._ddl_budget = SchemaChangeBudget(settings.max_schema_changes_per_minute)
        self._ddl_parked = set()        # tables whose rows wait for the schema-change budget
        self._ddl_timer = None
        self._buffer = Buffer()
        self._routing = False           # inside _route_many: the flush decision waits for its end
        self._jobs = deque()
        self._inflight = 0
        self._idle_timer = None
        self._soon = None
        self._retry_timer = None
        self._connecting = False
        self._failures = 0
        self._up = False
        self._since = reactor.seconds()
        self._started = False
        self._stopping = False
        self._flush_waiters = []
        self._flush_requested = False
        self._first = None
        self._buffered_events = 0
        self.inserted = 0
        self.discarded = 0
        self.lost = 0
        self.last_error = None
        self._now_cache = (None, None)
        self._server_metrics = {}
        self._server_metrics_at = None
        self._label_cache = {}
        metrics.DESTINATION_UP.labels(name).set(0)

    # -- IDestination ------------------------------------------------------------

    def start(self):
        if self._started:
            return defer.succeed(None)
        self._started = True
        self._first = defer.Deferred()
        first = self._first
        if len(self._client.nodes.nodes) > 1:
            self._node_watch = task.LoopingCall(self._watch_nodes)
            self._node_watch.clock = self.reactor
            self._node_watch.start(NODE_CHECK_INTERVAL, now=False)
        self._connect()
        return first

    def write(self, events):
        if not events:
            return defer.succeed(None)
        now = self.reactor.seconds()
        rows, discards = build_rows(events, self._now_text(now))
        ticket = Ticket(len(rows) + len(discards), len(events))
        if ticket.pending == 0:
            return defer.succeed(None)
        self._buffered_events += len(events)
        d = ticket.deferred
        for r in rows:
            r.ticket = ticket
        for r in discards:
            r.ticket = ticket
        self._route_many(rows, discards)
        return d

    def flush(self):
        self._flush_requested = True
        self._flush_buffer()
        return self._when_idle()

    def stop(self):
        self._stopping = True
        d = self.flush() if self._up else defer.succeed(None)
        if self._node_watch is not None and self._node_watch.running:
            self._node_watch.stop()

        def done(_):
            for attr in ("_idle_timer", "_soon", "_retry_timer", "_ddl_timer"):
                call = getattr(self, attr)
                if call is not None and call.active():
                    call.cancel()
                setattr(self, attr, None)
            return self._client.close()
        return d.addBoth(done)

    def buffered(self):
        return self._buffered_events

    def health(self):
        return {"up": self._up, "since": self._since}

    def status(self):
        self._refresh_server_metrics()
        out = {
            "status": "OK" if self._up else "DOWN",
            "up": self._up,
            "since": self._since,
            "last_error": self.last_error,
            "buffered": self._buffered_events,
            "buffered_rows": self._buffer.rows + sum(len(j.rows) for j in self._jobs),
            "buffered_bytes": self._buffer.bytes + sum(j.bytes for j in self._jobs),
            "waiting_for_schema": sum(len(v) for v in self._waiting.values()) + len(self._preinit),
            "tables_waiting_for_schema_budget": len(self._ddl_parked),
            "inserts_in_flight": self._inflight,
            "inserted": self.inserted,
            "discarded": self.discarded,
            "lost": self.lost,
            "database": self._db,
            "capabilities": self._caps.describe(),
            "nodes": self._client.nodes.status(),
        }
        if self._schema.layout.cluster is not None:
            out["cluster"] = self._schema.layout.cluster
        for k in _METRIC_FIELDS:
            out[k] = self._server_metrics.get(k)
        return out

    # -- SQL for other components (regulations and retention: stilgar/regulations/) --

    @property
    def database(self):
        return self._db

    @property
    def capabilities(self):
        """What the server can do (probed at each connection)."""
        return self._caps

    def run_sql(self, sql, select=False, timeout=None, node=None):
        """Run one statement with this destination's client; fires with the answer's bytes.
        ``node``: one of :meth:`nodes` (per-node reads), else the current healthy node."""
        return self._client.query(sql, timeout=timeout, select=select, node=node)

    @property
    def layout(self):
        """Where the tables live (:mod:`.layout`): ``layout.cluster`` is None on one server."""
        return self._schema.layout

    def nodes(self):
        return list(self._client.nodes.nodes)

    def table_columns(self):
        """The collector's tables as it sees them (logical names): table -> frozenset of columns."""
        return {name: frozenset(schema.columns) for name, schema in self._schema.tables.items()}

    # -- connection state ------------------------------------------------------

    def _connect(self):
        if self._connecting or self._stopping:
            return
        self._connecting = True
        d = self._init()

        def ok(_):
            self._connecting = False
            self._mark_up()

        def failed(f):
            self._connecting = False
            self._mark_down(f.value)
        d.addCallbacks(ok, failed)
        d.addBoth(self._fire_first)
        d.addErrback(self._bug)

    def _fire_first(self, _):
        if self._first is not None:
            first, self._first = self._first, None
            first.callback(None)

    @defer.inlineCallbacks
    def _init(self):
        yield self._schema.connect()
        self._new_event_tables.difference_update(self._schemas)
        log.info("ClickHouse {destination}: connected to {url} (version {version}), database {database}",
                 destination=self.name, url=self._client.nodes.current.url,
                 version=self._caps.describe()["version"], database=self._db)

    @defer.inlineCallbacks
    def _load_schema(self, table=None):
        fresh = yield self._schema.load(table)
        self._new_event_tables.difference_update(fresh)

    def _watch_nodes(self):
        # returned, so that the LoopingCall never runs two probes at once
        if self._up:
            return self._schema.check_nodes().addErrback(self._bug)

    # the schema manager's view, under the names the routing code reads
    @property
    def _schemas(self):
        return self._schema.tables

    @_schemas.setter
    def _schemas(self, tables):
        self._schema.tables = tables

    @property
    def _caps(self):
        return self._schema.caps

    @property
    def _event_tables(self):
        return self._schema.event_tables

    @property
    def _schema_loaded(self):
        return self._schema.loaded

    def _mark_up(self):
        if not self._jobs:
            # back-off grows while inserts keep failing; it resets on a success
            self._failures = 0
        if not self._up:
            self._up = True
            self._since = self.reactor.seconds()
            metrics.DESTINATION_UP.labels(self.name).set(1)
        pre, self._preinit = self._preinit, []
        self._route_many(pre)
        for table in list(self._waiting):
            self._kick(table)
        self._dispatch()

    def _mark_down(self, err):
        self.last_error = str(err)
        if self._up:
            self._up = False
            self._since = self.reactor.seconds()
            metrics.DESTINATION_UP.labels(self.name).set(0)
            log.warn("ClickHouse {destination} is down: {error}", destination=self.name, error=str(err))
        elif self._failures == 0:
            log.warn("ClickHouse {destination} unreachable: {error}", destination=self.name, error=str(err))
        if self._retry_timer is None and not self._stopping:
            delay = backoff_delay(self._failures, self._rand)
            self._failures += 1
            self._retry_timer = self.reactor.callLater(delay, self._retry)
        self._check_idle()

    def _retry(self):
        self._retry_timer = None
        self._connect()

    def _bug(self, f):
        log.failure("ClickHouse {destination}: internal error", f, destination=self.name)

    # -- routing -----------------------------------------------------------------

    def _now_text(self, now):
        sec = int(now)
        cached_sec, text = self._now_cache
        if cached_sec != sec:
            text = _iso(sec)
            self._now_cache = (sec, text)
        return text

    def _route_many(self, rows, more=()):
        """Route ``rows`` (then ``more``), deciding once at the end whether a
        flush may start: a write's rows are buffered together, not one INSERT each."""
        outer = self._routing           # schema work may finish (and route) inside this loop
        self._routing = True
        try:
            for r in rows:
                self._route(r)
            for r in more:
                self._route(r)
        finally:
            self._routing = outer
        if not outer and self._buffer.rows:
            self._after_add()

    def _route(self, row):
        if not self._schema_loaded:
            self._preinit.append(row)
            return
        table = row.table
        schema = self._schemas.get(table)
        if schema is None:
            if table in self._waiting or table in self._working:
                self._waiting.setdefault(table, []).append(row)
            elif table_kind(table) != "event":
                self._wait(row)
            elif self._event_tables + len(self._new_event_tables) < self.settings.max_event_tables:
                self._new_event_tables.add(table)
                self._wait(row)
            else:
                self._discard_whole(row, f"max_event_tables ({self.settings.max_event_tables}) reached")
            return
        if not schema.valid:
            self._discard_whole(row, f"table {table} exists but is not a Stilgar table "
                                     "(it needs `id String` and `received_at DateTime`)")
            return
        r = self._encode(row, schema, row.rounds < MAX_ROUNDS)
        if r is None:
            return
        self._buffer.add(table, r[0], r[1], row)
        if not self._routing:
            self._after_add()

    def _encode(self, row, schema, allow_work):
        """(plan, line) for ``row``; None when the row went elsewhere (schema work, discards)."""
        data = row.data
        plan = schema.plan(data)
        if plan is None:
            if allow_work:
                self._wait(row)
                return None
            reason = "column could not be created"
            if schema.name in self._ddl_errors:
                reason += ": " + self._ddl_errors[schema.name]
            for col in [c for c in data if c not in schema.columns]:
                v = data.pop(col)
                if v is not None:
                    self._discard_value(row, col, v, reason)
            plan = schema.plan(data)
            if plan is None:
                self._discard_whole(row, reason)
                return None
        parts = [enc(data[c]) for c, enc in zip(plan.columns, plan.encoders)]
        if None in parts:
            cols = schema.columns
            bad = [i for i, p in enumerate(parts) if p is None]
            if allow_work:
                for i in bad:
                    col = plan.columns[i]
                    if widen_type(cols[col], data[col], self._caps, col in schema.standard) is not None:
                        self._wait(row)
                        return None
            notes = []
            for i in bad:
                col = plan.columns[i]
                column = cols[col]
                if column.default is None:
                    self._discard_whole(row, f"{col}: {misfit_reason(column, data[col])}")
                    return None
                parts[i] = column.default
                notes.append((col, data[col], misfit_reason(column, data[col])))
            for col, v, reason in notes:
                self._discard_value(row, col, v, reason)
        return plan, "\t".join(parts) + "\n"

    def _wait(self, row):
        self._waiting.setdefault(row.table, []).append(row)
        self._kick(row.table)

    def _discard_value(self, row, column, value, reason):
        if row.table == DISCARDS_TABLE:
            return
        d = discard_row(row.table, row.row_id, column, value, row.received_at, reason,
                        self._now_text(self.reactor.seconds()))
        d.ticket = row.ticket
        if row.ticket is not None:
            row.ticket.pending += 1
        self._route(d)

    def _discard_whole(self, row, reason):
        if row.table == DISCARDS_TABLE:
            # nowhere left to record it: say so loudly, and let the write complete
            self.lost += 1
            log.error("ClickHouse {destination}: could not store a rudder_discards row ({reason}): {row}",
                      destination=self.name, reason=reason, row=row.data)
            self._confirm([row])
            return
        self._route(whole_row_discard(row, reason, self._now_text(self.reactor.seconds())))

    # -- schema work -------------------------------------------------------------

    def _kick(self, table):
        if (not self._up or self._connecting or table in self._working or table in self._ddl_parked
                or not self._waiting.get(table)):
            return
        self._working.add(table)
        d = self._evolve(table)

        def done(_):
            self._working.discard(table)
            if not self._waiting.get(table):
                self._new_event_tables.discard(table)   # created (already counted) or given up
            if self._waiting.get(table):
                self._kick(table)
            self._check_idle()
        d.addErrback(self._bug)
        d.addBoth(done)

    @defer.inlineCallbacks
    def _evolve(self, table):
        rows = self._waiting.pop(table, [])
        s = self.settings
        unfinished = None
        try:
            for _ in range(5):
                if not rows:
                    return
                schema = self._schemas.get(table)
                if schema is not None and not schema.valid:
                    break
                ch = plan_changes(schema, table, rows, self._caps, s.max_table_expansion, s.max_table_width)
                if ch.rejected:
                    gone = {id(r) for r, _ in ch.rejected}
                    rows = [r for r in rows if id(r) not in gone]
                    for r, reason in ch.rejected:
                        self._discard_whole(r, reason)
                if ch.empty() or (not rows and not ch.create):
                    # a new table is created even when its first rows were all refused:
                    # queries must find an empty table, not an error (as the original)
                    break
                if (ch.create and table_kind(table) == "event"
                        and self._event_tables >= s.max_event_tables):
                    for r in rows:
                        self._discard_whole(r, f"max_event_tables ({s.max_event_tables}) reached")
                    rows = []
                    break
                if unfinished is not None:
                    # changes still missing after a cluster DDL that timed out: the
                    # rows wait (transient) instead of spending their rounds
                    raise unfinished
                issued = 0
                limited = False
                self._schema.unfinished = None
                try:
                    for statement in self._schema.statements(ch):
                        if not self._ddl_budget.take(self.reactor.seconds()):
                            limited = True
                            break
                        issued += 1
                        log.info("ClickHouse {destination}: {sql}", destination=self.name, sql=statement.sql[:300])
                        yield self._schema.run(statement)
                except ClickHouseError as e:
                    if is_transient(e):
                        raise
                    self._ddl_errors[table] = str(e)
                    self.last_error = str(e)
                    log.error("ClickHouse {destination}: schema change of {table} refused: {error}",
                              destination=self.name, table=table, error=str(e))
                    for r in rows:
                        r.rounds = MAX_ROUNDS
                    yield self._load_schema(table)
                    break
                unfinished, self._schema.unfinished = self._schema.unfinished, None
                if issued:
                    yield self._load_schema(table)
                if limited:
                    self._park(table, rows)
                    return
        except (ClickHouseError, TransportError) as e:
            if not is_transient(e):
                # our own schema query refused: store what fits, discard the rest
                log.error("ClickHouse {destination}: reading the schema of {table} failed: {error}",
                          destination=self.name, table=table, error=str(e))
                self._ddl_errors[table] = str(e)
                for r in rows:
                    r.rounds = MAX_ROUNDS
            else:
                # rows stay parked until the server is back
                self._waiting[table] = rows + self._waiting.get(table, [])
                self._mark_down(e)
                return
        except Exception:
            log.failure("ClickHouse {destination}: schema work on {table} failed", destination=self.name,
                        table=table)
            for r in rows:
                r.rounds = MAX_ROUNDS
        for r in rows:
            r.rounds += 1
        self._route_many(rows)

    def _park(self, table, rows):
        """Rows wait for the schema-change budget (never dropped); retried when it frees."""
        rows = rows + self._waiting.get(table, [])
        if not rows:
            return
        self._waiting[table] = rows
        if not self._ddl_parked:
            log.warn("ClickHouse {destination}: more than {limit} schema changes in a minute; "
                     "rows needing more wait", destination=self.name,
                     limit=self.settings.max_schema_changes_per_minute)
        self._ddl_parked.add(table)
        if self._ddl_timer is None:
            delay = self._ddl_budget.wait(self.reactor.seconds())
            self._ddl_timer = self.reactor.callLater(delay, self._unpark)

    def _unpark(self):
        self._ddl_timer = None
        tables, self._ddl_parked = self._ddl_parked, set()
        for table in sorted(tables):
            self._kick(table)

    # -- buffer and inserts --------------------------------------------------------

    def _after_add(self):
        b = self._buffer
        if b.flushing:
            # a flush is under way: these rows ride on their group's next INSERT
            if self._inflight < self.settings.max_parallel_queries:
                self._dispatch()
        elif b.full(self.settings.cache_threshold, self.settings.cache_max_bytes):
            self._flush_buffer()
        elif self._flush_requested:
            if self._soon is None:
                self._soon = self.reactor.callLater(0, self._flush_soon)
        elif self._idle_timer is None:
            self._idle_timer = self.reactor.callLater(self.settings.cache_idle_timeout, self._on_idle)

    def _flush_soon(self):
        self._soon = None
        self._flush_buffer()

    def _on_idle(self):
        self._idle_timer = None
        self._flush_buffer()

    def _flush_buffer(self):
        if self._idle_timer is not None:
            if self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = None
        self._buffer.start_flush()
        self._dispatch()

    def _dispatch(self):
        """Fill the free INSERT slots: retried jobs first, then (while a flush
        is under way) the oldest group, taking every row waiting in it up to
        the per-INSERT caps. Rows that arrive while the slots are busy wait for
        the next INSERT of their group, so the number of INSERTs follows the
        server's pace, not the event rate (natural batching)."""
        if self._up and not self._connecting:
            s = self.settings
            limit = s.max_parallel_queries
            while self._inflight < limit and self._up:
                if self._jobs:
                    job = self._jobs.popleft()
                elif self._buffer.flushing:
                    job = self._buffer.take_one(s.max_insert_rows, s.max_insert_bytes)
                else:
                    break
                self._inflight += 1
                self._send(job)
        self._check_idle()

    def _send(self, job):
        job.attempts += 1
        t0 = self.reactor.seconds()
        d = self._client.insert(encode_body(job.plan.header, job.lines))
        d.addCallbacks(self._sent, self._send_failed, callbackArgs=(job, t0), errbackArgs=(job,))
        d.addErrback(self._bug)

    def _sent(self, _, job, t0):
        self._inflight -= 1
        self._failures = 0
        metrics.INSERT_LATENCY.labels(self.name).observe(self.reactor.seconds() - t0)
        self._confirm(job.rows, job.table)
        self._dispatch()

    def _send_failed(self, f, job):
        self._inflight -= 1
        err = f.value
        if is_transient(err) or getattr(err, "code", None) == 81:
            # unreachable, overloaded, refused credentials, or the database is
            # gone: keep the rows, re-initialise with backoff
            self._jobs.appendleft(job)
            self._mark_down(err)
            return
        self.last_error = str(err)
        if not job.refreshed:
            log.warn("ClickHouse {destination}: INSERT into {table} refused ({error}); refreshing its schema",
                     destination=self.name, table=job.table, error=str(err))
            job.refreshed = True
            d = self._refresh_job(job)
            d.addErrback(self._bug)
            return
        if len(job.rows) == 1:
            row = job.rows[0]
            log.warn("ClickHouse {destination}: row {row_id} of {table} refused: {error}",
                     destination=self.name, row_id=row.row_id, table=job.table, error=str(err))
            self._discard_whole(row, f"refused by ClickHouse: {err}")
        else:
            a, b = job.halves()
            self._jobs.appendleft(b)
            self._jobs.appendleft(a)
        self._dispatch()

    @defer.inlineCallbacks
    def _refresh_job(self, job):
        self._inflight += 1      # hold the slot while the schema is re-read
        try:
            yield self._load_schema(job.table)
        except Exception as e:
            # keep the rows whatever happened; retried after a re-initialisation
            self._inflight -= 1
            job.refreshed = False
            self._jobs.appendleft(job)
            self._mark_down(e)
            return
        self._inflight -= 1
        schema = self._schemas.get(job.table)
        keep_rows, keep_lines = [], []
        plan = None
        for row in job.rows:
            if schema is None or not schema.valid:
                self._route(row)
                continue
            r = self._encode(row, schema, row.rounds < MAX_ROUNDS)
            if r is None:
                continue
            if plan is None:
                plan = r[0]
            if r[0].columns != plan.columns:
                self._buffer.add(job.table, r[0], r[1], row)
                self._after_add()
                continue
            keep_rows.append(row)
            keep_lines.append(r[1])
        if keep_rows:
            job.plan = plan
            job.rows = keep_rows
            job.lines = keep_lines
            job.bytes = sum(map(len, keep_lines))
            self._jobs.appendleft(job)
        self._dispatch()

    def _confirm(self, rows, table=None):
        if table is not None:
            n = len(rows)
            self.inserted += n
            label = self._label_cache.get(table)
            if label is None:
                label = self._label_cache[table] = metrics.table_label(table)
            metrics.ROWS_INSERTED.labels(self.name, label).inc(n)
            if table == DISCARDS_TABLE:
                self.discarded += n
                self.on_discards(self.name, [r.data for r in rows])   # the live view (stilgar/live.py)
                for src, k in Counter(r.data.get("table_name") or "" for r in rows).items():
                    metrics.ROWS_DISCARDED.labels(self.name, metrics.table_label(src) if src else "none").inc(k)
        for row in rows:
            t = row.ticket
            if t is not None:
                t.pending -= 1
                if t.pending == 0:
                    self._buffered_events -= t.events
                    t.deferred.callback(None)

    # -- flush waiters -------------------------------------------------------------

    def _idle(self):
        # rows waiting for the schema-change budget count as attempted: a flush
        # (or stop) does not wait up to a minute for them; they stay unconfirmed
        return (not self._jobs and not self._inflight and not self._buffer.rows and not self._working
                and not self._preinit
                and all(not rows or t in self._ddl_parked for t, rows in self._waiting.items()))

    def _when_idle(self):
        if not self._up or self._idle():
            self._flush_requested = False
            return defer.succeed(None)
        d = defer.Deferred()
        self._flush_waiters.append(d)
        return d

    def _check_idle(self):
        if self._flush_waiters and (not self._up or self._idle()):
            waiters, self._flush_waiters = self._flush_waiters, []
            self._flush_requested = False
            for d in waiters:
                d.callback(None)

    # -- status ----------------------------------------------------------------------

    def _refresh_server_metrics(self):
        now = self.reactor.seconds()
        if not self._up or (self._server_metrics_at is not None and now - self._server_metrics_at < 10):
            return
        self._server_metrics_at = now
        names = ", ".join(quote_string(m) for m in _METRIC_FIELDS.values())
        d = self._client.query(f"SELECT metric, value FROM system.metrics WHERE metric IN ({names}) "
                               "FORMAT TabSeparated", select=True)

        def got(data):
            values = {r[0]: r[1] for r in parse_tsv(data) if len(r) >= 2}
            self._server_metrics = {k: (int(values[m]) if values.get(m, "").lstrip("-").isdigit() else None)
                                    for k, m in _METRIC_FIELDS.items()}
        d.addCallbacks(got, lambda f: None)
