"""Table and column names: validation, sanitising, quoting (doc/clickhouse.md,
"Schema": per-event table names, column names).

Pure functions; results of the hot ones are memoised in bounded dicts.
"""

import hashlib
import re
import unicodedata

__all__ = ["IDENT_RE", "MAX_NAME", "BASE_TABLES", "DISCARDS_TABLE", "table_label", "quote_ident", "quote_string",
           "column_name", "event_table_name", "normalise_event_name", "short_hash"]

IDENT_RE = re.compile(r"^[a-zA-Z_][0-9a-zA-Z_]*\Z")
MAX_NAME = 64
DISCARDS_TABLE = "rudder_discards"
BASE_TABLES = frozenset(["tracks", "identifies", "users", "pages", "screens", "groups", "aliases"])
_RESERVED_TABLES = BASE_TABLES | {DISCARDS_TABLE}
_NON_ALNUM = re.compile(r"[^0-9A-Za-z]")


def table_label(table):
    """The bounded ``table`` label of a metric for a table name: a base table or
    rudder_discards by name, every per-event table as ``event``."""
    return table if table in _RESERVED_TABLES else "event"


def quote_ident(name):
    """Backquote an identifier (works on 18.16 and on modern servers)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(text):
    """A single-quoted SQL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def short_hash(text, n=8):
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


_COLUMN_CACHE = {}
_CACHE_MAX = 200_000


def column_name(prefix, key):
    """Column for a property/trait/context key under ``prefix`` (``''``, ``context_traits_``...).

    Verbatim when the key is an identifier and the result is at most 64
    characters; otherwise sanitised (ASCII alphanumerics kept, everything else
    ``_``, ``_`` before a leading digit). A key holding any non-ASCII character,
    or whose column would be longer than 64 characters, also gets ``_`` + 8 hex
    of sha1(key) (cut first to fit): ``ключ`` and ``слово`` would otherwise
    both be ``____``. ASCII keys keep the original's names (doc/clickhouse.md,
    "Column names"). Returns ``(column, verbatim)``."""
    ck = (prefix, key)
    hit = _COLUMN_CACHE.get(ck)
    if hit is not None:
        return hit
    name = prefix + key
    if len(name) <= MAX_NAME and IDENT_RE.match(key):
        result = (name, True)
    else:
        body = _NON_ALNUM.sub("_", key)
        if not prefix and (not body or body[0].isdigit()):
            body = "_" + body
        name = prefix + body
        if len(name) > MAX_NAME or not body or not key.isascii():
            suffix = "_" + short_hash(key)
            name = (prefix + body)[:MAX_NAME - len(suffix)] + suffix
        result = (name, False)
    if len(_COLUMN_CACHE) >= _CACHE_MAX:
        _COLUMN_CACHE.clear()
    _COLUMN_CACHE[ck] = result
    return result


def normalise_event_name(name):
    """The original's rule: strip diacritics, lowercase, drop characters that
    are neither ASCII-graphic nor whitespace, every other non-alphanumeric to
    ``_`` (one for one), ``track_`` before a leading digit."""
    decomposed = unicodedata.normalize("NFKD", name)
    out = []
    for ch in decomposed:
        if unicodedata.combining(ch):
            continue
        ch = ch.lower()
        o = ord(ch)
        if o < 128 and (ch.isalnum()):
            out.append(ch)
        elif (33 <= o <= 126) or ch.isspace():
            # ASCII graphic (punctuation) or whitespace of any script
            out.append("_")
        # anything else (non-ASCII letters, controls) is dropped
    result = "".join(out)
    if result and result[0].isdigit():
        result = "track_" + result
    return result


_TABLE_CACHE = {}


def event_table_name(name):
    """Per-event table of a track event name (doc/clickhouse.md, "Per-event table names").

    A name equal to a base table or ``rudder_discards`` gets ``track_``; a name
    normalising to nothing, or longer than 64 characters, becomes
    ``track_<first 12 hex of sha1(name)>``."""
    hit = _TABLE_CACHE.get(name)
    if hit is not None:
        return hit
    table = normalise_event_name(name)
    if table in _RESERVED_TABLES:
        table = "track_" + table
    if not table or len(table) > MAX_NAME or not IDENT_RE.match(table):
        table = "track_" + short_hash(name, 12)
    if len(_TABLE_CACHE) >= _CACHE_MAX:
        _TABLE_CACHE.clear()
    _TABLE_CACHE[name] = table
    return table
