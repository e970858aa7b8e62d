"""Retention (stilgar/regulations/retention.py): day partitions dropped on 18.16, TTL on modern servers."""

import datetime

from twisted.internet import defer, reactor
from twisted.trial import unittest

from stilgar import metrics
from stilgar.destinations.clickhouse.capabilities import MODERN
from stilgar.destinations.clickhouse.layout import SingleServer
from stilgar.destinations.clickhouse.schema import create_table_sql
from stilgar.regulations.clickhouse import ClickHouseErasure, droppable, partition_day
from stilgar.regulations.retention import RetentionService
from stilgar.regulations.wiring import erasables_of

from .processes import wait_for
from .test_clickhouse_integration import IntegrationBase, ev

DAY = 86400


def iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ChdbDestination:
    """What the ClickHouse adapter uses of a destination, over chdb (synchronous, in process)."""

    name = "chdb"
    capabilities = MODERN
    layout = SingleServer()

    class settings:
        alter_timeout = 5.0
        cache_idle_timeout = 1.0

    def __init__(self, connection, database):
        self.connection = connection
        self.database = database

    def run_sql(self, sql, select=False, timeout=None, node=None):
        fmt = "JSONEachRow" if "JSONEachRow" in sql else "TabSeparated"
        return defer.succeed(self.connection.query(sql, fmt).bytes())

    @staticmethod
    def health():
        return {"up": True}


def fresh_chdb_database(case, db):
    """chdb's connection with an empty database ``db``, dropped after the test."""
    from .test_clickhouse_chdb import conn
    c = conn()
    c.query(f"DROP DATABASE IF EXISTS {db}")
    c.query(f"CREATE DATABASE {db}")
    case.addCleanup(c.query, f"DROP DATABASE IF EXISTS {db}")
    return c


class PureTests(unittest.TestCase):
    def test_partition_day(self):
        self.assertEqual(partition_day("20260131"), datetime.date(2026, 1, 31))
        for other in ("all", "202601", "20261340", "2026-01-01"):
            self.assertIsNone(partition_day(other))

    def test_droppable_only_when_the_whole_day_is_older(self):
        cutoff = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=datetime.timezone.utc)
        self.assertTrue(droppable(datetime.date(2026, 3, 9), cutoff))
        self.assertFalse(droppable(datetime.date(2026, 3, 10), cutoff))   # the day of the cutoff stays
        self.assertFalse(droppable(datetime.date(2026, 3, 11), cutoff))
        midnight = datetime.datetime(2026, 3, 10, tzinfo=datetime.timezone.utc)
        self.assertTrue(droppable(datetime.date(2026, 3, 9), midnight))


class OldServerTests(IntegrationBase):
    timeout = 90

    @defer.inlineCallbacks
    def test_old_partitions_dropped_recent_kept(self):
        dest = yield self.destination()
        now = reactor.seconds()
        cutoff = now - 400 * DAY
        boundary_day_start = cutoff - cutoff % DAY
        events = [
            ev("track", "old-1", receivedAt=iso(now - 500 * DAY), event="E"),
            ev("track", "old-2", receivedAt=iso(now - 401 * DAY - 3600), event="E"),
            ev("identify", "old-user", userId="u-old", receivedAt=iso(now - 450 * DAY)),
            # the cutoff's day: one row older than the retention, one inside it: the partition stays
            ev("track", "edge-old", receivedAt=iso(boundary_day_start + 1), event="E"),
            ev("track", "edge-new", receivedAt=iso(min(now, cutoff + 60)), event="E"),
            ev("track", "new", receivedAt=iso(now), event="E"),
            ev("identify", "new-user", userId="u-new", receivedAt=iso(now)),
        ]
        if cutoff + 60 >= boundary_day_start + DAY:
            events = [e for e in events if e["messageId"] != "edge-new"]
        yield self.write(dest, events)
        [erasable] = erasables_of([dest]).values()
        service = RetentionService([(erasable, 400 * DAY)], reactor)
        counter = metrics.RETENTION_PARTITIONS_DROPPED.labels(destination=dest.name)
        before = counter._value.get()
        done = yield service.run()
        dropped = [what for _, table, what in done if table == "tracks"]
        self.assertEqual(len(dropped), 2, done)                       # the 500 and 401 days old days
        self.assertGreaterEqual(counter._value.get() - before, 2)
        rows = yield self.select(f"SELECT DISTINCT id FROM `{self.db}`.tracks ORDER BY id")   # retried INSERTs
        self.assertEqual([r[0] for r in rows], sorted(e["messageId"] for e in events
                                                      if e["type"] == "track" and not e["messageId"].startswith("old")))
        # users (not partitioned on 18.16) loses its old rows through a mutation
        self.assertIn(("users", ), {(t,) for _, t, what in done if what.startswith("deleting")})

        @defer.inlineCallbacks
        def mutated():
            rows = yield self.select(f"SELECT id FROM `{self.db}`.users ORDER BY id")
            return rows == [["u-new"]]
        yield wait_for(mutated, timeout=30, interval=0.2)
        # a second pass has nothing to do
        self.assertEqual((yield service.run()), [])


class ModernServerTests(unittest.TestCase):
    """TTL statements on chdb (26.9), through the adapter."""

    def test_ttl_on_every_table_once(self):
        db = "stilgar_retention_ttl"
        c = fresh_chdb_database(self, db)
        for table in ("tracks", "users", "rudder_discards", "order_done"):
            c.query(create_table_sql(db, table, MODERN))
        c.query(f"CREATE TABLE {db}.not_ours (x String) ENGINE = MergeTree ORDER BY x")

        erasable = ClickHouseErasure(ChdbDestination(c, db))
        done = self.successResultOf(erasable.apply_retention(400 * DAY, reactor.seconds()))
        self.assertEqual(sorted(t for t, _ in done), ["order_done", "rudder_discards", "tracks", "users"])
        engines = dict(line.split("\t", 1) for line in c.query(
            f"SELECT name, engine_full FROM system.tables WHERE database = '{db}'", "TabSeparated")
            .bytes().decode().splitlines())
        for table in ("tracks", "users", "rudder_discards", "order_done"):
            self.assertIn("TTL received_at + toIntervalDay(400)", engines[table])
        self.assertNotIn("TTL", engines["not_ours"])
        again = ClickHouseErasure(ChdbDestination(c, db))     # a restart: the TTL is read back, not re-applied
        self.assertEqual(self.successResultOf(again.apply_retention(400 * DAY, reactor.seconds())), [])
