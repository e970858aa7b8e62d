"""The schema: standard columns of every table, DDL text, and the cached view of
a table (``system.columns``) with its per-column-set insert plans.

Pure: DDL text depends only on the capabilities given.
"""

import operator
from collections import deque

import attr

from .coltypes import STILGAR_COMMENT, Column
from .naming import BASE_TABLES, DISCARDS_TABLE, quote_ident, quote_string
from .tsv import needs_escape

__all__ = ["standard_columns", "table_kind", "create_table_sql", "add_columns_sql", "modify_column_sql",
           "GENERAL_RESERVED", "PAGE_FILL", "TableSchema", "Plan", "CONTEXT_SECTIONS", "CONTEXT_KEY_MAP",
           "insert_header", "DISCARD_COLUMNS", "create_table_parts", "add_columns_clauses",
           "modify_column_clauses", "PlanBudget", "CLOSED_CONTEXT_SECTIONS", "Composite"]

CONTEXT_SECTIONS = ("app", "campaign", "device", "library", "network", "os", "screen", "page")
# sections the collector's enrichment writes (doc/enrichment.md): their columns
# are made when first filled, like properties, so tables without enrichment keep their shape
_ENRICHED_CONTEXT = {
    "geo": ["city", "country", "region", "postal", "location", "timezone"],
    "ua": ["browser", "browser_version", "os", "os_version", "device_family", "device_brand",
           "device_model", "device_type"],
}
CONTEXT_SECTIONS += tuple(_ENRICHED_CONTEXT)
CLOSED_CONTEXT_SECTIONS = frozenset(_ENRICHED_CONTEXT)  # other keys of these are not stored

# section -> event key -> standard column (the original's snake_case columns,
# also filled from the camelCase keys the SDKs send)
_STD_CONTEXT = {
    "app": ["name", "version", "build"],
    "campaign": ["name", "source", "content", "medium", "term"],
    "device": ["type", "id", "advertising_id", "ad_tracking_enabled", "manufacturer", "model", "name"],
    "library": ["name", "version"],
    "network": ["bluetooth", "carrier", "cellular", "wifi"],
    "os": ["name", "version"],
    "screen": ["density", "width", "height", "inner_width", "inner_height"],
    "page": ["path", "referrer", "referring_domain", "search", "title", "url", "tab_url",
             "initial_referrer", "initial_referring_domain"],
}


def _camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


CONTEXT_KEY_MAP = {}
for _section, _keys in [*_STD_CONTEXT.items(), *_ENRICHED_CONTEXT.items()]:
    _m = {}
    for _k in _keys:
        _m[_k] = f"context_{_section}_{_k}"
        _m.setdefault(_camel(_k), f"context_{_section}_{_k}")
    CONTEXT_KEY_MAP[_section] = _m
del _section, _keys, _m, _k

# a property key landing on one of these is a 'reserved column' discard, on any table
GENERAL_RESERVED = frozenset(["id", "anonymous_id", "user_id", "sent_at", "original_timestamp", "received_at",
                              "timestamp", "channel", "event", "previous_id", "group_id"])
# on pages and screens, these property keys fill their standard column
PAGE_FILL = frozenset(["name", "category", "path", "url", "title", "referrer", "search", "keywords"])

DISCARD_COLUMNS = ("table_name", "row_id", "column_name", "column_value", "received_at", "uuid_ts", "reason")


def table_kind(table):
    """``tracks``... for base tables, ``rudder_discards``, else ``event``."""
    if table in BASE_TABLES or table == DISCARDS_TABLE:
        return table
    return "event"


def _context_columns():
    cols = []
    for section, keys in _STD_CONTEXT.items():
        for k in keys:
            t = "Nullable(Int64)" if section == "screen" else "Nullable(String)"
            cols.append((f"context_{section}_{k}", t))
    cols += [("context_locale", "Nullable(String)"), ("context_timezone", "Nullable(String)"),
             ("context_user_agent", "Nullable(String)"), ("context_ip", "Nullable(String)")]
    return cols


_CONTEXT = _context_columns()
_STD_CACHE = {}


def standard_columns(kind, caps):
    """Ordered dict column -> type of the standard columns of a table kind."""
    key = (kind, caps)
    hit = _STD_CACHE.get(key)
    if hit is not None:
        return hit
    ts = "Nullable(DateTime64(3, 'UTC'))" if caps.datetime64 else "Nullable(DateTime('UTC'))"
    lc = "LowCardinality(String)" if caps.lowcardinality else "String"
    if kind == DISCARDS_TABLE:
        cols = {"table_name": lc, "row_id": "String", "column_name": "String",
                "column_value": "Nullable(String)", "received_at": "DateTime('UTC')",
                "uuid_ts": "DateTime64(3, 'UTC')" if caps.datetime64 else "DateTime('UTC')", "reason": lc}
        _STD_CACHE[key] = cols
        return cols
    cols = {"id": "String", "anonymous_id": "Nullable(String)", "sent_at": ts, "original_timestamp": ts,
            "received_at": "DateTime('UTC')", "timestamp": ts, "channel": "Nullable(String)"}
    cols.update(_CONTEXT)
    ns = "Nullable(String)"
    if kind in ("tracks", "event"):
        cols.update(user_id=ns, event=lc)
    elif kind == "identifies":
        cols.update(user_id="String")
    elif kind == "pages":
        cols.update(user_id=ns, name=ns, category=ns, path=ns, url=ns, title=ns, referrer=ns, search=ns,
                    keywords=ns)
    elif kind == "screens":
        cols.update(user_id=ns, name=ns, category=ns)
    elif kind == "groups":
        cols.update(user_id=ns, group_id=lc)
    elif kind == "aliases":
        cols.update(user_id=ns, previous_id="String")
    elif kind == "users":
        if caps.simple_aggregate:
            cols = {c: (t if c in ("id", "received_at") else f"SimpleAggregateFunction(anyLast, {t})")
                    for c, t in cols.items()}
    _STD_CACHE[key] = cols
    return cols


def _engine(kind, caps):
    if kind == "users":
        if caps.simple_aggregate:
            return "ENGINE = AggregatingMergeTree() PARTITION BY toDate(`received_at`) ORDER BY (`id`)"
        return "ENGINE = ReplacingMergeTree(`received_at`) ORDER BY (`id`)"
    if kind == DISCARDS_TABLE:
        return ("ENGINE = ReplacingMergeTree(`uuid_ts`) PARTITION BY toDate(`received_at`)"
                " ORDER BY (`received_at`, `table_name`, `row_id`, `column_name`)")
    return "ENGINE = ReplacingMergeTree() PARTITION BY toDate(`received_at`) ORDER BY (`received_at`, `id`)"


_COMMENT = quote_string(STILGAR_COMMENT)


def create_table_sql(database, table, caps, extra=()):
    """CREATE TABLE IF NOT EXISTS with the standard columns plus ``extra``
    ``(name, type)`` pairs; every column carries COMMENT 'stilgar'."""
    columns, engine = create_table_parts(table, caps, extra)
    return f"CREATE TABLE IF NOT EXISTS {quote_ident(database)}.{quote_ident(table)} {columns} {engine}"


def create_table_parts(table, caps, extra=(), comments=True):
    """(the parenthesised column list, the engine clause) of a new table."""
    kind = table_kind(table)
    cols = list(standard_columns(kind, caps).items())
    seen = {c for c, _ in cols}
    cols += [(c, t) for c, t in extra if c not in seen]
    mark = f" COMMENT {_COMMENT}" if comments else ""
    body = ", ".join(f"{quote_ident(c)} {t}{mark}" for c, t in cols)
    return f"({body})", _engine(kind, caps)


def add_columns_sql(database, table, columns, caps):
    """One ALTER adding ``columns`` (``(name, type)`` pairs), each marked 'stilgar'."""
    return f"ALTER TABLE {quote_ident(database)}.{quote_ident(table)} " + add_columns_clauses(columns, caps)


def add_columns_clauses(columns, caps, comments=True):
    if caps.add_column_if_not_exists:
        mark = f" COMMENT {_COMMENT}" if comments else ""
        return ", ".join(f"ADD COLUMN IF NOT EXISTS {quote_ident(c)} {t}{mark}" for c, t in columns)
    # 18.16 ignores COMMENT inside ADD COLUMN; COMMENT COLUMN in the same ALTER works
    # (not on Replicated tables: there ``comments`` is False)
    parts = []
    for c, t in columns:
        parts.append(f"ADD COLUMN {quote_ident(c)} {t}")
        if comments:
            parts.append(f"COMMENT COLUMN {quote_ident(c)} {_COMMENT}")
    return ", ".join(parts)


def modify_column_sql(database, table, column, new_type):
    return f"ALTER TABLE {quote_ident(database)}.{quote_ident(table)} " + modify_column_clauses(column, new_type)


def modify_column_clauses(column, new_type, comments=True):
    text = f"MODIFY COLUMN {quote_ident(column)} {new_type}"
    return text + (f", COMMENT COLUMN {quote_ident(column)} {_COMMENT}" if comments else "")


def insert_header(database, table, columns):
    cols = ", ".join(quote_ident(c) for c in columns)
    return f"INSERT INTO {quote_ident(database)}.{quote_ident(table)} ({cols}) FORMAT TabSeparated\n"


@attr.s(slots=True)
class Plan:
    """How rows with one set of columns are encoded for one table schema.

    ``columns`` puts the String columns first (``strings`` of them), then the
    datetime columns (``dates``), then the others, each part sorted. Most
    rows' strings need no escaping, which one check of their concatenation
    tells; most times were seen a moment ago (the other rows of the event,
    the batch's receivedAt), which one look-up in their column type's memo
    tells: only the rest goes through the columns' encoders, one call each
    (doc/clickhouse.md, "TSV escaping")."""
    columns = attr.ib()        # tuple of column names: String, datetime, then the others
    encoders = attr.ib()       # tuple of encoders, same order
    header = attr.ib()         # the INSERT statement line
    strings = attr.ib(default=0)                  # how many leading String columns
    dates = attr.ib(default=0)                    # how many datetime columns after them
    values = attr.ib(default=None, repr=False)    # row dict -> tuple of its values, in ``columns`` order
    _getters = attr.ib(default=None, repr=False)
    _segments = attr.ib(default=None, repr=False)

    def __attrs_post_init__(self):
        self.encoders = tuple(self.encoders)
        if self.values is None:
            self.values = _getter(self.columns)
        a, b = self.strings, self.strings + self.dates
        cols, encs = self.columns, self.encoders
        self._getters = tuple(_getter(c) if c else _NOTHING for c in (cols[:a], cols[a:b], cols[b:]))
        self._segments = (encs[:a], tuple(e.texts for e in encs[a:b]), encs[a:b], encs[b:])

    def fields(self, data):
        """The TSV field texts of ``data`` (a dict holding exactly ``columns``),
        None where a value does not fit its column."""
        return list(map(operator.call, self.encoders, self.values(data)))

    def line(self, data):
        """The TSV line of ``data``, or None when a value does not fit (then see :meth:`fields`)."""
        strings, dates, others = self._getters
        return self.line_of(strings(data), dates(data), others(data))

    def line_of(self, head, times, rest):
        """The TSV line of a row's values in ``columns`` order, cut in three:
        the String columns', the datetime columns' and the others' (tuples);
        None when a value does not fit. The one encoding rule of
        :meth:`line` and of the compiled encoders (:mod:`.compiled`)."""
        string_encoders, memos, date_encoders, other_encoders = self._segments
        parts = []
        if head:
            try:
                text = "".join(head)
            except TypeError:           # a value that is not a str: its encoder decides
                text = None
            if text is None or needs_escape(text):
                fields = list(map(operator.call, string_encoders, head))
                if None in fields:
                    return None
                parts.append("\t".join(fields))
            else:
                parts.append("\t".join(head))
        if times:
            try:
                texts = list(map(dict.get, memos, times))
            except TypeError:           # an unhashable value: its encoder decides
                texts = [None]
            if None in texts:
                texts = _fill(texts, date_encoders, times)
                if texts is None:
                    return None
            parts.append("\t".join(texts))
        if rest:
            rest = list(map(operator.call, other_encoders, rest))
            if None in rest:
                return None
            parts.append("\t".join(rest))
        return "\t".join(parts) + "\n"


def _fill(texts, encoders, values):
    """``texts`` with the memo's misses (None, an empty value, a time seen
    first) encoded; None when a value does not fit."""
    if len(texts) != len(values):
        texts = [None] * len(values)
    for i, t in enumerate(texts):
        if t is None:
            t = encoders[i](values[i])
            if t is None:
                return None
            texts[i] = t
    return texts


# the getter of an empty segment: a C call that answers 0 (falsy, as an empty tuple) for any row
_NOTHING = [].count


def _getter(columns):
    """dict -> tuple of the values of ``columns`` (in C: operator.itemgetter)."""
    if len(columns) == 1:
        key = columns[0]
        return lambda data: (data[key],)
    if not columns:
        return lambda data: ()
    return operator.itemgetter(*columns)


class PlanBudget:
    """Bounds the memory of memo dicts (a destination's insert plans, or their
    look-ups by key order and composites).

    Entries are charged an estimate of their size in bytes; beyond
    ``max_bytes`` the oldest ones are dropped (they are rebuilt when needed again)."""

    def __init__(self, max_bytes=16 * 1024 * 1024):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._order = deque()       # (memo dict, key, cost), oldest first

    def charge(self, memo, key, cost):
        self._order.append((memo, key, cost))
        self.bytes += cost
        while self.bytes > self.max_bytes and len(self._order) > 1:
            old_memo, old_key, old_cost = self._order.popleft()
            old_memo.pop(old_key, None)
            self.bytes -= old_cost


ORDER_BUDGET_BYTES = 4 * 1024 * 1024


def _plan_cost(key, header):
    # the header text; per column a tuple and a list slot (8 B each) and a frozenset
    # entry (about 48 B with its table's slack); the objects' own overhead
    return len(header) + 64 * len(key) + 300


class TableSchema:
    """The cached ``system.columns`` view of one table."""

    __slots__ = ("database", "name", "engine", "columns", "kind", "standard", "valid", "aggregating",
                 "extra", "_plans", "_budget", "_orders", "_order_budget", "_composites")

    def __init__(self, database, name, columns, engine, caps, budget=None, order_budget=None):
        self.database = database
        self.name = name
        self.engine = engine or ""
        self.columns = columns              # name -> Column
        self.kind = table_kind(name)
        self.standard = standard_columns(self.kind, caps)
        self.aggregating = self.engine.startswith("Aggregating")
        self.extra = sum(1 for c in columns if c not in self.standard)
        key_col = "row_id" if self.kind == DISCARDS_TABLE else "id"
        k = columns.get(key_col)
        r = columns.get("received_at")
        self.valid = (k is not None and k.ctype.raw == "String"
                      and r is not None and r.kind == "D" and r.ctype.precision is None
                      and not r.ctype.nullable)
        self._plans = {}                    # frozenset of keys -> Plan, or None (a column is missing)
        self._budget = budget if budget is not None else PlanBudget()
        self._orders = {}                   # tuple of keys in a row's order -> Plan or None
        self._order_budget = order_budget if order_budget is not None else PlanBudget(ORDER_BUDGET_BYTES)
        self._composites = {}               # tuple of keys -> (base Plan, Composite or None)

    @classmethod
    def from_rows(cls, database, name, rows, engine, caps, budget=None, order_budget=None):
        """``rows``: (name, type, comment) from system.columns."""
        return cls(database, name, {n: Column.from_system(n, t, c) for n, t, c in rows}, engine, caps, budget,
                   order_budget)

    def plan(self, keys):
        """The Plan for rows whose keys are ``keys`` (any iterable, any order:
        one plan per column set), or None when a column is missing.

        Looked up first by the keys in their order (rows built by the same
        code share it: no set is built per row), then by the set."""
        orders = self._orders
        order = tuple(keys)
        try:
            return orders[order]
        except KeyError:
            pass
        plan = self._plan_of_set(frozenset(order))
        orders[order] = plan
        self._order_budget.charge(orders, order, 16 * len(order) + 120)
        return plan

    def _plan_of_set(self, key):
        plans = self._plans
        plan = plans.get(key)
        if plan is None:
            if key in plans:
                return None
            cols = self.columns
            if not all(k in cols for k in key):
                plans[key] = None
                self._budget.charge(plans, key, _plan_cost(key, ""))
                return None
            plan = self._new_plan(key, True)
            plans[key] = plan
            self._budget.charge(plans, key, _plan_cost(key, plan.header))
        return plan

    def _new_plan(self, key, header):
        cols = self.columns
        strings = sorted(c for c in key if cols[c].kind == "S")
        dates = sorted(c for c in key if hasattr(cols[c].encode, "texts"))
        ordered = tuple(strings + dates + sorted(c for c in key if cols[c].kind != "S"
                                                 and not hasattr(cols[c].encode, "texts")))
        return Plan(columns=ordered, encoders=[cols[c].encode for c in ordered],
                    header=insert_header(self.database, self.name, ordered) if header else "",
                    strings=len(strings), dates=len(dates))

    def composite(self, keys, base):
        """The :class:`Composite` for rows of this table whose keys are ``keys``
        and which hold every column of ``base`` (another table's plan) with the
        values that plan encoded; None when a column is missing here or has
        another type (then the row is encoded on its own)."""
        memo = self._composites
        order = tuple(keys)
        hit = memo.get(order)
        if hit is not None and hit[0] is base:
            return hit[1]
        comp = self._new_composite(order, base)
        memo[order] = (base, comp)
        if hit is None:
            self._order_budget.charge(memo, order, 16 * len(order) + 200)
        return comp

    def _new_composite(self, order, base):
        cols = self.columns
        for c, enc in zip(base.columns, base.encoders):
            col = cols.get(c)
            if col is None or col.encode is not enc:
                return None
        shared = frozenset(base.columns)
        if not shared.issubset(order):
            return None
        rest = frozenset(order) - shared
        if not all(c in cols for c in rest):
            return None
        rest_plan = self._new_plan(rest, False) if rest else None
        columns = base.columns + (rest_plan.columns if rest_plan else ())
        return Composite(base=base, rest=rest_plan, columns=columns,
                         header=insert_header(self.database, self.name, columns))


@attr.s(slots=True, eq=False)
class Composite:
    """Rows of one table that begin with another row's encoded line: a track
    event's per-event row holds every column of its ``tracks`` row, with the
    same values, so its TSV line is that row's line, then its own columns
    (``rest``, a :class:`Plan`), and the INSERT lists the columns in that order."""
    base = attr.ib()           # the Plan that encoded the other row
    rest = attr.ib()           # Plan of the columns only this table's rows have, or None
    columns = attr.ib()        # base.columns then rest.columns
    header = attr.ib()

    def line_after(self, base_line, data):
        """The TSV line of ``data`` given ``base_line`` (its shared columns,
        encoded by ``base``); None when one of its own values does not fit."""
        if self.rest is None:
            return base_line
        own = self.rest.line(data)
        if own is None:
            return None
        return base_line[:-1] + "\t" + own
