"""Fast JSON encoding of spool records (orjson on CPython, the stdlib elsewhere)."""

import json

try:  # orjson is several times faster; PyPy has no build of it
    import orjson
except ImportError:  # pragma: no cover - depends on the interpreter
    orjson = None

__all__ = ["dumps", "loads"]


def _std_dumps(value):
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


if orjson is not None:
    def dumps(value):
        """Compact UTF-8 JSON bytes."""
        try:
            return orjson.dumps(value)
        except TypeError:
            # integers beyond 64 bits, which JSON allows and orjson refuses
            return _std_dumps(value)

    def loads(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)
else:  # pragma: no cover
    dumps = _std_dumps
    loads = json.loads
