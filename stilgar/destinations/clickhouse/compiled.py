"""Track events of a shape seen before, straight to their TSV lines
(doc/clickhouse.md, "Compiled track encoders").

Server SDKs send the same few shapes of track event: the same context keys,
the same property keys per event name. For such a shape the two rows of an
event (``tracks`` and its per-event table) always have the same columns, so
the first event of the shape is built the general way (:mod:`.rows`), and
when that gave two plain rows (no discards, every key its own column, every
value fitting its column), a small function is generated that checks that
an event is that shape, reads its values from where those columns came from
and encodes them for the same plans (:meth:`.schema.Plan.line_of` unrolled,
which it calls for the uncommon values): no row dicts, no per-key rules, no
``Row.__init__``.

Whenever an event is not exactly that shape (a null where a value was, a
section that is not an object, a value that does not fit its column, a
table whose schema changed), it takes the general way.
Compiled rows build their ``data`` only when something needs it (a refused
INSERT, schema work): the general builder on their event.
"""

from .naming import event_table_name
from .rows import CONTEXT_COPIES, Row, build_event_rows
from .schema import CLOSED_CONTEXT_SECTIONS, CONTEXT_KEY_MAP, CONTEXT_SECTIONS, PlanBudget
from .tsv import ESCAPES, NULL

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
    when first read. The generated encoders set every other slot
    (:func:`_rows_source`), without an ``__init__`` call: two per event."""

    __slots__ = ("event", "index")
    __init__ = object.__init__       # no arguments: a C call (Row.__init__ would be a Python frame)

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
        self.encode = encode      # (event, rows) -> True/False/None (TrackEncoders._encode); None: not compilable


class TrackEncoders:
    """Compiled encoders by shape, bounded in bytes; ``schema``: the schema
    cache (its ``tables``, name -> TableSchema, read at each event).

    An event is first tried with the shape its name had last (``_recent``):
    the encoder checks the shape itself, cheaper than making the key. The
    full key (:func:`_shape_key`) finds the others."""

    def __init__(self, schema, max_bytes=SHAPES_BUDGET_BYTES):
        self._schema = schema
        self._shapes = {}       # shape key -> _Shape
        self._recent = {}       # event name -> its last compiled _Shape, a subset of _shapes' values
        self._budget = PlanBudget(max_bytes)

    def rows(self, ev, rows, discards, now_text):
        """Append the rows of track event ``ev`` to ``rows`` (and its
        discards to ``discards``): compiled ones when its shape allows."""
        name = ev.get("event")
        tried = self._recent.get(name) if type(name) is str else None
        if tried is not None:
            done = self._encode(tried, ev, rows)
            if done is not None:
                if not done:
                    build_event_rows(ev, rows, discards, now_text)
                return
        key = _shape_key(ev)
        shape = self._shapes.get(key) if key is not None else None
        if shape is None or not self._current(shape):
            n, m = len(rows), len(discards)
            build_event_rows(ev, rows, discards, now_text)
            if key is not None and len(discards) == m:
                self._learn(key, ev, rows[n:])
            return
        if shape.encode is not None:
            self._recent[name] = shape
            if shape is not tried and self._encode(shape, ev, rows):
                return
        build_event_rows(ev, rows, discards, now_text)

    def _current(self, shape):
        """Whether ``shape`` was compiled against the tables' schemas as they are."""
        tables = self._schema.tables
        return tables.get("tracks") is shape.tracks and tables.get(shape.table) is shape.per

    def _encode(self, shape, ev, rows):
        """True: ``ev``'s rows are appended; False: ``ev`` is ``shape`` but
        takes the general way (a null, a misfit); None: ``ev`` is not
        ``shape`` (or it is stale)."""
        if shape.encode is None or not self._current(shape):
            return None
        try:
            return shape.encode(ev, rows)
        except Exception:     # a key it does not have, an unhashable time: the general way decides
            return None

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
            self._recent.clear()        # the budget may drop shapes: none stays only here
            self._budget.charge(self._shapes, key, 1500 + 200 * len(tracks.data) + 200 * len(per.data)
                                + _key_chars(key))
        self._shapes[key] = _Shape(ts, per.table, pts, encode)


def _shape_key(ev):
    """(event name, context keys, property keys, each context section's
    keys) of a track event whose shape may be compiled, else None."""
    name = ev.get("event")
    if type(name) is not str or not name:
        return None
    ctx = ev.get("context")
    props = ev.get("properties")
    sk = ()
    if type(ctx) is dict:
        ck = tuple(ctx)
        sk = tuple(tuple(sub) if type(sub := ctx[s]) is dict else None for s in CONTEXT_SECTIONS if s in ctx)
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
    return name, ck, pk, sk


def _key_chars(key):
    name, ck, pk, sk = key
    return len(name) + sum(map(len, ck or ())) + sum(map(len, pk or ())) + sum(len(k) for sub in sk if sub for k in sub)


def _small(key):
    """Whether a shape is small enough to be remembered (the keys are the client's)."""
    name, ck, pk, sk = key
    keys = len(ck or ()) + len(pk or ()) + sum(len(sub) for sub in sk if sub)
    return keys <= _MAX_KEYS and _key_chars(key) <= _MAX_KEY_CHARS


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
    namespace = {"tplan": plan, "comp": comp, "rplan": comp.rest, "Row": CompiledRow,
                 "ts": ts, "pts": pts, "table": per.table}
    exec(_encoder_source(ev, plan, comp.rest, *found, namespace), namespace)   # keys enter as repr() literals only
    encode = namespace["encode"]
    # the generated code must give exactly the general way's lines for the event it was made from
    out = []
    try:
        done = encode(ev, out)
    except Exception:      # it is not this shape after all: the general way
        return None
    if not done or [r.precoded[1] for r in out] != [expected, expected_per]:
        return None
    return encode


def _encoder_source(ev, plan, rest, src, sections, optional, has_props, consts):
    """The text of ``encode(ev, rows)``: checks that ``ev`` is the shape
    (its context keys, sections' keys, number of properties: with every
    property read, the same keys), reads each source value once, encodes
    each plan's line (:func:`_line_source`) and appends the two rows."""
    lines = ["def encode(ev, rows):"]
    ctx = ev.get("context")
    if type(ctx) is dict:
        consts["kctx"] = tuple(ctx)
        lines += ["    ctx = ev.get('context')",
                  "    if type(ctx) is not dict or tuple(ctx) != kctx:",
                  "        return None"]
    else:
        lines += ["    if ev.get('context') is not None:",
                  "        return None"]
    for section, var, keys in sections:
        consts[f"k{var}"] = keys
        lines += [f"    {var} = ctx[{section!r}]",
                  f"    if type({var}) is not dict or tuple({var}) != k{var}:",
                  "        return None"]
    if has_props:
        lines += ["    p = ev.get('properties')",
                  f"    if type(p) is not dict or len(p) != {len(ev['properties'])}:",
                  "        return None"]
    else:
        lines += ["    if ev.get('properties') is not None:",
                  "        return None"]
    local = {}          # source expression -> its local's name
    for expr in dict.fromkeys(src.values()):
        local[expr] = f"v{len(local)}"
        lines.append(f"    {local[expr]} = {expr}")
    if optional:        # a null there: another column set, the general way's
        lines += ["    if " + " or ".join(f"{local[e]} is None" for e in dict.fromkeys(optional)) + ":",
                  "        return False"]
    may_be_null = {local[e] for e in src.values() if e not in optional}

    def segments(p):
        a, b = p.strings, p.strings + p.dates
        return [[local[src[c]] for c in cols] for cols in (p.columns[:a], p.columns[a:b], p.columns[b:])]

    lines += _line_source("t", "tplan", segments(plan), plan, may_be_null, consts)
    if rest is None:
        lines.append("    o = t = t + '\\n'")
    else:
        lines += _line_source("o", "rplan", segments(rest), rest, may_be_null, consts)
        lines += ["    o = t + '\\t' + o + '\\n'", "    t = t + '\\n'"]
    lines += _rows_source(local[src["id"]], local[src["received_at"]])
    return "\n".join(lines)


def _rows_source(mid, recv):
    """Lines that append the event's two CompiledRows, every slot set
    (what ``Row.__init__`` would, without its call)."""
    fields = {"table": None, "row_id": mid, "received_at": recv, "ticket": "None", "rounds": "0",
              "base": None, "plan": None, "line": None, "precoded": None, "event": "ev", "index": None}
    own = [("r", {"table": "'tracks'", "base": "None", "plan": "tplan", "line": "t",
                  "precoded": "(tplan, t, ts)", "index": "0"}),
           ("q", {"table": "table", "base": "r", "plan": "None", "line": "None",
                  "precoded": "(comp, o, pts)", "index": "1"})]
    lines = []
    for var, values in own:
        lines.append(f"    {var} = Row()")
        lines += [f"    {var}.{slot} = {values.get(slot) or value}" for slot, value in fields.items()]
    return lines + ["    rows.append(r)", "    rows.append(q)", "    return True"]


# a tab-joined text of n fields needs escaping when a field holds a character of ESCAPES:
# a TAB (more TABs than the n - 1 joints) or one of the others (tsv.needs_escape's scans);
# a backslash only beyond the NULLs written as \\N
_ESCAPED_BUT_TAB_AND_BACKSLASH = tuple(chr(c) for c in ESCAPES if c not in (ord("\t"), ord("\\")))


def _line_source(var, plan_name, segments, plan, may_be_null, consts):
    """Lines of ``encode`` that set ``var`` to the TSV line of one row,
    without its newline, or return False: :meth:`.schema.Plan.line_of`
    unrolled for ``plan``'s columns (their memos and encoders bound by
    name, the common cases of the others inline: their ``inline``), which
    it calls itself for what the unrolled way does not take (a value that
    is not a str in a String column, a string that needs escaping)."""
    head, times, rest = segments
    pre = f"{var}_"
    out, fields = [], []
    if head:
        out += _head_source(pre, head, plan, may_be_null)
        out += [f"        {pre}l = {plan_name}.line_of({_tuple(head)}, {_tuple(times)}, {_tuple(rest)})",
                f"        if {pre}l is None:",
                "            return False",
                f"        {var} = {pre}l[:-1]",
                "    else:"]
        fields.append(f"{pre}x")
    body = []
    for i, name in enumerate(times):
        enc = plan.encoders[plan.strings + i]
        consts[f"{pre}m{i}"], consts[f"{pre}d{i}"] = enc.texts.get, enc
        body += [f"{pre}f{i} = {pre}m{i}({name})",
                 f"if {pre}f{i} is None:",
                 f"    {pre}f{i} = {pre}d{i}({name})",
                 f"    if {pre}f{i} is None:",
                 "        return False"]
        fields.append(f"{pre}f{i}")
    for i, name in enumerate(rest):
        enc = plan.encoders[plan.strings + plan.dates + i]
        consts[f"{pre}e{i}"] = enc
        inline = getattr(enc, "inline", "{enc}({v})")
        body += [f"{pre}g{i} = " + inline.format(v=name, enc=f"{pre}e{i}"),
                 f"if {pre}g{i} is None:",
                 "    return False"]
        fields.append(f"{pre}g{i}")
    body.append(f"{var} = " + (f"'\\t'.join({_tuple(fields)})" if len(fields) > 1 else fields[0]))
    ind = "        " if head else "    "
    return out + [ind + b for b in body]


def _head_source(pre, head, plan, may_be_null):
    """The String columns' part of :func:`_line_source`: ``{pre}x``, their
    values joined, and the test that sends the row to ``line_of`` (a
    value that is not a str, a character to escape): one join and a few
    scans of the joined text."""
    nulls = []       # NULL in a Nullable(String) column: \\N, its one backslash counted
    items = []
    for i, name in enumerate(head):
        if name in may_be_null and plan.encoders[i](None) == NULL:
            items.append(f"({name} if {name} is not None else {NULL!r})")
            nulls.append(f"({name} is None)")
        else:
            items.append(name)
    out = []
    if nulls:          # a backslash beyond the NULLs' \\N; one scan when there are none
        out.append(f"    {pre}n = {' + '.join(nulls)}")
        backslash = f"({pre}x.count('\\\\') != {pre}n if {pre}n else '\\\\' in {pre}x)"
    else:
        backslash = f"'\\\\' in {pre}x"
    return out + ["    try:",
                  f"        {pre}x = '\\t'.join({_tuple(items)})",
                  "    except TypeError:",
                  f"        {pre}x = None",
                  f"    if {pre}x is None or {pre}x.count('\\t') != {len(head) - 1} or {backslash} or "
                  + " or ".join(f"{c!r} in {pre}x" for c in _ESCAPED_BUT_TAB_AND_BACKSLASH) + ":"]


def _tuple(exprs):
    exprs = list(exprs)
    if not exprs:
        return "()"
    return "(" + ", ".join(exprs) + ",)"
