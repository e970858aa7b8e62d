"""Decoding of request bodies: bytes -> a JSON object, or ``Rejected``.

The fast path is ``stilgar.jsoncodec.fast_loads`` (msgspec, else orjson).
The standard library's ``json`` is used only where that would give another
result:

* integers outside 64 bits when the fast decoder is orjson (it turns them
  into floats; here they stay exact Python ints; msgspec keeps them exact
  itself). Beware: ``orjson.dumps`` refuses such ints (``TypeError``), so
  whoever serialises events must fall back to the standard library for
  them (``jsoncodec.dumps`` does). Integers of more than 4300 digits are
  ``invalid json`` (Python's own limit on int parsing);
* no C decoder installed at all (PyPy).

Decisions (see ``parse_json``):

* **Depth**: ``MAX_DEPTH`` (512) nested arrays/objects at most, the body's
  own object counting 1 (so a batch element, at depth 3, may nest 510
  levels itself). rudder-server's gateway sets no limit of its own
  (``gjson.ValidBytes``; doc/sdks.md has the details) and mobile SDKs resend
  a refused batch for ever, so depth is never a reason to refuse a batch:
  with ``cut_deep=True`` every array or object that would open below that
  depth is replaced, before parsing, by the string ``TOO_DEEP_MARK``, and
  the normaliser makes each event holding one a discard. Without it (and
  for a body whose brackets do not balance) a deeper body is ``invalid
  json``. The depth is measured on the raw bytes *before* any parser runs
  (orjson has a limit of 1024 levels but older versions overflow the C
  stack; msgspec's depends on the Python stack, so a ``RecursionError``
  there is retried with orjson), and the limit keeps every stored event within what the spool and
  the destinations serialise (``orjson.dumps`` stops at 255 levels, the
  standard library's fallback at about 1000 minus the call stack).
  The content of a cut subtree is not checked. A body with more than
  ``MAX_CUTS`` separate too-deep parts stays ``invalid json``.
* **Lone surrogate escapes** (``"\\ud800"``, an unpaired ``"\\udc00"``)
  become U+FFFD; a correct pair is decoded normally. Raw surrogate bytes
  are invalid UTF-8 and therefore ``invalid json``.
* **Invalid UTF-8** anywhere, ``NaN``, ``Infinity``, ``-Infinity``, numbers
  that overflow a double (``1e400``), a top level that is not an object,
  an empty body: ``invalid json``.
* **A leading UTF-8 BOM** is skipped (RFC 8259 allows a parser to ignore
  it; some .NET/Windows clients send one).
* Duplicate keys: the last one wins (as both parsers do).
"""

import json
import re
from itertools import accumulate

from ..jsoncodec import FAST_LOADS, FAST_LOADS_EXACT_INTS, fast_loads, orjson
from .errors import INVALID_JSON, Rejected

__all__ = ["parse_json", "MAX_DEPTH", "TOO_DEEP_MARK", "MAX_CUTS"]

#: Deepest stored nesting of arrays and objects (the body's object is 1).
MAX_DEPTH = 512

#: What replaces a subtree nested deeper than ``MAX_DEPTH`` (``cut_deep``).
TOO_DEEP_MARK = "\x00stilgar: nested deeper than %d levels, cut" % MAX_DEPTH
_TOO_DEEP_JSON = b'"\\u0000' + TOO_DEEP_MARK[1:].encode("ascii") + b'"'

_BOM = b"\xef\xbb\xbf"

# Depth check, on bytes, before any parser runs. Only the quotes and the
# four brackets matter once escapes are gone; strings are then removed
# (adjacent quotes first: an empty string, or the gap between two strings,
# which cannot hold a bracket), and the bracket skeleton is reduced by
# deleting innermost pairs: a valid document empties in exactly
# max-depth passes.
_KEEP_DEPTH_BYTES = bytes(b for b in range(256) if b not in b'"[]{}')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_ESCAPE_RE = re.compile(rb"\\.", re.S)
_QUOTE_ESCAPE_RE = re.compile(rb'\\["\\]')
_COMPACT_STRING_RE = re.compile(rb'"[^"]*"')
_REDUCE_PASSES = 12
_DELTA = tuple(1 if b == 91 else -1 if b == 93 else 0 for b in range(256))

# Integer tokens of 20 or more digits may be beyond orjson's int64/uint64
# range (orjson returns a float for them; the standard library an exact int).
# A negative one below -2**63 may have only 19 digits.
_DIGITS_AS_ZERO = bytes(48 if 48 <= b <= 57 else b if b == 45 else 32 for b in range(256))
_TWENTY_DIGITS = b"0" * 20
_MINUS_19_DIGITS = b"-" + b"0" * 19
_BIG_INT_RE = re.compile(rb"(?:^|[:\[,\s])(?:-?\d{20}|-\d{19})")
_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)

# Escapes, scanned left to right: an escaped backslash (consumed whole so the
# next "u" is not read as an escape), a correct surrogate pair, a lone one.
_SURROGATE_ESCAPE_RE = re.compile(
    rb"\\\\"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)
_ANY_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F]")


def _fix_escape(match):
    text = match.group()
    return b"\\ufffd" if len(text) == 6 else text


def _replace_lone_surrogates(body):
    """Rewrite each lone-surrogate ``\\uXXXX`` escape as ``\\ufffd``."""
    if not _ANY_SURROGATE_ESCAPE_RE.search(body):
        return body
    return _SURROGATE_ESCAPE_RE.sub(_fix_escape, body)


def _depth_ok(body, limit=MAX_DEPTH):
    """False if ``body`` nests arrays/objects deeper than ``limit``, or
    is certainly not JSON (unterminated string, unbalanced brackets). True
    for every valid document within the limit. Linear time, C speed."""
    compact = body.translate(None, _KEEP_DEPTH_BYTES)
    quotes = compact.count(b'"')
    if len(compact) - quotes <= limit:
        return True  # too few brackets to be too deep
    # \" and \\ are the only escapes that can hide or fake a quote (a two-byte
    # ``in`` is slow on JSON, where '"' is everywhere: memchr, then a regex)
    if b"\\" in body and _QUOTE_ESCAPE_RE.search(body):
        compact = _ESCAPE_RE.sub(b"", body).translate(None, _KEEP_DEPTH_BYTES)
        quotes = compact.count(b'"')
    if quotes & 1:
        return False  # an unterminated string
    if compact.count(b'""') * 2 == quotes:
        # every string's quotes are adjacent: no string holds a bracket
        skeleton = compact.translate(_SQUARE, b'"')
    else:
        compact = compact.replace(b'""', b"")
        skeleton = _COMPACT_STRING_RE.sub(b"", compact).translate(_SQUARE)
    # Each pass deletes every innermost pair (the leaves), so the depth
    # drops by exactly one per pass.
    too_many_opens = b"[" * (limit + 1)
    for passes in range(_REDUCE_PASSES):
        if not skeleton:
            return True
        if too_many_opens in skeleton:
            return False
        reduced = skeleton.replace(b"[]", b"")
        if len(reduced) == len(skeleton):
            return False  # unbalanced
        skeleton = reduced
    if not skeleton:
        return True
    # Still something left: finish linearly (bounded cost on a hostile body).
    limit -= _REDUCE_PASSES
    depth = 0
    for delta in map(_DELTA.__getitem__, skeleton):
        depth += delta
        if depth > limit or depth < 0:
            return False
    return depth == 0


# Cutting what is too deep: brackets inside strings blanked (escapes masked
# first, positions kept), then the bracket depth followed 256 bytes at a time.
_IN_STRING = bytes.maketrans(b"[]{}", b"    ")
_STEP = tuple(1 if b in (91, 123) else -1 if b in (93, 125) else 0 for b in range(256))
_CHUNK = 256

#: More separate too-deep parts than this in one body: refused as ``invalid
#: json`` (no SDK sends that; each cut costs a little CPU and grows the body).
MAX_CUTS = 10_000


def _cut_deep(body, limit):
    """``(body, cuts)`` where each array or object that would open at depth
    ``limit + 1`` is replaced by ``_TOO_DEEP_JSON``; ``None`` when the quotes
    or brackets do not balance, or for more than ``MAX_CUTS`` cuts. Cost:
    a few C-speed passes over the body, one Python step per string and per
    256 bytes, and prefix sums only over chunks where the limit is within
    reach (bench/deep_json.py measures hostile bodies)."""
    skeleton = _bracket_skeleton(body)
    if skeleton is None:
        return None  # an unterminated string
    spans = _too_deep_spans(skeleton, limit)
    if spans is None:
        return None
    if not spans:
        return body, 0
    pieces = []
    last = 0
    for start, end in spans:
        pieces.append(body[last:start])
        pieces.append(_TOO_DEEP_JSON)
        last = end
    pieces.append(body[last:])
    return b"".join(pieces), len(spans)


def _bracket_skeleton(body):
    """``body`` with escapes masked and the brackets inside strings blanked
    (same length, so positions agree); ``None`` for an unterminated string."""
    masked = _ESCAPE_RE.sub(b"__", body) if b"\\" in body else body
    parts = masked.split(b'"')
    if not len(parts) & 1:
        return None
    translate = bytes.translate
    parts[1::2] = [translate(p, _IN_STRING) for p in parts[1::2]]
    return b'"'.join(parts)


def _too_deep_spans(skeleton, limit):
    """``[(start, end)]`` of the arrays/objects opening at depth ``limit + 1``;
    ``None`` when the brackets do not balance or for more than ``MAX_CUTS``."""
    count = skeleton.count
    spans = []
    depth = 0
    cut_at = -1
    for off in range(0, len(skeleton), _CHUNK):
        end = off + _CHUNK
        opens = count(b"[", off, end) + count(b"{", off, end)
        closes = count(b"]", off, end) + count(b"}", off, end)
        if (depth + opens <= limit) if cut_at < 0 else (depth - closes > limit):
            depth += opens - closes  # the crossing is out of this chunk's reach
            if depth < 0:
                return None
            continue
        # sums[k]: the depth after the first k bytes, relative to the chunk's
        # start (small ints: Python does not allocate them)
        sums = list(accumulate(map(_STEP.__getitem__, skeleton[off:end]), initial=0))
        k = 0
        while True:
            try:
                k = sums.index((limit + 1 if cut_at < 0 else limit) - depth, k + 1)
            except ValueError:
                break
            if cut_at < 0:
                cut_at = off + k - 1
            else:
                spans.append((cut_at, off + k))
                cut_at = -1
                if len(spans) > MAX_CUTS:
                    return None
        if depth + min(sums) < 0:
            return None
        depth += sums[-1]
    if depth != 0 or cut_at >= 0:
        return None
    return spans


def _has_big_int(body):
    digits = body.translate(_DIGITS_AS_ZERO)
    if _TWENTY_DIGITS not in digits and _MINUS_19_DIGITS not in digits:
        return False
    # Maybe only a long digit run inside a string: look at number tokens.
    return _BIG_INT_RE.search(_STRING_RE.sub(b'""', body)) is not None


def _invalid():
    return Rejected(400, INVALID_JSON)


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text):
    value = float(text)
    if value in (_INF, _NINF):
        raise ValueError("number out of range")
    return value


_INF = float("inf")
_NINF = float("-inf")


def _stdlib_loads(body):
    text = body.decode("utf-8")  # strict: invalid UTF-8 raises
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _as_bytes(body):
    """``body`` as ``bytes`` (a ``str`` UTF-8 encoded), without a leading BOM."""
    if not isinstance(body, bytes):
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        elif isinstance(body, str):
            try:
                body = body.encode("utf-8")
            except UnicodeEncodeError:
                raise _invalid() from None
        else:
            raise _invalid()
    if body[:3] == _BOM:
        body = body[3:]
    return body


def _decode(body):
    """The value of a body whose depth is checked; ``ValueError`` & co. if not JSON."""
    if FAST_LOADS == "json" or not FAST_LOADS_EXACT_INTS and _has_big_int(body):
        return _stdlib_loads(_replace_lone_surrogates(body))
    loads = fast_loads
    try:
        return loads(body)
    except RecursionError:
        # msgspec's nesting limit is what is left of the Python stack; orjson's is fixed
        if orjson is None or _has_big_int(body):
            raise
        loads = orjson.loads
        try:
            return loads(body)
        except ValueError:
            pass
    except ValueError:
        pass
    # The C decoders refuse lone surrogate escapes: U+FFFD for them, then again.
    fixed = _replace_lone_surrogates(body)
    if fixed is body:
        raise _invalid()
    return loads(fixed)


def parse_json(body, *, cut_deep=False):
    """Decode a request body into a ``dict``; ``Rejected(400, 'invalid json')``
    on anything else. Never raises anything but ``Rejected``.

    With ``cut_deep`` the result is ``(dict, cuts)``: subtrees nested deeper
    than ``MAX_DEPTH`` are replaced by ``TOO_DEEP_MARK`` (``cuts`` of them)
    instead of refusing the body.

    ``body`` is ``bytes`` (``bytearray``, ``memoryview`` and an already
    decoded ``str`` are accepted too; anything else is ``invalid json``).
    See the module docstring for the exact rules.
    """
    body = _as_bytes(body)
    cuts = 0
    if not _depth_ok(body):
        cut = _cut_deep(body, MAX_DEPTH) if cut_deep else None
        if cut is None or not cut[1]:
            raise _invalid()
        body, cuts = cut
    try:
        result = _decode(body)
    except (ValueError, RecursionError, MemoryError, OverflowError, TypeError):
        # msgspec.DecodeError, orjson.JSONDecodeError, json.JSONDecodeError and
        # UnicodeDecodeError are all ValueErrors.
        raise _invalid() from None
    if type(result) is not dict:
        raise _invalid()
    return (result, cuts) if cut_deep else result
