"""The rows built for random events are exactly those of the code before the hot-path work
(tests/clickhouse_rows_oracle.py), and so are their TSV lines: the bodies sent never change."""

from hypothesis import example, given, settings as hsettings, strategies as st
from twisted.trial import unittest

from stilgar.destinations.clickhouse import rows as rows_module
from stilgar.destinations.clickhouse.capabilities import OLD
from stilgar.destinations.clickhouse.rows import build_rows
from stilgar.destinations.clickhouse.schema import CONTEXT_SECTIONS, TableSchema
from stilgar.destinations.clickhouse.coltypes import infer_kind, kind_type

from . import clickhouse_rows_oracle as oracle

NOW = "2024-05-06T07:08:10.000000Z"
KEYS = st.one_of(st.sampled_from(["name", "category", "path", "id", "user_id", "event", "context_x", "a", "b",
                                  "advertisingId", "innerWidth", "width", "ключ", "1st", "a-b", "x" * 70,
                                  "locale", "ip", "bot", "traits", "library", "os"]),
                 st.text(max_size=4))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=5),
                    st.sampled_from(["2024-05-06T07:08:09.123456Z", "a\tb", "a\\b", ""]))
VALUES = st.one_of(SCALARS, st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                 st.integers(), max_size=2))
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=6)
SECTION = st.one_of(OBJECTS, SCALARS)
CONTEXT_KEYS = list(CONTEXT_SECTIONS) + ["locale", "timezone", "userAgent", "ip", "sessionId", "sessionStart",
                                         "bot", "traits", "other"]
CONTEXTS = st.one_of(st.dictionaries(st.sampled_from(CONTEXT_KEYS), st.one_of(SECTION, OBJECTS), max_size=8),
                     SCALARS)
EVENTS = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "other"]),
     "messageId": st.sampled_from(["m1", "m2"]), "receivedAt": st.just("2024-05-06T07:08:09.123456Z")},
    optional={"anonymousId": SCALARS, "userId": SCALARS, "channel": SCALARS, "sentAt": SCALARS,
              "originalTimestamp": SCALARS, "timestamp": SCALARS, "context": CONTEXTS,
              "event": st.one_of(SCALARS, st.sampled_from(["Order Completed", "tracks", "Покупка"])),
              "properties": st.one_of(OBJECTS, SCALARS), "traits": st.one_of(OBJECTS, SCALARS),
              "name": SCALARS, "category": SCALARS, "groupId": SCALARS, "previousId": SCALARS})


def described(rows):
    return [(r.table, list(r.data.items()), r.row_id, r.received_at) for r in rows]


def line_of(row):
    """The TSV line of ``row`` in a table holding its columns (types inferred as a new column's)."""
    types = [(c, f"Nullable({kind_type(infer_kind(v) or 'S', OLD)})", "stilgar") for c, v in row.data.items()]
    schema = TableSchema.from_rows("db", row.table, types, "", OLD)
    return schema.plan(row.data).line(row.data)


class SameRowsTests(unittest.TestCase):
    @hsettings(max_examples=600, deadline=None)
    @given(st.lists(EVENTS, min_size=1, max_size=3))
    @example([{"type": "track", "messageId": "m", "receivedAt": "2024-05-06T07:08:09.123456Z", "event": "E",
               "context": {"library": {"name": "x"}, "ip": "1.2.3.4", "bot": True, "os": 5},
               "properties": {"name": "n", "context_app": 1, "ключ": 2}}])
    @example([{"type": "identify", "messageId": "m", "receivedAt": "2024-05-06T07:08:09.123456Z", "userId": "u",
               "context": {"traits": {"a": 1}, "app": {"name": "a", "namespace": "n"}, "bot": "yes"}}])
    def test_rows_and_lines_are_the_old_codes(self, events):
        rows, discards = build_rows(events, NOW)
        old_rows, old_discards = oracle.build_rows(events, NOW)
        self.assertEqual(described(rows), described(old_rows))
        self.assertEqual(described(discards), described(old_discards))
        for new, old in zip(rows + discards, old_rows + old_discards):
            self.assertEqual(line_of(new), line_of(old))

    def test_layout_memory_is_bounded(self):
        rows_module._LAYOUTS.clear()
        for i in range(rows_module._LAYOUTS_MAX + 10):
            build_rows([{"type": "track", "messageId": "m", "receivedAt": NOW, "event": "E",
                         "context": {f"k{i}": 1, "ip": "x"}}], NOW)
        self.assertLessEqual(len(rows_module._LAYOUTS), rows_module._LAYOUTS_MAX)
        wide = {f"k{i}": 1 for i in range(rows_module._LAYOUT_KEYS_MAX + 1)}
        rows_module._LAYOUTS.clear()
        build_rows([{"type": "track", "messageId": "m", "receivedAt": NOW, "event": "E", "context": wide}], NOW)
        self.assertEqual(rows_module._LAYOUTS, {})


class LayoutMemoTests(unittest.TestCase):
    """The memo of context layouts is bounded in entries and in bytes (the keys are the client's)."""

    def setUp(self):
        rows_module._LAYOUTS.clear()

    def test_a_known_layout_is_remembered(self):
        rows_module._context_layout({"locale": "fr", "page": {}})
        self.assertIn(("locale", "page"), rows_module._LAYOUTS)

    def test_long_key_names_are_not_remembered(self):
        ctx = {"k" * 600: 1, "j" * 600: 2, "locale": "fr"}
        self.assertEqual(rows_module._context_layout(ctx)[0], rows_module._context_layout({"locale": "x"})[0])
        self.assertNotIn(tuple(ctx), rows_module._LAYOUTS)

    def test_the_memo_is_cleared_at_its_bound(self):
        for i in range(rows_module._LAYOUTS_MAX + 10):
            rows_module._context_layout({f"k{i}": 1})
        self.assertLessEqual(len(rows_module._LAYOUTS), rows_module._LAYOUTS_MAX)
