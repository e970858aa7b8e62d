"""Validation and normalisation of event payloads (CONTRACT sections 2, 3;
the output format is doc/events.md).

Validation. For the whole request: a payload that is not an object -> 400
``invalid json``; no ``batch`` list where one is needed, or an empty one ->
400 ``empty batch payload``; more than ``max_events`` events -> 413
``request size exceeds max limit``.

Each event, each check in this order:

1. the element is not an object (``not_an_object``, text ``event is not a
   valid rudder event``);
2. it holds ``TOO_DEEP_MARK``, i.e. the parser cut a part nested deeper than
   ``MAX_DEPTH`` (``too_deep``);
3. ``type`` is not exactly one of identify, track, page, screen, group,
   alias (``unknown_type``, text ``unknown event type: X``, where X is the
   string as sent, control characters replaced by ``?``, cut to 100
   characters + ``...``, empty for a missing or null type, and the compact
   JSON text of any other value: ``5``, ``true``, ``["track"]``);
4. neither ``anonymousId`` nor ``userId`` has a visible character once
   stringified (see ``ids``) (``no_identifier``, text ``request neither has
   anonymousId nor userId``).

In a **batch** a failing element becomes a *discard record* in its place
(doc/events.md): the rest of the batch is stored and the answer is 200,
because the classic mobile SDKs resend a refused batch every second for
ever (doc/sdks.md). On a single-event route (the route forces ``type``) the
fault refuses the request: 400 with the text (``invalid json`` for
``too_deep``); the SDKs that use those routes drop a 4xx.

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

from ..destinations.base import DISCARD
from .errors import (EMPTY_BATCH, INVALID_JSON, NO_IDENTIFIER, NO_IDS, NOT_AN_EVENT, NOT_AN_OBJECT,
                     TOO_DEEP, TOO_LARGE, UNKNOWN_TYPE, Discard, Rejected)
from .ids import clean, is_blank, stringify
from .jsonparse import MAX_DEPTH, TOO_DEEP_MARK
from .privacy import IpPolicy, compile_drop_fields, drop_paths
from .timeparse import format_naive_utc, parse_naive_utc

__all__ = ["normalise_payload", "EVENT_TYPES", "DISCARD", "is_discard"]

EVENT_TYPES = frozenset(("identify", "track", "page", "screen", "group", "alias"))

# DISCARD, the ``type`` of a discard record, is never an accepted event
# type, so a client cannot forge one: an event of that type is itself an
# ``unknown_type`` discard.

_TOO_DEEP_TEXT = f"nested deeper than {MAX_DEPTH} levels"

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


def is_discard(event):
    """True for a discard record (doc/events.md), False for an event."""
    return event.get("type") == DISCARD


def _holds_mark(value):
    """True if ``TOO_DEEP_MARK`` is a string anywhere in ``value`` (no recursion)."""
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is dict:
            push(v.values())
        elif t is list:
            push(v)
        elif t is str and v == TOO_DEEP_MARK:
            return True
    return False


def normalise_payload(payload, *, route_type, received_at, client_ip, privacy,
                      max_events, new_message_id=_new_message_id, cut=False, enrich=None):
    """Validate a decoded payload and return its normalised events (a new
    list of new dicts; ``payload`` is not modified). In a batch, an element
    that fails validation is a discard record instead (``is_discard``).

    ``route_type``: the type a single-event route forces (``'track'`` for
    ``/v1/track``), ``None`` for the batch routes. A ``batch`` list is
    handled as a batch on every route. ``received_at``: an aware datetime
    (naive is taken as UTC). ``cut``: the parser replaced too-deep parts by
    ``TOO_DEEP_MARK`` (``parse_json(cut_deep=True)``). ``enrich``: an
    ``enrich.Enricher`` (or None), run on each event before the privacy
    step; the events it drops (bots) are left out of the list. Raises only
    ``Rejected`` (see the module docstring for the checks and their order).
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
    if forced is not None:
        try:
            event = _normalise_event(payload, forced, request, cut)
        except Discard as fault:
            raise Rejected(400, INVALID_JSON if fault.label == TOO_DEEP else fault.message) from None
        return [] if event is None else [event]
    request.batch_sent = request.time(payload.get("sentAt"))
    out = []
    for raw in events:
        try:
            event = _normalise_event(raw, None, request, cut)
        except Discard as fault:
            out.append(_discard(raw, fault, request))
            continue
        if event is not None:      # None: dropped by enrich.bots
            out.append(event)
    return out


def _discard(raw, fault, r):
    """The discard record standing for batch element ``raw`` (doc/events.md):
    the element as sent, after the privacy step when it is an object."""
    message_id = etype = None
    if isinstance(raw, list):  # e.g. an event wrapped once too often: its events get the privacy step
        raw = [_private(item, r) if isinstance(item, dict) else item for item in raw]
    elif isinstance(raw, dict):
        raw = _private(raw, r)
        message_id = raw.get("messageId")
        if message_id is not None:
            message_id = clean(stringify(message_id))
        etype = raw.get("type")
        if type(etype) is not str or etype not in EVENT_TYPES:
            etype = None
    return {
        "type": DISCARD,
        "messageId": message_id or r.new_message_id(),
        "receivedAt": r.received_s,
        "reason": fault.label,
        "message": fault.message,
        "eventType": etype,
        "raw": raw,
    }


def _private(raw, r):
    """A copy of the object ``raw`` after the privacy step (``context.ip`` policy, drop_fields)."""
    raw = dict(raw)
    context = raw.get("context")
    if isinstance(context, dict):
        context = dict(context)
        r.ip_policy.apply(context, r.client_ip)
        raw["context"] = context
    if r.drop:
        drop_paths(raw, r.drop)
    return raw


def _normalise_event(raw, forced, r, cut):
    if not isinstance(raw, dict):
        raise Discard(NOT_AN_OBJECT, NOT_AN_EVENT)
    if cut and _holds_mark(raw):
        raise Discard(TOO_DEEP, _TOO_DEEP_TEXT)
    etype = raw.get("type") if forced is None else forced
    if type(etype) is not str or etype not in EVENT_TYPES:
        raise Discard(UNKNOWN_TYPE, f"unknown event type: {_show_type(etype)}")
    anonymous_id = _id(raw.get("anonymousId"))
    user_id = _id(raw.get("userId"))
    if is_blank(anonymous_id) and is_blank(user_id):
        raise Discard(NO_IDS, NO_IDENTIFIER)

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
