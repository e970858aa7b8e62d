"""Lenient datetime parsing and the one output format of normalised events.

``parse_datetime`` never raises: anything it cannot read, or that falls
outside Python's datetime range (years 1 to 9999, once moved to UTC), is
``None``. Accepted:

* RFC 3339 / ISO 8601: ``YYYY-MM-DD``, then ``T``, ``t`` or a space, then
  ``hh:mm[:ss[.fraction]]`` (``,`` also separates the fraction), then
  ``Z``/``z``, ``+hh:mm``, ``+hhmm``, ``+hh`` or nothing (= UTC);
  any number of fraction digits (truncated to microseconds); a date alone
  (midnight UTC); a leap second ``:60`` reads as ``:59.999999``; surrounding
  whitespace is ignored. A string of that shape (``YYYY-MM-DD`` then
  ``T``, ``t`` or a space) is first given to ``datetime.fromisoformat`` (the
  fast path), so the few extra forms it reads are accepted too (hour only,
  ``YYYY-Www-D`` week dates, offsets with seconds).
* RFC 2822 (``Tue, 15 Nov 1994 08:12:31 GMT``), via ``email.utils``.
* Only strings: numbers (epoch seconds or milliseconds), ``None`` and other
  JSON values give ``None`` (as RudderStack, which falls back to its default
  for a JSON number).
"""

import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

__all__ = ["parse_datetime", "format_datetime", "parse_naive_utc", "format_naive_utc", "parse_formatted",
           "UTC"]

UTC = timezone.utc

# Longer strings are not datetimes (and are not worth a regex).
_MAX_LEN = 80

_ISO_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?)?"
)
_fromisoformat = datetime.fromisoformat


def parse_datetime(value):
    """An aware UTC ``datetime`` read from ``value``, or ``None``."""
    dt = parse_naive_utc(value)
    return None if dt is None else dt.replace(tzinfo=UTC)


def parse_naive_utc(value):
    """As ``parse_datetime``, but the result is a *naive* datetime holding
    UTC (cheaper to compute with and to format: the hot path uses this)."""
    if type(value) is not str:
        return None
    n = len(value)
    if n > _MAX_LEN:
        return None
    # fromisoformat only for the extended shape: it also reads basic-format
    # strings and any separator character, too lenient for garbage.
    if n < 10 or value[4] != "-" or (n > 10 and value[10] not in "Tt "):
        return _parse_slow(value)
    try:
        # The usual shapes (browser/mobile "Z", Python SDK "+00:00"): parse
        # the rest as naive directly.
        if value[-1:] == "Z":
            dt = _fromisoformat(value[:-1])
            if dt.tzinfo is None:
                return dt
            dt = None  # "...+01:00Z": not a datetime; the regex says so
        elif value[-6:] == "+00:00":
            dt = _fromisoformat(value[:-6])
            if dt.tzinfo is None:
                return dt
            dt = None
        else:
            dt = _fromisoformat(value)
    except Exception:
        dt = None
    if dt is None:
        return _parse_slow(value)
    return _to_naive_utc(dt)


def _to_naive_utc(dt):
    try:
        if dt.tzinfo is None:
            return dt
        offset = dt.utcoffset()
        dt = dt.replace(tzinfo=None)
        return dt - offset if offset else dt
    except Exception:  # OverflowError: out of range once in UTC
        return None


def _parse_slow(value):
    try:
        value = value.strip()
        dt = _parse_iso(value)
        if dt is None:
            dt = _parse_rfc2822(value)
            if dt is None:
                return None
    except Exception:  # ValueError, OverflowError, ...: out of range
        return None
    return _to_naive_utc(dt)


def _parse_iso(value):
    m = _ISO_RE.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, zulu, sign, oh, om = m.groups()
    if hour is None:
        return datetime(int(year), int(month), int(day))
    second = int(second) if second is not None else 0
    micro = int(frac[:6].ljust(6, "0")) if frac else 0
    if second == 60:
        second, micro = 59, 999999
    dt = datetime(int(year), int(month), int(day), int(hour), int(minute), second, micro)
    if sign is None:
        return dt
    minutes = int(oh) * 60 + (int(om) if om else 0)
    if minutes >= 24 * 60:
        return None
    if sign == "-":
        minutes = -minutes
    return dt.replace(tzinfo=timezone(timedelta(minutes=minutes)))


def _parse_rfc2822(value):
    if not value or not value[0].isalpha() and not value[0].isdigit():
        return None
    try:
        return parsedate_to_datetime(value)
    except Exception:
        return None


def format_datetime(dt):
    """``dt`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (a naive ``dt`` is
    taken as UTC). Always 27 characters, the year zero-padded."""
    if dt.tzinfo is not None:
        offset = dt.utcoffset()
        dt = dt.replace(tzinfo=None)
        if offset:
            dt = dt - offset
    return dt.isoformat("T", "microseconds") + "Z"


def format_naive_utc(dt):
    """``format_datetime`` for a naive UTC datetime (no checks)."""
    return dt.isoformat("T", "microseconds") + "Z"


_NO_TIME = (None, None)


def parse_formatted(value):
    """``(naive UTC datetime, format_naive_utc of it)`` for ``value``, or
    ``(None, None)`` when ``parse_naive_utc`` cannot read it. The shapes the
    SDKs send (``...SS.mmmZ``: browser, mobile, Node; ``...SS.ffffff+00:00``:
    Python; the normalised ``...SS.ffffffZ``) are formatted by slicing the
    string: once ``fromisoformat`` has read ``YYYY-MM-DDTHH:MM:SS.`` and
    only ASCII digits after it (no zone, no week date), those digits are
    exactly the output's."""
    if type(value) is not str:
        return _NO_TIME
    n = len(value)
    if n == 24 or n == 27:
        head = value[:-1] if value[-1] == "Z" else None
    elif n == 32:
        head = value[:26] if value[26:] == "+00:00" else None
    else:
        head = None
    if head is not None and head[10] == "T" and head[19] == "." and head[4] == head[7] == "-" \
            and head[13] == head[16] == ":" and head.isascii() and head[20:].isdigit():
        try:
            dt = _fromisoformat(head)
        except ValueError:
            dt = None
        if dt is not None and dt.tzinfo is None:
            return dt, (head + "000Z" if n == 24 else head + "Z")
    dt = parse_naive_utc(value)
    return _NO_TIME if dt is None else (dt, format_naive_utc(dt))
