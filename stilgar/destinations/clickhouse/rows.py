"""Normalised events -> table rows (doc/clickhouse.md, "Schema"; the events: doc/events.md).

Pure: a row is a dict column -> JSON value (str, int, float, bool, dict, list;
None only for standard columns). Fitting values to column types happens later,
against the cached schema (:mod:`.coltypes`). Keys that cannot become columns
are recorded as discards here.
"""

from ..base import DISCARD
from .naming import DISCARDS_TABLE, column_name, event_table_name
from .schema import (CLOSED_CONTEXT_SECTIONS, CONTEXT_KEY_MAP, CONTEXT_SECTIONS, GENERAL_RESERVED, PAGE_FILL,
                     standard_columns)
from .capabilities import OLD
from .tsv import json_text

__all__ = ["Row", "build_rows", "build_event_rows", "discard_row", "whole_row_discard", "CONTEXT_COPIES"]


class Row:
    """One row for one table; ``ticket`` ties it to the write() that must wait for it.

    ``base``: another row whose every column this row holds with the same
    values (a track event's ``tracks`` row, for its per-event row), so that
    its TSV line can start with that row's (``plan`` and ``line``: how the
    router last encoded a row, when it fitted as it was)."""

    __slots__ = ("table", "data", "row_id", "received_at", "ticket", "rounds", "base", "plan", "line", "precoded")

    def __init__(self, table, data, row_id, received_at, ticket=None, base=None):
        self.table = table
        self.data = data
        self.row_id = row_id
        self.received_at = received_at
        self.ticket = ticket
        self.rounds = 0          # schema-change rounds this row went through
        self.base = base
        self.plan = None
        self.line = None
        self.precoded = None     # (plan, line, TableSchema) a compiled encoder made (.compiled): the router's, once

    def __repr__(self):
        return f"Row({self.table!r}, {self.data!r})"


def discard_row(table, row_id, column, value, received_at, reason, now_text):
    if value is not None and type(value) is not str:
        value = json_text(value)
    return Row(DISCARDS_TABLE, {
        "table_name": table, "row_id": row_id if type(row_id) is str else json_text(row_id),
        "column_name": column, "column_value": value,
        "received_at": received_at, "uuid_ts": now_text, "reason": reason,
    }, row_id, received_at)


def whole_row_discard(row, reason, now_text):
    """The whole row (as JSON) to rudder_discards, with ``column_name`` ''."""
    d = discard_row(row.table, row.row_id, "", json_text(row.data), row.received_at, reason, now_text)
    d.ticket = row.ticket
    return d


# standard columns of each table kind (names only, capability independent)
_STD = {k: frozenset(standard_columns(k, OLD)) for k in
        ("tracks", "event", "identifies", "users", "pages", "screens", "groups", "aliases")}


# context keys copied as they are (the last two: mobile sessions, as RudderStack's
# warehouse names them, doc/sdks.md)
CONTEXT_COPIES = (("locale", "context_locale"), ("timezone", "context_timezone"),
                  ("userAgent", "context_user_agent"), ("ip", "context_ip"),
                  ("sessionId", "context_session_id"), ("sessionStart", "context_session_start"))


def _base(ev, ctx, table, discards, now_text):
    recv = ev["receivedAt"]
    row = {
        "id": ev["messageId"],
        "anonymous_id": ev.get("anonymousId"),
        "sent_at": ev.get("sentAt"),
        "original_timestamp": ev.get("originalTimestamp"),
        "received_at": recv,
        "timestamp": ev.get("timestamp"),
        "channel": ev.get("channel"),
    }
    if ctx:
        copies, bot, sections = _context_layout(ctx)
        for key, col in copies:
            v = ctx[key]
            if v is not None:
                row[col] = v
        if bot and type(ctx["bot"]) is bool:   # enrich.bots: flag (doc/enrichment.md)
            row["context_bot"] = ctx["bot"]
        if sections:
            _context_sections(row, ctx, sections, table, discards, now_text)
    return row


_LAYOUTS = {}          # tuple of a context's keys -> what _context_layout found in it
_LAYOUTS_MAX = 4096
_LAYOUT_KEYS_MAX = 32  # contexts with more keys are looked at, not remembered
_LAYOUT_BYTES_MAX = 1024  # nor those whose key names are longer in all (the keys are the client's)


def _context_layout(ctx):
    """(copied keys present, whether ``bot`` is, sections present in
    CONTEXT_SECTIONS order) of ``ctx``, remembered by its key order: SDKs send
    the same few layouts, so most events need one look-up instead of one per
    known key."""
    order = tuple(ctx)
    layout = _LAYOUTS.get(order)
    if layout is None:
        layout = (tuple(kc for kc in CONTEXT_COPIES if kc[0] in ctx), "bot" in ctx,
                  tuple(s for s in CONTEXT_SECTIONS if s in ctx))
        if len(order) <= _LAYOUT_KEYS_MAX and sum(map(len, order)) <= _LAYOUT_BYTES_MAX:
            if len(_LAYOUTS) >= _LAYOUTS_MAX:
                _LAYOUTS.clear()
            _LAYOUTS[order] = layout
    return layout


def _context_sections(row, ctx, sections, table, discards, now_text):
    """``context.<section>.<key>`` into the standard or ``context_<section>_*`` columns."""
    recv = row["received_at"]
    for section in sections:
        sub = ctx[section]
        if sub is None:
            continue
        if type(sub) is not dict:
            discards.append(discard_row(table, row["id"], f"context_{section}", sub, recv,
                                        f"context.{section} is not an object", now_text))
            continue
        kmap = CONTEXT_KEY_MAP[section]
        prefix = None
        for k, v in sub.items():
            if v is None:
                continue
            col = kmap.get(k)
            if col is None:
                if section in CLOSED_CONTEXT_SECTIONS:
                    continue
                if prefix is None:
                    prefix = f"context_{section}_"
                col = column_name(prefix, k)[0]
            if col in row:
                discards.append(discard_row(table, row["id"], col, v, recv, "duplicate column", now_text))
                continue
            row[col] = v


_PLAIN = {}       # (prefix, std, fill) -> key -> its column, for keys that are plainly their column


def _add_keys(row, obj, prefix, std, fill, table, discards, now_text):
    """Add property (``prefix`` '') or trait (``context_traits_``) keys."""
    plain = _PLAIN.get((prefix, std, fill))
    if plain is None:
        plain = _PLAIN[(prefix, std, fill)] = {}
    later = None
    for k, v in obj.items():
        if v is None:
            continue
        col = plain.get(k)
        if col is not None and col not in row:
            row[col] = v      # the common case: one look-up
            continue
        col, verbatim = column_name(prefix, k)
        if not verbatim:
            if later is None:
                later = []
            later.append((col, v))
        elif (col in row or col in std or col in GENERAL_RESERVED or (fill and col in fill)
              or (not prefix and col.startswith("context_"))):
            _place(row, col, v, prefix, std, fill, table, discards, now_text)
        else:
            row[col] = v
            if len(plain) >= _PLAIN_MAX:
                plain.clear()
            plain[k] = col
    if later:
        for col, v in later:
            _place(row, col, v, prefix, std, fill, table, discards, now_text)


_PLAIN_MAX = 50_000


def _place(row, col, v, prefix, std, fill, table, discards, now_text):
    if fill and col in fill:
        cur = row.get(col)
        if cur is None:
            row[col] = v
        elif cur != v:
            discards.append(discard_row(table, row["id"], col, v, row["received_at"], "reserved column", now_text))
        return
    if col in std or col in GENERAL_RESERVED or (not prefix and col.startswith("context_")):
        discards.append(discard_row(table, row["id"], col, v, row["received_at"], "reserved column", now_text))
    elif col in row:
        discards.append(discard_row(table, row["id"], col, v, row["received_at"], "duplicate column", now_text))
    else:
        row[col] = v


def _object(ev, key, table, row, discards, now_text):
    obj = ev.get(key)
    if obj is None or type(obj) is dict:
        return obj
    discards.append(discard_row(table, row["id"], key, obj, row["received_at"], f"{key} is not an object",
                                now_text))
    return None


def build_rows(events, now_text):
    """Rows and discard rows for a list of normalised events.

    Returns ``(rows, discards)``: lists of :class:`Row`; ``now_text`` is the
    ISO time stamped in ``rudder_discards.uuid_ts``."""
    rows = []
    discards = []
    for ev in events:
        build_event_rows(ev, rows, discards, now_text)
    return rows, discards


def build_event_rows(ev, rows, discards, now_text):
    """:func:`build_rows` of one event, appending to ``rows`` and ``discards``."""
    try:
        _build_one(ev, rows, discards, now_text)
    except Exception as e:   # never fail a write for an event's content
        mid = ev.get("messageId") if isinstance(ev, dict) else None
        recv = ev.get("receivedAt") if isinstance(ev, dict) else None
        discards.append(discard_row("", mid or "", "", ev, recv or now_text,
                                    f"event could not be turned into rows: {e!r}", now_text))


_TYPE_TABLE = {"track": "tracks", "identify": "identifies", "page": "pages", "screen": "screens",
               "group": "groups", "alias": "aliases"}


def _build_one(ev, rows, discards, now_text):
    etype = ev.get("type")
    if etype == DISCARD:   # a batch element the door could not store (doc/events.md)
        discards.append(discard_row(_TYPE_TABLE.get(ev.get("eventType"), ""), ev.get("messageId") or "", "",
                                    json_text(ev.get("raw")), ev["receivedAt"],
                                    ev.get("message") or "discarded at the door", now_text))
        return
    ctx = ev.get("context")
    if type(ctx) is not dict:
        ctx = {}
    build = _BUILDERS.get(etype)
    if build is None:
        discards.append(discard_row("", ev.get("messageId") or "", "", ev, ev["receivedAt"],
                                    f"unknown event type: {etype!r}", now_text))
        return
    build(ev, ctx, rows, discards, now_text)


def _track(ev, ctx, rows, discards, now_text):
    recv = ev["receivedAt"]
    row = _base(ev, ctx, "tracks", discards, now_text)
    row["user_id"] = ev.get("userId")
    name = ev.get("event")
    if name is not None and type(name) is not str:
        name = json_text(name)
    row["event"] = name or ""
    rows.append(Row("tracks", row, row["id"], recv))
    props = _object(ev, "properties", "tracks", row, discards, now_text)
    if not name:
        per = dict(row)
        if props:
            per.update(props)
        discards.append(discard_row("tracks", row["id"], "", per, recv,
                                    "event name is empty: no per-event table", now_text))
        return
    table = event_table_name(name)
    per = dict(row)
    if props:
        _add_keys(per, props, "", _STD["event"], None, table, discards, now_text)
    rows.append(Row(table, per, row["id"], recv, base=rows[-1]))


def _identify(ev, ctx, rows, discards, now_text):
    recv = ev["receivedAt"]
    row = _base(ev, ctx, "identifies", discards, now_text)
    uid = ev.get("userId")
    traits = ctx.get("traits")
    if traits is not None and type(traits) is not dict:
        discards.append(discard_row("identifies", row["id"], "context_traits", traits, recv,
                                    "traits is not an object", now_text))
        traits = None
    if traits:
        _add_keys(row, traits, "context_traits_", _STD["identifies"], None, "identifies", discards, now_text)
    if uid:
        user = dict(row)
        user["id"] = uid
        rows.append(Row("users", user, uid, recv))
    row["user_id"] = uid if uid is not None else ""
    rows.append(Row("identifies", row, row["id"], recv))


def _page_or_screen(ev, ctx, rows, discards, now_text):
    table = "pages" if ev["type"] == "page" else "screens"
    row = _base(ev, ctx, table, discards, now_text)
    row["user_id"] = ev.get("userId")
    row["name"] = ev.get("name")
    row["category"] = ev.get("category")
    props = _object(ev, "properties", table, row, discards, now_text)
    if props:
        std = _STD[table]
        _add_keys(row, props, "", std, PAGE_FILL & std, table, discards, now_text)
    rows.append(Row(table, row, row["id"], ev["receivedAt"]))


def _group(ev, ctx, rows, discards, now_text):
    row = _base(ev, ctx, "groups", discards, now_text)
    row["user_id"] = ev.get("userId")
    gid = ev.get("groupId")
    row["group_id"] = gid if gid is not None else ""
    traits = _object(ev, "traits", "groups", row, discards, now_text)
    if traits:
        _add_keys(row, traits, "context_traits_", _STD["groups"], None, "groups", discards, now_text)
    rows.append(Row("groups", row, row["id"], ev["receivedAt"]))


def _alias(ev, ctx, rows, discards, now_text):
    row = _base(ev, ctx, "aliases", discards, now_text)
    row["user_id"] = ev.get("userId")
    pid = ev.get("previousId")
    row["previous_id"] = pid if pid is not None else ""
    rows.append(Row("aliases", row, row["id"], ev["receivedAt"]))


_BUILDERS = {"track": _track, "identify": _identify, "page": _page_or_screen, "screen": _page_or_screen,
             "group": _group, "alias": _alias}
