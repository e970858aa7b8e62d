"""Pure parts of the ClickHouse destination: settings, names, types, TSV, DDL, rows, evolution."""

import re

from hypothesis import example, given, settings as hsettings, strategies as st
from twisted.trial import unittest

from stilgar.destinations import destination_type
from stilgar.destinations.clickhouse import ClickHouseType
from stilgar.destinations.clickhouse.capabilities import MODERN, OLD, parse_probe
from stilgar.destinations.clickhouse.coltypes import (
    Column, infer_kind, join_kinds, parse_type, parse_zoned_us, widen_type, new_column_type, misfit_reason)
from stilgar.destinations.clickhouse.evolution import changes_sql, plan_changes
from stilgar.destinations.clickhouse.naming import (
    column_name, event_table_name, normalise_event_name, quote_ident, short_hash)
from stilgar.destinations.clickhouse.rows import build_rows
from stilgar.destinations.clickhouse.schema import (
    TableSchema, add_columns_sql, create_table_sql, insert_header, modify_column_sql, standard_columns)
from stilgar.destinations.clickhouse.tsv import ESCAPES, escape, float_text, json_text, needs_escape, unescape
from stilgar.units import ConfigError

NOW = "2024-05-06T07:08:10.000000Z"


def event(kind, **kw):
    e = {"type": kind, "messageId": "m1", "anonymousId": "a1", "userId": "u1", "channel": "web",
         "receivedAt": "2024-05-06T07:08:09.123456Z", "sentAt": "2024-05-06T07:08:09.000000Z",
         "originalTimestamp": "2024-05-06T07:08:08.000000Z", "timestamp": "2024-05-06T07:08:09.123456Z",
         "context": {}}
    e.update(kw)
    return e


class SettingsTests(unittest.TestCase):
    def parse(self, **block):
        warnings = []
        base = {"type": "clickhouse", "host": "ch", "database": "db"}
        base.update(block)
        base = {k: v for k, v in base.items() if v is not None}
        s = ClickHouseType.parse_settings(base, "destinations[0]", warnings.append)
        return s, warnings

    def test_registered(self):
        self.assertIs(destination_type("clickhouse"), ClickHouseType)

    def test_defaults(self):
        s, w = self.parse()
        self.assertEqual(w, [])
        self.assertEqual(s.url, "http://ch:8123")
        self.assertEqual((s.user, s.password, s.database), ("default", "", "db"))
        self.assertEqual(s.query_timeout, 5)
        self.assertEqual(s.alter_timeout, 600)
        self.assertEqual(s.cache_threshold, 10000)
        self.assertEqual(s.cache_idle_timeout, 60)
        self.assertEqual(s.cache_max_bytes, 16 * 1024 * 1024)
        # safe growth limits by default: browser write keys are public (doc/clickhouse.md, "Growth limits")
        self.assertEqual((s.max_table_expansion, s.max_table_width, s.max_parallel_queries, s.max_event_tables,
                          s.max_schema_changes_per_minute), (100, 500, 2, 1000, 60))
        s, w = self.parse(max_table_expansion=0, max_table_width=0, max_schema_changes_per_minute=0)
        self.assertEqual((w, s.max_table_expansion, s.max_table_width, s.max_schema_changes_per_minute),
                         ([], 0, 0, 0))
        self.assertTrue(s.compression)
        self.assertEqual(ClickHouseType.default_name(s), "clickhouse:db")

    def test_values(self):
        s, _ = self.parse(port="18123", user="u", password="p", query_timeout="1m", cache_idle_timeout="1h 30m",
                          cache_max_bytes="1MiB", cache_threshold=5, max_table_expansion=40,
                          max_table_width=100, max_parallel_queries=4, compression=False, alter_timeout="2m")
        self.assertEqual(s.url, "http://ch:18123")
        self.assertEqual((s.query_timeout, s.cache_idle_timeout, s.cache_max_bytes), (60, 5400, 1048576))
        self.assertEqual((s.max_table_expansion, s.max_table_width, s.max_parallel_queries), (40, 100, 4))
        self.assertFalse(s.compression)
        self.assertEqual(s.alter_timeout, 120)
        s, _ = self.parse(port=8443, secure=True)
        self.assertEqual(s.url, "https://ch:8443")
        s, _ = self.parse(secure=True)
        self.assertEqual(s.url, "https://ch:8443")
        s, _ = self.parse(host=None, url="https://ch.example:9443/")
        self.assertEqual(s.url, "https://ch.example:9443")

    def test_grpc_port_refused(self):
        for port in (9100, "9100"):
            e = self.assertRaises(ConfigError, self.parse, port=port)
            self.assertEqual(e.key, "destinations[0].port")
            self.assertIn("gRPC", str(e))

    def test_errors_name_the_key(self):
        cases = [({"port": "http"}, "port"), ({"port": 70000}, "port"), ({"query_timeout": "5"}, "query_timeout"),
                 ({"cache_threshold": 0}, "cache_threshold"), ({"max_parallel_queries": 0}, "max_parallel_queries"),
                 ({"cache_max_bytes": "lots"}, "cache_max_bytes"), ({"secure": "maybe"}, "secure"),
                 ({"host": None}, "host"), ({"database": None}, "database"), ({"url": "ftp://x", "host": None}, "url"),
                 ({"url": "http://x", "port": 1, "host": None}, "port"), ({"url": "http://x"}, "host"), ({"max_table_width": -1}, "max_table_width"),
                 ({"user": ""}, "user")]
        for block, key in cases:
            e = self.assertRaises(ConfigError, self.parse, **block)
            self.assertEqual(e.key, f"destinations[0].{key}", block)

    def test_unknown_key_is_an_error(self):
        e = self.assertRaises(ConfigError, self.parse, name="x", write_keys=["k"], flavour_of_the_week="blue")
        self.assertEqual(str(e), "destinations[0].flavour_of_the_week: unknown key")


class NamingTests(unittest.TestCase):
    def test_quote(self):
        self.assertEqual(quote_ident("a"), "`a`")
        self.assertEqual(quote_ident("a`b\\c"), "`a\\`b\\\\c`")

    def test_columns(self):
        self.assertEqual(column_name("", "price"), ("price", True))
        self.assertEqual(column_name("", "Price_2"), ("Price_2", True))
        self.assertEqual(column_name("context_traits_", "email"), ("context_traits_email", True))
        self.assertEqual(column_name("", "first name"), ("first_name", False))
        self.assertEqual(column_name("", "2fa"), ("_2fa", False))
        self.assertEqual(column_name("", "prénom"), ("pr_nom_" + short_hash("prénom"), False))
        self.assertEqual(column_name("", "a.b-c"), ("a_b_c", False))
        self.assertEqual(column_name("", ""), ("_", False))
        long_key = "k" * 70
        col, verbatim = column_name("", long_key)
        self.assertFalse(verbatim)
        self.assertEqual(len(col), 64)
        self.assertTrue(col.endswith("_" + short_hash(long_key)))
        col, _ = column_name("context_traits_", "x" * 60)
        self.assertEqual(len(col), 64)
        self.assertTrue(col.startswith("context_traits_xxx"))
        for key in ["😀", "a b", "-", "1", "ключ", "k" * 200]:
            col, _ = column_name("", key)
            self.assertRegex(col, r"^[a-zA-Z_][0-9a-zA-Z_]*$")
            self.assertLessEqual(len(col), 64)

    def test_non_ascii_keys_do_not_collide(self):
        # one `_` per character made every 4-letter Cyrillic key the same column
        a, b = column_name("", "ключ"), column_name("", "слов")
        self.assertEqual(a, ("_____" + short_hash("ключ"), False))
        self.assertNotEqual(a, b)
        self.assertEqual(column_name("context_app_", "ключ"), ("context_app_" + "_____" + short_hash("ключ"), False))
        col, _ = column_name("", "é" * 80)
        self.assertEqual(len(col), 64)
        self.assertTrue(col.endswith("_" + short_hash("é" * 80)))
        # ASCII keys keep exactly their names
        for key, col in [("first name", "first_name"), ("2fa", "_2fa"), ("a.b-c", "a_b_c"), ("", "_")]:
            self.assertEqual(column_name("", key), (col, False))

    def test_event_tables(self):
        self.assertEqual(event_table_name("Custom Event Invalid Identifier"), "custom_event_invalid_identifier")
        self.assertEqual(event_table_name("2fa"), "track_2fa")
        self.assertEqual(event_table_name("Order Completed"), "order_completed")
        self.assertEqual(event_table_name("Café Ordered!"), "cafe_ordered_")
        for base in ("tracks", "users", "identifies", "pages", "screens", "groups", "aliases", "rudder_discards",
                     "Tracks"):
            self.assertEqual(event_table_name(base), "track_" + base.lower())
        for name in ("Покупка", "購入", "x" * 65):
            self.assertEqual(event_table_name(name), "track_" + short_hash(name, 12))
        self.assertEqual(normalise_event_name("Покупка"), "")


class TSVTests(unittest.TestCase):
    def test_escape(self):
        self.assertEqual(escape("a\tb\nc\\d\re\0f\bg\fh"), "a\\tb\\nc\\\\d\\re\\0f\\bg\\fh")
        self.assertEqual(escape("\\N"), "\\\\N")
        self.assertEqual(escape("émoji 😀 'quote\""), "émoji 😀 'quote\"")

    @hsettings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.text()), min_size=1, max_size=6))
    def test_round_trip(self, values):
        fields = ["\\N" if v is None else escape(v) for v in values]
        for f in fields:
            self.assertFalse(set(f) & {"\t", "\n", "\r", "\0"})
        line = "\t".join(fields) + "\n"
        self.assertEqual([unescape(f) for f in line[:-1].split("\t")], values)
        # the String column encoder (with its no-escape fast path) agrees with the escaper
        enc = Column.from_system("c", "Nullable(String)", "stilgar").encode
        self.assertEqual([enc(v) for v in values], fields)

    def test_unescape(self):
        self.assertEqual(unescape("DateTime(\\'UTC\\')"), "DateTime('UTC')")
        self.assertIsNone(unescape("\\N"))

    def test_json(self):
        self.assertEqual(json_text({"b": 1, "a": [1.0, None, "x"]}), '{"a":[1.0,null,"x"],"b":1}')


class TypeTests(unittest.TestCase):
    def test_parse(self):
        t = parse_type("SimpleAggregateFunction(anyLast, Nullable(Int64))")
        self.assertEqual((t.inner, t.nullable, t.agg, t.kind), ("Int64", True, "anyLast", "I"))
        t = parse_type("LowCardinality(Nullable(String))")
        self.assertEqual((t.inner, t.nullable, t.lowcard, t.kind), ("String", True, True, "S"))
        self.assertEqual(parse_type("DateTime('Asia/Tokyo')").kind, "D")
        self.assertEqual(parse_type("Nullable(DateTime64(3, 'UTC'))").precision, 3)
        self.assertEqual(parse_type("Array(String)").kind, "?")
        self.assertEqual((parse_type("UInt8").lo, parse_type("UInt8").hi), (0, 255))

    def test_infer(self):
        self.assertEqual([infer_kind(v) for v in (True, 1, 2**63, 1.5, "x", "01234", "2024-01-02T03:04:05Z",
                                                  "2024-01-02T03:04:05", {"a": 1}, [1], None)],
                         ["B", "I", "F", "F", "S", "S", "D", "S", "S", "S", None])

    def test_zoned(self):
        base = parse_zoned_us("2024-01-02T03:04:05Z")
        self.assertEqual(base, 1704164645 * 10**6)
        self.assertEqual(parse_zoned_us("2024-01-02T04:04:05+01:00"), base)
        self.assertEqual(parse_zoned_us("2024-01-02T04:04:05+0100"), base)
        self.assertEqual(parse_zoned_us("2024-01-02 03:04:05.5Z"), base + 500000)
        self.assertEqual(parse_zoned_us("2024-01-02T03:04:05.123456Z"), base + 123456)
        for bad in ("2024-01-02T03:04:05", "2024-13-02T03:04:05Z", "2024-02-30T03:04:05Z", "yesterday",
                    "2024-01-02T25:04:05Z", "2024-01-02"):
            self.assertIsNone(parse_zoned_us(bad), bad)

    def enc(self, raw, v, comment="stilgar"):
        return Column.from_system("c", raw, comment).encode(v)

    def test_encoders(self):
        self.assertEqual(self.enc("Nullable(Int64)", 5), "5")
        self.assertEqual(self.enc("Nullable(Int64)", 5.0), "5")
        self.assertEqual(self.enc("Nullable(Int64)", True), "1")
        self.assertIsNone(self.enc("Nullable(Int64)", 5.5))
        self.assertIsNone(self.enc("Nullable(Int64)", 2**63))
        self.assertIsNone(self.enc("Nullable(Int64)", "5"))
        self.assertEqual(self.enc("Nullable(Int64)", ""), "\\N")
        self.assertEqual(self.enc("Nullable(Int64)", None), "\\N")
        self.assertIsNone(self.enc("Int64", None))
        self.assertIsNone(self.enc("Nullable(UInt8)", 300, ""))
        self.assertEqual(self.enc("Nullable(UInt8)", 3, ""), "3")
        self.assertIsNone(self.enc("Nullable(UInt8)", 3))   # a stilgar UInt8 is a boolean
        self.assertEqual(self.enc("Nullable(UInt8)", False), "0")
        self.assertEqual(self.enc("Nullable(Bool)", True), "true")
        self.assertIsNone(self.enc("Nullable(Bool)", 1))
        self.assertEqual(self.enc("Nullable(Float64)", 1), "1")
        self.assertEqual(self.enc("Nullable(Float64)", 0.1), "0.1")
        self.assertIsNone(self.enc("Nullable(Float64)", "x"))
        self.assertEqual(self.enc("Nullable(String)", {"b": [1], "a": "\t"}), '{"a":"\\\\t","b":[1]}')
        self.assertEqual(self.enc("Nullable(String)", True), "true")
        self.assertEqual(self.enc("Nullable(String)", 1.0), "1.0")
        self.assertEqual(self.enc("String", "a\tb"), "a\\tb")
        dt = "Nullable(DateTime('UTC'))"
        self.assertEqual(self.enc(dt, "2024-01-02T03:04:05.999Z"), "1704164645")
        self.assertIsNone(self.enc(dt, "1960-01-01T00:00:00Z"))
        self.assertIsNone(self.enc(dt, "2200-01-01T00:00:00Z"))
        self.assertIsNone(self.enc(dt, 1704164645))
        dt64 = "Nullable(DateTime64(3, 'UTC'))"
        self.assertEqual(self.enc(dt64, "2024-01-02T03:04:05.1239Z"), "1704164645.123")
        self.assertEqual(self.enc(dt64, "1938-04-24T22:13:19.500Z"), "-1000000000.500")
        self.assertEqual(self.enc(dt64, "1900-01-01T00:00:00Z"), "-2208988800.000")
        self.assertIsNone(self.enc(dt64, "1899-12-31T23:59:59Z"))
        self.assertIsNone(self.enc(dt64, "2300-01-01T00:00:00Z"))
        self.assertIsNone(self.enc("Array(String)", "x"))

    @hsettings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(min_value=1890, max_value=2310), st.integers(min_value=0, max_value=59),
                              st.integers(min_value=0, max_value=999_999)), min_size=1, max_size=12),
           st.sampled_from(["DateTime('UTC')", "Nullable(DateTime('UTC'))", "Nullable(DateTime64(0, 'UTC'))",
                            "Nullable(DateTime64(3, 'UTC'))", "DateTime64(6, 'UTC')", "DateTime64(9, 'UTC')"]))
    @example([(1969, 59, 999_999), (1969, 59, 1)], "Nullable(DateTime64(3, 'UTC'))")
    @example([(1969, 59, 500_000), (1969, 59, 0)], "Nullable(DateTime64(0, 'UTC'))")
    @example([(2024, 5, 1), (2024, 5, 999_998)], "DateTime('UTC')")
    def test_time_memo_is_the_conversion(self, times, raw):
        """Normalised times that share their second (or the digits the
        column keeps) are memoised by that prefix: the text is still each
        time's own conversion, before 1970 and at the ranges' ends too."""
        texts = [f"{y:04d}-12-31T23:59:{s:02d}.{us:06d}Z" for y, s, us in times]
        enc = Column.from_system("c", raw, "stilgar").encode
        for t in texts:
            self.assertEqual(enc(t), enc.convert(t), t)
        for t in texts:
            self.assertEqual(enc(t), enc.convert(t), t)     # from the memos now

    @hsettings(max_examples=300, deadline=None)
    @given(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=3),
                     st.lists(st.integers(), max_size=1)),
           st.sampled_from(["Nullable(Int64)", "Int64", "Nullable(UInt8)", "UInt16", "Nullable(Int8)",
                            "Nullable(Float64)", "Float32"]),
           st.sampled_from(["stilgar", ""]))
    def test_inline_is_the_encoder(self, value, raw, comment):
        """The common case an encoder states as an expression (its
        ``inline``, which compiled.py unrolls) gives the encoder's text."""
        enc = Column.from_system("c", raw, comment).encode
        if raw in ("Nullable(Int64)", "Nullable(Float64)"):
            self.assertTrue(enc.inline, raw)        # the columns Stilgar makes for numbers have one
        expr = getattr(enc, "inline", "{enc}({v})").format(v="v", enc="enc")
        self.assertEqual(eval(expr, {"enc": enc, "v": value}), enc(value))

    def test_widening(self):
        def col(raw, comment="stilgar", name="c"):
            return Column.from_system(name, raw, comment)
        self.assertEqual(widen_type(col("Nullable(Bool)"), 5, MODERN, False), "Nullable(Int64)")
        self.assertEqual(widen_type(col("Nullable(UInt8)"), 5, OLD, False), "Nullable(Int64)")
        self.assertEqual(widen_type(col("Nullable(Int64)"), 1.5, OLD, False), "Nullable(Float64)")
        self.assertEqual(widen_type(col("Nullable(Int64)"), 2**64, OLD, False), "Nullable(Float64)")
        self.assertEqual(widen_type(col("Nullable(Float64)"), "x", OLD, False), "Nullable(String)")
        self.assertEqual(widen_type(col("Nullable(Bool)"), "x", MODERN, False), "Nullable(String)")
        self.assertEqual(widen_type(col("Nullable(DateTime64(3, 'UTC'))"), 5, MODERN, False), "Nullable(String)")
        self.assertEqual(widen_type(col("Nullable(DateTime('UTC'))"), "x", OLD, False), "Nullable(String)")
        self.assertIsNone(widen_type(col("Nullable(DateTime('UTC'))"), "1800-01-01T00:00:00Z", OLD, False))
        self.assertEqual(widen_type(col("SimpleAggregateFunction(anyLast, Nullable(Int64))"), 0.5, MODERN, False),
                         "SimpleAggregateFunction(anyLast, Nullable(Float64))")
        # operator columns are never retyped, except the original's own ladder types
        self.assertIsNone(widen_type(col("Nullable(Int64)", ""), "x", OLD, False) and None)
        self.assertEqual(widen_type(col("Nullable(Int64)", ""), "x", OLD, False), "Nullable(String)")
        self.assertIsNone(widen_type(col("Nullable(Int32)", ""), "x", OLD, False))
        self.assertIsNone(widen_type(col("Int64", ""), "x", OLD, False))
        # standard columns: only context_screen_* Int64 -> Float64
        self.assertEqual(widen_type(col("Nullable(Int64)", name="context_screen_density"), 1.5, OLD, True),
                         "Nullable(Float64)")
        self.assertIsNone(widen_type(col("Nullable(Int64)", name="context_screen_density"), "x", OLD, True))
        self.assertIsNone(widen_type(col("Nullable(DateTime('UTC'))", name="sent_at"), "x", OLD, True))
        self.assertEqual(join_kinds("B", "F"), "F")
        self.assertEqual(join_kinds("D", "I"), "S")
        self.assertEqual(new_column_type("B", OLD), "Nullable(UInt8)")
        self.assertEqual(new_column_type("B", MODERN, True), "SimpleAggregateFunction(anyLast, Nullable(Bool))")
        self.assertEqual(new_column_type("D", MODERN), "Nullable(DateTime64(3, 'UTC'))")
        self.assertEqual(new_column_type("D", OLD), "Nullable(DateTime('UTC'))")
        self.assertEqual(misfit_reason(col("Nullable(DateTime('UTC'))"), "1800-01-01T00:00:00Z"),
                         "timestamp out of range")


class PendingRowsTests(unittest.TestCase):
    def test_take_one(self):
        from stilgar.destinations.clickhouse.batches import PendingRows
        from stilgar.destinations.clickhouse.schema import Plan
        a, b = Plan(("x",), [], "A"), Plan(("y",), [], "B")
        buf = PendingRows()
        self.assertIsNone(buf.take_one(10, 100))
        buf.start_flush()
        self.assertFalse(buf.flushing)                    # nothing to flush
        for i in range(5):
            buf.add("t", a, f"a{i}\n", f"row-a{i}")
        buf.add("t", b, "b0\n", "row-b0")
        buf.start_flush()
        self.assertTrue(buf.flushing)
        job = buf.take_one(2, 100)                        # the oldest group, cut at the row cap
        self.assertEqual((job.plan, job.rows, job.lines, job.bytes), (a, ["row-a0", "row-a1"], ["a0\n", "a1\n"], 6))
        buf.add("t", a, "a5\n", "row-a5")                 # arrives while flushing: joins its group
        job = buf.take_one(10, 7)                         # the byte cap
        self.assertEqual(job.rows, ["row-a2", "row-a3"])
        job = buf.take_one(10, 1)                         # at least one row
        self.assertEqual(job.rows, ["row-a4"])
        self.assertEqual(buf.take_one(10, 100).rows, ["row-a5"])
        self.assertEqual((buf.rows, buf.bytes, buf.flushing), (1, 3, True))
        self.assertEqual(buf.take_one(10, 100).rows, ["row-b0"])
        self.assertEqual((buf.rows, buf.bytes, buf.flushing, buf.groups), (0, 0, False, {}))


class SchemaChangeBudgetTests(unittest.TestCase):
    def test_sliding_window(self):
        from stilgar.destinations.clickhouse.ddlrate import SchemaChangeBudget
        b = SchemaChangeBudget(2)
        self.assertTrue(b.take(100) and b.take(130))
        self.assertFalse(b.take(140))
        self.assertEqual(b.wait(140), 20)
        self.assertTrue(b.take(160))              # the first one left the window
        self.assertFalse(b.take(189))
        self.assertEqual(b.wait(189), 1)
        unlimited = SchemaChangeBudget(0)
        self.assertTrue(all(unlimited.take(0) for _ in range(1000)))
        self.assertEqual(unlimited.wait(0), 0)


class ProbeTests(unittest.TestCase):
    def test_old(self):
        caps = parse_probe(b"v\t18.16.1\ns\tallow_experimental_low_cardinality_type\nt\tLowCardinality\n")
        self.assertEqual(caps.version, (18, 16))
        self.assertFalse(caps.lowcardinality or caps.datetime64 or caps.bool or caps.simple_aggregate
                         or caps.add_column_if_not_exists or caps.async_insert)

    def test_modern(self):
        caps = parse_probe(b"v\t26.9.2.1\nt\tSimpleAggregateFunction\nt\tLowCardinality\nt\tDateTime64\n"
                           b"t\tBool\ns\tasync_insert\n")
        self.assertEqual(caps, MODERN)


class DDLTests(unittest.TestCase):
    def test_old_base_tables(self):
        sql = create_table_sql("db", "tracks", OLD)
        self.assertTrue(sql.startswith("CREATE TABLE IF NOT EXISTS `db`.`tracks` (`id` String COMMENT 'stilgar', "))
        self.assertIn("`received_at` DateTime('UTC')", sql)
        self.assertIn("`sent_at` Nullable(DateTime('UTC'))", sql)
        self.assertIn("`event` String", sql)
        self.assertIn("`context_screen_width` Nullable(Int64)", sql)
        for col in ("context_locale", "context_timezone", "context_user_agent", "context_ip", "context_page_url",
                    "context_page_referrer", "user_id"):
            self.assertIn(f"`{col}` Nullable(String)", sql)
        self.assertTrue(sql.endswith("ENGINE = ReplacingMergeTree() PARTITION BY toDate(`received_at`) "
                                     "ORDER BY (`received_at`, `id`)"))
        self.assertNotIn(",)", sql.replace(" ", ""))
        self.assertNotIn("LowCardinality", sql)
        self.assertNotIn("DateTime64", sql)
        users = create_table_sql("db", "users", OLD)
        self.assertTrue(users.endswith("ENGINE = ReplacingMergeTree(`received_at`) ORDER BY (`id`)"))
        self.assertNotIn("SimpleAggregateFunction", users)
        self.assertNotIn("`user_id`", users)

    def test_modern_base_tables(self):
        sql = create_table_sql("db", "groups", MODERN)
        self.assertIn("`group_id` LowCardinality(String)", sql)
        self.assertIn("`sent_at` Nullable(DateTime64(3, 'UTC'))", sql)
        users = create_table_sql("db", "users", MODERN)
        self.assertIn("`anonymous_id` SimpleAggregateFunction(anyLast, Nullable(String))", users)
        self.assertIn("`id` String COMMENT", users)
        self.assertTrue(users.endswith("ENGINE = AggregatingMergeTree() PARTITION BY toDate(`received_at`) "
                                       "ORDER BY (`id`)"))

    def test_discards(self):
        for caps in (OLD, MODERN):
            sql = create_table_sql("db", "rudder_discards", caps)
            cols = re.findall(r"`(\w+)` ", sql.split("ENGINE")[0])
            self.assertEqual(cols[1:], ["table_name", "row_id", "column_name", "column_value", "received_at",
                                        "uuid_ts", "reason"])
            self.assertTrue(sql.endswith("ENGINE = ReplacingMergeTree(`uuid_ts`) PARTITION BY toDate(`received_at`) "
                                         "ORDER BY (`received_at`, `table_name`, `row_id`, `column_name`)"))

    def test_per_event_table(self):
        sql = create_table_sql("db", "order_completed", OLD, extra=[("price", "Nullable(Float64)")])
        self.assertIn("`event` String", sql)
        self.assertIn("`price` Nullable(Float64) COMMENT 'stilgar') ENGINE", sql)

    def test_alter(self):
        self.assertEqual(add_columns_sql("db", "t", [("a", "Nullable(Int64)")], OLD),
                         "ALTER TABLE `db`.`t` ADD COLUMN `a` Nullable(Int64), COMMENT COLUMN `a` 'stilgar'")
        self.assertEqual(add_columns_sql("db", "t", [("a", "Nullable(Int64)"), ("b", "Nullable(String)")], MODERN),
                         "ALTER TABLE `db`.`t` ADD COLUMN IF NOT EXISTS `a` Nullable(Int64) COMMENT 'stilgar', "
                         "ADD COLUMN IF NOT EXISTS `b` Nullable(String) COMMENT 'stilgar'")
        self.assertEqual(modify_column_sql("db", "t", "a", "Nullable(Float64)"),
                         "ALTER TABLE `db`.`t` MODIFY COLUMN `a` Nullable(Float64), COMMENT COLUMN `a` 'stilgar'")
        self.assertEqual(insert_header("db", "t", ("a", "b")),
                         "INSERT INTO `db`.`t` (`a`, `b`) FORMAT TabSeparated\n")


def tables(rows):
    return [r.table for r in rows]


class RowTests(unittest.TestCase):
    def build(self, *events):
        return build_rows(list(events), NOW)

    def test_track(self):
        ctx = {"app": {"name": "a", "namespace": "n"}, "screen": {"innerWidth": 5, "density": 2},
               "device": {"advertisingId": "ad"}, "locale": "fr", "userAgent": "UA", "ip": "1.2.3.0",
               "page": {"url": "http://x", "initial_referrer": "$direct"}, "traits": {"t": 1}}
        rows, discards = self.build(event("track", event="Order Completed", context=ctx,
                                          properties={"price": 1.5, "id": "x", "context_x": 1, "a b": 1,
                                                      "a_b": 2, "nested": {"k": [1]}, "none": None}))
        self.assertEqual(tables(rows), ["tracks", "order_completed"])
        t, e = rows[0].data, rows[1].data
        self.assertEqual(t["event"], "Order Completed")
        self.assertEqual(t["user_id"], "u1")
        self.assertEqual(t["context_app_name"], "a")
        self.assertEqual(t["context_app_namespace"], "n")
        self.assertEqual(t["context_screen_inner_width"], 5)
        self.assertEqual(t["context_device_advertising_id"], "ad")
        self.assertEqual((t["context_locale"], t["context_user_agent"], t["context_ip"]), ("fr", "UA", "1.2.3.0"))
        self.assertEqual(t["context_page_initial_referrer"], "$direct")
        self.assertNotIn("price", t)
        self.assertNotIn("context_traits_t", t)
        self.assertEqual(e["price"], 1.5)
        self.assertEqual(e["a_b"], 2)       # the verbatim key wins
        self.assertEqual(e["nested"], {"k": [1]})
        self.assertNotIn("none", e)
        self.assertEqual(e["id"], "m1")
        reasons = sorted((d.data["column_name"], d.data["reason"]) for d in discards)
        self.assertEqual(reasons, [("a_b", "duplicate column"), ("context_x", "reserved column"),
                                   ("id", "reserved column")])
        for d in discards:
            self.assertEqual(d.data["table_name"], "order_completed")
            self.assertEqual(d.data["row_id"], "m1")
            self.assertEqual(d.data["uuid_ts"], NOW)

    def test_track_without_name(self):
        rows, discards = self.build(event("track", event=None, properties={"a": 1}))
        self.assertEqual(tables(rows), ["tracks"])
        self.assertEqual(rows[0].data["event"], "")
        self.assertEqual(len(discards), 1)
        self.assertEqual(discards[0].data["column_name"], "")
        self.assertIn('"a":1', discards[0].data["column_value"])

    def test_properties_not_an_object(self):
        rows, discards = self.build(event("page", properties=[1, 2]))
        self.assertEqual(tables(rows), ["pages"])
        self.assertEqual(discards[0].data["reason"], "properties is not an object")
        self.assertEqual(discards[0].data["column_value"], "[1,2]")

    def test_identify(self):
        rows, discards = self.build(event("identify", context={"traits": {"email": "e", "id": 3}}))
        self.assertEqual(tables(rows), ["users", "identifies"])
        users, ident = rows[0].data, rows[1].data
        self.assertEqual(users["id"], "u1")
        self.assertEqual(rows[0].row_id, "u1")
        self.assertNotIn("user_id", users)
        self.assertEqual(ident["user_id"], "u1")
        self.assertEqual(ident["id"], "m1")
        self.assertEqual(ident["context_traits_email"], "e")
        self.assertEqual(ident["context_traits_id"], 3)
        self.assertEqual(discards, [])
        rows, _ = self.build(event("identify", userId=None), event("identify", userId=""))
        self.assertEqual(tables(rows), ["identifies", "identifies"])
        self.assertEqual([r.data["user_id"] for r in rows], ["", ""])

    def test_page_and_screen(self):
        rows, discards = self.build(
            event("page", name="Home", properties={"path": "/p", "name": "Other", "url": "u", "title": 3}),
            event("screen", name=None, properties={"name": "Main", "path": "/s"}))
        page, screen = rows[0].data, rows[1].data
        self.assertEqual((page["name"], page["path"], page["url"], page["title"]), ("Home", "/p", "u", 3))
        self.assertEqual((screen["name"], screen["path"]), ("Main", "/s"))
        self.assertIsNone(screen["category"])
        self.assertEqual([(d.data["column_name"], d.data["reason"]) for d in discards], [("name", "reserved column")])

    def test_group_alias(self):
        rows, _ = self.build(event("group", groupId="g", traits={"plan": "pro"}),
                             event("alias", previousId=None))
        self.assertEqual(tables(rows), ["groups", "aliases"])
        self.assertEqual(rows[0].data["group_id"], "g")
        self.assertEqual(rows[0].data["context_traits_plan"], "pro")
        self.assertEqual(rows[1].data["previous_id"], "")

    def test_unicode_event_name(self):
        rows, _ = self.build(event("track", event="Покупка"))
        self.assertEqual(rows[1].table, "track_" + short_hash("Покупка", 12))
        self.assertEqual(rows[1].data["event"], "Покупка")


class EvolutionTests(unittest.TestCase):
    def schema(self, table, extra=(), caps=OLD):
        cols = [(c, t, "stilgar") for c, t in standard_columns("event" if table not in (
            "tracks", "pages") else table, caps).items()]
        cols += [(c, t, "stilgar") for c, t in extra]
        return TableSchema.from_rows("db", table, cols, "ReplacingMergeTree", caps)

    def rows(self, *props):
        return build_rows([event("track", event="ev", messageId=f"m{i}", properties=p)
                           for i, p in enumerate(props)], NOW)[0][1::2]

    def test_create_with_inferred_columns(self):
        rows = self.rows({"a": True, "b": 1}, {"a": 2, "c": "2024-01-02T03:04:05Z"})
        ch = plan_changes(None, "ev", rows, OLD)
        self.assertTrue(ch.create)
        self.assertEqual(ch.add, {"a": "Nullable(Int64)", "b": "Nullable(Int64)", "c": "Nullable(DateTime('UTC'))"})
        sql = changes_sql(ch, "db", OLD)
        self.assertEqual(len(sql), 1)
        self.assertIn("`c` Nullable(DateTime('UTC')) COMMENT 'stilgar') ENGINE", sql[0][0])

    def test_add_and_widen(self):
        schema = self.schema("ev", [("a", "Nullable(Int64)"), ("b", "Nullable(String)")])
        ch = plan_changes(schema, "ev", self.rows({"a": 1.5, "b": 1, "n": False}), OLD)
        self.assertFalse(ch.create)
        self.assertEqual(ch.add, {"n": "Nullable(UInt8)"})
        self.assertEqual(ch.modify, {"a": "Nullable(Float64)"})
        self.assertEqual([s for s, _ in changes_sql(ch, "db", OLD)], [
            "ALTER TABLE `db`.`ev` ADD COLUMN `n` Nullable(UInt8), COMMENT COLUMN `n` 'stilgar'",
            "ALTER TABLE `db`.`ev` MODIFY COLUMN `a` Nullable(Float64), COMMENT COLUMN `a` 'stilgar'"])
        self.assertTrue(plan_changes(schema, "ev", self.rows({"a": 1, "b": "x"}), OLD).empty())

    def test_limits(self):
        schema = self.schema("ev", [("a", "Nullable(Int64)")])
        rows = self.rows({"x": 1, "y": 1, "z": 1}, {"x": 1}, {"q": 1})
        ch = plan_changes(schema, "ev", rows, OLD, max_expansion=2)
        self.assertEqual([r.row_id for r, _ in ch.rejected], ["m0"])
        self.assertIn("max_table_expansion", ch.rejected[0][1])
        self.assertEqual(list(ch.add), ["x", "q"])
        ch = plan_changes(schema, "ev", rows, OLD, max_width=2)
        self.assertEqual([r.row_id for r, _ in ch.rejected], ["m0", "m2"])
        self.assertEqual(list(ch.add), ["x"])
        self.assertIn("max_table_width", ch.rejected[1][1])

    def test_expansion_counts_properties_and_context_columns_apart(self):
        # the original's test: 41 properties under limit 40 with a JS SDK context
        # (context.app.namespace is a context column) is "41 new columns", not 42
        js = {"app": {"name": "JS", "namespace": "com.rudderlabs.javascript", "version": "2"}}
        rows = build_rows([event("track", event="ev", context=js, properties={f"p{i}": i for i in range(41)})],
                          NOW)[0][1:]
        ch = plan_changes(None, "ev", rows, OLD, max_expansion=40)
        self.assertEqual(ch.rejected[0][1], "max_table_expansion exceeded: 41 new columns, limit 40")
        rows = build_rows([event("track", event="ev", context=js, properties={f"p{i}": i for i in range(40)})],
                          NOW)[0][1:]
        self.assertEqual(plan_changes(None, "ev", rows, OLD, max_expansion=40).rejected, [])
        # context columns are bounded too (500 context.app.* keys took tracks to 550 columns)
        flood = {"app": {f"k{i}": 1 for i in range(41)}}
        rows = build_rows([event("track", event="ev", context=flood)], NOW)[0][:1]
        ch = plan_changes(self.schema("tracks"), "tracks", rows, OLD, max_expansion=40)
        self.assertEqual(ch.rejected[0][1], "max_table_expansion exceeded: 41 new context columns, limit 40")
        ch = plan_changes(self.schema("tracks", [("context_app_old", "Nullable(String)")]), "tracks",
                          rows[:1], OLD, max_width=41)
        self.assertIn("max_table_width exceeded: table would have 42 columns, limit 41", ch.rejected[0][1])

    def test_standard_columns_do_not_count(self):
        # an operator dropped a standard column: it comes back, outside the limits
        schema = self.schema("ev")
        del schema.columns["channel"]
        schema = TableSchema("db", "ev", schema.columns, "ReplacingMergeTree", OLD)
        ch = plan_changes(schema, "ev", self.rows({}), OLD, max_expansion=1, max_width=1)
        self.assertEqual(ch.add, {"channel": "Nullable(String)"})
        self.assertEqual(ch.rejected, [])

    def test_users_aggregating(self):
        rows = build_rows([event("identify", context={"traits": {"n": 1}})], NOW)[0][:1]
        schema = TableSchema.from_rows("db", "users", [(c, t, "stilgar") for c, t in
                                                       standard_columns("users", MODERN).items()],
                                       "AggregatingMergeTree", MODERN)
        ch = plan_changes(schema, "users", rows, MODERN)
        self.assertEqual(ch.add, {"context_traits_n": "SimpleAggregateFunction(anyLast, Nullable(Int64))"})
        self.assertTrue(schema.valid)

    def test_validity(self):
        s = TableSchema.from_rows("db", "ev", [("id", "UInt64", ""), ("received_at", "DateTime", "")], "", OLD)
        self.assertFalse(s.valid)
        s = TableSchema.from_rows("db", "ev", [("id", "String", ""), ("received_at", "DateTime", "")], "", OLD)
        self.assertTrue(s.valid)
        plan = s.plan(("received_at", "id"))
        self.assertEqual(plan.columns, ("id", "received_at"))
        self.assertIsNone(s.plan(("id", "nope")))

    def test_plans_keyed_by_column_set_and_bounded(self):
        import itertools
        from stilgar.destinations.clickhouse.schema import PlanBudget
        cols = [(f"c{i}", "Nullable(String)", "stilgar") for i in range(6)]
        budget = PlanBudget(max_bytes=20_000)
        s = TableSchema.from_rows("db", "ev", [("id", "String", ""), ("received_at", "DateTime", "")] + cols,
                                  "", OLD, budget)
        names = ["id", "received_at"] + [c for c, _, _ in cols]
        plans = {id(s.plan(p)) for p in itertools.permutations(names)}
        self.assertEqual(len(plans), 1)               # 40320 orderings, one plan
        self.assertEqual(len(s._plans), 1)
        # every subset is a plan of its own, but their memory stays within the budget
        for n in range(1, len(names) + 1):
            for combo in itertools.combinations(names, n):
                self.assertEqual(s.plan(reversed(combo)).columns, tuple(sorted(combo)))
        self.assertLessEqual(budget.bytes, 20_000)
        self.assertLess(len(s._plans), 255)


class PlanLineTests(unittest.TestCase):
    """Plan.line's fast paths (one escaping check for the strings, the time memo)
    give exactly the encoders' text, or None exactly when a value does not fit."""

    TYPES = [("s1", "String", ""), ("s2", "Nullable(String)", "stilgar"), ("lc", "LowCardinality(String)", ""),
             ("d1", "DateTime('UTC')", ""), ("d2", "Nullable(DateTime('UTC'))", "stilgar"),
             ("d3", "Nullable(DateTime64(3, 'UTC'))", "stilgar"), ("i", "Nullable(Int64)", "stilgar"),
             ("f", "Nullable(Float64)", "stilgar"), ("b", "Nullable(UInt8)", "stilgar"),
             ("id", "String", ""), ("received_at", "DateTime('UTC')", "")]
    VALUES = st.one_of(
        st.text(max_size=8), st.sampled_from(["", "a\\b", "t\tab", "x\ny", "\x00", "2024-05-06T07:08:09.123456Z",
                                              "2024-05-06T07:08:09Z", "1800-01-01T00:00:00.000000Z"]),
        st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.floats(),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers(), max_size=2))

    @hsettings(max_examples=400, deadline=None)
    @given(st.dictionaries(st.sampled_from([c for c, _, _ in TYPES]), VALUES, min_size=1))
    @example({"s1": "a\\b", "d1": "2024-05-06T07:08:09.123456Z", "i": 3})
    @example({"s2": None, "d2": "", "d3": "2024-05-06T07:08:09.123456Z", "b": True})
    @example({"s1": None, "d1": None, "lc": 5})
    @example({"d1": {"not": "a time"}, "f": 1.5})
    def test_line_is_the_encoders_text(self, data):
        schema = TableSchema.from_rows("db", "ev", self.TYPES, "", OLD)
        plan = schema.plan(data)
        fields = plan.fields(data)
        expected = None if None in fields else "\t".join(fields) + "\n"
        self.assertEqual(plan.line(data), expected)
        self.assertEqual(plan.line(data), expected)      # the memos filled by the first call change nothing
        self.assertEqual(sorted(plan.columns), sorted(data))


class CompositeLineTests(unittest.TestCase):
    """A per-event row's line built after its tracks row's line holds, column
    for column, what its own plan would have encoded; a column whose type
    differs between the two tables means no composite."""

    BASE = [("s1", "String", ""), ("d1", "DateTime('UTC')", ""), ("i", "Nullable(Int64)", "stilgar"),
            ("id", "String", ""), ("received_at", "DateTime('UTC')", "")]
    OWN = [("p", "Nullable(String)", "stilgar"), ("q", "Nullable(Float64)", "stilgar"),
           ("t", "Nullable(DateTime('UTC'))", "stilgar")]

    @hsettings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(["s1", "d1", "i"]), PlanLineTests.VALUES),
           st.dictionaries(st.sampled_from(["p", "q", "t"]), PlanLineTests.VALUES))
    @example({"s1": "a\tb"}, {"p": "x\\y", "q": 1.5})
    @example({}, {})
    def test_fields_are_the_plan_fields(self, base, own):
        base = {"id": "m1", "received_at": "2024-05-06T07:08:09.123456Z", **base}
        data = {**base, **own}
        tracks = TableSchema.from_rows("db", "tracks", self.BASE, "", OLD)
        per = TableSchema.from_rows("db", "per", self.BASE + self.OWN, "", OLD)
        base_plan = tracks.plan(base)
        base_line = base_plan.line(base)
        if base_line is None:
            return
        comp = per.composite(data, base_plan)
        self.assertIsNotNone(comp)
        self.assertEqual(sorted(comp.columns), sorted(data))
        self.assertTrue(comp.header.startswith("INSERT INTO `db`.`per` (`"))
        line = comp.line_after(base_line, data)
        fields = per.plan(data).fields(data)
        if None in fields:
            self.assertIsNone(line)
            return
        expected = dict(zip(per.plan(data).columns, fields))
        self.assertEqual(dict(zip(comp.columns, line[:-1].split("\t"))), expected)

    def test_composites_are_bounded(self):
        import itertools
        from stilgar.destinations.clickhouse.schema import PlanBudget
        orders = PlanBudget(max_bytes=50_000)
        tracks = TableSchema.from_rows("db", "tracks", self.BASE, "", OLD)
        per = TableSchema.from_rows("db", "per", self.BASE + self.OWN, "", OLD, order_budget=orders)
        base = {"id": "m1", "received_at": "2024-05-06T07:08:09.123456Z", "s1": "x"}
        base_plan = tracks.plan(base)
        for order in itertools.permutations(["p", "q", "t", "s1", "id", "received_at"]):
            comp = per.composite(order, base_plan)
            self.assertEqual(comp.columns[:3], base_plan.columns)
        self.assertLessEqual(orders.bytes, 50_000)
        self.assertLess(len(per._composites), 720)

    def test_another_type_means_no_composite(self):
        base = {"id": "m1", "received_at": "2024-05-06T07:08:09.123456Z", "i": 3}
        tracks = TableSchema.from_rows("db", "tracks", self.BASE, "", OLD)
        wider = [("i", "Nullable(Float64)", "stilgar") if c == "i" else (c, t, k) for c, t, k in self.BASE]
        per = TableSchema.from_rows("db", "per", wider + self.OWN, "", OLD)
        self.assertIsNone(per.composite({**base, "p": "x"}, tracks.plan(base)))
        missing = TableSchema.from_rows("db", "per", self.BASE, "", OLD)
        self.assertIsNone(missing.composite({**base, "p": "x"}, tracks.plan(base)))


class EscapeCheckTests(unittest.TestCase):
    @hsettings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("ab \\\t\n\r\x00\x08\x0c\x0b\x7f\u2028é")))
    def test_needs_escape_is_whether_escape_changes_it(self, text):
        self.assertEqual(needs_escape(text), escape(text) != text)
        self.assertEqual(needs_escape(text), any(ord(c) in ESCAPES for c in text))

    def test_float_text(self):
        self.assertEqual([float_text(v) for v in (1.5, -0.0, 1e300, float("inf"), float("-inf"), float("nan"))],
                         ["1.5", "-0.0", "1e+300", "inf", "-inf", "nan"])
        self.assertEqual(float_text(-float("nan")), "nan")

    @hsettings(max_examples=300, deadline=None)
    @given(st.floats())
    def test_float_columns_write_float_text(self, value):
        """A Float64 column's encoder writes exactly ``float_text``."""
        self.assertEqual(Column.from_system("c", "Nullable(Float64)", "stilgar").encode(value), float_text(value))
