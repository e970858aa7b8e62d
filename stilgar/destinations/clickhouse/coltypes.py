"""Column types: parsing ClickHouse type names, inferring a type from a JSON
value, fitting values into an existing column (TSV text or a misfit), and the
widening ladder (doc/clickhouse.md, "Types: inference, fitting, widening").

Everything here is pure. Encoders are closures built once per column and
cached with the table schema: the hot path is one call per value.
"""

import datetime
import re

import attr

from .tsv import ESCAPES, NULL, json_text, needs_escape

__all__ = ["ColType", "Column", "parse_type", "render_type", "infer_kind", "kind_type",
           "new_column_type", "join_kinds", "widen_type", "parse_zoned_us", "is_zoned_datetime",
           "misfit_reason", "DT_MIN", "DT_MAX", "DT64_MIN_US", "DT64_MAX_US", "INT64_MIN", "INT64_MAX",
           "STILGAR_COMMENT", "ORIGINAL_LADDER"]

STILGAR_COMMENT = "stilgar"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DT_MIN, DT_MAX = 100_000_000, 4_294_967_295            # DateTime range accepted (seconds)
DT64_MIN_US = -2_208_988_800 * 10**6                   # 1900-01-01T00:00:00Z
DT64_MAX_US = 10_413_792_000 * 10**6                   # 2300-01-01T00:00:00Z (exclusive)
ORIGINAL_LADDER = frozenset(["Bool", "Int64", "Float64", "DateTime64(1)"])
_SAFE_FLOAT_INT = 2**1023                              # every int below this converts to a finite float

_INT_RANGES = {
    "Int8": (-(2**7), 2**7 - 1), "Int16": (-(2**15), 2**15 - 1), "Int32": (-(2**31), 2**31 - 1),
    "Int64": (INT64_MIN, INT64_MAX),
    "UInt8": (0, 2**8 - 1), "UInt16": (0, 2**16 - 1), "UInt32": (0, 2**32 - 1), "UInt64": (0, 2**64 - 1),
}
_AGG_RE = re.compile(r"^SimpleAggregateFunction\(\s*(\w+)\s*,\s*(.*)\)$", re.S)
_WRAP_RE = re.compile(r"^(LowCardinality|Nullable)\((.*)\)$", re.S)
_DT_RE = re.compile(r"^DateTime(?:\(\s*'[^']*'\s*\))?$")
_DT64_RE = re.compile(r"^DateTime64\(\s*(\d+)\s*(?:,\s*'[^']*'\s*)?\)$")


@attr.s(slots=True, frozen=True)
class ColType:
    raw = attr.ib()
    inner = attr.ib()          # the type without Nullable/LowCardinality/SimpleAggregateFunction
    nullable = attr.ib()
    lowcard = attr.ib()
    agg = attr.ib()            # SimpleAggregateFunction's function name, or None
    kind = attr.ib()           # 'S' string, 'I' integer, 'F' float, 'B' bool, 'D' datetime, '?' other
    lo = attr.ib(default=None)
    hi = attr.ib(default=None)
    precision = attr.ib(default=None)   # DateTime64 precision; None for DateTime


def parse_type(raw):
    """Parse a type name as ``system.columns`` shows it."""
    s = raw.strip()
    agg = None
    m = _AGG_RE.match(s)
    if m:
        agg, s = m.group(1), m.group(2).strip()
    nullable = lowcard = False
    while True:
        m = _WRAP_RE.match(s)
        if not m:
            break
        if m.group(1) == "Nullable":
            nullable = True
        else:
            lowcard = True
        s = m.group(2).strip()
    lo = hi = precision = None
    if s == "String":
        kind = "S"
    elif s in _INT_RANGES:
        kind = "I"
        lo, hi = _INT_RANGES[s]
    elif s in ("Float64", "Float32"):
        kind = "F"
    elif s == "Bool":
        kind = "B"
    elif _DT_RE.match(s):
        kind = "D"
    else:
        m = _DT64_RE.match(s)
        if m:
            kind = "D"
            precision = int(m.group(1))
        else:
            kind = "?"
    return ColType(raw=raw, inner=s, nullable=nullable, lowcard=lowcard, agg=agg, kind=kind,
                   lo=lo, hi=hi, precision=precision)


def render_type(inner, nullable=True, lowcard=False, agg=None):
    t = inner
    if nullable:
        t = f"Nullable({t})"
    if lowcard:
        t = f"LowCardinality({t})"
    if agg:
        t = f"SimpleAggregateFunction({agg}, {t})"
    return t


# -- datetimes ---------------------------------------------------------------

_ZONED_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)$")
_DAY_CACHE = {}
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def _days(y, m, d):
    key = (y, m, d)
    days = _DAY_CACHE.get(key)
    if days is None:
        days = datetime.date(y, m, d).toordinal() - _EPOCH_ORDINAL   # ValueError if invalid
        if len(_DAY_CACHE) > 100_000:
            _DAY_CACHE.clear()
        _DAY_CACHE[key] = days
    return days


_MINUTE_CACHE = {}


def _minute_us(text):
    """Unix time in microseconds of ``YYYY-MM-DDTHH:MM`` (the first 16
    characters of a normalised time), or None; memoised: the times of a
    batch share their minutes."""
    hit = _MINUTE_CACHE.get(text)
    if hit is None:
        if not (text[0:4].isdigit() and text[5:7].isdigit() and text[8:10].isdigit()
                and text[11:13].isdigit() and text[14:16].isdigit()):
            return None
        h, mi = int(text[11:13]), int(text[14:16])
        if h > 23 or mi > 59:
            return None
        try:
            days = _days(int(text[0:4]), int(text[5:7]), int(text[8:10]))
        except ValueError:
            return None
        hit = (days * 86400 + h * 3600 + mi * 60) * 1_000_000
        if len(_MINUTE_CACHE) > 100_000:
            _MINUTE_CACHE.clear()
        _MINUTE_CACHE[text] = hit
    return hit


def parse_zoned_us(text):
    """Unix time in integer microseconds of a full ISO 8601 date-time with a
    zone (``Z``, ``+hh:mm``, ``+hhmm``, ``+hh``); None for anything else."""
    if len(text) < 16:
        return None
    # fast path: the normalised form YYYY-MM-DDTHH:MM:SS.ffffffZ
    if len(text) == 27 and text[26] == "Z" and text[10] == "T" and text[19] == "." \
            and text[4] == "-" and text[7] == "-" and text[13] == ":" and text[16] == ":":
        sec, frac = text[17:19], text[20:26]
        if not (sec.isdigit() and frac.isdigit()) or sec >= "60":
            return None
        base = _minute_us(text[:16])
        if base is None:
            return None
        return base + int(sec) * 1_000_000 + int(frac)
    m = _ZONED_RE.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    h, mi = int(h), int(mi)
    s = int(s) if s else 0
    if h > 23 or mi > 59 or s > 59:
        return None
    try:
        days = _days(int(y), int(mo), int(d))
    except ValueError:
        return None
    us = (days * 86400 + h * 3600 + mi * 60 + s) * 1_000_000
    if frac:
        us += int((frac + "000000")[:6])
    if not z:
        oh, om = int(oh), int(om or 0)
        if oh > 23 or om > 59:
            return None
        off = (oh * 3600 + om * 60) * 1_000_000
        us = us - off if sign == "+" else us + off
    return us


def is_zoned_datetime(text):
    """Cheap test first: most strings are not dates."""
    return len(text) >= 16 and text[4:5] == "-" and text[0:1].isdigit() and parse_zoned_us(text) is not None


# -- inference -----------------------------------------------------------------

def infer_kind(value):
    """The JSON type's kind: B, I (F outside Int64), F, D (zoned ISO date-time
    string), S (other strings, objects, arrays); None for null (no column)."""
    t = type(value)
    if t is str:
        return "D" if is_zoned_datetime(value) else "S"
    if t is bool:
        return "B"
    if t is int:
        return "I" if INT64_MIN <= value <= INT64_MAX else "F"
    if t is float:
        return "F"
    if value is None:
        return None
    return "S"


def fits_float(value):
    """True when the int ``value`` is a finite Float64 (ClickHouse reads the
    digits of a larger one as ``inf``)."""
    if -_SAFE_FLOAT_INT < value < _SAFE_FLOAT_INT:
        return True
    try:
        float(value)
    except OverflowError:
        return False
    return True


def kind_type(kind, caps):
    """The inner ClickHouse type of a kind on a server with capabilities ``caps``."""
    if kind == "B":
        return "Bool" if caps.bool else "UInt8"
    if kind == "I":
        return "Int64"
    if kind == "F":
        return "Float64"
    if kind == "D":
        return "DateTime64(3, 'UTC')" if caps.datetime64 else "DateTime('UTC')"
    return "String"


def new_column_type(kind, caps, aggregating=False):
    """Type of a column the collector adds for a value of ``kind``."""
    return render_type(kind_type(kind, caps), nullable=True, agg="anyLast" if aggregating else None)


_RANK = {"B": 0, "I": 1, "F": 2, "S": 3}


def join_kinds(a, b):
    """The narrowest kind holding both (the ladder Bool < Int64 < Float64 < String;
    DateTime only joins itself, else String)."""
    if a == b:
        return a
    if a is None:
        return b
    if b is None:
        return a
    if a == "D" or b == "D" or a not in _RANK or b not in _RANK:
        return "S"
    return a if _RANK[a] > _RANK[b] else b


def widen_type(column, value, caps, standard):
    """New type for ``column`` so that ``value`` fits, or None when the column
    must not (or need not) change. ``standard``: the column is one of the
    table's standard columns (only ``context_screen_*`` Int64 -> Float64 may
    widen among those)."""
    vk = infer_kind(value)
    if vk is None or (type(value) is int and not fits_float(value)):
        return None          # no numeric type holds it: a discard, not a wider column
    ct = column.ctype
    ck = column.kind
    if standard:
        if column.name.startswith("context_screen_") and ck == "I" and vk == "F":
            return render_type("Float64", ct.nullable, ct.lowcard, ct.agg)
        return None
    if not column.widenable or ck not in ("B", "I", "F", "D", "S"):
        return None
    target = join_kinds(ck, vk)
    if target == ck:
        return None
    return render_type(kind_type(target, caps), ct.nullable, False if target != "S" else ct.lowcard, ct.agg)


# -- encoders (value -> TSV text, or None when the value does not fit) --------

def _enc_string(nullable):
    esc = ESCAPES

    def enc(v):
        t = type(v)
        if t is str:
            # most strings need no escaping: a few C-level scans beat a translate()
            if not needs_escape(v):
                return v
            return v.translate(esc)
        if v is None:
            return NULL if nullable else None
        if t is bool:
            return "true" if v else "false"
        if t is int:
            return str(v)
        return json_text(v).translate(esc)
    return enc


def _enc_int(nullable, lo, hi):
    null_text = NULL if nullable else None
    bool_ok = lo <= 0 and hi >= 1

    def enc(v):
        t = type(v)
        if t is int:
            return str(v) if lo <= v <= hi else None
        if v is None:
            return null_text
        if t is bool:
            return ("1" if v else "0") if bool_ok else None
        if t is float:
            if v.is_integer():
                i = int(v)
                if lo <= i <= hi:
                    return str(i)
            return None
        if t is str and v == "":
            return null_text
        return None
    # the common case as an expression (compiled.py unrolls it; ``{v}`` a
    # local name, ``{enc}`` this encoder's): the same text as enc(v)
    enc.inline = f"str({{v}}) if type({{v}}) is int and {lo} <= {{v}} <= {hi} else {{enc}}({{v}})"
    return enc


def _enc_float(nullable):
    null_text = NULL if nullable else None

    def enc(v):
        t = type(v)
        if t is float:
            return repr(v)      # float_text's rule: repr(), nan and infinities included
        if t is int:
            return str(v) if fits_float(v) else None
        if v is None:
            return null_text
        if t is bool:
            return "1" if v else "0"
        if t is str and v == "":
            return null_text
        return None
    enc.inline = "repr({v}) if type({v}) is float else {enc}({v})"     # as _enc_int's
    return enc


def _enc_bool(nullable, numeric):
    null_text = NULL if nullable else None
    yes, no = ("1", "0") if numeric else ("true", "false")

    def enc(v):
        if v is True:
            return yes
        if v is False:
            return no
        if v is None or v == "":
            return null_text
        return None
    return enc


_DT_CACHE_MAX = 8192
# time text -> field text, shared by every column of one (precision (None: DateTime),
# nullability): the same timestamps recur (receivedAt of a batch, the rows of one
# event, every table of an event). Real conversions only, and in a Nullable
# column's memo the two values that are NULL there (None and "").
_DT_TEXTS = {}


def _dt_texts(precision, nullable):
    key = (precision, nullable)
    cache = _DT_TEXTS.get(key)
    if cache is None:
        cache = _DT_TEXTS[key] = dict(_nulls(nullable))
    return cache


def _nulls(nullable):
    return {None: NULL, "": NULL} if nullable else {}


def _seconds_text(v):
    us = parse_zoned_us(v)
    if us is None:
        return None
    sec = us // 1_000_000
    if not DT_MIN <= sec <= DT_MAX:
        return None
    return str(sec)


def _decimal_seconds(p):
    def convert(v):
        us = parse_zoned_us(v)
        if us is None or not (DT64_MIN_US <= us < DT64_MAX_US):
            return None
        sign = "-" if us < 0 else ""
        a = -us if us < 0 else us
        if p == 0:
            return sign + str(a // 1_000_000)
        if p <= 6:
            units = a // 10 ** (6 - p)
        else:
            units = a * 10 ** (p - 6)
        scale = 10 ** p
        return f"{sign}{units // scale}.{units % scale:0{p}d}"
    return convert


def _enc_time(nullable, convert, cache, prefix=None):
    """``prefix``: how many leading characters of a normalised time
    (``YYYY-MM-DDTHH:MM:SS.ffffffZ``, what the normaliser writes) decide the
    field text, when the column keeps less than microseconds; the times of an
    event differ from the next event's only in digits the column drops, so
    a memo by that prefix spares the conversion of most times seen first."""
    null_text = NULL if nullable else None
    coarse = {}      # prefix of a normalised time at or after 1970 -> field text

    def enc(v):
        if type(v) is str:
            hit = cache.get(v)
            if hit is not None:
                return hit
            if v == "":
                return null_text
            if prefix is not None and len(v) == 27 and v[26] == "Z" and v[19] == "." and v[20:26].isdigit():
                key = v[:prefix]
                text = coarse.get(key)
                if text is None:
                    text = convert(v)
                    # before 1970 the fraction's digits round the other way: no memo
                    if text is not None and text[0] != "-":
                        if len(coarse) >= _DT_CACHE_MAX:
                            coarse.clear()
                        coarse[key] = text
            else:
                text = convert(v)
            if text is not None:
                if len(cache) >= _DT_CACHE_MAX:
                    cache.clear()
                    cache.update(_nulls(nullable))
                cache[v] = text
            return text
        if v is None:
            return null_text
        return None
    enc.texts = cache     # Plan.line reads it directly (dict.get in C) before calling enc
    enc.convert = convert  # the conversion without memos (tests)
    return enc


def _enc_datetime(nullable):
    return _enc_time(nullable, _seconds_text, _dt_texts(None, nullable), prefix=19)


def _enc_datetime64(nullable, precision):
    p = min(precision, 9)
    # up to microseconds the text is the first 19 characters (seconds), the
    # point and p digits; beyond, every digit counts
    prefix = 19 if p == 0 else 20 + p if p <= 6 else None
    return _enc_time(nullable, _decimal_seconds(p), _dt_texts(p, nullable), prefix=prefix)


def _enc_other(nullable):
    null_text = NULL if nullable else None

    def enc(v):
        if v is None:
            return null_text
        return None
    return enc


_ENCODERS = {}


def make_encoder(ct, boolish=False):
    """The encoder of a column type, shared by every column of that type (so
    that the datetime encoders' memos serve every table a value goes to)."""
    key = (ct, boolish)
    enc = _ENCODERS.get(key)
    if enc is None:
        if len(_ENCODERS) >= 10_000:    # types are few; an operator's odd tables cannot grow this unbounded
            _ENCODERS.clear()
        enc = _ENCODERS[key] = _build_encoder(ct, boolish)
    return enc


def _build_encoder(ct, boolish):
    if ct.kind == "S":
        return _enc_string(ct.nullable)
    if ct.kind == "I":
        if boolish:
            return _enc_bool(ct.nullable, numeric=True)
        return _enc_int(ct.nullable, ct.lo, ct.hi)
    if ct.kind == "F":
        return _enc_float(ct.nullable)
    if ct.kind == "B":
        return _enc_bool(ct.nullable, numeric=False)
    if ct.kind == "D":
        if ct.precision is None:
            return _enc_datetime(ct.nullable)
        return _enc_datetime64(ct.nullable, ct.precision)
    return _enc_other(ct.nullable)


_DEFAULTS = {"S": "", "I": "0", "F": "0", "B": "0"}


@attr.s(slots=True)
class Column:
    """One column as the cached ``system.columns`` row describes it."""
    name = attr.ib()
    ctype = attr.ib()
    stilgar = attr.ib(default=False)     # COMMENT 'stilgar': the collector created it
    kind = attr.ib(init=False)
    widenable = attr.ib(init=False)
    encode = attr.ib(init=False, repr=False)
    default = attr.ib(init=False, repr=False)   # text for a misfit in a non-Nullable column

    def __attrs_post_init__(self):
        ct = self.ctype
        boolish = ct.inner == "UInt8" and self.stilgar
        self.kind = "B" if boolish else ct.kind
        self.widenable = self.stilgar or ct.inner in ORIGINAL_LADDER and ct.nullable and not ct.lowcard
        self.encode = make_encoder(ct, boolish)
        if ct.nullable:
            self.default = NULL
        elif ct.kind == "B":
            self.default = "false"
        else:
            self.default = _DEFAULTS.get(self.kind)

    @classmethod
    def from_system(cls, name, type_text, comment=""):
        return cls(name=name, ctype=parse_type(type_text), stilgar=(comment or "").strip() == STILGAR_COMMENT)


def misfit_reason(column, value):
    """Why ``value`` does not fit ``column`` (text for rudder_discards.reason)."""
    vk = infer_kind(value)
    if column.kind == "D" and vk == "D":
        return "timestamp out of range"
    if column.kind == "I" and vk == "I":
        return "integer out of range"
    if type(value) is int and not fits_float(value):
        return "number out of range"
    names = {"B": "boolean", "I": "integer", "F": "float", "D": "datetime", "S": "string"}
    return f"incompatible value: {names.get(vk, 'value')} into {column.ctype.raw}"
