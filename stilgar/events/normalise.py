"""Validation and normalisation of event payloads: the rules are doc/events.md
("Normalised events", "Validation", "Normalisation rules", "Discard records").

Validation. For the whole request: a payload that is not an object -> 400
``invalid json``; no ``batch`` list where one is needed, or an empty one ->
400 ``empty batch payload``; more than ``max_events`` events -> 413
``request size exceeds max limit``.

Each event, each check in this order (``_check``): not an object
(``not_an_object``), holds ``TOO_DEEP_MARK`` (``too_deep``), ``type`` not
exactly one of ``EVENT_TYPES`` (``unknown_type``, the type shown as
``_show_type`` says), neither ``anonymousId`` nor ``userId`` visible once
stringified (``no_identifier``, see ``ids``). In a batch a failing element
becomes a discard record in its place and the answer is 200; on a
single-event route the fault refuses the request (400 with the text,
``invalid json`` for ``too_deep``).

Cost (bench/events_cpu.py): one shallow copy of the event and of its
``context``, nothing else copied; per request, the privacy plan is taken
from a small cache keyed by the privacy settings; datetimes in the SDKs'
shapes are formatted by slicing (``timeparse.parse_formatted``).
"""

import uuid
from datetime import datetime, timezone

from .discard import DISCARD, is_discard
from .errors import (EMPTY_BATCH, INVALID_JSON, NO_IDENTIFIER, NO_IDS, NOT_AN_EVENT, NOT_AN_OBJECT,
                     TOO_DEEP, TOO_LARGE, UNKNOWN_TYPE, Discard, Rejected)
from .ids import clean, is_blank, stringify
from .jsonparse import MAX_DEPTH, TOO_DEEP_MARK
from .privacy import IpPolicy, compile_drop_fields, drop_paths
from .timeparse import format_naive_utc, parse_formatted

__all__ = ["normalise_payload", "EVENT_TYPES", "DISCARD", "is_discard"]

#: The accepted event types, in the order the routes and messages list them
#: (the one definition: the web layer's routes import it).
EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)

_TOO_DEEP_TEXT = f"nested deeper than {MAX_DEPTH} levels"

_MAX_TYPE_SHOWN = 100
_NONE_PAIR = (None, None)
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


# (ip, hash_secret, drop_fields) -> (IpPolicy, compiled drop paths): the
# settings are the same for every request, compiling them was a third of a
# single event's cost. Bounded: tests and reloads may make a few more.
_PLANS = {}
_MAX_PLANS = 64


def _privacy_plan(privacy, day):
    """(IpPolicy, drop paths) of ``privacy`` for a request received on ``day``."""
    key = (getattr(privacy, "ip", "drop"), getattr(privacy, "hash_secret", None),
           getattr(privacy, "drop_fields", None))
    try:
        plan = _PLANS.get(key)
    except TypeError:  # unhashable settings (a list of paths): compiled each time
        return IpPolicy(privacy, day), compile_drop_fields(privacy)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = (IpPolicy(privacy, None), compile_drop_fields(privacy))
    if plan[0].mode == "hash":  # the only mode that uses the day
        return IpPolicy(privacy, day), plan[1]
    return plan


class _Request:
    """What every event of one request shares."""

    __slots__ = ("received", "received_s", "batch_sent", "client_ip", "ip_policy",
                 "drop", "new_message_id", "cache", "enrich")

    def __init__(self, received_at, client_ip, privacy, new_message_id, enrich=None):
        if received_at.tzinfo is not None:  # to naive UTC (cheaper than replace + utcoffset)
            received_at = _EPOCH + (received_at - _EPOCH_UTC)
        self.received = received_at
        self.received_s = format_naive_utc(received_at)
        self.client_ip = client_ip
        self.ip_policy, self.drop = _privacy_plan(privacy, self.received_s[:10])
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
            hit = self.cache[value] = parse_formatted(value)
        return hit


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
    if type(payload) is not dict and not isinstance(payload, dict):
        raise Rejected(400, INVALID_JSON)
    batch = payload.get("batch")
    if isinstance(batch, list):
        events = batch
    elif route_type is None:
        raise Rejected(400, EMPTY_BATCH)
    else:
        events = None
    if events is not None and not events:
        raise Rejected(400, EMPTY_BATCH)
    if events is not None and len(events) > max_events:
        raise Rejected(413, TOO_LARGE)
    request = _Request(received_at, client_ip, privacy, new_message_id, enrich)
    if events is None:
        try:
            event = _normalise_event(payload, route_type, request, cut)
        except Discard as fault:
            raise Rejected(400, INVALID_JSON if fault.label == TOO_DEEP else fault.message) from None
        return [] if event is None else [event]
    request.batch_sent = request.time(payload.get("sentAt"))
    out = []
    append = out.append
    for raw in events:
        try:
            event = _normalise_event(raw, None, request, cut)
        except Discard as fault:
            append(_discard(raw, fault, request))
            continue
        if event is not None:      # None: dropped by enrich.bots
            append(event)
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
        if type(etype) is not str or etype not in _EVENT_TYPE_SET:
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
    _privacy_step(raw, dict(context) if isinstance(context, dict) else None, r)
    return raw


def _privacy_step(event, context, r):
    """The one privacy step (doc/privacy.md): ``context.ip`` policy on ``context``
    (our own copy, set as ``event['context']``; None: leave it), then drop_fields."""
    if context is not None:
        r.ip_policy.apply(context, r.client_ip)
        event["context"] = context
    if r.drop:
        drop_paths(event, r.drop)


def _check(raw, forced, cut):
    """``(type, anonymousId, userId)`` of a storable event; raises ``Discard``
    for the first failing check (doc/events.md, "Validation")."""
    if type(raw) is not dict and not isinstance(raw, dict):
        raise Discard(NOT_AN_OBJECT, NOT_AN_EVENT)
    if cut and _holds_mark(raw):
        raise Discard(TOO_DEEP, _TOO_DEEP_TEXT)
    etype = raw.get("type") if forced is None else forced
    if type(etype) is not str or etype not in _EVENT_TYPE_SET:
        raise Discard(UNKNOWN_TYPE, f"unknown event type: {_show_type(etype)}")
    anonymous_id = raw.get("anonymousId")
    if anonymous_id is not None and type(anonymous_id) is not str:
        anonymous_id = stringify(anonymous_id)
    user_id = raw.get("userId")
    if user_id is not None and type(user_id) is not str:
        user_id = stringify(user_id)
    # An id starting with a visible ASCII character is not blank: the usual
    # case, decided without scanning the id (ids.is_blank decides the rest).
    if not (anonymous_id and "!" <= anonymous_id[0] <= "~") and is_blank(anonymous_id) \
            and is_blank(user_id):
        raise Discard(NO_IDS, NO_IDENTIFIER)
    return etype, anonymous_id, user_id


def _normalise_event(raw, forced, r, cut):
    """The normalised copy of one event (doc/events.md), None when enrichment
    drops it (a bot); raises ``Discard`` (see ``_check``)."""
    etype, anonymous_id, user_id = _check(raw, forced, cut)
    ev = dict(raw)
    ev["type"] = etype
    message_id = raw.get("messageId")
    if message_id is not None:
        message_id = clean(message_id if type(message_id) is str else stringify(message_id))
    ev["messageId"] = message_id or r.new_message_id()
    ev["anonymousId"] = anonymous_id
    ev["userId"] = user_id
    channel = raw.get("channel")
    ev["channel"] = channel if channel is None or type(channel) is str else stringify(channel)
    _set_times(ev, raw, r)
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
    context = _context(raw, etype)
    if r.enrich is not None and not r.enrich(context):
        return None  # dropped by enrich.bots (doc/enrichment.md)
    _privacy_step(ev, context, r)
    return ev


def _set_times(ev, raw, r):
    """``receivedAt``, ``sentAt``, ``originalTimestamp``, ``timestamp`` (doc/events.md)."""
    get = raw.get
    time = r.time
    value = get("sentAt")
    sent, sent_s = _NONE_PAIR if value is None else time(value)
    if sent is None:
        sent, sent_s = r.batch_sent
    value = get("timestamp")
    client_ts, client_ts_s = _NONE_PAIR if value is None else time(value)
    value = get("originalTimestamp")
    original, original_s = _NONE_PAIR if value is None else time(value)
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


def _context(raw, etype):
    """A shallow copy of ``context`` (``{}`` when absent or not an object);
    identify's top-level ``traits`` merged into ``context.traits`` (they win)."""
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
    return context
