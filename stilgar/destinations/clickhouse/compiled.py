"""Track events of a shape seen before, straight to their TSV lines
(doc/clickhouse.md, "Compiled track encoders").

Server SDKs send the same few shapes of track event: the same context keys,
the same property keys per event name. For such a shape the two rows of an
event (``tracks`` and its per-event table) always have the same columns, so
the first event of the shape is built the general way (:mod:`.rows`), and
when that gave two plain rows (no discards, every key its own column, every
value fitting its column), a small function is generated that reads the next
events' values from where those columns came from and encodes them with the
same plans (:meth:`.schema.Plan.line_of`): no row dicts, no per-key rules.

It answers None whenever an event is not exactly that shape (a null where a
value was, a section that is not an object, a value that does not fit its
column, a table whose schema changed): the event then takes the general way.
Compiled rows build their ``data`` only when something needs it (a refused
INSERT, schema work): the general builder on their event.
"""

from .naming import event_table_name
from .rows import CONTEXT_COPIES, Row, build_event_rows
from .schema import CLOSED_CONTEXT_SECTIONS, CONTEXT_KEY_MAP, CONTEXT_SECTIONS, PlanBudget

__all__ = ["TrackEncoders", "CompiledRow"]

_MAX_KEYS = 64            # shapes with more keys (context, sections, properties) are not compiled
_MAX_KEY_CHARS = 2048     # nor those whose key names are longer in all (the keys are the client's)
SHAPES_BUDGET_BYTES = 4 * 1024 * 1024

# base columns and the event key they come from (rows._base, rows._track)
_EVENT_COLUMNS = {"id": "messageId", "anonymous_id": "anonymousId", "sent_at": "sentAt",
                  "original_timestamp": "originalTimestamp", "received_at": "receivedAt",
                  "timestamp": "timestamp", "channel": "channel", "user_id": "userId", "event": "event"}

_DATA = Row.data          # the slot under CompiledRow's property


class CompiledRow(Row):
    """A row a compiled encoder made: ``precoded`` holds its (plan, line,
    the TableSchema they were made with); ``data`` is built from its event
    when first read."""

    __slots__ = ("event", "index")

    def __init__(self, table, event, index, row_id, received_at, precoded, base=None):
        # Row's fields, set here (not through Row.__init__: this runs twice per event)
        self.table = table
        self.row_id = row_id
        self.received_at = received_at
        self.ticket = None
        self.rounds = 0
        self.base = base
        self.plan = None
        self.line = None
        self.precoded = precoded
        self.event = event
        self.index = index

    @property
    def data(self):
        try:
            return _DATA.__get__(self, Row)
        except AttributeError:      # not built yet: the general way, on its event
            rows, discards = [], []
            build_event_rows(self.event, rows, discards, "")
            d = rows[self.index].data
            _DATA.__set__(self, d)
            return d

    @data.setter
    def data(self, value):
        _DATA.__set__(self, value)


class _Shape:
    __slots__ = ("tracks", "table", "per", "encode")

    def __init__(self, tracks, table, per, encode):
        self.tracks = tracks      # the TableSchema of tracks it was compiled against
        self.table = table        # the per-event table's name
        self.per = per            # and its TableSchema
        self.encode = encode      # event -> (tracks plan, line, per-event plan, line) or None; None: not compilable


class TrackEncoders:
    """Compiled encoders by shape, bounded in bytes; ``schema``: the schema
    cache (its ``tables``, name -> TableSchema, read at each event)."""

    def __init__(self, schema, max_bytes=SHAPES_BUDGET_BYTES):
        self._schema = schema
        self._shapes = {}
        self._budget = PlanBudget(max_bytes)

    def rows(self, ev, rows, discards, now_text):
        """Append the rows of track event ``ev`` to ``rows`` (and its
        discards to ``discards``): compiled ones when its shape allows."""
        key = _shape_key(ev)
        if key is not None:
            shape = self._shapes.get(key)
            tables = self._schema.tables
            if (shape is not None and tables.get("tracks") is shape.tracks
                    and tables.get(shape.table) is shape.per):
                if shape.encode is not None:
                    try:
                        out = shape.encode(ev)
                    except (KeyError, TypeError):
                        out = None
                    if out is not None:
                        _append(rows, ev, shape, out)
                        return
            else:
                n, m = len(rows), len(discards)
                build_event_rows(ev, rows, discards, now_text)
                if len(discards) == m:
                    self._learn(key, ev, rows[n:])
                return
        build_event_rows(ev, rows, discards, now_text)

    def _learn(self, key, ev, built):
        """Compile the shape of ``ev`` from its rows built the general way
        (or remember that it is not compilable, against these schemas)."""
        if len(built) != 2 or not _small(key):
            return
        tables = self._schema.tables
        tracks, per = built
        ts, pts = tables.get("tracks"), tables.get(per.table)
        encode = None
        if ts is not None and pts is not None and ts.valid and pts.valid:
            encode = _compile(ev, tracks, per, ts, pts)
        if key not in self._shapes:
            self._budget.charge(self._shapes, key, 1500 + 200 * len(tracks.data) + 200 * len(per.data)
                                + sum(map(len, key[1] or ())) + sum(map(len, key[2] or ())))
        self._shapes[key] = _Shape(ts, per.table, pts, encode)


def _shape_key(ev):
    """(event name, context keys, property keys) of a track event whose
    shape may be compiled, else None."""
    name = ev.get("event")
    if type(name) is not str or not name:
        return None
    ctx = ev.get("context")
    props = ev.get("properties")
    if type(ctx) is dict:
        ck = tuple(ctx)
    elif ctx is None:
        ck = None
    else:
        return None
    if type(props) is dict:
        pk = tuple(props)
    elif props is None:
        pk = None
    else:
        return None     # a discard: the general way
    return name, ck, pk


def _small(key):
    """Whether a shape is small enough to be remembered (the keys are the client's)."""
    name, ck, pk = key
    ck, pk = ck or (), pk or ()
    return (len(ck) + len(pk) <= _MAX_KEYS
            and len(name) + sum(map(len, ck)) + sum(map(len, pk)) <= _MAX_KEY_CHARS)


def _append(rows, ev, shape, out):
    tplan, tline, pplan, pline = out
    mid, recv = ev["messageId"], ev["receivedAt"]
    t = CompiledRow("tracks", ev, 0, mid, recv, (tplan, tline, shape.tracks))
    t.plan, t.line = tplan, tline
    rows.append(t)
    rows.append(CompiledRow(shape.table, ev, 1, mid, recv, (pplan, pline, shape.per), base=t))


def _sources(ev, tracks, per):
    """Column -> the expression that reads its value from the event (``ev``,
    ``ctx``, ``s<i>`` a context section, ``p`` the properties); the sections
    read (name, expression, key tuple); the expressions that must not be
    null (a null there means another column set); whether there are
    properties. None when a column's origin is not one this module follows."""
    ctx = ev.get("context")
    ctx = ctx if type(ctx) is dict else {}
    if "bot" in ctx:
        return None          # context_bot depends on the value's type
    src = {col: f"ev[{key!r}]" for col, key in _EVENT_COLUMNS.items() if key in ev}
    optional = []
    sections = _context_sources(ctx, src, optional)
    if sections is None:
        return None
    props = ev.get("properties")
    if type(props) is dict:
        for k in props:
            if k in src or k.startswith("context_"):
                return None
            src[k] = f"p[{k!r}]"
            optional.append(src[k])
    elif props is not None:
        return None
    if set(src) - set(per.data) or set(per.data) - set(src):
        return None       # a key that is not plainly its column (renamed, reserved, null): the general way
    if set(tracks.data) - set(src) or len(tracks.data) + len(props or ()) != len(per.data):
        return None
    return src, sections, optional, type(props) is dict


def _context_sources(ctx, src, optional):
    """The context's part of :func:`_sources` (rows._base's rules), into
    ``src`` and ``optional``; the sections read, or None."""
    for key, col in CONTEXT_COPIES:
        if key in ctx:
            src[col] = f"ctx[{key!r}]"
            optional.append(src[col])
    sections = []
    for section in CONTEXT_SECTIONS:
        if section not in ctx:
            continue
        sub = ctx[section]
        if type(sub) is not dict:
            return None
        var = f"s{len(sections)}"
        sections.append((section, var, tuple(sub)))
        kmap = CONTEXT_KEY_MAP[section]
        for k in sub:
            col = kmap.get(k)
            if col is None:
                if section in CLOSED_CONTEXT_SECTIONS:
                    continue
                col = f"context_{section}_{k}"
            if col in src:
                return None
            src[col] = f"{var}[{k!r}]"
            optional.append(src[col])
    return sections


def _compile(ev, tracks, per, ts, pts):
    """The encoder of ``ev``'s shape, or None when it takes the general way."""
    found = _sources(ev, tracks, per)
    if found is None:
        return None
    plan = ts.plan(tuple(tracks.data))
    comp = pts.composite(tuple(per.data), plan) if plan is not None else None
    expected = plan.line(tracks.data) if comp is not None else None
    expected_per = comp.line_after(expected, per.data) if expected is not None else None
    if expected_per is None or event_table_name(ev["event"]) != per.table:
        return None       # a value that does not fit as it is: the general way decides
    namespace = {"tplan": plan, "comp": comp, "rplan": comp.rest}
    exec(_encoder_source(plan, comp.rest, *found, namespace), namespace)   # keys enter as repr() literals only
    encode = namespace["encode"]
    # the generated code must give exactly the general way's lines for the event it was made from
    try:
        out = encode(ev)
    except (KeyError, TypeError):
        return None
    if out is None or out[1] != expected or out[3] != expected_per:
        return None
    return encode


def _encoder_source(plan, rest, src, sections, optional, has_props, consts):
    """The text of ``encode(ev)``: the values of the shape's columns read
    from the event, in each plan's order, given to ``Plan.line_of``."""
    lines = ["def encode(ev):"]
    if sections or any(e.startswith("ctx[") for e in optional):
        lines.append("    ctx = ev['context']")
    for section, var, keys in sections:
        consts[f"k{var}"] = keys
        lines += [f"    {var} = ctx[{section!r}]",
                  f"    if type({var}) is not dict or tuple({var}) != k{var}:",
                  "        return None"]
    if has_props:
        lines += ["    p = ev['properties']",
                  "    if type(p) is not dict:",
                  "        return None"]
    if optional:
        lines += [f"    if None in ({', '.join(optional)},):",
                  "        return None"]

    def segments(p):
        a, b = p.strings, p.strings + p.dates
        return [_tuple(src[c] for c in cols) for cols in (p.columns[:a], p.columns[a:b], p.columns[b:])]

    lines += [f"    tline = tplan.line_of({', '.join(segments(plan))})",
              "    if tline is None:",
              "        return None"]
    if rest is None:
        lines.append("    return tplan, tline, comp, tline")
    else:
        lines += [f"    own = rplan.line_of({', '.join(segments(rest))})",
                  "    if own is None:",
                  "        return None",
                  "    return tplan, tline, comp, tline[:-1] + '\\t' + own"]
    return "\n".join(lines)


def _tuple(exprs):
    exprs = list(exprs)
    if not exprs:
        return "()"
    return "(" + ", ".join(exprs) + ",)"
