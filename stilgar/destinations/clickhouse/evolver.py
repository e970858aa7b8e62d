"""Schema work for rows that need it: a table to create, columns to add or
widen (planned by :mod:`.evolution`, run by :mod:`.schemas`), one table at
a time, within the schema-change budget (doc/clickhouse.md, "Growth limits"
and "Types: inference, fitting, widening").

Rows wait here per table; once the change is made (or refused) they are
routed again, each at most ``MAX_ROUNDS`` times before what still does not
fit is discarded.
"""

import attr
from twisted.internet import defer
from twisted.logger import Logger

from .client import ClickHouseError, TransportError, is_transient
from .ddlrate import SchemaChangeBudget
from .evolution import plan_changes
from .router import MAX_ROUNDS
from .schema import table_kind

__all__ = ["SchemaEvolver"]

log = Logger()

_PASSES = 5           # plan/DDL/re-read passes of one round of a table's rows


class _Parked(Exception):
    """The schema-change budget is spent: the rows wait for it."""


@attr.s(eq=False)
class SchemaEvolver:
    name = attr.ib()
    settings = attr.ib()
    reactor = attr.ib()
    schema = attr.ib()                  # the SchemaManager
    link = attr.ib(default=None)        # set by the destination
    router = attr.ib(default=None)
    on_idle = attr.ib(default=lambda: None)
    waiting = attr.ib(factory=dict)     # table -> rows waiting for its schema work
    ddl_errors = attr.ib(factory=dict)  # table -> the last refused DDL's error
    parked = attr.ib(factory=set)       # tables whose rows wait for the schema-change budget
    _working = attr.ib(factory=set)
    _new_event_tables = attr.ib(factory=set)   # per-event tables waiting to be created
    _budget = attr.ib(default=None)
    _timer = attr.ib(default=None)

    def __attrs_post_init__(self):
        self._budget = SchemaChangeBudget(self.settings.max_schema_changes_per_minute)

    # -- what the router asks ----------------------------------------------------

    def busy_with(self, table):
        return table in self.waiting or table in self._working

    def queue(self, row):
        """Join the rows already waiting for ``row``'s table."""
        self.waiting.setdefault(row.table, []).append(row)

    def wait(self, row):
        self.queue(row)
        self.kick(row.table)

    def may_create_event_table(self, table):
        """True (and counted) when a new per-event table stays within max_event_tables."""
        if self.schema.event_tables + len(self._new_event_tables) < self.settings.max_event_tables:
            self._new_event_tables.add(table)
            return True
        return False

    def connected(self):
        self._new_event_tables.difference_update(self.schema.tables)

    @defer.inlineCallbacks
    def load(self, table=None):
        fresh = yield self.schema.load(table)
        self._new_event_tables.difference_update(fresh)

    def waiting_rows(self):
        return sum(len(v) for v in self.waiting.values())

    def idle(self):
        # rows waiting for the schema-change budget count as attempted: a flush
        # (or stop) does not wait up to a minute for them; they stay unconfirmed
        return not self._working and all(not rows or t in self.parked for t, rows in self.waiting.items())

    def resume(self):
        for table in list(self.waiting):
            self.kick(table)

    def cancel(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- one table's work ------------------------------------------------------------

    def kick(self, table):
        if (not self.link.up or table in self._working or table in self.parked
                or not self.waiting.get(table)):
            return
        self._working.add(table)
        d = self._evolve(table)

        def done(_):
            self._working.discard(table)
            if not self.waiting.get(table):
                self._new_event_tables.discard(table)   # created (already counted) or given up
            if self.waiting.get(table):
                self.kick(table)
            self.on_idle()
        d.addErrback(self.link.bug)
        d.addBoth(done)

    @defer.inlineCallbacks
    def _evolve(self, table):
        """Plan and run the changes the waiting rows of ``table`` need, then route them again."""
        rows = self.waiting.pop(table, [])
        try:
            if not (yield self._passes(table, rows)):
                return           # nothing left to route
        except _Parked:
            return
        except (ClickHouseError, TransportError) as e:
            if is_transient(e):
                # rows stay parked until the server is back
                self.waiting[table] = rows + self.waiting.get(table, [])
                self.link.mark_down(e)
                return
            # our own schema query refused: store what fits, discard the rest
            log.error("ClickHouse {destination}: reading the schema of {table} failed: {error}",
                      destination=self.name, table=table, error=str(e))
            self.ddl_errors[table] = str(e)
            _spent(rows)
        except Exception:
            log.failure("ClickHouse {destination}: schema work on {table} failed", destination=self.name,
                        table=table)
            _spent(rows)
        for r in rows:
            r.rounds += 1
        self.router.route_many(rows)

    @defer.inlineCallbacks
    def _passes(self, table, rows):
        """Up to ``_PASSES`` plan + DDL + re-read passes over ``rows`` (cut in
        place to the rows left to route). False when none was left at the
        start of a pass; raises _Parked (the rows wait) or the server's errors."""
        unfinished = None
        for _ in range(_PASSES):
            if not rows:
                return False
            ch = self._plan(table, rows)
            if ch is None:
                break
            if unfinished is not None:
                # changes still missing after a cluster DDL that timed out: the
                # rows wait (transient) instead of spending their rounds
                raise unfinished
            done, unfinished = yield self._apply(table, ch, rows)
            if not done:
                break
        return True

    def _plan(self, table, rows):
        """The changes ``rows`` need (refused rows discarded and removed from
        ``rows`` in place), or None when there is nothing to do."""
        schema = self.schema.tables.get(table)
        if schema is not None and not schema.valid:
            return None
        s = self.settings
        ch = plan_changes(schema, table, rows, self.schema.caps, s.max_table_expansion, s.max_table_width)
        if ch.rejected:
            gone = {id(r) for r, _ in ch.rejected}
            rows[:] = [r for r in rows if id(r) not in gone]
            for r, reason in ch.rejected:
                self.router.discard_whole(r, reason)
        if ch.empty() or (not rows and not ch.create):
            # a new table is created even when its first rows were all refused:
            # queries must find an empty table, not an error (as the original)
            return None
        if ch.create and table_kind(table) == "event" and self.schema.event_tables >= s.max_event_tables:
            for r in rows:
                self.router.discard_whole(r, f"max_event_tables ({s.max_event_tables}) reached")
            rows[:] = []
            return None
        return ch

    @defer.inlineCallbacks
    def _apply(self, table, ch, rows):
        """Run the statements of ``ch`` within the budget and re-read the table.
        ``(go on, the unfinished cluster DDL timeout or None)``."""
        issued = 0
        limited = False
        manager = self.schema
        manager.unfinished = None
        try:
            for statement in manager.statements(ch):
                if not self._budget.take(self.reactor.seconds()):
                    limited = True
                    break
                issued += 1
                log.info("ClickHouse {destination}: {sql}", destination=self.name, sql=statement.sql[:300])
                yield manager.run(statement)
        except ClickHouseError as e:
            if is_transient(e):
                raise
            self._refused(table, e, rows)
            yield self.load(table)
            return False, None
        unfinished, manager.unfinished = manager.unfinished, None
        if issued:
            yield self.load(table)
        if limited:
            self._park(table, rows)
            raise _Parked()
        return True, unfinished

    def _refused(self, table, e, rows):
        self.ddl_errors[table] = str(e)
        self.link.last_error = str(e)
        log.error("ClickHouse {destination}: schema change of {table} refused: {error}",
                  destination=self.name, table=table, error=str(e))
        _spent(rows)

    # -- the schema-change budget ------------------------------------------------------

    def _park(self, table, rows):
        """Rows wait for the schema-change budget (never dropped); retried when it frees."""
        rows = rows + self.waiting.get(table, [])
        if not rows:
            return
        self.waiting[table] = rows
        if not self.parked:
            log.warn("ClickHouse {destination}: more than {limit} schema changes in a minute; "
                     "rows needing more wait", destination=self.name,
                     limit=self.settings.max_schema_changes_per_minute)
        self.parked.add(table)
        if self._timer is None:
            delay = self._budget.wait(self.reactor.seconds())
            self._timer = self.reactor.callLater(delay, self._unpark)

    def _unpark(self):
        self._timer = None
        tables, self.parked = self.parked, set()
        for table in sorted(tables):
            self.kick(table)


def _spent(rows):
    """No more schema work for these rows: what does not fit now is discarded."""
    for r in rows:
        r.rounds = MAX_ROUNDS
