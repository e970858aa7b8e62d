"""The pixel routes (``GET /pixel/v1/track``, ``/pixel/v1/page``): an event
built from the query string, as RudderStack's gateway builds it.

Decisions:

* A query key is a dotted path (``properties.x`` -> ``{"properties":
  {"x": ...}}``); keys are taken literally otherwise (no escapes, no array
  indices; an empty segment is an empty key). Values stay strings; for a
  repeated key the last value wins. Keys are applied in the mapping's
  order; a conflict is resolved by the later key replacing what is in its
  way (``a=1`` then ``a.b=2`` gives ``{"a": {"b": "2"}}``; the other order
  gives ``{"a": "1"}``).
* ``writeKey`` is never copied. A key with more than ``MAX_PATH_PARTS``
  segments is ignored (the event must stay within the JSON depth limit).
* ``bytes`` keys and values are decoded as UTF-8 (bad bytes -> U+FFFD);
  lone surrogates in ``str`` become U+FFFD, so the event always encodes.
* ``anonymousId`` wrapped in double quotes loses one pair of them.
* ``type`` is the route's; page: a missing or empty ``name`` becomes
  ``Unknown Page``; track: an empty ``event`` (present but ``''``) drops the
  event: ``None`` is returned. A missing ``event`` is allowed.
"""

import re

from .jsonparse import MAX_DEPTH
from .timeparse import format_datetime

__all__ = ["pixel_payload", "MAX_PATH_PARTS"]

#: Most segments a pixel query key may have.
MAX_PATH_PARTS = MAX_DEPTH - 2

_SURROGATES_RE = re.compile("[\ud800-\udfff]")


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if type(value) is not str:
        value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATES_RE.sub("\ufffd", value)
    return value


def _last(values):
    if isinstance(values, (str, bytes, bytearray)):
        return values
    try:
        return values[-1] if len(values) else None
    except Exception:
        return None


def pixel_payload(query, route_type, now):
    """The event payload for a pixel request, or ``None`` when RudderStack
    drops it (a track with an empty ``event``). ``query`` maps each key to
    its list of values (``request.args`` shape, decoded or not). The result
    still goes through ``normalise_payload`` like any single event."""
    stamp = format_datetime(now)
    event = {
        "channel": "web",
        "integrations": {"All": True},
        "originalTimestamp": stamp,
        "sentAt": stamp,
    }
    for key, values in query.items():
        key = _text(key)
        if key == "writeKey":
            continue
        value = _last(values)
        if value is None:
            continue
        value = _text(value)
        parts = key.split(".")
        if len(parts) > MAX_PATH_PARTS:
            continue
        if key == "anonymousId" and len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        node = event
        for part in parts[:-1]:
            child = node.get(part)
            if type(child) is not dict:
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    event["type"] = route_type
    if route_type == "page":
        if event.get("name") in (None, ""):
            event["name"] = "Unknown Page"
    elif route_type == "track":
        if event.get("event") == "":
            return None
    return event
