"""Compiled encoders (stilgar/destinations/clickhouse/compiled.py): the
lines they make are the general way's, byte for byte, and the general way
takes over whenever an event is not exactly its shape."""

import json

from hypothesis import given, settings as hsettings, strategies as st

from stilgar.destinations.clickhouse.compiled import CompiledRow
from stilgar.destinations.clickhouse.naming import DISCARDS_TABLE
from stilgar.destinations.clickhouse.rows import Row, build_event_rows, build_rows

from .test_clickhouse_destination import DestinationTestCase
from .test_clickhouse_units import event

TEXTS = st.text(alphabet=st.sampled_from("ab \\\t\n\x00é2024-05-06T07:08:09.Z"), max_size=8)
VALUES = st.one_of(
    st.none(), TEXTS, st.booleans(), st.integers(-2**70, 2**70), st.floats(),
    st.sampled_from(["2024-05-06T07:08:09.123456Z", "1969-12-31T23:59:59.999999Z", "", "2024-05-06T07:08:09Z"]),
    st.dictionaries(st.sampled_from(["k", "K"]), st.integers(), max_size=2), st.lists(st.integers(), max_size=2))
# a few shapes, so that they repeat (and get compiled) with other values
CONTEXTS = st.sampled_from([
    None, {}, {"library": {"name": "analytics-python", "version": "2.1.9"}, "ip": "203.0.113.9"},
    {"library": {"name": 1, "version": None}}, {"locale": "fr", "os": {"name": "x"}}, {"library": "not an object"},
    {"bot": True, "ip": "198.51.100.1"}, {"page": {"path": "/", "Referrer": "x", "tab url": "y"}},
    {"geo": {"city": "Lyon", "unknown": 1}}, {"traits": {"a": 1}, "ip": None}])
PROPERTY_KEYS = st.sampled_from(["s", "n", "when", "id", "event", "context_x", "Mixed", "with space", "ключ",
                                 "name", "path", "category"])
TRAITS = st.one_of(st.none(), st.just([1]), st.dictionaries(PROPERTY_KEYS, VALUES, max_size=3))


@st.composite
def any_event(draw, i):
    """A track, page, screen or identify event, in a few shapes."""
    etype = draw(st.sampled_from(["track", "track", "page", "screen", "identify"]))
    props = draw(st.one_of(st.none(), st.just("a string"),
                           st.dictionaries(PROPERTY_KEYS, VALUES, max_size=4)))
    ctx = draw(CONTEXTS)
    if etype == "identify" and draw(st.booleans()):
        ctx = dict(ctx or {}, traits=draw(TRAITS))
    e = event(etype, messageId=f"m{i}", context=ctx, properties=props,
              userId=draw(st.sampled_from(["u1", None, "", 7])),
              anonymousId=draw(st.sampled_from(["a1", None, "back\\slash", "tab\there", "\\N"])),
              channel=draw(st.sampled_from(["web", None])),
              timestamp=draw(st.sampled_from(["2024-05-06T07:08:09.123456Z", "2024-05-06T07:08:09.923456Z",
                                               "2024-05-06T07:08:10.000001Z"])))
    if etype == "track":
        e["event"] = draw(st.sampled_from(["Order", "Order", "Signup", "", 5]))
    elif etype in ("page", "screen"):
        for key in ("name", "category"):
            if draw(st.booleans()):
                e[key] = draw(st.sampled_from(["Home", "Home", None, "", 3]))
    if props is None and draw(st.booleans()):
        del e["properties"]
    return e


@st.composite
def writes(draw):
    events = []
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        batch = [draw(any_event(len(events) + i)) for i in range(draw(st.integers(1, 8)))]
        # the same shapes again, other values: the compiled way's turn
        again = draw(st.sampled_from([{}, {"userId": None}, {"anonymousId": "x\\y"}, {"userId": 8},
                                      {"anonymousId": None, "userId": None}, {"name": "Other"}, {"name": None}]))
        batch += [dict(e, messageId=e["messageId"] + "b", timestamp="2024-05-06T07:08:11.500000Z", **again)
                  for e in batch]
        events += batch
        batches.append(batch)
    return batches


def _built(row):
    """Whether ``row``'s data dict exists (without building it)."""
    try:
        Row.data.__get__(row, Row)
    except AttributeError:
        return False
    return True


class CompiledTests(DestinationTestCase):
    def stored(self, batches, compiled):
        dest = self.make(max_parallel_queries=1)
        dest.start()
        if not compiled:
            dest._router._encoders.rows = build_event_rows
        for b in batches:
            dest.write([dict(e) for e in b])
            self.clock.advance(0)
        self.flush()
        return dest, self.ch

    @hsettings(max_examples=150, deadline=None)
    @given(writes())
    def test_lines_are_the_general_ways(self, batches):
        """Whatever the events, the compiled way stores exactly what the
        general way stores: the same rows, columns and values, in the same
        order, and the same discards."""
        _, general = self.stored(batches, compiled=False)
        _, compiled = self.stored(batches, compiled=True)
        self.assertEqual(compiled.tables, general.tables)
        self.assertEqual(compiled.inserts, general.inserts)
        for table, rows in general.rows.items():
            if table == DISCARDS_TABLE:
                for r in rows + compiled.rows[table]:
                    r.pop("uuid_ts")
            self.assertEqual(compiled.rows.get(table), rows, table)

    def test_a_shape_seen_before_is_compiled(self):
        """The second event of a shape takes the compiled way: its rows come
        encoded, and their data is not built unless asked for."""
        dest = self.make()
        dest.start()
        shape = dict(context={"library": {"name": "analytics-node", "version": "3"}, "ip": "192.0.2.1"},
                     event="Order Completed", properties={"total": 10.5, "currency": "EUR", "items": 2})
        dest.write([event("track", messageId="m1", **shape)])     # creates order_completed
        self.flush()
        dest.write([event("track", messageId="m2", **shape)])     # compiles against it
        self.flush()
        rows, discards = [], []
        dest._router._encoders.rows(event("track", messageId="m3", **shape), rows, discards, "")
        self.assertEqual([type(r) for r in rows], [CompiledRow, CompiledRow])
        self.assertEqual([r.table for r in rows], ["tracks", "order_completed"])
        self.assertEqual([_built(r) for r in rows], [False, False])
        general, _ = build_rows([event("track", messageId="m3", **shape)], "")
        self.assertEqual([r.data for r in rows], [r.data for r in general])
        self.assertEqual([_built(r) for r in rows], [True, True])

    def test_every_slot_is_set(self):
        """The generated code sets a compiled row's slots itself: each
        one, as Row.__init__ would."""
        dest = self.make()
        dest.start()
        for i in (1, 2):
            dest.write([event("track", messageId=f"m{i}", event="E", properties={"n": 1})])
            self.flush()
        rows, discards = [], []
        dest._router._encoders.rows(event("track", messageId="m3", event="E", properties={"n": 2}), rows, discards, "")
        general, _ = build_rows([event("track", messageId="m3", event="E", properties={"n": 2})], "")
        self.assertEqual([type(r) for r in rows], [CompiledRow, CompiledRow])
        for r, g in zip(rows, general):
            for slot in Row.__slots__:
                if slot not in ("data", "plan", "line", "precoded"):
                    self.assertEqual(getattr(r, slot) is rows[0], getattr(g, slot) is general[0], slot)
                    if slot != "base":
                        self.assertEqual(getattr(r, slot), getattr(g, slot), slot)
        self.assertEqual((rows[0].plan, rows[0].line), rows[0].precoded[:2])
        self.assertEqual((rows[1].plan, rows[1].line), (None, None))
        self.assertEqual([(r.event, r.index) for r in rows], [(rows[0].event, 0), (rows[0].event, 1)])

    def test_shapes_of_one_name_take_turns(self):
        """Events of one name in shapes one after the other, a shape's keys
        a subset of the next one's: each shape's encoder takes its own
        events (the last shape of a name is tried first, and must see that
        an event is not its shape), and every value is stored."""
        dest = self.make()
        dest.start()
        lib = {"name": "analytics-node", "version": "3"}
        shapes = [({}, {"n": 1, "s": "x"}), ({}, {"n": 1, "t": "y"}), ({}, {"n": 1}), ({"ip": "192.0.2.1"}, {"n": 1}),
                  ({}, {"n": 1}), ({}, {"n": 1, "s": "x", "t": "y"}),
                  ({"library": {"name": "analytics-node"}}, {"n": 1}), ({"library": lib}, {"n": 1}),
                  ({"library": lib, "locale": "fr"}, {"n": 1}), (None, {"n": 1})]

        def ev(mid, ctx, props):
            return event("track", messageId=mid, event="E", context=ctx and dict(ctx), properties=dict(props))

        for i, (ctx, props) in enumerate(shapes * 2):        # learnt, then each one's encoder in turn
            dest.write([ev(f"w{i}", ctx, props)])
            self.flush()
        for i, (ctx, props) in enumerate(shapes * 2):
            rows, discards = [], []
            dest._router._encoders.rows(ev(f"m{i}", ctx, props), rows, discards, "")
            self.assertEqual([type(r) for r in rows], [CompiledRow, CompiledRow], (ctx, props))
            dest.write([ev(f"m{i}", ctx, props)])
            self.flush()
        columns = ("s", "t", "context_ip", "context_library_name", "context_library_version", "context_locale")
        stored = {r["id"]: tuple(r.get(c, "\\N") for c in columns) for r in self.ch.rows["e"]}   # unlisted: NULL
        for i, (ctx, props) in enumerate(shapes * 2):
            general, _ = build_rows([ev(f"m{i}", ctx, props)], "")
            self.assertEqual(stored[f"m{i}"], tuple(str(general[1].data.get(c, "\\N")) for c in columns))

    def test_other_values_take_the_general_way(self):
        """A null where the shape had a value, a section that is not an
        object, a value that does not fit: the event is built the general way."""
        dest = self.make()
        dest.start()
        ctx = {"library": {"name": "analytics-node", "version": "3"}}
        dest.write([event("track", messageId="m1", event="E", context=ctx, properties={"n": 1})])
        self.flush()
        for other in (dict(context=ctx, properties={"n": None}),
                      dict(context={"library": {"name": None, "version": "3"}}, properties={"n": 1}),
                      dict(context={"library": ["name", "version"]}, properties={"n": 1}),
                      dict(context={"library": {"version": "3", "name": "x"}}, properties={"n": 1}),
                      dict(context=ctx, properties={"n": "not a number"})):
            rows, discards = [], []
            dest._router._encoders.rows(event("track", messageId="m2", event="E", **other), rows, discards, "")
            self.assertFalse(any(isinstance(r, CompiledRow) for r in rows), other)

    def test_a_schema_change_recompiles(self):
        """Compiled against one schema of a table, an encoder is not used
        once the table was read again (a column added or widened)."""
        dest = self.make()
        dest.start()
        shape = dict(event="E", properties={"n": 1})
        dest.write([event("track", messageId="m1", **shape)])
        self.flush()
        dest.write([event("track", messageId="m2", event="E", properties={"n": 1.5})])   # widens e.n
        self.flush()
        self.assertEqual(self.ch.tables["e"]["n"], "Nullable(Float64)")
        for i in range(3, 6):
            dest.write([event("track", messageId=f"m{i}", **shape)])
            self.flush()
        self.assertEqual([r["n"] for r in self.ch.rows["e"]], ["1", "1.5", "1", "1", "1"])
        rows, discards = [], []
        dest._router._encoders.rows(event("track", messageId="m5", **shape), rows, discards, "")
        self.assertEqual([type(r) for r in rows], [CompiledRow, CompiledRow])

    def test_a_refused_row_is_discarded_whole_with_its_data(self):
        """A compiled row refused by the server builds its data from its
        event: the whole-row discard holds the general way's row."""
        dest = self.make()
        dest.start()
        shape = dict(event="E", properties={"s": "fine"})
        for i in (1, 2):
            dest.write([event("track", messageId=f"m{i}", **shape)])
            self.flush()
        poisoned = event("track", messageId="m3", event="E", properties={"s": "POISON"})
        rows, discards = [], []
        dest._router._encoders.rows(dict(poisoned), rows, discards, "")
        self.assertEqual([type(r) for r in rows], [CompiledRow, CompiledRow])
        self.ch.poison = "POISON"
        d = dest.write([poisoned])
        self.flush()
        self.assertTrue(self.fired(d))
        [discard] = self.ch.rows[DISCARDS_TABLE]        # the per-event row; its tracks row holds no "s"
        self.assertEqual(discard["table_name"], "e")
        self.assertIn("refused by ClickHouse", discard["reason"])
        general, _ = build_rows([poisoned], "")
        self.assertEqual(json.loads(discard["column_value"]), general[1].data)

    def compiled_rows(self, dest, ev):
        rows, discards = [], []
        dest._router._encoders.rows(dict(ev), rows, discards, "")
        return rows, discards

    def test_pages_screens_and_identifies_are_compiled(self):
        """A page (its name in the event and in its properties, as the
        browser SDK sends it), a screen, an identify with a user (users and
        identifies rows) and one without: each shape's second event comes
        compiled, with the general way's rows."""
        dest = self.make()
        dest.start()
        ctx = {"library": {"name": "RudderLabs JavaScript SDK", "version": "3.34.1"}, "locale": "fr-FR"}
        shapes = [dict(type="page", name="Home", category="", context=ctx,
                       properties={"name": "Home", "category": "", "path": "/", "url": "https://x.example/",
                                   "tab_url": "https://x.example/"}),
                  dict(type="screen", name="Settings", properties={"name": "Settings", "depth": 2}),
                  dict(type="identify", context=dict(ctx, traits={"email": "a@example.com", "logins": 3})),
                  dict(type="identify", userId="", context=dict(ctx, traits={"plan": "free"}))]
        for i, shape in enumerate(shapes):
            ev = dict(shape)
            etype = ev.pop("type")
            for j in (1, 2):
                dest.write([event(etype, messageId=f"w{i}{j}", **ev)])
                self.flush()
            rows, discards = self.compiled_rows(dest, event(etype, messageId=f"m{i}", **ev))
            general, general_discards = build_rows([event(etype, messageId=f"m{i}", **ev)], "")
            self.assertEqual(([type(r) for r in rows], discards), ([CompiledRow] * len(general), []), shape)
            self.assertEqual([(r.table, r.row_id, r.data) for r in rows],
                             [(r.table, r.row_id, r.data) for r in general], shape)
        self.assertEqual([len(self.compiled_rows(dest, event("identify", messageId="n", userId=uid,
                                                            context=dict(ctx, traits=traits)))[0])
                          for uid, traits in (("u2", {"email": "b@example.com", "logins": 4}), ("", {"plan": "pro"}))],
                         [2, 1])

    def test_a_page_whose_names_differ_takes_the_general_way(self):
        """A page's ``properties.name`` fills its name column unless the
        event's own name differs: then it is a discard, and the compiled
        page encoder leaves the event to the general way (a null name: the
        property's)."""
        dest = self.make()
        dest.start()
        for i in (1, 2):
            dest.write([event("page", messageId=f"w{i}", name="Home", properties={"name": "Home"})])
            self.flush()
        rows, discards = self.compiled_rows(dest, event("page", messageId="m1", name="Home", properties={"name": "Home"}))
        self.assertEqual([type(r) for r in rows], [CompiledRow])
        rows, discards = self.compiled_rows(dest, event("page", messageId="m2", name="Home", properties={"name": "Away"}))
        self.assertEqual([type(r) for r in rows], [Row])
        self.assertEqual([(d.data["column_name"], d.data["reason"]) for d in discards], [("name", "reserved column")])
        rows, discards = self.compiled_rows(dest, event("page", messageId="m3", name=None, properties={"name": "Away"}))
        self.assertEqual(([type(r) for r in rows], discards), ([CompiledRow], []))
        self.assertEqual(rows[0].data["name"], "Away")

    def test_a_schema_change_recompiles_an_identify(self):
        """An identify's encoder checks both its tables' schemas: once a
        trait's column is widened (in users and identifies), the shape is
        compiled again against the new schemas, and every value is stored."""
        dest = self.make()
        dest.start()

        def ev(mid, n):
            return event("identify", messageId=mid, context={"traits": {"n": n, "plan": "free"}})

        for i, n in enumerate([1, 2, 2.5, 3, 4]):
            dest.write([ev(f"m{i}", n)])
            self.flush()
        self.assertEqual(self.ch.tables["identifies"]["context_traits_n"], "Nullable(Float64)")
        self.assertEqual(self.ch.tables["users"]["context_traits_n"], "Nullable(Float64)")
        self.assertEqual([r["context_traits_n"] for r in self.ch.rows["identifies"]], ["1", "2", "2.5", "3", "4"])
        self.assertEqual(len(self.ch.rows["users"]), 5)
        rows, discards = self.compiled_rows(dest, ev("m9", 5))
        self.assertEqual(([type(r) for r in rows], [r.table for r in rows], discards),
                         ([CompiledRow, CompiledRow], ["users", "identifies"], []))
        # the encoder tried first is the one compiled against the widened tables, not the first one
        shape = dest._router._encoders._recent[("identify",)]
        tables = dest._router.schema.tables
        self.assertEqual(shape.schemas, (("users", tables["users"]), ("identifies", tables["identifies"])))
