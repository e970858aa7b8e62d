"""Every query of doc/queries.md, over events sent through a real collector (twistd) into
ClickHouse 18.16, then over the same rows copied into chdb (the modern engine).

The expected results are computed here in Python from the events sent."""

import base64
import collections
import datetime
import json
import os
import re

import treq
from twisted.internet import defer
from twisted.trial import unittest

from stilgar.destinations.clickhouse.tsv import parse_tsv

from . import chserver
from .processes import ROOT, StilgarProcess, fetch, free_port, wait_for

DOC = os.path.join(ROOT, "doc", "queries.md")
KEY = "queries-write-key"
AUTH = {b"Authorization": [b"Basic " + base64.b64encode(KEY.encode() + b":")],
        b"Content-Type": [b"application/json"]}
_QUERY_RE = re.compile(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", re.S)


def doc_queries():
    with open(DOC, encoding="utf-8") as f:
        return dict(_QUERY_RE.findall(f.read()))


def monday(day):
    return day - datetime.timedelta(days=day.weekday())


def num(x):
    """A number as ClickHouse's TabSeparated writes it."""
    return "%g" % x if isinstance(x, float) else str(x)


class Data:
    """The events sent, relative to ClickHouse's today(), and what each query should answer."""

    def __init__(self, today):
        self.today = today
        self.events = []
        self.resent = []

    def at(self, days_ago, hour=12):
        t = datetime.datetime.combine(self.today - datetime.timedelta(days=days_ago), datetime.time(hour),
                                      tzinfo=datetime.timezone.utc)
        return t

    def add(self, kind, who, days_ago, hour=12, anonymous=False, **fields):
        t = self.at(days_ago, hour)
        event = {"type": kind, "messageId": f"q-{len(self.events)}", "timestamp": t.isoformat(),
                 "anonymousId": f"anon-{who}"}
        if not anonymous:
            event["userId"] = who
        event.update(fields)
        self.events.append(event)
        return event

    def build(self):
        track, page, screen = (lambda who, d, name, h=12, **kw: self.add("track", who, d, h, event=name, **kw),
                               lambda who, d, h=12, **kw: self.add("page", who, d, h, **kw),
                               lambda who, d, h=12, **kw: self.add("screen", who, d, h, **kw))
        track("u1", 1, "Product Viewed", 10)
        track("u1", 1, "Product Added", 11)
        track("u1", 1, "Order Completed", 12, properties={"revenue": 19.99, "currency": "EUR"})
        track("u1", 15, "Signed Up")
        page("u1", 1, properties={"path": "/pricing"}, context={"page": {"path": "/pricing"}})
        track("u2", 3, "Product Viewed")
        track("u2", 1, "Product Added")                      # two days later: outside the funnel window
        track("u2", 1, "Order Completed", 13, properties={"revenue": 5.01, "currency": "EUR"})
        page("u2", 3, context={"page": {"path": "/docs"}})    # only context.page.path
        track("u3", 1, "Product Viewed")
        track("u3", 1, "Discard Me", properties={"user_id": "x", "plan": "pro"})   # a reserved column
        screen("u3", 1, name="Home")
        page("u3", 2)                                        # no path at all
        self.add("page", "a4", 1, anonymous=True, properties={"path": "/pricing"})
        self.add("track", "a4", 8, anonymous=True, event="Product Viewed")
        order = track("u5", 1, "Order Completed", properties={"revenue": 29.5, "currency": "USD"})
        self.resent.append(order)                            # a retry: the same messageId again
        return self

    # -- what the queries of doc/queries.md answer ---------------------------------

    @staticmethod
    def who(e):
        return e.get("userId") or e.get("anonymousId") or ""

    def day(self, e):
        return datetime.datetime.fromisoformat(e["timestamp"]).date()

    def of(self, kind):
        return [e for e in self.events if e["type"] == kind]

    def recent(self, events, days):
        limit = datetime.datetime.combine(self.today, datetime.time(), tzinfo=datetime.timezone.utc)
        return [e for e in events if datetime.datetime.fromisoformat(e["timestamp"]) >= limit - datetime.timedelta(days=days)]

    def expected(self):
        tracks = self.of("track")
        active = collections.defaultdict(set)
        for e in tracks + self.of("page") + self.of("screen"):
            if self.day(e) >= self.today - datetime.timedelta(days=30):
                active[self.day(e)].add(self.who(e))
        top = collections.defaultdict(list)
        for e in self.recent(tracks, 7):
            top[e["event"]].append(self.who(e))
        steps = {}
        for e in self.recent(tracks, 30):
            steps.setdefault(self.who(e), [])
            steps[self.who(e)].append(e)
        funnel_names = ["Product Viewed", "Product Added", "Order Completed"]
        levels = []
        for who, evs in steps.items():
            best = 0
            for start in evs:
                if start["event"] != funnel_names[0]:
                    continue
                t0, level, last = datetime.datetime.fromisoformat(start["timestamp"]), 1, None
                last = t0
                for name in funnel_names[1:]:
                    nxt = [datetime.datetime.fromisoformat(e["timestamp"]) for e in evs if e["event"] == name]
                    nxt = [t for t in nxt if last <= t <= t0 + datetime.timedelta(seconds=86400)]
                    if not nxt:
                        break
                    last, level = min(nxt), level + 1
                best = max(best, level)
            levels.append(best)
        weeks = collections.defaultdict(set)
        for e in tracks:
            weeks[self.who(e)].add(monday(self.day(e)))
        cohorts = collections.Counter()
        for who, ws in weeks.items():
            first = min(ws)
            for w in ws:
                cohorts[(first, (w - first).days // 7)] += 1
        pages = collections.defaultdict(list)
        for e in self.recent(self.of("page"), 30):
            path = (e.get("properties") or {}).get("path") or (e.get("context") or {}).get("page", {}).get("path")
            pages[path or "(none)"].append(self.who(e))
        revenue = collections.defaultdict(list)
        for e in self.recent(tracks, 30):
            if e["event"] == "Order Completed":
                revenue[(self.day(e), e["properties"]["currency"])].append(e["properties"]["revenue"])
        exact = collections.Counter(e["event"] for e in self.recent(tracks, 30))
        return {
            "daily_active_users": [[str(d), num(len(w))] for d, w in sorted(active.items())],
            "top_events": [[name, num(len(w)), num(len(set(w)))]
                           for name, w in sorted(top.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
            "funnel": [[num(sum(1 for x in levels if x >= n)) for n in (1, 2, 3)]],
            "cohort_retention": [[str(c), num(k), num(n)] for (c, k), n in sorted(cohorts.items())],
            "pages_by_path": [[p, num(len(w)), num(len(set(w)))]
                              for p, w in sorted(pages.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
            "revenue_by_day": [[str(d), cur, num(len(v)), num(round(sum(v), 2))]
                               for (d, cur), v in sorted(revenue.items())],
            "exact_count_final": [[name, num(n)] for name, n in sorted(exact.items())],
            "exact_count_group_by_id": [[name, num(n)] for name, n in sorted(exact.items())],
        }


class QueriesTests(unittest.TestCase):
    timeout = 180

    server = None

    def setUp(self):
        if type(self).server is None:   # blocking, once, outside any reactor-driven test body
            type(self).server = chserver.clickhouse()
        self.db = f"stilgar_queries_{os.getpid()}"
        self.addCleanup(self.ch, f"DROP DATABASE IF EXISTS {self.db}", database=None)

    def ch(self, sql, database="__db__"):
        params = {} if database is None else {"database": self.db if database == "__db__" else database}
        d = treq.post(self.server.url + "/", params=params, data=sql.encode("utf-8"), persistent=False,
                      headers={"X-ClickHouse-User": self.server.user, "X-ClickHouse-Key": self.server.password})

        def read(response):
            return response.content().addCallback(lambda body: (response.code, body))
        d.addCallback(read)

        def check(result):
            code, body = result
            if code != 200:
                raise AssertionError(f"ClickHouse {code}: {body.decode('utf-8', 'replace')[:500]}\n{sql}")
            return body
        return d.addCallback(check)

    @defer.inlineCallbacks
    def send_through_the_collector(self, data):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        config = os.path.join(directory, "stilgar.yml")
        with open(config, "w") as f:
            f.write(f"""
server: {{ip: 127.0.0.1, port: {port}}}
spool: {{path: {os.path.join(directory, "spool")}}}
destinations:
  - type: clickhouse
    url: {self.server.url}
    user: {self.server.user}
    password_file: {os.path.join(directory, "pw")}
    database: {self.db}
    cache_idle_timeout: 1s
    write_keys: [{KEY}]
""")
        with open(os.path.join(directory, "pw"), "w") as f:
            f.write(self.server.password + "\n")
        process = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=directory)
        self.addCleanup(lambda: process.watcher.ended.called or process.kill())
        yield process.start()
        base = f"http://127.0.0.1:{port}"
        half = len(data.events) // 2
        for batch in (data.events[:half], data.events[half:], data.resent):
            status, body, _ = yield fetch("POST", base + "/v1/batch", data=json.dumps({"batch": batch}).encode(),
                                          headers=AUTH)
            self.assertEqual((status, body), (200, b"OK"), process.output())
        sent = len(data.events) + len(data.resent)

        def delivered():
            d = fetch("GET", base + "/status")
            return d.addCallback(lambda r: sum(json.loads(r[1])["events"]["forwarded"].values()) == sent)
        yield wait_for(delivered, timeout=60)
        code = yield process.stop()
        self.assertEqual(code, 0, process.output())

    @defer.inlineCallbacks
    def test_every_documented_query(self):
        [[today]] = parse_tsv((yield self.ch("SELECT toString(today())", database=None)))
        data = Data(datetime.date.fromisoformat(today)).build()
        yield self.send_through_the_collector(data)
        queries = doc_queries()
        expected = data.expected()
        self.assertEqual(set(queries), set(expected) | {"discard_triage"})
        results = {}
        for name, sql in sorted(queries.items()):
            results[name] = parse_tsv((yield self.ch(sql + "\nFORMAT TabSeparated")))
        for name, rows in expected.items():
            self.assertEqual(results[name], rows, f"{name} on ClickHouse 18.16")
        self.assert_discards(results["discard_triage"])
        # the duplicate is really there without FINAL / GROUP BY id (unless already merged)
        [[plain]] = parse_tsv((yield self.ch("SELECT count() FROM tracks WHERE event = 'Order Completed'")))
        self.assertIn(int(plain), (3, 4))
        yield self.on_chdb(queries, expected)

    def assert_discards(self, rows):
        self.assertEqual(len(rows), 1, rows)
        table, column, reason, count, example = rows[0]
        self.assertEqual((table, column, count), ("discard_me", "user_id", "1"))
        self.assertTrue(reason.startswith("reserved column"), reason)
        self.assertIn("x", example)

    @defer.inlineCallbacks
    def on_chdb(self, queries, expected):
        """The same rows, copied table by table into chdb, the same answers."""
        from .test_clickhouse_chdb import conn, q
        try:
            engine = conn()
        except unittest.SkipTest:
            return    # chdb is optional: 18.16 has answered
        db = f"{self.db}_chdb"
        engine.query(f"DROP DATABASE IF EXISTS {db}")
        engine.query(f"CREATE DATABASE {db}")
        self.addCleanup(engine.query, f"DROP DATABASE IF EXISTS {db}")
        tables = parse_tsv((yield self.ch(f"SELECT name FROM system.tables WHERE database = '{self.db}' "
                                          "FORMAT TabSeparated", database=None)))
        for [table] in tables:
            [[ddl]] = parse_tsv((yield self.ch(f"SHOW CREATE TABLE {self.db}.{table} FORMAT TabSeparated")))
            engine.query(ddl.replace(f"{self.db}.", f"{db}.", 1))
            rows = yield self.ch(f"SELECT * FROM {table} FORMAT TabSeparated")
            if rows:
                engine.query(f"INSERT INTO {db}.{table} FORMAT TabSeparated\n" + rows.decode("utf-8"))
        engine.query(f"USE {db}")
        for name, sql in sorted(queries.items()):
            rows = parse_tsv(q(sql))
            if name == "discard_triage":
                self.assert_discards(rows)
            else:
                self.assertEqual(rows, expected[name], f"{name} on chdb")
