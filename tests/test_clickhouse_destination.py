"""The ClickHouse destination's logic with no sockets: a fake server behind the
client interface, and a Clock. The HTTP client itself is tested with StubTreq."""

import collections
import gzip
import re

from hypothesis import given, settings as hsettings, strategies as st

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.trial import unittest
from twisted.web.resource import Resource

from stilgar.destinations.clickhouse import ClickHouseType
from stilgar.destinations.clickhouse.capabilities import PROBE_QUERY
from stilgar.destinations.clickhouse.client import Client, ClickHouseError, TransportError
from stilgar.destinations.clickhouse.nodes import NodeSet
from stilgar.backoff import backoff_delay
from stilgar.destinations.clickhouse.destination import ClickHouseDestination
from stilgar.destinations.clickhouse.tsv import escape, unescape

from stilgar.destinations.clickhouse.rows import build_rows

from .test_clickhouse_units import event


def settings(**kw):
    block = {"host": "ch", "database": "db", "user": "u", "password": "p"}
    block.update(kw)
    return ClickHouseType.parse_settings(block, "d", lambda w: None)


_COL_RE = re.compile(r"`((?:[^`\\]|\\.)+)` ((?:[^,()]|\((?:[^()]|\([^()]*\))*\))+?)(?: COMMENT '[^']*')?(?:, |$)")


class FakeClickHouse:
    """Just enough of ClickHouse's behaviour, at the level of Client's API."""

    def __init__(self, version="18.16.1"):
        self.version = version
        self.tables = {}          # name -> {column: type}
        self.engines = {}
        self.rows = {}            # table -> list of dicts
        self.queries = []
        self.inserts = []
        self.insert_rows = []     # rows in each INSERT, same order
        self.down = False
        self.fail_inserts = []    # exceptions raised by the next inserts
        self.poison = None        # a text: a row containing it is refused (code 27)
        self.hold = False         # keep insert Deferreds pending
        self.held = []
        self.async_insert_known = False
        self.insert_params = {}
        self.closed = False
        self.nodes = NodeSet(["http://ch:8123"], task.Clock())
        self.parallel = 2         # max_parallel_queries: INSERTs held by the server occupy the slots

    def free_slots(self):
        return self.parallel - len(self.held)

    def on_slot_free(self, hook):
        pass                      # queries end at once here: they never hold a slot

    # Client API
    def query(self, sql, timeout=None, select=False, node=None, params=None):
        self.queries.append(sql)
        if self.down:
            return defer.fail(TransportError("connection refused"))
        try:
            return defer.succeed(self._query(sql))
        except ClickHouseError as e:
            return defer.fail(e)

    def _query(self, sql):
        if sql.startswith("CREATE DATABASE"):
            return b""
        if sql == PROBE_QUERY:
            if self.version.startswith("18"):
                return b"v\t18.16.1\ns\tallow_experimental_low_cardinality_type\nt\tLowCardinality\n"
            return b"v\t26.9.2.1\nt\tSimpleAggregateFunction\nt\tLowCardinality\nt\tDateTime64\nt\tBool\ns\tasync_insert\n"
        if "FROM system.columns" in sql:
            only = re.search(r"AND table = '([^']*)'", sql)
            out = []
            for t, cols in self.tables.items():
                if only and only.group(1) != t:
                    continue
                for c, ty in cols.items():
                    out.append(f"{t}\t{c}\t{escape(ty)}\tstilgar\n")
            return "".join(out).encode()
        if "FROM system.tables" in sql:
            return "".join(f"{t}\t{self.engines.get(t, 'ReplacingMergeTree')}\n" for t in self.tables).encode()
        if "FROM system.metrics" in sql:
            return b"Query\t1\n"
        m = re.match(r"CREATE TABLE IF NOT EXISTS `db`\.`(\w+)` \((.*)\) ENGINE = (\w+)", sql)
        if m:
            if m.group(1) not in self.tables:
                self.tables[m.group(1)] = {c: t for c, t in _COL_RE.findall(m.group(2))}
                self.engines[m.group(1)] = m.group(3)
            return b""
        m = re.match(r"ALTER TABLE `db`\.`(\w+)` (.*)$", sql)
        if m:
            cols = self.tables.get(m.group(1))
            if cols is None:
                raise ClickHouseError(60, "Table doesn't exist.")
            for kind, c, t in re.findall(r"(ADD COLUMN|MODIFY COLUMN) `(\w+)` ([^,]+?)(?:, |$)", m.group(2)):
                if kind == "ADD COLUMN" and c in cols:
                    raise ClickHouseError(44, f"Cannot add column {c}: column with this name already exists")
                cols[c] = t
            return b""
        raise AssertionError(f"unexpected query {sql!r}")

    def insert(self, body, timeout=None):
        text = body.decode("utf-8")
        header, _, data = text.partition("\n")
        self.inserts.append(header)
        self.insert_rows.append(data.count("\n"))
        if self.down:
            return defer.fail(TransportError("connection refused"))
        if self.fail_inserts:
            return defer.fail(self.fail_inserts.pop(0))
        if self.hold:
            d = defer.Deferred()
            self.held.append((d, header, data))
            return d
        try:
            self._insert(header, data)
        except ClickHouseError as e:
            return defer.fail(e)
        return defer.succeed(b"")

    def release_one(self):
        """The server finishes its oldest INSERT in progress."""
        if self.held:
            self._finish(*self.held.pop(0))     # INSERTs sent meanwhile queue behind the others

    def release(self):
        held, self.held = self.held, []
        for item in held:
            self._finish(*item)

    def _finish(self, d, header, data):
        try:
            self._insert(header, data)
        except ClickHouseError as e:
            d.errback(e)
        else:
            d.callback(b"")

    def _insert(self, header, data):
        m = re.match(r"INSERT INTO `db`\.`(\w+)` \((.*)\) FORMAT TabSeparated$", header)
        table, cols = m.group(1), re.findall(r"`(\w+)`", m.group(2))
        if table not in self.tables:
            raise ClickHouseError(60, f"Table db.{table} doesn't exist.")
        for c in cols:
            if c not in self.tables[table]:
                raise ClickHouseError(16, f"No such column {c} in table db.{table}")
        parsed = []
        for line in data.split("\n"):
            if not line:
                continue
            if self.poison and self.poison in line and table != "rudder_discards":
                raise ClickHouseError(27, "Cannot parse input: poison")
            fields = line.split("\t")
            assert len(fields) == len(cols), (fields, cols)
            parsed.append(dict(zip(cols, map(unescape, fields))))
        self.rows.setdefault(table, []).extend(parsed)

    def close(self):
        self.closed = True
        return defer.succeed(None)


class DestinationTestCase(unittest.TestCase):
    def make(self, version="18.16.1", **kw):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.ch = FakeClickHouse(version)
        kw.setdefault("cache_idle_timeout", "10s")
        s = settings(**kw)
        self.ch.parallel = s.max_parallel_queries
        self.dest = ClickHouseDestination("clickhouse:db", ["k"], s, self.clock, client=self.ch, rand=lambda: 0.5)
        return self.dest

    def flush(self):
        d = self.dest.flush()
        for _ in range(5):
            self.clock.advance(0)
        return d

    def fired(self, d):
        results = []
        d.addBoth(results.append)
        return bool(results)


class StartTests(DestinationTestCase):
    def test_start_creates_everything(self):
        dest = self.make()
        d = dest.start()
        self.assertTrue(self.fired(d))
        self.assertTrue(dest.health()["up"])
        self.assertEqual(self.ch.queries[0], "CREATE DATABASE IF NOT EXISTS `db`")
        self.assertEqual(sorted(self.ch.tables), ["aliases", "groups", "identifies", "pages", "rudder_discards",
                                                  "screens", "tracks", "users"])
        self.assertEqual(self.ch.engines["users"], "ReplacingMergeTree")
        self.assertEqual(dest.status()["status"], "OK")

    def test_modern_users_table(self):
        self.make("26.9.2.1").start()
        self.assertEqual(self.ch.engines["users"], "AggregatingMergeTree")
        self.assertEqual(self.ch.tables["tracks"]["event"], "LowCardinality(String)")
        self.assertTrue(self.ch.async_insert_known)

    def test_down_at_start_retries_with_backoff(self):
        dest = self.make()
        self.ch.down = True
        d = dest.start()
        self.assertTrue(self.fired(d))          # start never blocks on a dead server
        self.assertFalse(dest.health()["up"])
        self.assertIn("connection refused", dest.status()["last_error"])
        w = dest.write([event("track", event="e")])
        attempts = [len(self.ch.queries)]
        for delay in (1, 2, 4, 8, 16):
            self.clock.advance(delay)
            attempts.append(len(self.ch.queries))
        self.assertEqual(attempts, [1, 2, 3, 4, 5, 6])   # one attempt per backoff step (jitter 0)
        self.assertFalse(self.fired(w))
        self.ch.down = False
        self.clock.advance(32)
        self.assertTrue(dest.health()["up"])
        self.clock.advance(10)                   # idle flush
        self.assertTrue(self.fired(w))
        self.assertEqual(len(self.ch.rows["tracks"]), 1)
        self.assertEqual(len(self.ch.rows["e"]), 1)
        self.assertEqual(dest.buffered(), 0)

    def test_backoff_caps(self):
        self.assertEqual([round(backoff_delay(n, lambda: 0.5)) for n in range(11)],
                         [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300])
        self.assertAlmostEqual(backoff_delay(3, lambda: 0.0), 8 * 0.8)
        self.assertAlmostEqual(backoff_delay(3, lambda: 1.0), 8 * 1.2)


class BatchingTests(DestinationTestCase):
    def test_threshold(self):
        dest = self.make(cache_threshold=3)
        dest.start()
        w1 = dest.write([event("alias", messageId="1"), event("alias", messageId="2")])
        self.assertEqual(self.ch.inserts, [])
        w2 = dest.write([event("alias", messageId="3")])
        self.assertEqual(len(self.ch.inserts), 1)          # one INSERT for the group
        self.assertTrue(self.fired(w1) and self.fired(w2))
        self.assertEqual([r["id"] for r in self.ch.rows["aliases"]], ["1", "2", "3"])

    def test_bytes(self):
        dest = self.make(cache_max_bytes="2KB")
        dest.start()
        dest.write([event("alias", messageId="1")])
        self.assertEqual(self.ch.inserts, [])
        w = dest.write([event("alias", messageId="2", context={"userAgent": "x" * 2000})])
        self.assertEqual(len(self.ch.inserts), 2)      # two column sets: two groups, flushed together
        self.assertTrue(self.fired(w))

    def test_idle_counts_from_the_oldest_row(self):
        dest = self.make(cache_idle_timeout="10s")
        dest.start()
        w = dest.write([event("alias", messageId="1")])
        for i in range(9):
            self.clock.advance(1)
            dest.write([event("alias", messageId=f"t{i}")])   # a trickle does not postpone the flush
        self.assertEqual(self.ch.inserts, [])
        self.clock.advance(1)
        self.assertEqual(len(self.ch.inserts), 1)
        self.assertTrue(self.fired(w))
        self.assertEqual(len(self.ch.rows["aliases"]), 10)

    def test_groups_by_columns(self):
        dest = self.make()
        dest.start()
        dest.write([event("alias", messageId="1"), event("alias", messageId="2", channel=None),
                    event("alias", messageId="3", context={"locale": "fr"})])
        self.flush()
        self.assertEqual(len(self.ch.inserts), 2)

    def test_rows_of_one_column_set_keep_their_order(self):
        # a later identify replaces the users row: one INSERT, in arrival order,
        # whatever order each event's traits came in
        dest = self.make()
        dest.start()
        traits = [{"a": 1, "b": 2}, {"b": 3, "a": 4}, {"a": 5, "b": 6}, {"b": 7, "a": 8}]
        dest.write([event("identify", messageId=str(i), context={"traits": t}) for i, t in enumerate(traits)]
                   + [event("track", messageId=f"t{i}", event="Seen", properties=p)
                      for i, p in enumerate([{"x": 1, "y": 2}, {"y": 3, "x": 4}, {"x": 5, "y": 6}])])
        self.flush()
        self.assertEqual([r["context_traits_a"] for r in self.ch.rows["users"]], ["1", "4", "5", "8"])
        self.assertEqual([r["id"] for r in self.ch.rows["identifies"]], ["0", "1", "2", "3"])
        self.assertEqual([r["x"] for r in self.ch.rows["seen"]], ["1", "4", "5"])
        self.assertEqual([r["id"] for r in self.ch.rows["tracks"]], ["t0", "t1", "t2"])
        self.assertEqual(len([i for i in self.ch.inserts if "`users`" in i]), 1)

    def test_parallel_limit(self):
        dest = self.make(max_parallel_queries=2)
        dest.start()
        self.ch.hold = True
        ws = [dest.write([event(t)]) for t in ("alias", "group", "page", "screen")]
        d = dest.flush()
        self.assertEqual(len(self.ch.held), 2)
        self.assertFalse(self.fired(d))
        self.ch.release()
        self.assertEqual(len(self.ch.held), 2)
        self.ch.release()
        self.assertTrue(self.fired(d))
        self.assertTrue(all(self.fired(w) for w in ws))


TEXTS = st.text(alphabet=st.sampled_from("ab \\\t\n\r\x00\x08\x0céé"), max_size=6)
PROPERTY_VALUES = {"s": TEXTS, "i": st.integers(-2**40, 2**40), "f": st.floats(allow_nan=False),
                   "b": st.booleans()}


@st.composite
def track_events(draw):
    """Track events whose property names tell their type (no widening): what
    reaches ClickHouse can be compared value by value."""
    props = draw(st.dictionaries(st.sampled_from(["s_a", "s_b", "i_a", "f_a", "b_a"]), st.none(), max_size=5))
    props = {k: draw(st.one_of(st.none(), PROPERTY_VALUES[k[0]])) for k in props}
    return draw(st.sampled_from([{}, {"locale": "fr"}, {"library": {"name": "x\ty"}}])), props


class StoredRowsTests(DestinationTestCase):
    """Every row reaches its table with the values its own plan would have
    encoded, whichever way it was encoded (a per-event row after its tracks
    row's line, or on its own). (Rows that waited for a new column come
    later than the others: the order is test_rows_of_one_column_set_keep_their_order's.)"""

    @hsettings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(track_events(), st.sampled_from(["One", "Two"]), TEXTS), min_size=1, max_size=12))
    def test_rows_as_their_plans_encode_them(self, specs):
        dest = self.make(max_parallel_queries=1)
        dest.start()
        evs = [event("track", messageId=f"m{i}", event=name, context=ctx, properties=props, anonymousId=anon)
               for i, ((ctx, props), name, anon) in enumerate(specs)]
        dest.write(evs[:len(evs) // 2])
        dest.write(evs[len(evs) // 2:])
        self.flush()
        rows, discards = build_rows(evs, "2024-05-06T07:08:10.000000Z")
        self.assertEqual(discards, [])
        expected = collections.defaultdict(list)
        for r in rows:
            ts = dest._schema.tables[r.table]
            plan = ts.plan(r.data)
            expected[r.table].append(dict(zip(plan.columns, map(unescape, plan.fields(r.data)))))
        for table, want in expected.items():
            by_id = lambda rs: sorted(rs, key=lambda r: r["id"])     # noqa: E731
            self.assertEqual(by_id(self.ch.rows[table]), by_id(want), table)


class NaturalBatchingTests(DestinationTestCase):
    """While the INSERT slots are busy, rows wait in their group; the next
    INSERT of a group takes them all (doc/clickhouse.md, "Batching")."""

    def inserts_per_table(self):
        return collections.Counter(re.match(r"INSERT INTO `db`\.`(\w+)`", h).group(1) for h in self.ch.inserts)

    def burst(self, dest, batches=20, size=100):
        ws = []
        verdicts = []
        for b in range(batches):
            evs = [event("track", event="burst", messageId=f"b{b}-{i}", properties={"n": i, "id": "reserved"})
                   for i in range(size)]
            d = dest.write(evs)

            def confirmed(_, ids=frozenset(e["messageId"] for e in evs)):
                # when a write fires, every row of its events is in ClickHouse
                stored = {t: {r.get("id") or r.get("row_id") for r in self.ch.rows.get(t, [])}
                          for t in ("tracks", "burst", "rudder_discards")}
                verdicts.append(all(ids <= v for v in stored.values()))
            d.addCallback(confirmed)
            ws.append(d)
            self.ch.release_one()          # the slow server finishes one INSERT per batch received
        return ws, verdicts

    def test_burst_inserts_follow_the_server_pace(self):
        dest = self.make(cache_threshold=1, cache_idle_timeout="1s")
        dest.start()
        self.ch.hold = True
        ws, verdicts = self.burst(dest)
        while self.ch.held:
            self.ch.release_one()
        self.assertTrue(all(self.fired(w) for w in ws))
        self.assertEqual(verdicts, [True] * 20)
        self.assertEqual(len(self.ch.rows["tracks"]), 2000)
        self.assertEqual(len(self.ch.rows["burst"]), 2000)
        self.assertEqual(len(self.ch.rows["rudder_discards"]), 2000)   # discards batch the same way
        counts = self.inserts_per_table()
        for table in ("tracks", "burst", "rudder_discards"):
            self.assertLessEqual(counts[table], 50, counts)
        self.assertEqual(dest.status()["buffered"], 0)

    def test_insert_caps(self):
        dest = self.make(cache_threshold=1, max_insert_rows=30)
        dest.start()
        self.ch.hold = True
        ws, verdicts = self.burst(dest, batches=5)
        while self.ch.held:
            self.ch.release_one()
        self.assertTrue(all(self.fired(w) for w in ws))
        self.assertEqual(verdicts, [True] * 5)
        self.assertLessEqual(max(self.ch.insert_rows), 30)
        self.assertEqual(len(self.ch.rows["tracks"]), 500)
        # bytes: a cap below one row still sends one row per INSERT
        dest = self.make(cache_threshold=1, max_insert_bytes=1)
        dest.start()
        self.ch.hold = True
        ws, verdicts = self.burst(dest, batches=2, size=10)
        while self.ch.held:
            self.ch.release_one()
        self.assertEqual(verdicts, [True] * 2)
        self.assertEqual(max(self.ch.insert_rows), 1)

    def test_threshold_only_starts_a_flush(self):
        # below the threshold nothing is sent; once a flush started, rows arriving
        # while the slots are busy join their group's next INSERT
        dest = self.make(cache_threshold=150, max_parallel_queries=1)
        dest.start()
        self.ch.hold = True
        dest.write([event("alias", messageId=f"a{i}") for i in range(100)])
        self.assertEqual(self.ch.inserts, [])
        dest.write([event("alias", messageId=f"b{i}") for i in range(100)])
        self.assertEqual(self.ch.insert_rows, [200])
        # that flush took everything: the threshold decides when the next one starts
        w1 = dest.write([event("alias", messageId=f"c{i}") for i in range(100)])
        self.assertEqual(self.ch.insert_rows, [200])
        dest.write([event("alias", messageId=f"d{i}") for i in range(50)])      # 150: a flush may start
        w2 = dest.write([event("alias", messageId=f"e{i}") for i in range(30)])  # the slot is busy: they join
        self.assertEqual(self.ch.insert_rows, [200])
        self.ch.release_one()
        self.assertEqual(self.ch.insert_rows, [200, 180])
        self.assertFalse(self.fired(w1) or self.fired(w2))
        self.ch.release_one()
        self.assertTrue(self.fired(w1) and self.fired(w2))
        dest.write([event("alias", messageId="f")])
        self.assertEqual(self.ch.insert_rows, [200, 180])
        self.clock.advance(10)                                       # cache_idle_timeout
        self.assertEqual(self.ch.insert_rows, [200, 180, 1])


    def test_a_flush_takes_the_groups_waiting_at_its_start(self):
        # rows whose group already left wait for the next start (threshold, idle
        # timeout, flush()) instead of making an INSERT each time a slot frees
        dest = self.make(cache_threshold=100, cache_idle_timeout="1s", max_parallel_queries=1)
        dest.start()
        self.ch.hold = True
        dest.write([event("alias", messageId=f"a{i}") for i in range(50)]
                   + [event("group", messageId=f"g{i}") for i in range(50)])
        self.assertEqual(self.ch.insert_rows, [50])          # the aliases; the groups wait for the slot
        late = dest.write([event("alias", messageId="late")])   # its group has left
        joins = dest.write([event("group", messageId="joins")])  # its group has not: it rides along
        self.ch.release_one()
        self.assertEqual(self.ch.insert_rows, [50, 51])
        self.ch.release_one()
        self.assertTrue(self.fired(joins))
        self.assertEqual(self.ch.insert_rows, [50, 51])      # the flush is over
        self.clock.advance(1)                                # cache_idle_timeout
        self.assertEqual(self.ch.insert_rows, [50, 51, 1])
        self.ch.release_one()
        self.assertTrue(self.fired(late))

    def test_flush_takes_what_came_during_the_flush(self):
        dest = self.make(max_parallel_queries=1)
        dest.start()
        self.ch.hold = True
        dest.write([event("alias", messageId="a"), event("group", messageId="g")])
        d = dest.flush()
        dest.write([event("alias", messageId="late")])
        while self.ch.held:
            self.ch.release_one()
        self.assertTrue(self.fired(d))
        self.assertEqual(sorted(r["id"] for r in self.ch.rows["aliases"]), ["a", "late"])

class RetryTests(DestinationTestCase):
    def test_transient_insert_errors_are_retried(self):
        dest = self.make()
        dest.start()
        self.ch.fail_inserts = [TransportError("no answer within 5 s"), ClickHouseError(252, "Too many parts"),
                                ClickHouseError(None, "Bad Gateway", 502)]
        w = dest.write([event("alias")])
        self.flush()
        self.assertFalse(dest.health()["up"])
        self.clock.advance(1)
        self.clock.advance(2)
        self.assertFalse(self.fired(w))
        self.clock.advance(4)
        self.assertTrue(self.fired(w))
        self.assertTrue(dest.health()["up"])
        self.assertEqual(len(self.ch.rows["aliases"]), 1)

    def test_poison_row_isolated(self):
        dest = self.make()
        dest.start()
        self.ch.poison = "POISON"
        evs = [event("alias", messageId=f"m{i}", previousId="POISON" if i == 5 else "p") for i in range(8)]
        w = dest.write(evs)
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertEqual(sorted(r["id"] for r in self.ch.rows["aliases"]), [f"m{i}" for i in range(8) if i != 5])
        [d] = self.ch.rows["rudder_discards"]
        self.assertEqual((d["table_name"], d["row_id"], d["column_name"]), ("aliases", "m5", ""))
        self.assertIn("Code: 27", d["reason"])
        self.assertIn('"previous_id":"POISON"', d["column_value"])
        self.assertEqual(dest.status()["discarded"], 1)

    def test_dropped_table_is_recreated(self):
        dest = self.make()
        dest.start()
        del self.ch.tables["pages"]
        w = dest.write([event("page", properties={"x": 1})])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertIn("x", self.ch.tables["pages"])
        self.assertEqual(len(self.ch.rows["pages"]), 1)

    def test_dropped_column_is_recreated(self):
        dest = self.make()
        dest.start()
        dest.write([event("track", event="ev", properties={"x": 1})])
        self.flush()
        del self.ch.tables["ev"]["x"]
        w = dest.write([event("track", event="ev", messageId="m2", properties={"x": 2})])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertEqual([r["x"] for r in self.ch.rows["ev"]], ["1", "2"])

    def test_widening_and_misfits(self):
        dest = self.make()
        dest.start()
        dest.write([event("track", event="ev", messageId="1", properties={"v": True})])
        self.flush()
        self.assertEqual(self.ch.tables["ev"]["v"], "Nullable(UInt8)")
        for i, v in enumerate([7, 1.5, "text"]):
            dest.write([event("track", event="ev", messageId=f"w{i}", properties={"v": v})])
            self.flush()
        self.assertEqual(self.ch.tables["ev"]["v"], "Nullable(String)")
        self.assertEqual([r["v"] for r in self.ch.rows["ev"]], ["1", "7", "1.5", "text"])
        # a standard column never widens: the value is NULL and a discard says why
        w = dest.write([event("track", event="ev", messageId="s", context={"screen": {"width": "wide"}})])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertIsNone(self.ch.rows["ev"][-1]["context_screen_width"])
        reasons = [(d["column_name"], d["reason"]) for d in self.ch.rows["rudder_discards"]]
        self.assertIn(("context_screen_width", "incompatible value: string into Nullable(Int64)"), reasons)

    def test_integer_beyond_float64_is_a_discard(self):
        # ClickHouse reads the digits of 10**400 in a Float64 column as inf: store NULL and say why
        dest = self.make()
        dest.start()
        dest.write([event("track", event="ev", messageId="1", properties={"f": 1.5, "i": 7})])
        self.flush()
        huge = 10**400
        w = dest.write([event("track", event="ev", messageId="2", properties={"f": huge, "i": -huge,
                                                                               "n": huge})])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertEqual(self.ch.tables["ev"]["i"], "Nullable(Int64)")      # no useless widening
        self.assertEqual(self.ch.tables["ev"]["n"], "Nullable(Float64)")
        last = self.ch.rows["ev"][-1]
        self.assertEqual((last["f"], last["i"], last["n"]), (None, None, None))
        reasons = {d["column_name"]: d["reason"] for d in self.ch.rows["rudder_discards"]}
        self.assertEqual(reasons, {"f": "number out of range", "i": "number out of range",
                                   "n": "number out of range"})

    def test_refused_first_row_still_creates_the_table(self):
        dest = self.make(max_table_expansion=40)
        dest.start()
        w = dest.write([event("track", event="wide", properties={f"p{i}": i for i in range(41)})])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertIn("wide", self.ch.tables)                  # an empty table with its standard columns
        self.assertEqual(sorted(self.ch.tables["wide"]), sorted(self.ch.tables["tracks"]))
        self.assertNotIn("wide", self.ch.rows)
        [d] = self.ch.rows["rudder_discards"]
        self.assertEqual((d["table_name"], d["column_name"]), ("wide", ""))
        self.assertEqual(d["reason"], "max_table_expansion exceeded: 41 new columns, limit 40")
        w = dest.write([event("track", event="wide", messageId="m2", properties={"p0": 1})])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertEqual([r["p0"] for r in self.ch.rows["wide"]], ["1"])

    def test_default_limits_stop_a_schema_explosion(self):
        # browser write keys are public: one request used to add 1 500 columns in 2 s
        dest = self.make()
        dest.start()
        w = dest.write([event("track", event="ev", properties={f"p{i}": i for i in range(1500)}),
                        event("track", event="ev", messageId="m2",
                              context={"app": {f"k{i}": 1 for i in range(500)}})])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertEqual(len(self.ch.tables["ev"]), len(self.ch.tables["tracks"]))   # standard columns only
        self.assertEqual(len(self.ch.tables["tracks"]), 50)
        reasons = sorted(d["reason"] for d in self.ch.rows["rudder_discards"])
        self.assertEqual(reasons, ["max_table_expansion exceeded: 1500 new columns, limit 100",
                                   "max_table_expansion exceeded: 500 new context columns, limit 100",
                                   "max_table_expansion exceeded: 500 new context columns, limit 100"])

    def test_schema_changes_per_minute(self):
        dest = self.make(max_schema_changes_per_minute=2)
        dest.start()
        ws = [dest.write([event("track", event=f"e{i}", messageId=f"m{i}", properties={"x": i})])
              for i in range(5)]
        self.flush()
        created = lambda: sorted(t for t in self.ch.tables if t.startswith("e"))   # noqa: E731
        self.assertEqual(created(), ["e0", "e1"])
        self.assertEqual([self.fired(w) for w in ws], [True, True, False, False, False])
        self.assertEqual(dest.status()["tables_waiting_for_schema_budget"], 3)
        self.clock.advance(59)
        self.assertEqual(created(), ["e0", "e1"])
        self.clock.advance(1)
        self.assertEqual(created(), ["e0", "e1", "e2", "e3"])
        self.clock.advance(60)
        self.flush()
        self.assertTrue(all(self.fired(w) for w in ws))
        self.assertEqual(sorted(r["id"] for t in created() for r in self.ch.rows[t]), [f"m{i}" for i in range(5)])
        self.assertNotIn("rudder_discards", self.ch.rows)                 # nothing dropped, nothing discarded
        # a new column on an existing table waits the same way
        for i in range(3):
            dest.write([event("track", event="e0", messageId=f"c{i}", properties={f"new{i}": 1})])
        self.flush()
        # e4's CREATE and new0's ALTER share this window
        self.assertEqual(sorted(c for c in self.ch.tables["e0"] if c.startswith("new")), ["new0"])
        self.clock.advance(60)
        self.assertEqual(sorted(c for c in self.ch.tables["e0"] if c.startswith("new")), ["new0", "new1", "new2"])

    def test_max_event_tables(self):
        dest = self.make(max_event_tables=1)
        dest.start()
        w = dest.write([event("track", event="one"), event("track", event="two", messageId="m2")])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertIn("one", self.ch.tables)
        self.assertNotIn("two", self.ch.tables)
        self.assertEqual(len(self.ch.rows["tracks"]), 2)
        [d] = self.ch.rows["rudder_discards"]
        self.assertEqual((d["table_name"], d["row_id"]), ("two", "m2"))
        self.assertIn("max_event_tables", d["reason"])

    def test_max_event_tables_reached_costs_no_scan(self):
        # a new event name at the limit used to walk every cached schema (287 ms with 1000 tables)
        class Walked(dict):
            walks = 0

            def __iter__(self):
                Walked.walks += 1
                return super().__iter__()

            def keys(self):
                Walked.walks += 1
                return super().keys()
        dest = self.make(max_event_tables=2)
        dest.start()
        dest.write([event("track", event="one"), event("track", event="two", messageId="m2")])
        self.flush()
        dest._schema.tables = Walked(dest._schema.tables)
        ws = [dest.write([event("track", event=f"new{i}", messageId=f"n{i}")]) for i in range(50)]
        self.flush()
        self.assertTrue(all(self.fired(w) for w in ws))
        self.assertEqual(Walked.walks, 0)
        self.assertEqual(len(self.ch.rows["rudder_discards"]), 50)
        self.assertNotIn("new0", self.ch.tables)
        # a table dropped by the operator frees its slot once the schema is re-read
        del self.ch.tables["one"]
        dest._load_schema()
        w = dest.write([event("track", event="three", messageId="m3")])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertIn("three", self.ch.tables)

    def test_operator_table_is_not_touched(self):
        dest = self.make()
        self.ch.tables["mine"] = {"id": "UInt64", "received_at": "DateTime"}
        dest.start()
        w = dest.write([event("track", event="mine")])
        self.flush()
        self.assertTrue(self.fired(w))
        self.assertNotIn("mine", self.ch.rows)
        self.assertEqual(self.ch.tables["mine"], {"id": "UInt64", "received_at": "DateTime"})
        self.assertIn("not a Stilgar table", self.ch.rows["rudder_discards"][0]["reason"])

    def test_stop(self):
        dest = self.make()
        dest.start()
        w = dest.write([event("alias")])
        d = dest.stop()
        self.assertTrue(self.fired(d) and self.fired(w))
        self.assertTrue(self.ch.closed)


class Recorder(Resource):
    """A fake HTTP ClickHouse: records requests, answers from a script."""
    isLeaf = True

    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)
        self.requests = []

    def render_POST(self, request):
        body = request.content.read()
        self.requests.append((request.uri, {k: v for k, v in request.requestHeaders.getAllRawHeaders()}, body))
        status, text = self.answers.pop(0) if self.answers else (200, b"")
        request.setResponseCode(status)
        return text


class ClientTests(unittest.TestCase):
    def client(self, answers, **kw):
        self.res = Recorder(answers)
        self.clock = task.Clock()
        return Client(self.clock, settings(**kw), http=StubTreq(self.res))

    def test_insert_body_headers_and_url(self):
        c = self.client([(200, b"")])
        body = b"INSERT INTO `db`.`t` (`a`) FORMAT TabSeparated\nx\n"
        c.async_insert_known = True
        self.successResultOf(c.insert(body))
        [(uri, headers, sent)] = self.res.requests
        self.assertEqual(uri, b"/?input_format_allow_errors_num=0&input_format_allow_errors_ratio=0&async_insert=0")
        self.assertEqual(headers[b"X-Clickhouse-User"], [b"u"])
        self.assertEqual(headers[b"X-Clickhouse-Key"], [b"p"])
        self.assertEqual(headers[b"Content-Encoding"], [b"gzip"])
        self.assertEqual(gzip.decompress(sent), body)

    def test_uncompressed_query(self):
        c = self.client([(200, b"1\n")], compression=False)
        self.assertEqual(self.successResultOf(c.query("SELECT 1", select=True)), b"1\n")
        [(uri, headers, sent)] = self.res.requests
        self.assertEqual(uri, b"/?wait_end_of_query=1")
        self.assertNotIn(b"Content-Encoding", headers)
        self.assertEqual(sent, b"SELECT 1")

    def test_errors(self):
        c = self.client([
            (404, b"Code: 60, e.displayText() = DB::Exception: Table db.t doesn't exist., e.what() = DB::Exception\n"),
            (500, b"Code: 27. DB::Exception: Cannot parse input. (CANNOT_PARSE_INPUT_ASSERTION_FAILED) (version 26.9)"),
            (502, b"<html>Bad Gateway</html>")])
        e = self.failureResultOf(c.query("x"), ClickHouseError).value
        self.assertEqual((e.code, e.status), (60, 404))
        self.assertEqual(e.message, "Table db.t doesn't exist.")
        e = self.failureResultOf(c.query("x"), ClickHouseError).value
        self.assertEqual(e.code, 27)
        self.assertTrue(e.message.startswith("Cannot parse input."))
        e = self.failureResultOf(c.query("x"), ClickHouseError).value
        self.assertEqual((e.code, e.status), (None, 502))

    def test_timeout(self):
        clock = task.Clock()

        class Never:
            def post(self, *a, **kw):
                return defer.Deferred()
        c = Client(clock, settings(query_timeout="3s", compression=False), http=Never())
        d = c.query("SELECT 1")
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.assertIn("within 3 s", str(self.failureResultOf(d, TransportError).value))

    def test_insert_timeout_is_its_own(self):
        """A large INSERT on a busy server outlives query_timeout; giving up on it early
        would resend rows ClickHouse may already have stored."""
        clock = task.Clock()

        class Never:
            def post(self, *a, **kw):
                return defer.Deferred()
        c = Client(clock, settings(query_timeout="3s", insert_timeout="40s", compression=False), http=Never())
        d = c.insert(b"INSERT INTO t FORMAT TabSeparated\n1\n")
        clock.advance(39.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.assertIn("within 40 s", str(self.failureResultOf(d, TransportError).value))

    def test_parallel_limit(self):
        clock = task.Clock()
        pending = []

        class Held:
            def post(self, *a, **kw):
                d = defer.Deferred()
                pending.append(d)
                return d
        c = Client(clock, settings(max_parallel_queries=2, compression=False), http=Held())
        for _ in range(5):
            c.query("SELECT 1")
        self.assertEqual(len(pending), 2)


class HTTPFake(Resource):
    """FakeClickHouse behind real HTTP handling (StubTreq): bodies gzip-decoded,
    statements recorded exactly as sent."""
    isLeaf = True

    def __init__(self, fake):
        super().__init__()
        self.fake = fake
        self.bodies = []
        self.stall = False
        self.hold_query = None    # bytes: a statement containing them gets no answer until finished
        self.stalled = []

    def finish(self, request):
        """Answer a held query as the fake server would."""
        request.write(b"Query\t1\n")
        request.finish()

    def render_POST(self, request):
        from twisted.web.server import NOT_DONE_YET
        body = request.content.read()
        if request.getHeader(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        self.bodies.append((request.uri.decode(), body.decode()))
        if self.stall and body.startswith(b"INSERT") or self.hold_query and self.hold_query in body:
            self.stalled.append(request)
            return NOT_DONE_YET
        try:
            if body.startswith(b"INSERT"):
                header, _, data = body.decode().partition("\n")
                self.fake._insert(header, data)
                return b""
            return self.fake._query(body.decode())
        except ClickHouseError as e:
            request.setResponseCode(404 if e.code in (60, 16) else 500)
            return f"Code: {e.code}, e.displayText() = DB::Exception: {e.message}, e.what() = DB::Exception\n".encode()


class HTTPTests(DestinationTestCase):
    def make_http(self, **kw):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.ch = FakeClickHouse()
        self.res = HTTPFake(self.ch)
        s = settings(cache_idle_timeout="10s", **kw)
        self.stub = StubTreq(self.res)
        client = Client(self.clock, s, http=self.stub)
        self.dest = ClickHouseDestination("clickhouse:db", ["k"], s, self.clock, client=client, rand=lambda: 0.5)
        return self.dest

    def test_exact_statements(self):
        dest = self.make_http()
        self.assertTrue(self.fired(dest.start()))
        sent = [b for _, b in self.res.bodies]
        self.assertEqual(sent[0], "CREATE DATABASE IF NOT EXISTS `db`")
        self.assertEqual(sent[1], PROBE_QUERY)
        self.assertEqual(sent[2], "SELECT table, name, type, comment FROM system.columns WHERE database = 'db' "
                                  "FORMAT TabSeparated")
        self.assertEqual(sent[3], "SELECT name, engine FROM system.tables WHERE database = 'db' FORMAT TabSeparated")
        self.assertEqual([b.split(" (")[0] for b in sent[4:12]],
                         [f"CREATE TABLE IF NOT EXISTS `db`.`{t}`" for t in
                          ("aliases", "groups", "identifies", "pages", "screens", "tracks", "users",
                           "rudder_discards")])
        self.assertEqual(self.res.bodies[1][0], "/?wait_end_of_query=1")
        w = dest.write([event("track", event="Signed Up", properties={"plan": "pro"})])
        self.flush()
        self.assertTrue(self.fired(w))
        ddl = [b for _, b in self.res.bodies if b.startswith("CREATE TABLE IF NOT EXISTS `db`.`signed_up`")]
        self.assertEqual(len(ddl), 1)
        self.assertIn("`plan` Nullable(String) COMMENT 'stilgar') ENGINE = ReplacingMergeTree()", ddl[0])
        inserts = [(u, b) for u, b in self.res.bodies if b.startswith("INSERT")]
        self.assertEqual(len(inserts), 2)
        for uri, body in inserts:
            self.assertEqual(uri, "/?input_format_allow_errors_num=0&input_format_allow_errors_ratio=0")
            header, rows = body.split("\n", 1)
            self.assertRegex(header, r"^INSERT INTO `db`.`(tracks|signed_up)` \(`anonymous_id`, `channel`, .*\) "
                                     r"FORMAT TabSeparated$")
            self.assertEqual(rows.count("\n"), 1)
        self.assertEqual(self.ch.rows["signed_up"][0]["plan"], "pro")
        self.assertEqual(self.ch.rows["tracks"][0]["sent_at"], "1714979289")

    def test_one_slot_limit_for_queries_and_inserts(self):
        # max_parallel_queries bounds every request once (the client's slots): while a
        # query holds the only slot no INSERT is cut, so rows arriving meanwhile join it
        dest = self.make_http(max_parallel_queries=1, cache_threshold=1)
        dest.start()
        self.res.hold_query = b"system.metrics"
        dest.status()                               # its server-metrics read holds the slot
        self.assertEqual(len(self.res.stalled), 1)
        ws = [dest.write([event("alias", messageId=f"m{i}")]) for i in range(3)]
        self.assertEqual([b for _, b in self.res.bodies if b.startswith("INSERT")], [])
        self.res.hold_query = None
        self.res.finish(self.res.stalled.pop())
        self.stub.flush()
        self.assertTrue(all(self.fired(w) for w in ws))
        inserts = [b for _, b in self.res.bodies if b.startswith("INSERT")]
        self.assertEqual([b.count("\n") - 1 for b in inserts], [3])     # one INSERT, every row

    def test_insert_timeout_is_retried(self):
        dest = self.make_http(query_timeout="2s", insert_timeout="5s")
        dest.start()
        self.res.stall = True
        w = dest.write([event("alias")])
        self.flush()
        self.assertTrue(dest.health()["up"])
        self.clock.advance(5)                   # the INSERT times out: down, retry in 1 s
        self.assertFalse(dest.health()["up"])
        self.assertIn("no answer within 5 s", dest.status()["last_error"])
        self.res.stall = False
        self.clock.advance(1)
        self.assertTrue(dest.health()["up"])
        self.assertTrue(self.fired(w))
        self.assertEqual(len(self.ch.rows["aliases"]), 1)
