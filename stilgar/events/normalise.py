"""Validation and normalisation of event payloads (CONTRACT sections 2, 3;
the output format is doc/events.md).

Validation (each batch element in order, each check in this order; the first
fault rejects the whole request, nothing is half-accepted):

1. the element is not an object -> 400 ``event is not a valid rudder event``;
2. ``type`` is not exactly one of identify, track, page, screen, group,
   alias -> 400 ``unknown event type: X``, where X is the string as sent
   (control characters replaced by ``?``, cut to 100 characters + ``...``),
   empty for a missing or null type, and the compact JSON text of any other
   value (``5``, ``true``, ``["track"]``);
3. neither ``anonymousId`` nor ``userId`` has a visible character once
   stringified (see ``ids``) -> 400 ``request neither has anonymousId nor
   userId``.

Before these, for the whole request: no ``batch`` list where one is needed,
or an empty one -> 400 ``empty batch payload``; more than ``max_events``
events -> 413 ``request size exceeds max limit``; a payload that is not an
object -> 400 ``invalid json``.

Normalisation decisions beyond doc/events.md:

* ids (``anonymousId``, ``userId``, ``groupId``, ``previousId``,
  ``messageId``) and ``channel``, and a track's ``event``: a non-string is
  stringified (``ids.stringify``: JSON text, integral floats as ints,
  ``true``/``false``); ``null`` is ``None``. Only ``messageId`` is cleaned
  (trimmed, invisible characters removed); the others are kept as sent.
  ``groupId``/``previousId`` are stringified on any type; the key is always
  present (maybe ``None``) on group/alias, and on track ``event`` too.
* identify: a top-level ``traits`` object is merged into ``context.traits``
  (a copy); on a key present in both, the **top-level value wins** (it is
  what this identify call sets; ``context.traits`` may carry traits cached
  by the SDK). A ``context.traits`` that is not an object is replaced.
  Top-level ``traits`` is kept as sent.
* datetimes: each of ``sentAt``, ``originalTimestamp``, ``timestamp`` counts
  only if ``parse_datetime`` reads it; so an unparseable ``originalTimestamp``
  falls back to a parseable ``timestamp``, an unparseable event ``sentAt`` to
  the batch's. The skew-corrected timestamp falls back to
  ``originalTimestamp`` if the arithmetic leaves the datetime range.
* ``context``: a shallow copy (``{}`` when absent or not an object); the
  privacy step then sets ``context.ip`` and removes ``drop_fields``.
* every other key is kept verbatim (same objects, not copied).
"""

import uuid

from .errors import EMPTY_BATCH, INVALID_JSON, NO_IDENTIFIER, NOT_AN_EVENT, TOO_LARGE, Rejected
from .ids import clean, is_blank, stringify
from .privacy import IpPolicy, compile_drop_fields, drop_paths
from .timeparse import format_naive_utc, parse_naive_utc

__all__ = ["normalise_payload", "EVENT_TYPES"]

EVENT_TYPES = frozenset(("identify", "track", "page", "screen", "group", "alias"))

_MAX_TYPE_SHOWN = 100
_NONE_PAIR = (None, None)


def _new_message_id():
    return str(uuid.uuid4())


def _show_type(value):
    if value is None:
        return ""
    text = value if type(value) is str else stringify(value)
    if len(text) > _MAX_TYPE_SHOWN:
        text = text[:_MAX_TYPE_SHOWN] + "..."
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text


def _id(value):
    if value is None or type(value) is str:
        return value
    return stringify(value)


class _Request:
    """What every event of one request shares."""

    __slots__ = ("received", "received_s", "batch_sent", "client_ip", "ip_policy",
                 "drop", "new_message_id", "cache", "enrich")

    def __init__(self, received_at, client_ip, privacy, new_message_id, enrich=None):
        if received_at.tzinfo is not None:
            offset = received_at.utcoffset()
            received_at = received_at.replace(tzinfo=None)
            if offset:
                received_at = received_at - offset
        self.received = received_at
        self.received_s = format_naive_utc(received_at)
        self.client_ip = client_ip
        self.ip_policy = IpPolicy(privacy, received_at.date().isoformat())
        self.drop = compile_drop_fields(privacy)
        self.new_message_id = new_message_id
        self.cache = {}
        self.batch_sent = _NONE_PAIR
        self.enrich = enrich.for_request(client_ip) if enrich is not None else None

    def time(self, value):
        """(naive UTC datetime, formatted) for a raw value, or (None, None)."""
        if type(value) is not str:
            return _NONE_PAIR
        hit = self.cache.get(value)
        if hit is None:
            dt = parse_naive_utc(value)
            hit = _NONE_PAIR if dt is None else (dt, format_naive_utc(dt))
            self.cache[value] = hit
        return hit


def normalise_payload(payload, *, route_type, received_at, client_ip, privacy,
                      max_events, new_message_id=_new_message_id, enrich=None):
    """Validate a decoded payload and return its normalised events (a new
    list of new dicts; ``payload`` is not modified).

    ``route_type``: the type a single-event route forces (``'track'`` for
    ``/v1/track``), ``None`` for the batch routes. A ``batch`` list is
    handled as a batch on every route. ``received_at``: an aware datetime
    (naive is taken as UTC). Raises only ``Rejected`` (see the module
    docstring for the checks and their order). ``enrich``: an
    ``enrich.Enricher`` (or None), run on each event before the privacy
    step; the events it drops (bots) are left out of the list.
    """
    if not isinstance(payload, dict):
        raise Rejected(400, INVALID_JSON)
    batch = payload.get("batch")
    if isinstance(batch, list):
        events = batch
        forced = None
    elif route_type is None:
        raise Rejected(400, EMPTY_BATCH)
    else:
        events = (payload,)
        forced = route_type
    if not events:
        raise Rejected(400, EMPTY_BATCH)
    if len(events) > max_events:
        raise Rejected(413, TOO_LARGE)
    request = _Request(received_at, client_ip, privacy, new_message_id, enrich)
    if forced is None:
        request.batch_sent = request.time(payload.get("sentAt"))
    normalised = [_normalise_event(raw, forced, request) for raw in events]
    return normalised if enrich is None else [ev for ev in normalised if ev is not None]


def _normalise_event(raw, forced, r):
    if not isinstance(raw, dict):
        raise Rejected(400, NOT_AN_EVENT)
    etype = raw.get("type") if forced is None else forced
    if type(etype) is not str or etype not in EVENT_TYPES:
        raise Rejected(400, f"unknown event type: {_show_type(etype)}")
    anonymous_id = _id(raw.get("anonymousId"))
    user_id = _id(raw.get("userId"))
    if is_blank(anonymous_id) and is_blank(user_id):
        raise Rejected(400, NO_IDENTIFIER)

    ev = dict(raw)
    ev["type"] = etype

    message_id = raw.get("messageId")
    if message_id is not None:
        message_id = clean(stringify(message_id))
    ev["messageId"] = message_id or r.new_message_id()
    ev["anonymousId"] = anonymous_id
    ev["userId"] = user_id
    ev["channel"] = _id(raw.get("channel"))

    # Datetimes.
    sent, sent_s = r.time(raw.get("sentAt"))
    if sent is None:
        sent, sent_s = r.batch_sent
    client_ts, client_ts_s = r.time(raw.get("timestamp"))
    original, original_s = r.time(raw.get("originalTimestamp"))
    if original is None:
        original, original_s = client_ts, client_ts_s
    if client_ts_s is not None:
        timestamp_s = client_ts_s
    elif original is None:
        timestamp_s = r.received_s
    elif sent is None:
        timestamp_s = original_s
    else:
        try:
            timestamp_s = format_naive_utc(r.received - (sent - original))
        except (OverflowError, ValueError):
            timestamp_s = original_s
    ev["receivedAt"] = r.received_s
    ev["sentAt"] = sent_s
    ev["originalTimestamp"] = original_s
    ev["timestamp"] = timestamp_s

    # Type-specific fields.
    if etype == "track":
        ev["event"] = _id(raw.get("event"))
    elif etype == "group":
        ev["groupId"] = _id(raw.get("groupId"))
    elif etype == "alias":
        ev["previousId"] = _id(raw.get("previousId"))
    if etype != "group" and "groupId" in raw:
        ev["groupId"] = _id(raw["groupId"])
    if etype != "alias" and "previousId" in raw:
        ev["previousId"] = _id(raw["previousId"])

    # Context.
    context = raw.get("context")
    context = dict(context) if isinstance(context, dict) else {}
    if etype == "identify":
        traits = raw.get("traits")
        if isinstance(traits, dict) and traits:
            current = context.get("traits")
            if isinstance(current, dict):
                merged = dict(current)
                merged.update(traits)
            else:
                merged = dict(traits)
            context["traits"] = merged
    if r.enrich is not None and not r.enrich(context):
        return None  # dropped by enrich.bots (doc/enrichment.md)
    r.ip_policy.apply(context, r.client_ip)
    ev["context"] = context
    if r.drop:
        drop_paths(ev, r.drop)
    return ev
