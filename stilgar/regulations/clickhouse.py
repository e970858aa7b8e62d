"""Regulations and retention on ClickHouse: the SQL (pure) and the :class:`IErasable` adapter.

Every mutation and DDL statement is built by :func:`alter_sql`, the one
place where ``ON CLUSTER`` is added for a cluster (doc/privacy.md). The
adapter runs statements with the destination's own client
(``ClickHouseDestination.run_sql``).
"""

import datetime
import json

import attr
from twisted.internet import defer
from twisted.python import components
from zope.interface import implementer

from ..destinations.clickhouse.client import ClickHouseError, is_transient
from ..destinations.clickhouse.coltypes import STILGAR_COMMENT
from ..destinations.clickhouse.destination import ClickHouseDestination
from ..destinations.clickhouse.layout import check_ddl_answer
from ..destinations.clickhouse.naming import DISCARDS_TABLE, quote_ident, quote_string
from ..destinations.clickhouse.tsv import escape, json_text, parse_tsv
from .erasure import ErasureFailed, IErasable

__all__ = ["REGULATIONS_TABLE", "alter_sql", "subject_where", "ClickHouseErasure", "create_regulations_sql",
           "partition_day", "droppable"]

REGULATIONS_TABLE = "rudder_regulations"
ID_CHUNK = 1000     # message ids per IN list: statements stay under max_query_size (256 KiB)
_MODERN_TTL = 22    # major version from which TTL works (doc/clickhouse.md, "Capabilities")


def _table(database, table):
    return f"{quote_ident(database)}.{quote_ident(table)}"


def alter_sql(database, table, action, cluster=None):
    """``ALTER TABLE db.t [ON CLUSTER c] <action>``: mutations, TTL and partition drops."""
    on = f" ON CLUSTER {quote_ident(cluster)}" if cluster else ""
    return f"ALTER TABLE {_table(database, table)}{on} {action}"


_REGULATIONS_COLUMNS = ("(`regulation_id` String, `at_ms` UInt64, `action` String, `subject_key` String,"
                        " `regulation_type` String, `subject_type` String, `admin` String)")
_REGULATIONS_ENGINE = "ENGINE = ReplacingMergeTree() ORDER BY (`regulation_id`, `action`, `subject_key`)"


def create_regulations_sql(database, layout=None):
    """The statements creating the shared ``rudder_regulations`` table: one
    table on one server; on a cluster a replicated local table and a
    Distributed table over it, so that every instance on every node reads
    every suppression."""
    if layout is None or layout.cluster is None:
        return [f"CREATE TABLE IF NOT EXISTS {_table(database, REGULATIONS_TABLE)} {_REGULATIONS_COLUMNS}"
                f" {_REGULATIONS_ENGINE}"]
    local = layout.local(REGULATIONS_TABLE)
    on = f" ON CLUSTER {quote_ident(layout.cluster)}"
    return [f"CREATE TABLE IF NOT EXISTS {_table(database, local)}{on} {_REGULATIONS_COLUMNS}"
            f" {layout.engine(_REGULATIONS_ENGINE, database, REGULATIONS_TABLE)}",
            f"CREATE TABLE IF NOT EXISTS {_table(database, REGULATIONS_TABLE)}{on} AS {_table(database, local)}"
            f" ENGINE = Distributed({quote_ident(layout.cluster)}, {quote_ident(database)}, {quote_ident(local)},"
            f" cityHash64(`subject_key`))"]


def _in(column, values):
    return f"{quote_ident(column)} IN ({', '.join(quote_string(v) for v in values)})"


def subject_where(table, columns, subject_type, subject_ids, message_ids=()):
    """The WHERE of a subject's rows in ``table`` (its column names), or None if it cannot hold any.

    users rows by ``id`` (USER_ID), aliases by ``previous_id`` too, rudder_discards
    by ``row_id`` (the subject's message ids and user id) and wherever the
    subject's id appears, JSON-encoded, in ``column_value``."""
    ids = list(subject_ids)
    parts = []
    if table == DISCARDS_TABLE:
        parts.append(_in("row_id", ids + [m for m in message_ids if m not in set(ids)]))
        parts += [f"position(`column_value`, {quote_string(json_text(i))}) > 0" for i in ids]
    else:
        column = "user_id" if subject_type == "USER_ID" else "anonymous_id"
        if table == "users" and subject_type == "USER_ID":
            column = "id"
        if column in columns:
            parts.append(_in(column, ids))
        if "previous_id" in columns:
            parts.append(_in("previous_id", ids))
    if not parts:
        return None
    return " OR ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]


def partition_day(partition_id):
    """The day of a ``toDate`` partition id (``20260101``), or None for another partitioning."""
    if len(partition_id) != 8 or not partition_id.isdigit():
        return None
    try:
        return datetime.date(int(partition_id[:4]), int(partition_id[4:6]), int(partition_id[6:]))
    except ValueError:
        return None


def droppable(day, cutoff):
    """A day partition may go when its last possible second is before ``cutoff`` (a datetime)."""
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), datetime.timezone.utc)
    return end <= cutoff


@attr.s(slots=True)
class TableItem:
    """One table's share of an erasure."""
    table = attr.ib()
    where = attr.ib()


def _failed(e):
    """ClickHouse refusing a regulation's statement for good becomes ErasureFailed; the rest is retried."""
    if isinstance(e, ClickHouseError) and not is_transient(e):
        raise ErasureFailed(str(e)) from None
    raise e


@implementer(IErasable)
class ClickHouseErasure:
    """:class:`IErasable` for a :class:`ClickHouseDestination` (its client, its database)."""

    def __init__(self, destination):
        self.destination = destination
        self.name = destination.name
        self.database = destination.database
        self._table_ready = False
        self._ttl_done = set()

    @property
    def cluster(self):
        """The cluster name in cluster mode (doc/scaling.md), else None."""
        return self.destination.layout.cluster

    def _local(self, table):
        """The table mutations and partition drops act on: ``<t>_local`` on a cluster
        (a Distributed table stores nothing), ``t`` on one server."""
        return self.destination.layout.local(table) if self.cluster else table

    def _sql(self, sql, select=False, timeout=None, node=None):
        d = self.destination.run_sql(sql, select=select, timeout=timeout, node=node)
        d.addErrback(lambda f: _failed(f.value))
        return d

    @defer.inlineCallbacks
    def _on_every_node(self, sql):
        """A read on every node (per-node state: mutations, parts); a node that
        does not answer fails the whole read (it is retried later)."""
        if not self.cluster:
            return [(yield self._sql(sql, select=True))]
        answers = []
        for node in self.destination.nodes():
            answers.append((yield self._sql(sql, select=True, node=node)))
        return answers

    def ready(self):
        return bool(self.destination.health().get("up"))

    def settle_delay(self):
        return self.destination.settings.cache_idle_timeout

    def flush(self):
        return self.destination.flush()

    # -- shared suppression rows -----------------------------------------------

    @defer.inlineCallbacks
    def _ensure_table(self):
        if not self._table_ready:
            if not self.cluster:     # in cluster mode the destination creates it ON CLUSTER
                yield self._sql(f"CREATE DATABASE IF NOT EXISTS {quote_ident(self.database)}")
            for sql in create_regulations_sql(self.database, self.destination.layout):
                answer = yield self._sql(sql)
                if self.cluster:
                    check_ddl_answer(answer)
            self._table_ready = True

    @defer.inlineCallbacks
    def publish(self, rows):
        yield self._ensure_table()
        lines = "".join("\t".join([escape(rid), str(int(at)), escape(action), escape(key), escape(kind),
                                   escape(stype), escape(admin or "")]) + "\n"
                        for at, rid, action, key, kind, stype, admin in rows)
        yield self._sql(f"INSERT INTO {_table(self.database, REGULATIONS_TABLE)} (`regulation_id`, `at_ms`,"
                        " `action`, `subject_key`, `regulation_type`, `subject_type`, `admin`)"
                        " FORMAT TabSeparated\n" + lines)

    @defer.inlineCallbacks
    def fetch(self):
        yield self._ensure_table()
        data = yield self._sql(f"SELECT at_ms, regulation_id, action, subject_key FROM "
                               f"{_table(self.database, REGULATIONS_TABLE)} FORMAT TabSeparated", select=True)
        return [(int(r[0]), r[1], r[2], r[3]) for r in parse_tsv(data) if len(r) == 4 and r[0].isdigit()]

    # -- erasure ---------------------------------------------------------------

    @defer.inlineCallbacks
    def _owned_tables(self):
        """table -> set of columns, for the tables this collector created (columns marked 'stilgar';
        on a cluster, the local + Distributed pairs of the destination's schema view)."""
        if self.cluster:
            return {t: set(c) for t, c in sorted(self.destination.table_columns().items())
                    if t != REGULATIONS_TABLE}
        data = yield self._sql(f"SELECT table, name, comment FROM system.columns WHERE database = "
                               f"{quote_string(self.database)} FORMAT TabSeparated", select=True)
        columns, owned = {}, set()
        for row in parse_tsv(data):
            if len(row) < 3:
                continue
            columns.setdefault(row[0], set()).add(row[1])
            if row[1] == "received_at" and (row[2] or "").strip() == STILGAR_COMMENT:
                owned.add(row[0])
        return {t: columns[t] for t in sorted(owned) if t != REGULATIONS_TABLE}

    @defer.inlineCallbacks
    def plan(self, subject_type, subject_ids):
        tables = yield self._owned_tables()
        message_ids = set()
        items = []
        for table, columns in tables.items():
            if table in (DISCARDS_TABLE, "users") or "id" not in columns:
                continue
            where = subject_where(table, columns, subject_type, subject_ids)
            if where is None:
                continue
            data = yield self._sql(f"SELECT DISTINCT id FROM {_table(self.database, table)} WHERE {where}"
                                   " FORMAT TabSeparated", select=True)
            message_ids.update(r[0] for r in parse_tsv(data) if r)
        # discards first: they are found through the message ids of rows deleted next
        if DISCARDS_TABLE in tables:
            ordered = sorted(message_ids)
            chunks = [ordered[i:i + ID_CHUNK] for i in range(0, len(ordered), ID_CHUNK)] or [[]]
            for chunk in chunks:
                items.append(TableItem(DISCARDS_TABLE, subject_where(
                    DISCARDS_TABLE, tables[DISCARDS_TABLE], subject_type, subject_ids, chunk)))
        for table, columns in tables.items():
            if table == DISCARDS_TABLE:
                continue
            where = subject_where(table, columns, subject_type, subject_ids)
            if where is not None:
                items.append(TableItem(table, where))
        return items

    @defer.inlineCallbacks
    def count(self, item):
        data = yield self._sql(f"SELECT count() FROM {_table(self.database, item.table)} WHERE {item.where}"
                               " FORMAT TabSeparated", select=True)
        rows = parse_tsv(data)
        return int(rows[0][0]) if rows and rows[0] and rows[0][0].isdigit() else 0

    @defer.inlineCallbacks
    def delete(self, item):
        answer = yield self._sql(alter_sql(self.database, self._local(item.table), f"DELETE WHERE {item.where}",
                                           self.cluster), timeout=self.destination.settings.alter_timeout)
        if self.cluster:
            check_ddl_answer(answer)

    @defer.inlineCallbacks
    def deleted(self, item):
        answers = yield self._on_every_node(
            f"SELECT * FROM system.mutations WHERE database = {quote_string(self.database)}"
            f" AND table = {quote_string(self._local(item.table))} AND is_done = 0 FORMAT JSONEachRow")
        pending = [json.loads(line) for data in answers for line in data.decode("utf-8").splitlines()
                   if line.strip()]
        for mutation in pending:
            reason = mutation.get("latest_fail_reason")   # modern servers only
            if reason:
                raise ErasureFailed(f"mutation {mutation.get('mutation_id')} on {item.table} failed: "
                                    f"{reason[:300]}")
        return not pending

    # -- retention ---------------------------------------------------------------

    @defer.inlineCallbacks
    def apply_retention(self, seconds, now):
        tables = yield self._owned_tables()
        caps = self.destination.capabilities
        if caps.version[0] >= _MODERN_TTL:
            return (yield self._ttl(tables, seconds))
        return (yield self._drop_old(tables, seconds, now))

    @defer.inlineCallbacks
    def _ttl(self, tables, seconds):
        days = max(1, int(seconds // 86400))
        done = []
        data = yield self._sql(f"SELECT name, engine_full FROM system.tables WHERE database = "
                               f"{quote_string(self.database)} FORMAT TabSeparated", select=True)
        engines = {r[0]: r[1] for r in parse_tsv(data) if len(r) >= 2}
        for table in tables:
            wanted = f"toIntervalDay({days})"
            if (table, days) in self._ttl_done or wanted in engines.get(self._local(table), ""):
                self._ttl_done.add((table, days))
                continue
            yield self._sql(alter_sql(self.database, self._local(table),
                                      f"MODIFY TTL `received_at` + INTERVAL {days} DAY", self.cluster),
                            timeout=self.destination.settings.alter_timeout)
            self._ttl_done.add((table, days))
            done.append((table, f"TTL {days} days"))
        return done

    @defer.inlineCallbacks
    def _drop_old(self, tables, seconds, now):
        cutoff = datetime.datetime.fromtimestamp(now - seconds, datetime.timezone.utc)
        cutoff_text = quote_string(cutoff.strftime("%Y-%m-%d %H:%M:%S"))
        answers = yield self._on_every_node(
            f"SELECT DISTINCT table, partition_id FROM system.parts WHERE database = "
            f"{quote_string(self.database)} AND active FORMAT TabSeparated")
        local_of = {self._local(t): t for t in tables}
        parts = sorted({(local_of[r[0]], r[1]) for data in answers for r in parse_tsv(data)
                        if len(r) >= 2 and r[0] in local_of})
        done = []
        unpartitioned = set()
        for table, pid in parts:
            day = partition_day(pid)
            if day is None:
                unpartitioned.add(table)
                continue
            if not droppable(day, cutoff):
                continue
            # belt and braces: never drop a partition holding a row inside the retention
            data = yield self._sql(f"SELECT count() FROM {_table(self.database, table)} WHERE toDate(received_at)"
                                   f" = toDate({quote_string(day.isoformat())}) AND received_at >= {cutoff_text}"
                                   " FORMAT TabSeparated", select=True)
            rows = parse_tsv(data)
            if rows and rows[0] and rows[0][0] != "0":
                continue
            yield self._sql(alter_sql(self.database, self._local(table), f"DROP PARTITION ID {quote_string(pid)}",
                                      self.cluster),
                            timeout=self.destination.settings.alter_timeout)
            done.append((table, f"dropped partition {pid}"))
        for table in sorted(unpartitioned):
            # users on old servers is not partitioned: its old rows go by a mutation
            where = f"received_at < {cutoff_text}"
            n = yield self.count(TableItem(table, where))
            if n:
                yield self._sql(alter_sql(self.database, self._local(table), f"DELETE WHERE {where}", self.cluster),
                                timeout=self.destination.settings.alter_timeout)
                done.append((table, f"deleting {n} rows older than the retention"))
        return done


components.registerAdapter(ClickHouseErasure, ClickHouseDestination, IErasable)
