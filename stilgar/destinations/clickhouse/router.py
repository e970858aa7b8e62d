"""Rows to their place, and their confirmation (doc/clickhouse.md, "Batching",
"Discards").

A row is encoded against the cached schema of its table straight into its
(table, column set) group of the pending rows (:mod:`.batches`), or handed to
schema work (:mod:`.evolver`) when its table or a column is missing or a
column must widen, or becomes a rudder_discards row. A write's :class:`Ticket`
fires when every one of its rows is confirmed (HTTP 200) or recorded as a
discard.
"""

import datetime
from collections import Counter

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ... import metrics
from .coltypes import misfit_reason, widen_type
from .naming import DISCARDS_TABLE, table_label
from .compiled import COMPILED_TYPES, EventEncoders
from .rows import build_event_rows, discard_row, whole_row_discard
from .schema import Composite, table_kind

__all__ = ["RowRouter", "Ticket", "iso_text", "MAX_ROUNDS"]

log = Logger()

MAX_ROUNDS = 3            # schema-change rounds a row may trigger before values are discarded


class Ticket:
    """What one write() waits for."""

    __slots__ = ("pending", "events", "deferred")

    def __init__(self, pending, events):
        self.pending = pending
        self.events = events
        self.deferred = defer.Deferred()


_UNSEEN = object()


class _Out:
    """Rows of one plan routed by one :meth:`RowRouter.route_many`, waiting to join their group."""

    __slots__ = ("table", "plan", "composite", "lines", "rows")

    def __init__(self, table, plan):
        self.table = table
        self.plan = plan
        self.composite = isinstance(plan, Composite)
        self.lines = []
        self.rows = []


def iso_text(ts):
    """``ts`` (unix seconds) as rudder_discards.uuid_ts text."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@attr.s(eq=False)
class RowRouter:
    """Routes rows; counts what was inserted, discarded and lost.

    ``evolver`` and ``pipeline`` are set by the destination once all three
    exist (they call each other)."""

    name = attr.ib()
    settings = attr.ib()
    reactor = attr.ib()
    schema = attr.ib()                  # the SchemaManager: cached tables, capabilities
    evolver = attr.ib(default=None)
    pipeline = attr.ib(default=None)
    on_discards = attr.ib(default=lambda name, rows: None)   # the live view's hook (stilgar/live.py)
    inserted = attr.ib(default=0)
    discarded = attr.ib(default=0)
    lost = attr.ib(default=0)
    buffered_events = attr.ib(default=0)    # events written and not yet confirmed
    preinit = attr.ib(factory=list)         # rows that came before the first schema read
    _routing = attr.ib(default=False)       # inside route_many: the flush decision waits for its end
    _now_cache = attr.ib(default=(None, None))
    _labels = attr.ib(factory=dict)
    _encoders = attr.ib(default=None)       # the compiled encoders (.compiled)

    def __attrs_post_init__(self):
        self._encoders = EventEncoders(self.schema)

    def write(self, events):
        """Rows of ``events`` routed; the Deferred of their ticket (None: nothing to wait for)."""
        now_text = self.now_text()
        rows, discards = [], []
        compiled = self._encoders.rows if self.schema.loaded else None
        for ev in events:
            if compiled is not None and type(ev) is dict and ev.get("type") in COMPILED_TYPES:
                compiled(ev, rows, discards, now_text)
            else:
                build_event_rows(ev, rows, discards, now_text)
        ticket = Ticket(len(rows) + len(discards), len(events))
        if ticket.pending == 0:
            return None
        self.buffered_events += len(events)
        for r in rows:
            r.ticket = ticket
        for r in discards:
            r.ticket = ticket
        d = ticket.deferred
        self.route_many(rows, discards)
        return d

    def now_text(self):
        sec = int(self.reactor.seconds())
        cached_sec, text = self._now_cache
        if cached_sec != sec:
            text = iso_text(sec)
            self._now_cache = (sec, text)
        return text

    def route_many(self, rows, more=()):
        """Route ``rows`` (then ``more``), deciding once at the end whether a
        flush may start: a write's rows are buffered together, not one INSERT each."""
        outer = self._routing           # schema work may finish (and route) inside this loop
        self._routing = True
        try:
            if self.schema.loaded:
                self._route_groups(rows)
            else:
                for r in rows:
                    self.route(r)
            for r in more:
                self.route(r)
        finally:
            self._routing = outer
        if not outer and self.pipeline.pending.rows:
            self.pipeline.after_add()

    def _route_groups(self, rows):
        """Route ``rows`` in their order, looking up the plan of each shape
        (table, key order) once: the rows of a batch come in a few shapes.
        Rows of one plan are added together, in their order; a row that does
        not fit as it is goes through :meth:`route`, after the rows before it."""
        tables = self.schema.tables
        shapes = {}         # (table, key order) -> its _Out, or None (route the row on its own)
        outs = {}           # id(plan) -> _Out: shapes of one plan share their lines
        for r in rows:
            pre = r.precoded
            if pre is not None:          # a compiled encoder's row (.compiled): its plan and line are made
                r.precoded = None
                plan, line, made_with = pre
                # unless its table's schema changed since (schema work for a row before it)
                if self.schema.tables.get(r.table) is made_with:
                    out = outs.get(id(plan))
                    if out is None:
                        out = outs[id(plan)] = _Out(r.table, plan)
                    out.lines.append(line)
                    out.rows.append(r)
                    continue
                r.plan = r.line = None
            key = (r.table, tuple(r.data))
            out = shapes.get(key, _UNSEEN)
            if out is _UNSEEN:
                out = shapes[key] = self._shape(tables.get(r.table), key[1], r, outs)
            if out is not None:
                if out.composite:
                    b = r.base
                    text = out.plan.line_after(b.line, r.data) if b.plan is out.plan.base else None
                else:
                    text = out.plan.line(r.data)
                    if text is not None:
                        r.plan = out.plan
                        r.line = text
                if text is not None:
                    out.lines.append(text)
                    out.rows.append(r)
                    continue
            self._add_outs(outs)
            self.route(r)
        self._add_outs(outs)

    def _shape(self, ts, order, row, outs):
        if ts is None or not ts.valid:
            return None
        plan = None
        if row.base is not None and row.base.plan is not None:
            plan = ts.composite(order, row.base.plan)
        if plan is None:
            plan = ts.plan(order)
            if plan is None:
                return None
        out = outs.get(id(plan))
        if out is None:
            out = outs[id(plan)] = _Out(row.table, plan)
        return out

    def _add_outs(self, outs):
        add = self.pipeline.pending.add_many
        for out in outs.values():
            if out.rows:
                add(out.table, out.plan, out.lines, out.rows)
                out.lines = []
                out.rows = []

    def route(self, row):
        schema = self.schema
        if not schema.loaded:
            self.preinit.append(row)
            return
        table = row.table
        ts = schema.tables.get(table)
        if ts is None:
            self._route_new_table(row)
            return
        if not ts.valid:
            self.discard_whole(row, f"table {table} exists but is not a Stilgar table "
                                    "(it needs `id String` and `received_at DateTime`)")
            return
        r = self.encode(row, ts, row.rounds < MAX_ROUNDS)
        if r is None:
            return
        self.pipeline.pending.add(table, r[0], r[1], row)
        if not self._routing:
            self.pipeline.after_add()

    def _route_new_table(self, row):
        table = row.table
        ev = self.evolver
        if ev.busy_with(table):
            ev.queue(row)
        elif table_kind(table) != "event":
            ev.wait(row)
        elif ev.may_create_event_table(table):
            ev.wait(row)
        else:
            self.discard_whole(row, f"max_event_tables ({self.settings.max_event_tables}) reached")

    def resume(self):
        """The rows that came before the first schema read, routed now."""
        pre, self.preinit = self.preinit, []
        self.route_many(pre)

    def encode(self, row, schema, allow_work):
        """(plan, line) for ``row`` with its own plan; None when the row went
        elsewhere (schema work, discards). (Lines after a base row's are
        :meth:`_route_groups`' fast path; a row routed on its own does without.)"""
        data = row.data
        plan = schema.plan(data)
        if plan is None:
            plan = self._without_missing(row, schema, allow_work)
            if plan is None:
                return None
        line = plan.line(data)
        if line is not None:
            row.plan = plan
            row.line = line
            return plan, line
        return self._encode_misfits(row, schema, plan, allow_work)

    def _without_missing(self, row, schema, allow_work):
        """A column is missing: schema work, or (its rounds spent) the row without those values."""
        if allow_work:
            self.evolver.wait(row)
            return None
        data = row.data
        reason = "column could not be created"
        error = self.evolver.ddl_errors.get(schema.name)
        if error is not None:
            reason += ": " + error
        for col in [c for c in data if c not in schema.columns]:
            v = data.pop(col)
            if v is not None:
                self.discard_value(row, col, v, reason)
        plan = schema.plan(data)
        if plan is None:
            self.discard_whole(row, reason)
        return plan

    def _encode_misfits(self, row, schema, plan, allow_work):
        """Some value does not fit its column: widen it (schema work), or store
        the column's default and discard the value (doc/clickhouse.md, "Types")."""
        data = row.data
        parts = plan.fields(data)
        cols = schema.columns
        bad = [i for i, p in enumerate(parts) if p is None]
        if allow_work:
            for i in bad:
                col = plan.columns[i]
                if widen_type(cols[col], data[col], self.schema.caps, col in schema.standard) is not None:
                    self.evolver.wait(row)
                    return None
        notes = []
        for i in bad:
            col = plan.columns[i]
            column = cols[col]
            if column.default is None:
                self.discard_whole(row, f"{col}: {misfit_reason(column, data[col])}")
                return None
            parts[i] = column.default
            notes.append((col, data[col], misfit_reason(column, data[col])))
        for col, v, reason in notes:
            self.discard_value(row, col, v, reason)
        return plan, "\t".join(parts) + "\n"

    def discard_value(self, row, column, value, reason):
        if row.table == DISCARDS_TABLE:
            return
        d = discard_row(row.table, row.row_id, column, value, row.received_at, reason, self.now_text())
        d.ticket = row.ticket
        if row.ticket is not None:
            row.ticket.pending += 1
        self.route(d)

    def discard_whole(self, row, reason):
        if row.table == DISCARDS_TABLE:
            # nowhere left to record it: say so loudly, and let the write complete
            self.lost += 1
            log.error("ClickHouse {destination}: could not store a rudder_discards row ({reason}): {row}",
                      destination=self.name, reason=reason, row=row.data)
            self.confirm([row])
            return
        self.route(whole_row_discard(row, reason, self.now_text()))

    def confirm(self, rows, table=None):
        """``rows`` are stored (in ``table``) or accounted for: their tickets advance."""
        if table is not None:
            self._count(rows, table)
        for row in rows:
            t = row.ticket
            if t is not None:
                t.pending -= 1
                if t.pending == 0:
                    self.buffered_events -= t.events
                    t.deferred.callback(None)

    def _count(self, rows, table):
        n = len(rows)
        self.inserted += n
        label = self._labels.get(table)
        if label is None:
            label = self._labels[table] = table_label(table)
        metrics.ROWS_INSERTED.labels(self.name, label).inc(n)
        if table == DISCARDS_TABLE:
            self.discarded += n
            self.on_discards(self.name, [r.data for r in rows])   # the live view (stilgar/live.py)
            for src, k in Counter(r.data.get("table_name") or "" for r in rows).items():
                metrics.ROWS_DISCARDED.labels(self.name, table_label(src) if src else "none").inc(k)
