"""Identifiers: stringification and the invisible-character clean-up.

* ``stringify``: a ``str`` is kept as is; any other JSON value becomes its
  compact JSON text, except that an integral float is written as an integer
  (``42.0`` -> ``'42'``, ``1e20`` -> ``'100000000000000000000'``), so
  ``true`` -> ``'true'``, ``1.5`` -> ``'1.5'``, ``{"a":1}`` -> ``'{"a":1}'``.
  ``None`` (JSON null) is not stringified: null means absent.
* ``clean``: what RudderStack's gateway does before its identifier check
  (rudder-go-kit ``sanitize.Unicode`` then trim): every character that is
  not printable is removed (Python's ``str.isprintable``, the same classes as
  Go's ``unicode.IsPrint``: control and format characters such as U+200B
  ZERO WIDTH SPACE and U+FEFF BOM, separators other than the ASCII space,
  surrogates, private use, unassigned), plus a few printable-but-invisible
  ones (Hangul fillers, braille blank, combining grapheme joiner, ...);
  then surrounding spaces are stripped.
"""

import json

__all__ = ["stringify", "clean", "is_blank"]

# Printable by Unicode class but rendered as nothing.
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u2800\u3164\uffa0"
    "\U0001d159\U0001d173\U0001d174\U0001d175\U0001d176\U0001d177"
    "\U0001d178\U0001d179\U0001d17a"
)


def stringify(value):
    """``value`` (not ``None``) as an identifier string."""
    t = type(value)
    if t is str:
        return value
    try:
        if t is int:
            return str(value)
        if t is bool:
            return "true" if value else "false"
        if t is float:
            if value.is_integer():
                return str(int(value))
            return json.dumps(value)  # NaN/Infinity cannot come from JSON
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except Exception:  # not JSON-able: only from a caller outside the web layer
        return type(value).__name__


def clean(text):
    """``text`` without invisible characters and surrounding spaces."""
    if text.isascii() and text.isprintable():
        return text.strip()
    return "".join(c for c in text if c.isprintable() and c not in _INVISIBLE).strip()


def is_blank(text):
    """True when ``clean(text)`` would be empty (``None`` is blank)."""
    if text is None:
        return True
    if text.isascii() and text.isprintable():
        return not text.strip()
    for c in text:
        if c != " " and c.isprintable() and c not in _INVISIBLE:
            return False
    return True
