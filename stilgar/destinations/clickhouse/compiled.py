"""Events of a shape seen before, straight to their TSV lines
(doc/clickhouse.md, "Compiled encoders").

SDKs send the same few shapes of event: the same context keys, the same
property (or trait) keys per event name. For such a shape the rows of an
event always have the same columns (a track event's ``tracks`` row and its
per-event row, a page's or a screen's row, an identify's ``users`` and
``identifies`` rows), so the first event of the shape is built the general
way (:mod:`.rows`), and when that gave plain rows (no discards, every key
its own column, every value fitting its column), a small function is
generated that checks that an event is that shape, reads its values from
where those columns came from and encodes them for the same plans
(:meth:`.schema.Plan.line_of` unrolled, which it calls for the uncommon
values): no row dicts, no per-key rules, no ``Row.__init__``.

Whenever an event is not exactly that shape (a null where a value was, a
section that is not an object, a value that does not fit its column, a
page whose ``name`` and ``properties.name`` differ, a table whose schema
changed), it takes the general way.
Compiled rows build their ``data`` only when something needs it (a refused
INSERT, schema work): the general builder on their event.
"""

from .naming import event_table_name
from .rows import CONTEXT_COPIES, Row, build_event_rows
from .schema import CLOSED_CONTEXT_SECTIONS, CONTEXT_KEY_MAP, CONTEXT_SECTIONS, PAGE_FILL, PlanBudget
from .tsv import ESCAPES, NULL

__all__ = ["EventEncoders", "CompiledRow", "COMPILED_TYPES"]

_MAX_KEYS = 64            # shapes with more keys (context, sections, properties) are not compiled
_MAX_KEY_CHARS = 2048     # nor those whose key names are longer in all (the keys are the client's)
SHAPES_BUDGET_BYTES = 4 * 1024 * 1024

#: event type -> where its own keys are (rows._track, _page_or_screen, _identify)
COMPILED_TYPES = {"track": "properties", "page": "properties", "screen": "properties", "identify": "traits"}
_RECENT_KEY = {t: (t,) for t in COMPILED_TYPES}      # a track's is its name: never a tuple

# the columns every builder sets from the event, and the key each comes from (rows._base)
_BASE_COLUMNS = {"id": "messageId", "anonymous_id": "anonymousId", "sent_at": "sentAt",
                 "original_timestamp": "originalTimestamp", "received_at": "receivedAt",
                 "timestamp": "timestamp", "channel": "channel"}
# and those of each type (rows._track, _page_or_screen; an identify's user_id is its own rule)
_TYPE_COLUMNS = {"track": {"user_id": "userId", "event": "event"},
                 "page": {"user_id": "userId", "name": "name", "category": "category"},
                 "screen": {"user_id": "userId", "name": "name", "category": "category"},
                 "identify": {}}
_FILL = {"page": PAGE_FILL, "screen": PAGE_FILL}     # property keys that fill a standard column

_DATA = Row.data          # the slot under CompiledRow's property


class CompiledRow(Row):
    """A row a compiled encoder made: ``precoded`` holds its (plan, line,
    the TableSchema they were made with); ``data`` is built from its event
    when first read. The generated encoders set every other slot
    (:func:`_rows_source`), without an ``__init__`` call."""

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
    __slots__ = ("encode", "schemas")

    def __init__(self, encode, schemas):
        self.encode = encode      # (event, rows) -> True/False/None (EventEncoders._encode); None: not compilable
        self.schemas = schemas    # ((table, TableSchema), ...) it was compiled against


class EventEncoders:
    """Compiled encoders by shape, bounded in bytes; ``schema``: the schema
    cache (its ``tables``, name -> TableSchema, read at each event: an
    encoder checks that its tables' schemas are the ones it was made for).

    An event is first tried with the shape its name (a track) or its type
    had last (``_recent``): the encoder checks the shape itself, cheaper
    than making the key. The full key (:func:`_shape_key`) finds the others."""

    def __init__(self, schema, max_bytes=SHAPES_BUDGET_BYTES):
        self._schema = schema
        self._shapes = {}       # shape key -> _Shape
        self._recent = {}       # a track's name, another type's _RECENT_KEY -> its last compiled _Shape
        self._budget = PlanBudget(max_bytes)

    def rows(self, ev, rows, discards, now_text):
        """Append the rows of ``ev`` (of a type in COMPILED_TYPES) to
        ``rows`` (and its discards to ``discards``): compiled ones when
        its shape allows."""
        etype = ev.get("type")
        recent = ev.get("event") if etype == "track" else _RECENT_KEY.get(etype)
        tried = self._recent.get(recent) if type(recent) in (str, tuple) else None
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
            self._recent[recent] = shape
            if shape is not tried and self._encode(shape, ev, rows):
                return
        build_event_rows(ev, rows, discards, now_text)

    def _current(self, shape):
        """Whether ``shape`` was compiled against its tables' schemas as they are."""
        tables = self._schema.tables
        return all(tables.get(table) is ts for table, ts in shape.schemas)

    @staticmethod
    def _encode(shape, ev, rows):
        """True: ``ev``'s rows are appended; False: ``ev`` is ``shape`` but
        takes the general way (a null, a misfit); None: ``ev`` is not
        ``shape``, or a table's schema changed since it was compiled."""
        try:
            return shape.encode(ev, rows)
        except Exception:     # a key it does not have, an unhashable time: the general way decides
            return None

    def _learn(self, key, ev, built):
        """Compile the shape of ``ev`` from its rows built the general way
        (or remember that it is not compilable, against these schemas)."""
        if not built or not _small(key):
            return
        tables = self._schema.tables
        schemas = [tables.get(r.table) for r in built]
        encode = None
        if all(ts is not None and ts.valid for ts in schemas):
            encode = _compile(ev, built, schemas, self._schema)
        if key not in self._shapes:
            self._recent.clear()        # the budget may drop shapes: none stays only here
            self._budget.charge(self._shapes, key, 1500 + sum(200 * len(r.data) for r in built) + _key_chars(key))
        self._shapes[key] = _Shape(encode, tuple(zip((r.table for r in built), schemas)))


def _own_keys(ev, etype, ctx):
    """The dict of an event's own keys (properties, an identify's
    ``context.traits``), None when absent or null; False when it is not a dict."""
    obj = ev.get("properties") if COMPILED_TYPES[etype] == "properties" else (
        ctx.get("traits") if type(ctx) is dict else None)
    if obj is None or type(obj) is dict:
        return obj
    return False


def _shape_key(ev):
    """(type, a track's name or whether an identify has a user, context
    keys, own keys, each context section's keys) of an event whose shape
    may be compiled, else None."""
    etype = ev.get("type")
    if etype == "track":
        which = ev.get("event")
        if type(which) is not str or not which:
            return None
    else:
        which = bool(ev.get("userId")) if etype == "identify" else None
    ctx = ev.get("context")
    sk = ()
    if type(ctx) is dict:
        ck = tuple(ctx)
        sk = tuple(tuple(sub) if type(sub := ctx[s]) is dict else None for s in CONTEXT_SECTIONS if s in ctx)
    elif ctx is None:
        ck = None
    else:
        return None
    obj = _own_keys(ev, etype, ctx)
    if obj is False:
        return None     # a discard: the general way
    return etype, which, ck, tuple(obj) if obj is not None else None, sk


def _key_chars(key):
    etype, which, ck, ok, sk = key
    return (len(which) if type(which) is str else 0) + sum(map(len, ck or ())) + sum(map(len, ok or ())) + sum(
        len(k) for sub in sk if sub for k in sub)


def _small(key):
    """Whether a shape is small enough to be remembered (the keys are the client's)."""
    etype, which, ck, ok, sk = key
    keys = len(ck or ()) + len(ok or ()) + sum(len(sub) for sub in sk if sub)
    return keys <= _MAX_KEYS and _key_chars(key) <= _MAX_KEY_CHARS


def _sources(ev, built):
    """Per built row, column -> the expression that reads its value from the
    event (``ev``, ``ctx``, ``s<i>`` a context section, ``p`` the own keys,
    ``u`` an identify's userId); the sections read (name, expression, key
    tuple); the expressions that must not be null (a null there means
    another column set); the pairs of expressions that must be equal (a
    page's name and its properties' name). None when a column's origin is
    not one this module follows."""
    etype = ev["type"]
    ctx = ev.get("context")
    ctx = ctx if type(ctx) is dict else {}
    if "bot" in ctx:
        return None          # context_bot depends on the value's type
    src = {col: f"ev[{key!r}]" if key in ev else f"ev.get({key!r})"
           for col, key in {**_BASE_COLUMNS, **_TYPE_COLUMNS[etype]}.items()}
    optional, equal = [], []
    sections = _context_sources(ctx, src, optional)
    if sections is None:
        return None
    obj = _own_keys(ev, etype, ctx)
    prefix = "context_traits_" if COMPILED_TYPES[etype] == "traits" else ""
    fill = _FILL.get(etype, ())
    for k in obj or ():
        col, expr = prefix + k, f"p[{k!r}]"
        optional.append(expr)
        if col in src:
            if col not in fill or col not in _TYPE_COLUMNS[etype]:
                return None
            equal.append((src[col], expr))      # the event's value (name, category), unless null; then the property's
        elif prefix or not k.startswith("context_"):
            src[col] = expr
        else:
            return None
    row_sources = _row_sources(etype, src, built)
    if row_sources is None or any(set(s) != set(r.data) for s, r in zip(row_sources, built)):
        return None       # a key that is not plainly its column (renamed, reserved, null): the general way
    return row_sources, sections, optional, equal, obj is not None


def _row_sources(etype, src, built):
    """:func:`_sources`' column map of each built row, None when the rows are not the type's."""
    tables = [r.table for r in built]
    if etype == "track":
        if len(built) != 2 or tables[0] != "tracks" or event_table_name(built[0].data["event"]) != tables[1]:
            return None
        return [{c: src[c] for c in built[0].data if c in src}, src]
    if etype == "identify":
        if tables == ["users", "identifies"]:
            users = {c: e for c, e in src.items() if c != "user_id"}
            users["id"] = "u"
            return [users, dict(src, user_id="u")]
        return [dict(src, user_id="(u if u is not None else '')")] if tables == ["identifies"] else None
    return [src] if len(built) == 1 else None


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


def _plans(built, schemas):
    """Per built row its plan: a track's per-event row a Composite after
    its ``tracks`` row's; None when a row does not fit as it is."""
    plans = []
    for r, ts in zip(built, schemas):
        if r.base is not None:
            plan = ts.composite(tuple(r.data), plans[-1]) if plans[-1] is not None else None
        else:
            plan = ts.plan(tuple(r.data))
        if plan is None:
            return None
        plans.append(plan)
    return plans


def _compile(ev, built, schemas, schema):
    """The encoder of ``ev``'s shape, or None when it takes the general way."""
    found = _sources(ev, built)
    plans = _plans(built, schemas) if found is not None else None
    if plans is None:
        return None
    expected = []
    for r, plan in zip(built, plans):
        line = plan.line_after(expected[-1], r.data) if r.base is not None else plan.line(r.data)
        if line is None:
            return None       # a value that does not fit as it is: the general way decides
        expected.append(line)
    namespace = {"Row": CompiledRow, "schema": schema}
    exec(_encoder_source(ev, built, plans, schemas, *found, namespace), namespace)   # keys enter as repr() literals only
    encode = namespace["encode"]
    # the generated code must give exactly the general way's lines for the event it was made from
    out = []
    try:
        done = encode(ev, out)
    except Exception:      # it is not this shape after all: the general way
        return None
    if not done or [r.precoded[1] for r in out] != expected or [r.table for r in out] != [r.table for r in built]:
        return None
    return encode


def _encoder_source(ev, built, plans, schemas, row_sources, sections, optional, equal, has_own, consts):
    """The text of ``encode(ev, rows)``: checks that its tables' schemas
    are current and that ``ev`` is the shape (its context keys, sections'
    keys, number of own keys: with every one read, the same keys), reads
    each source value once, encodes each row's line (:func:`_line_source`)
    and appends the rows."""
    lines = ["def encode(ev, rows):", "    tables = schema.tables"]
    for i, (r, ts) in enumerate(zip(built, schemas)):
        consts[f"ts{i}"], consts[f"plan{i}"] = ts, plans[i]
    lines += ["    if " + " or ".join(f"tables.get({r.table!r}) is not ts{i}" for i, r in enumerate(built)) + ":",
              "        return None"]
    lines += _shape_checks(ev, built, sections, has_own, consts)
    local = {}          # source expression -> its local's name
    for src in row_sources:
        for expr in src.values():
            if expr not in local:
                local[expr] = f"v{len(local)}"
                lines.append(f"    {local[expr]} = {expr}")
    for a, b in equal:
        if b not in local:
            local[b] = f"v{len(local)}"
            lines.append(f"    {local[b]} = {b}")
    if optional:        # a null there: another column set, the general way's
        lines += ["    if " + " or ".join(f"{local[e]} is None" for e in dict.fromkeys(optional)) + ":",
                  "        return False"]
    for a, b in equal:  # rows._place's rule for a page's PAGE_FILL keys; a conflict is a discard
        lines += [f"    if {local[a]} is None:", f"        {local[a]} = {local[b]}",
                  f"    elif {local[a]} != {local[b]}:", "        return False"]
    may_be_null = {local[e] for src in row_sources for e in src.values() if e not in optional}
    for i, (r, plan) in enumerate(zip(built, plans)):
        src = row_sources[i]
        own = plan.rest if r.base is not None else plan
        if own is None:
            lines.append(f"    l{i} = l{i - 1}")
            continue
        a, b = own.strings, own.strings + own.dates
        segments = [[local[src[c]] for c in cols] for cols in (own.columns[:a], own.columns[a:b], own.columns[b:])]
        consts[f"own{i}"] = own
        lines += _line_source(f"l{i}", f"own{i}", segments, own, may_be_null, consts)
        if r.base is not None:
            lines.append(f"    l{i} = l{i - 1} + '\\t' + l{i}")
    lines += _rows_source(built, [local[src["id"]] for src in row_sources], local[row_sources[0]["received_at"]])
    return "\n".join(lines)


def _shape_checks(ev, built, sections, has_own, consts):
    """Lines of ``encode`` that return None when ``ev`` is not the shape:
    its context's keys, each section's keys, the number of its own keys
    (each one is read by name later), an identify's user or none."""
    lines = []
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
    etype = ev["type"]
    if COMPILED_TYPES[etype] == "properties":
        read = "ev.get('properties')"
    else:       # an identify's traits: in its context, when it has one
        read = "ctx.get('traits')" if type(ctx) is dict else "None"
    if has_own:
        lines += [f"    p = {read}",
                  f"    if type(p) is not dict or len(p) != {len(_own_keys(ev, etype, ctx))}:",
                  "        return None"]
    else:
        lines += [f"    if {read} is not None:",
                  "        return None"]
    if etype == "identify":      # rows._identify: a users row when the userId is truthy
        lines += ["    u = ev.get('userId')",
                  f"    if {'not ' if len(built) == 2 else ''}u:",
                  "        return None"]
    return lines


def _rows_source(built, ids, recv):
    """Lines that append the event's CompiledRows, every slot set (what
    ``Row.__init__`` would, without its call): ``built`` the general
    way's rows, ``ids`` their row_id expressions."""
    lines = []
    for i, r in enumerate(built):
        own = r.base is None
        values = {"table": repr(r.table), "row_id": ids[i], "received_at": recv, "ticket": "None", "rounds": "0",
                  "base": f"r{i - 1}" if not own else "None", "plan": f"plan{i}" if own else "None",
                  "line": f"n{i}" if own else "None", "precoded": f"(plan{i}, n{i}, ts{i})",
                  "event": "ev", "index": str(i)}
        lines += [f"    n{i} = l{i} + '\\n'", f"    r{i} = Row()"]
        lines += [f"    r{i}.{slot} = {value}" for slot, value in values.items()]
    return lines + [f"    rows.append(r{i})" for i in range(len(built))] + ["    return True"]


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
