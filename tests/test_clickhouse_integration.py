"""The ClickHouse destination against a real ClickHouse 18.16 server (tests/chserver.py).

Each test uses its own database; the reactor is real (tests return Deferreds)."""

import os
import re

from twisted.internet import defer, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from stilgar.destinations.clickhouse import ClickHouseType
from stilgar.destinations.clickhouse.client import Client
from stilgar.destinations.clickhouse.naming import short_hash
from stilgar.destinations.clickhouse.tsv import parse_tsv

from . import chserver
from .test_clickhouse_units import event

RECV = "2024-05-06T07:08:09.123456Z"
RECV_EPOCH = 1714979289


class DestinationHelpers:
    """Builds destinations from ``self.settings(**kw)`` (stopped by the test's tearDown via
    ``self.dests``) and writes to them, waiting for the flush."""

    @defer.inlineCallbacks
    def destination(self, **kw):
        dest = ClickHouseType.build("clickhouse:" + self.db, ["k"], self.settings(**kw), reactor)
        self.dests.append(dest)
        yield dest.start()
        return dest

    @defer.inlineCallbacks
    def write(self, dest, events):
        d = dest.write(events)
        yield dest.flush()
        yield d


class IntegrationBase(DestinationHelpers, unittest.TestCase):
    timeout = 60
    server = None

    @classmethod
    def get_server(cls):
        return chserver.clickhouse()

    def setUp(self):
        # blocking, once per class: starts (or finds) the server outside any test body
        cls = type(self)
        if cls.__dict__.get("server") is None:
            cls.server = cls.get_server()
        name = re.sub(r"\W", "_", self.id().split(".")[-1])
        self.db = f"stilgar_it_{os.getpid()}_{name}"[:60]
        self.dests = []
        self.reader = None

    def tearDown(self):
        ds = [d.stop() for d in self.dests]
        if self.reader is not None:
            ds.append(self.reader.close())
        d = defer.DeferredList(ds)

        def drop(_):
            reader = Client(reactor, self.settings())
            return reader.query(f"DROP DATABASE IF EXISTS `{self.db}`").addBoth(lambda _: reader.close())
        return d.addCallback(drop)

    def settings(self, **kw):
        block = {"url": self.server.url, "user": self.server.user, "password": self.server.password,
                 "database": self.db, "cache_idle_timeout": "30s", "query_timeout": "5s"}
        block.update(kw)
        return ClickHouseType.parse_settings(block, "d", lambda w: None)

    def query(self, sql):
        if self.reader is None:
            self.reader = Client(reactor, self.settings())
        return self.reader.query(sql)

    @defer.inlineCallbacks
    def select(self, sql):
        if self.reader is None:
            self.reader = Client(reactor, self.settings())
        data = yield self.reader.query(sql + " FORMAT TabSeparated", select=True)
        return parse_tsv(data)

    @defer.inlineCallbacks
    def columns(self, table):
        rows = yield self.select(f"SELECT name, type FROM system.columns WHERE database = '{self.db}' "
                                 f"AND table = '{table}'")
        return dict(rows)

    @defer.inlineCallbacks
    def discards(self):
        rows = yield self.select(f"SELECT table_name, row_id, column_name, column_value, reason "
                                 f"FROM `{self.db}`.rudder_discards ORDER BY row_id, column_name")
        return rows


def ev(kind, mid, **kw):
    kw.setdefault("receivedAt", RECV)
    return event(kind, messageId=mid, **kw)


class EventTypesTests(IntegrationBase):
    @defer.inlineCallbacks
    def test_each_event_type(self):
        dest = yield self.destination()
        self.assertTrue(dest.health()["up"])
        ctx = {"app": {"name": "shop", "version": "1.2"}, "library": {"name": "analytics.js"},
               "screen": {"width": 1920, "density": 2}, "locale": "fr-FR", "userAgent": "UA/1",
               "ip": "10.0.0.0", "page": {"url": "https://x/y", "path": "/y"}, "timezone": "Europe/Paris"}
        events = [
            ev("track", "t1", event="Order Completed", context=ctx,
               properties={"price": 9.5, "qty": 2, "gift": False, "at": "2024-01-02T03:04:05+01:00",
                           "tags": ["a", "b"], "code": "01234"}),
            ev("identify", "i1", context=dict(ctx, traits={"email": "a@b.c", "age": 42})),
            ev("page", "p1", name="Home", category="Shop", properties={"path": "/home", "title": "Welcome",
                                                                       "scroll": 0.5}),
            ev("screen", "s1", name="Main", properties={"orientation": "portrait"}),
            ev("group", "g1", groupId="acme", traits={"plan": "pro", "seats": 10}),
            ev("alias", "a1", previousId="old-id"),
        ]
        yield self.write(dest, events)
        self.assertEqual(dest.buffered(), 0)
        [t] = yield self.select(f"SELECT id, event, user_id, anonymous_id, channel, toUnixTimestamp(received_at), "
                                f"toUnixTimestamp(sent_at), toUnixTimestamp(original_timestamp), "
                                f"toUnixTimestamp(timestamp), context_app_name, context_screen_width, "
                                f"context_locale, context_user_agent, context_ip, context_page_url, "
                                f"context_timezone FROM `{self.db}`.tracks")
        self.assertEqual(t, ["t1", "Order Completed", "u1", "a1", "web", str(RECV_EPOCH), str(RECV_EPOCH),
                             str(RECV_EPOCH - 1), str(RECV_EPOCH), "shop", "1920", "fr-FR", "UA/1", "10.0.0.0",
                             "https://x/y", "Europe/Paris"])
        [oc] = yield self.select(f"SELECT id, event, price, qty, gift, toUnixTimestamp(at), tags, code, "
                                 f"context_screen_density FROM `{self.db}`.order_completed")
        self.assertEqual(oc, ["t1", "Order Completed", "9.5", "2", "0", "1704161045", '["a","b"]', "01234", "2"])
        cols = yield self.columns("order_completed")
        self.assertEqual((cols["price"], cols["qty"], cols["gift"], cols["at"], cols["tags"], cols["code"]),
                         ("Nullable(Float64)", "Nullable(Int64)", "Nullable(UInt8)", "Nullable(DateTime('UTC'))",
                          "Nullable(String)", "Nullable(String)"))
        [i] = yield self.select(f"SELECT id, user_id, context_traits_email, context_traits_age "
                                f"FROM `{self.db}`.identifies")
        self.assertEqual(i, ["i1", "u1", "a@b.c", "42"])
        [u] = yield self.select(f"SELECT id, context_traits_email, anonymous_id FROM `{self.db}`.users")
        self.assertEqual(u, ["u1", "a@b.c", "a1"])
        [p] = yield self.select(f"SELECT id, name, category, path, title, scroll FROM `{self.db}`.pages")
        self.assertEqual(p, ["p1", "Home", "Shop", "/home", "Welcome", "0.5"])
        [s] = yield self.select(f"SELECT id, name, orientation FROM `{self.db}`.screens")
        self.assertEqual(s, ["s1", "Main", "portrait"])
        [g] = yield self.select(f"SELECT id, group_id, context_traits_plan, context_traits_seats "
                                f"FROM `{self.db}`.groups")
        self.assertEqual(g, ["g1", "acme", "pro", "10"])
        [a] = yield self.select(f"SELECT id, user_id, previous_id FROM `{self.db}`.aliases")
        self.assertEqual(a, ["a1", "u1", "old-id"])
        self.assertEqual((yield self.discards()), [])

    @defer.inlineCallbacks
    def test_per_event_tables_and_names(self):
        dest = yield self.destination()
        names = ["Signed Up", "2fa", "tracks", "Покупка", "x" * 80]
        yield self.write(dest, [ev("track", f"m{i}", event=n, properties={"n": i}) for i, n in enumerate(names)])
        tables = yield self.select(f"SELECT name FROM system.tables WHERE database = '{self.db}' ORDER BY name")
        tables = {t for [t] in tables}
        for t in ("signed_up", "track_2fa", "track_tracks", "track_" + short_hash("Покупка", 12),
                  "track_" + short_hash("x" * 80, 12)):
            self.assertIn(t, tables)
        rows = yield self.select(f"SELECT event FROM `{self.db}`.tracks ORDER BY id")
        self.assertEqual([r[0] for r in rows], names)
        [[n, e]] = yield self.select(f"SELECT n, event FROM `{self.db}`.`track_{short_hash('Покупка', 12)}`")
        self.assertEqual((n, e), ("3", "Покупка"))

    @defer.inlineCallbacks
    def test_strings_round_trip(self):
        dest = yield self.destination()
        texts = ["tab\there", "new\nline", "back\\slash", "emoji 😀🎉", "\\N", "cr\r\nlf", "nul\0byte",
                 "quote ' \" `", "\b\f\x1b", "U+2028\u2028 BOM\ufeff", "", "  spaces  ", "日本語"]
        yield self.write(dest, [ev("track", f"m{i:02d}", event="strings", properties={"s": t, "o": {"k": t}})
                                for i, t in enumerate(texts)])
        rows = yield self.select(f"SELECT s, o FROM `{self.db}`.strings ORDER BY id")
        self.assertEqual([r[0] for r in rows], texts)
        import json
        self.assertEqual([json.loads(r[1])["k"] for r in rows], texts)


class EvolutionTests(IntegrationBase):
    @defer.inlineCallbacks
    def test_widening_ladder(self):
        dest = yield self.destination()
        steps = [(True, "Nullable(UInt8)"), (12, "Nullable(Int64)"), (2.5, "Nullable(Float64)"),
                 ("text", "Nullable(String)")]
        for i, (value, expected) in enumerate(steps):
            yield self.write(dest, [ev("track", f"m{i}", event="ladder", properties={"v": value})])
            cols = yield self.columns("ladder")
            self.assertEqual(cols["v"], expected)
        rows = yield self.select(f"SELECT v FROM `{self.db}`.ladder ORDER BY id")
        self.assertEqual([r[0] for r in rows], ["1", "12", "2.5", "text"])
        # a datetime column widens to String
        yield self.write(dest, [ev("track", "d1", event="ladder", properties={"d": "2024-01-02T03:04:05Z"})])
        self.assertEqual((yield self.columns("ladder"))["d"], "Nullable(DateTime('UTC'))")
        yield self.write(dest, [ev("track", "d2", event="ladder", properties={"d": "soon"})])
        self.assertEqual((yield self.columns("ladder"))["d"], "Nullable(String)")
        self.assertEqual((yield self.discards()), [])

    @defer.inlineCallbacks
    def test_conflicting_base_value_goes_to_discards(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("page", "p1", context={"screen": {"width": "wide", "height": 800}}),
                                ev("page", "p2", context={"screen": {"width": 1.5}}),
                                ev("track", "t1", event="e", properties={"ts": "1850-01-01T00:00:00Z"})])
        rows = yield self.select(f"SELECT id, context_screen_width, context_screen_height FROM `{self.db}`.pages "
                                 "ORDER BY id")
        self.assertEqual(rows, [["p1", None, "800"], ["p2", "1.5", None]])
        self.assertEqual((yield self.columns("pages"))["context_screen_width"], "Nullable(Float64)")
        self.assertEqual((yield self.discards()), [
            ["pages", "p1", "context_screen_width", "wide", "incompatible value: string into Nullable(Int64)"],
            ["e", "t1", "ts", "1850-01-01T00:00:00Z", "timestamp out of range"]])
        [[ts]] = yield self.select(f"SELECT ts FROM `{self.db}`.e")
        self.assertIsNone(ts)

    @defer.inlineCallbacks
    def test_growth_limits(self):
        dest = yield self.destination(max_table_expansion=3, max_table_width=5)
        yield self.write(dest, [ev("track", "a", event="lim", properties={"p1": 1, "p2": 2, "p3": 3}),
                                ev("track", "b", event="lim", properties={"q1": 1, "q2": 2, "q3": 3, "q4": 4})])
        yield self.write(dest, [ev("track", "c", event="lim", properties={"r1": 1, "r2": 2}),
                                ev("track", "d", event="lim", properties={"s1": 1, "s2": 1})])
        cols = yield self.columns("lim")
        extra = sorted(c for c in cols if c[0] in "pqrs" and len(c) == 2)
        self.assertEqual(extra, ["p1", "p2", "p3", "r1", "r2"])
        rows = yield self.select(f"SELECT id FROM `{self.db}`.lim ORDER BY id")
        self.assertEqual(rows, [["a"], ["c"]])
        found = yield self.discards()
        self.assertEqual([(r[0], r[1], r[2]) for r in found], [("lim", "b", ""), ("lim", "d", "")])
        self.assertIn("max_table_expansion", found[0][4])
        self.assertIn("max_table_width", found[1][4])
        self.assertIn('"q4":4', found[0][3])
        # the tracks rows are all there
        self.assertEqual(len((yield self.select(f"SELECT id FROM `{self.db}`.tracks"))), 4)

    @defer.inlineCallbacks
    def test_refused_first_row_leaves_an_empty_table(self):
        # the original's test: 41 properties, expansion 40, a JS SDK context; the
        # table must answer a SELECT with no rows rather than "doesn't exist"
        dest = yield self.destination(max_table_expansion=40)
        js = {"app": {"name": "RudderLabs JavaScript SDK", "namespace": "com.rudderlabs.javascript",
                      "version": "2.26.0"}, "library": {"name": "RudderLabs JavaScript SDK", "version": "2.26.0"}}
        yield self.write(dest, [ev("track", "x1", event="max_table_expansion_test", context=js,
                                   properties={f"k{i:02d}": "v" for i in range(41)})])
        self.assertEqual((yield self.select(f"SELECT count() FROM `{self.db}`.max_table_expansion_test")), [["0"]])
        [found] = yield self.discards()
        self.assertEqual((found[0], found[1], found[4]),
                         ("max_table_expansion_test", "x1", "max_table_expansion exceeded: 41 new columns, limit 40"))

    @defer.inlineCallbacks
    def test_burst_is_a_few_inserts(self):
        # natural batching on the real server: cache_threshold 1, 2000 events in 20 writes
        dest = yield self.destination(cache_threshold=1, cache_idle_timeout="1s")
        writes = []
        for b in range(20):
            writes.append(dest.write([ev("track", f"b{b}-{i}", event="burst", properties={"n": i})
                                      for i in range(100)]))
            yield task.deferLater(reactor, 0, lambda: None)      # the next request arrives a little later
        yield defer.gatherResults(writes)
        for table in ("tracks", "burst"):
            [[rows, inserts]] = yield self.select(
                f"SELECT sum(rows * active), countIf(level = 0) FROM system.parts "
                f"WHERE database = '{self.db}' AND table = '{table}'")
            self.assertEqual(rows, "2000")
            self.assertLessEqual(int(inserts), 50)         # one level-0 part per INSERT

    @defer.inlineCallbacks
    def test_wide_table(self):
        dest = yield self.destination(max_table_expansion=0)   # 400 at once: beyond the default 100
        props = {f"prop_{i:03d}": (i if i % 3 else f"v{i}") for i in range(400)}
        yield self.write(dest, [ev("track", "w1", event="wide", properties=props)])
        cols = yield self.columns("wide")
        self.assertEqual(len(cols), 400 + 50)
        [[a, b, c]] = yield self.select(f"SELECT prop_001, prop_399, prop_300 FROM `{self.db}`.wide")
        self.assertEqual((a, b, c), ("1", "v399", "v300"))

    @defer.inlineCallbacks
    def test_refused_row_is_isolated(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("track", "warm", event="iso", properties={"n": 1})])
        pending = dest._pipeline.pending
        add_many = pending.add_many

        def spoil(table, plan, line, row):
            # a value the Python checks let through and ClickHouse refuses
            if row.row_id == "bad" and table == "iso":
                fields = line[:-1].split("\t")
                fields[plan.columns.index("n")] = "not-a-number"
                line = "\t".join(fields) + "\n"
            return line

        def encode(row, schema, allow_work):     # a refused batch is encoded again
            r = original(row, schema, allow_work)
            return r if r is None else (r[0], spoil(row.table, r[0], r[1], row))

        original = dest._router.encode
        dest._router.encode = encode
        pending.add_many = lambda table, plan, lines, rows: add_many(
            table, plan, [spoil(table, plan, line, row) for line, row in zip(lines, rows)], rows)
        events = [ev("track", f"ok{i}" if i != 6 else "bad", event="iso", properties={"n": i}) for i in range(10)]
        yield self.write(dest, events)
        rows = yield self.select(f"SELECT id FROM `{self.db}`.iso ORDER BY id")
        self.assertEqual([r[0] for r in rows], sorted(["warm"] + [f"ok{i}" for i in range(10) if i != 6]))
        [d] = yield self.discards()
        self.assertEqual(d[:3], ["iso", "bad", ""])
        self.assertTrue(d[4].startswith("refused by ClickHouse: Code: 27"), d[4])
        self.assertEqual(len((yield self.select(f"SELECT id FROM `{self.db}`.tracks"))), 11)

    @defer.inlineCallbacks
    def test_dropped_table_and_column_come_back(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("track", "m1", event="gone", properties={"x": 1})])
        yield self.query(f"ALTER TABLE `{self.db}`.gone DROP COLUMN x")
        yield self.query(f"DROP TABLE `{self.db}`.pages")
        yield self.write(dest, [ev("track", "m2", event="gone", properties={"x": 2}), ev("page", "p1")])
        rows = yield self.select(f"SELECT id, x FROM `{self.db}`.gone ORDER BY id")
        self.assertEqual(rows, [["m1", None], ["m2", "2"]])
        self.assertEqual(len((yield self.select(f"SELECT id FROM `{self.db}`.pages"))), 1)


class OwnServerTests(IntegrationBase):
    """A server of our own, in Asia/Tokyo, that the test stops and restarts."""
    timeout = 90

    @classmethod
    def get_server(cls):
        chserver.clickhouse()          # SkipTest early when no server can run here
        return chserver.own_server(tz="Asia/Tokyo")

    def script(self, action):
        return getProcessOutputAndValue("/bin/bash", [chserver.SCRIPT, action], env=self.server.env)

    @defer.inlineCallbacks
    def test_datetimes_on_a_non_utc_server(self):
        [[tz]] = yield self.select("SELECT timezone()")
        self.assertEqual(tz, "Asia/Tokyo")
        dest = yield self.destination()
        yield self.write(dest, [ev("track", "m1", event="tz", sentAt="2024-05-06T07:08:09.000000Z",
                                   properties={"when": "2024-05-06T16:08:09+09:00"})])
        [row] = yield self.select(f"SELECT toUnixTimestamp(received_at), toUnixTimestamp(sent_at), "
                                  f"toUnixTimestamp(when), toString(sent_at) FROM `{self.db}`.tz")
        self.assertEqual(row, [str(RECV_EPOCH), str(RECV_EPOCH), str(RECV_EPOCH), "2024-05-06 07:08:09"])

    @defer.inlineCallbacks
    def test_server_restart_loses_nothing(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("track", f"before{i}", event="restart") for i in range(5)])
        out, err, code = yield self.script("stop")
        self.assertEqual(code, 0, err)
        pending = dest.write([ev("track", f"during{i}", event="restart") for i in range(5)]
                             + [ev("identify", "during-id")])
        yield dest.flush()
        # the first failed attempt marks the destination down
        for _ in range(50):
            if not dest.health()["up"]:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(dest.health()["up"])
        self.assertFalse(pending.called)
        out, err, code = yield self.script("start")
        self.assertEqual(code, 0, err)
        yield pending
        self.assertTrue(dest.health()["up"])
        rows = yield self.select(f"SELECT id FROM `{self.db}`.restart ORDER BY id")
        self.assertEqual([r[0] for r in rows], sorted([f"before{i}" for i in range(5)]
                                                      + [f"during{i}" for i in range(5)]))
        self.assertEqual(len((yield self.select(f"SELECT id FROM `{self.db}`.identifies"))), 1)
