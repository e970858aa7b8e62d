"""The one place that picks the JSON libraries (C ones on CPython, the stdlib elsewhere).

* Encoding: ``orjson`` (several times faster than the stdlib), the stdlib
  for what orjson refuses (integers beyond 64 bits, nesting deeper than 255).
* Decoding: ``msgspec.json`` (untyped: plain dicts and lists, as fast as
  orjson, and integers of any size stay exact ints, where orjson turns those
  beyond 64 bits into floats), else ``orjson``, else the stdlib.
  doc/performance.md ("msgspec") has the figures.

PyPy has neither C library: everything falls back to the stdlib there.
Other modules import the libraries from here (``orjson``/``msgspec`` are
``None`` when missing), never on their own.
"""

import json

try:  # pragma: no cover - depends on the interpreter
    import orjson
except ImportError:  # pragma: no cover
    orjson = None

try:  # pragma: no cover - depends on the interpreter
    import msgspec
except ImportError:  # pragma: no cover
    msgspec = None

__all__ = ["dumps", "loads", "fast_loads", "FAST_LOADS_EXACT_INTS", "FAST_LOADS", "orjson", "msgspec"]


def _std_dumps(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


if msgspec is not None:
    #: The fastest strict decoder available: bytes (or str) -> Python values;
    #: raises a ``ValueError`` (or ``RecursionError``) on anything but JSON.
    fast_loads = msgspec.json.Decoder().decode
    FAST_LOADS = "msgspec"
elif orjson is not None:  # pragma: no cover - msgspec is a dependency
    fast_loads = orjson.loads
    FAST_LOADS = "orjson"
else:  # pragma: no cover
    fast_loads = json.loads
    FAST_LOADS = "json"

#: False when ``fast_loads`` turns integers beyond 64 bits into floats
#: (orjson): the caller must then decode such bodies with the stdlib.
FAST_LOADS_EXACT_INTS = FAST_LOADS != "orjson"


if orjson is not None:
    def dumps(value):
        """Compact UTF-8 JSON bytes."""
        try:
            return orjson.dumps(value)
        except TypeError:
            # integers beyond 64 bits, which JSON allows and orjson refuses
            return _std_dumps(value)
else:  # pragma: no cover
    dumps = _std_dumps


def loads(data):
    """Python values of JSON ``data`` (bytes or str) written by ``dumps``."""
    try:
        return fast_loads(data)
    except (ValueError, RecursionError):
        return json.loads(data)
