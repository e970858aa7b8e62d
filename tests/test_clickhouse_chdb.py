"""The generated DDL and TSV on a modern engine: chdb-core 26.9, in process.

CI installs it with ``pip install --no-deps chdb-core==26.9.0``. The session
runs with ``date_time_input_format = 'basic'`` (the 23.x-26.4 server default)
and ``async_insert = 0``."""

from twisted.trial import unittest

from stilgar.destinations.clickhouse.capabilities import MODERN, OLD, PROBE_QUERY, parse_probe
from stilgar.destinations.clickhouse.coltypes import Column
from stilgar.destinations.clickhouse.evolution import changes_sql, plan_changes
from stilgar.destinations.clickhouse.naming import BASE_TABLES, DISCARDS_TABLE
from stilgar.destinations.clickhouse.rows import build_rows
from stilgar.destinations.clickhouse.schema import TableSchema, create_table_sql
from stilgar.destinations.clickhouse.tsv import parse_tsv

from .test_clickhouse_units import NOW, event

try:
    import chdb
except ImportError:       # pragma: no cover - depends on the machine
    chdb = None

_conn = None


def conn():
    """One engine per process."""
    global _conn
    if chdb is None:
        raise unittest.SkipTest("chdb is not importable: pip install --no-deps chdb-core==26.9.0 to run "
                                "the modern-engine checks")
    if _conn is None:
        _conn = chdb.connect(":memory:")
        _conn.query("SET date_time_input_format = 'basic'")
        _conn.query("SET async_insert = 0")
    return _conn


def q(sql):
    return conn().query(sql, "TabSeparated").bytes()


def load(db, table, caps):
    cols = parse_tsv(q(f"SELECT name, type, comment FROM system.columns WHERE database = '{db}' "
                       f"AND table = '{table}'"))
    if not cols:
        return None
    [[engine]] = parse_tsv(q(f"SELECT engine FROM system.tables WHERE database = '{db}' AND name = '{table}'"))
    return TableSchema.from_rows(db, table, [(n, t, c or "") for n, t, c in cols], engine, caps)


def write(db, caps, events):
    """What the destination does, synchronously: evolve each table, encode, insert."""
    rows, discards = build_rows(events, NOW)
    by_table = {}
    for r in rows + discards:
        by_table.setdefault(r.table, []).append(r)
    for table, trows in by_table.items():
        for _ in range(3):
            ch = plan_changes(load(db, table, caps), table, trows, caps)
            assert not ch.rejected
            if ch.empty():
                break
            for sql, _ in changes_sql(ch, db, caps):
                q(sql)
        schema = load(db, table, caps)
        groups = {}
        for r in trows:
            plan = schema.plan(r.data)
            parts = [enc(r.data[c]) for c, enc in zip(plan.columns, plan.encoders)]
            assert None not in parts, (table, r.data, parts)
            groups.setdefault(plan.header, []).append("\t".join(parts) + "\n")
        for header, lines in groups.items():
            q(header + "".join(lines))
    return rows, discards


class ModernEngineTests(unittest.TestCase):
    def test_probe(self):
        caps = parse_probe(q(PROBE_QUERY.replace(" FORMAT TabSeparated", "")))
        self.assertEqual(caps.version[0], 26)
        self.assertTrue(caps.datetime64 and caps.lowcardinality and caps.bool and caps.simple_aggregate)
        self.assertTrue(caps.async_insert and caps.add_column_if_not_exists)

    def check_base_tables(self, db, caps):
        q(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        for table in sorted(BASE_TABLES) + [DISCARDS_TABLE]:
            q(create_table_sql(db, table, caps))
            q(create_table_sql(db, table, caps))     # IF NOT EXISTS: a second time is fine
            schema = load(db, table, caps)
            self.assertTrue(schema.valid, table)
            self.assertEqual(set(schema.columns), set(schema.standard))
            self.assertTrue(all(c.stilgar for c in schema.columns.values()), table)
        self.assertEqual(load(db, "users", caps).aggregating, caps.simple_aggregate)

    def test_base_tables_modern(self):
        self.check_base_tables("modern_base", MODERN)

    def test_base_tables_old_subset(self):
        self.check_base_tables("old_base", OLD)

    def check_rows(self, db, caps):
        q(f"CREATE DATABASE IF NOT EXISTS `{db}`")
        for table in sorted(BASE_TABLES) + [DISCARDS_TABLE]:
            q(create_table_sql(db, table, caps))
        text = "tab\t nl\n cr\r bs\\ nul\0 😀 \\N ' \""
        events = [
            event("track", messageId="t1", event="Order Completed",
                  context={"screen": {"width": 10, "density": 1.5}, "locale": "fr", "app": {"name": "a"}},
                  properties={"price": 9.5, "qty": 3, "gift": True, "at": "2024-01-02T03:04:05.678+01:00",
                              "text": text, "obj": {"k": [1, None]}, "id": "reserved"}),
            event("identify", messageId="i1", context={"traits": {"email": "e@x", "vip": False}}),
            event("page", messageId="p1", name="Home", properties={"path": "/p", "ratio": 0.25}),
            event("screen", messageId="s1", name="S"),
            event("group", messageId="g1", groupId="acme", traits={"seats": 4}),
            event("alias", messageId="a1", previousId="old"),
        ]
        rows, discards = write(db, caps, events)
        self.assertEqual(len(discards), 1)
        [[price, qty, gift, at, got_text, obj]] = parse_tsv(q(
            f"SELECT price, qty, gift, toUnixTimestamp(at), text, obj FROM `{db}`.order_completed"))
        self.assertEqual((price, qty, at, obj), ("9.5", "3", "1704161045", '{"k":[1,null]}'))
        self.assertEqual(gift, "true" if caps.bool else "1")
        self.assertEqual(got_text, text)
        [[sent, density]] = parse_tsv(q(f"SELECT toUnixTimestamp(sent_at), context_screen_density "
                                        f"FROM `{db}`.tracks"))
        self.assertEqual((sent, density), ("1714979289", "1.5"))
        if caps.datetime64:
            [[ms]] = parse_tsv(q(f"SELECT toUnixTimestamp64Milli(timestamp) FROM `{db}`.tracks"))
            self.assertEqual(ms, "1714979289123")
        [[uid, email]] = parse_tsv(q(f"SELECT id, context_traits_email FROM `{db}`.users FINAL"))
        self.assertEqual((uid, email), ("u1", "e@x"))
        [[d]] = parse_tsv(q(f"SELECT reason FROM `{db}`.rudder_discards"))
        self.assertEqual(d, "reserved column")
        for table, n in (("identifies", 1), ("pages", 1), ("screens", 1), ("groups", 1), ("aliases", 1)):
            [[count]] = parse_tsv(q(f"SELECT count() FROM `{db}`.{table}"))
            self.assertEqual(count, str(n), table)
        # widening on the modern engine: Bool -> Int64 -> Float64 -> String
        for i, v in enumerate([7, 2.5, "x"]):
            write(db, caps, [event("track", messageId=f"w{i}", event="Order Completed", properties={"gift": v})])
        cols = dict(parse_tsv(q(f"SELECT name, type FROM system.columns WHERE database = '{db}' "
                                f"AND table = 'order_completed'")))
        self.assertEqual(cols["gift"], "Nullable(String)")
        got = [r[0] for r in parse_tsv(q(f"SELECT gift FROM `{db}`.order_completed ORDER BY id"))]
        self.assertEqual(got, ["1", "7", "2.5", "x"])   # true became 1 when the column became Int64

    def test_rows_modern(self):
        self.check_rows("modern_rows", MODERN)

    def test_rows_old_subset(self):
        self.check_rows("old_rows", OLD)

    def test_datetime64_limits(self):
        q("CREATE DATABASE IF NOT EXISTS dt")
        q("CREATE TABLE IF NOT EXISTS dt.t (`id` String, `d` Nullable(DateTime64(3, 'UTC'))) "
          "ENGINE = MergeTree ORDER BY id")
        col = Column.from_system("d", "Nullable(DateTime64(3, 'UTC'))", "stilgar")
        values = ["1900-01-01T00:00:00Z", "1938-04-24T22:13:19.5Z", "2299-12-31T23:59:59.999Z",
                  "2024-05-06T07:08:09.123456Z"]
        q("INSERT INTO dt.t (id, d) FORMAT TabSeparated\n" +
          "".join(f"{i}\t{col.encode(v)}\n" for i, v in enumerate(values)))
        got = [r[0] for r in parse_tsv(q("SELECT toUnixTimestamp64Milli(d) FROM dt.t ORDER BY id"))]
        self.assertEqual(got, ["-2208988800000", "-1000000000500", "10413791999999", "1714979289123"])
