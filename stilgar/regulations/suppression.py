"""Which events may reach which destination: suppressed subjects and consent.

:class:`DeliveryFilter` is what the forwarder calls: once at the door (before
the spool) and once per destination before a write (events spooled before a
suppression, consent rules). It is cheap when nothing is suppressed and a
destination has no consent rules: the events are returned as they are. An
event's content is never logged here, only counted.
"""

from .. import metrics
from ..events.consent import refusal
from .model import SubjectHasher

__all__ = ["DeliveryFilter", "is_suppressed"]

# (subject type, event key): the ids of an event that identify its subject
_ID_KEYS = (("USER_ID", "userId"), ("ANONYMOUS_ID", "anonymousId"),
            ("USER_ID", "previousId"), ("ANONYMOUS_ID", "previousId"))


def is_suppressed(event, keys, key_of):
    """True when one of the event's ids hashes (``key_of(type, id)``) to a key of ``keys``."""
    for subject_type, field in _ID_KEYS:
        value = event.get(field)
        if value and isinstance(value, str) and key_of(subject_type, value) in keys:
            return True
    return False


class DeliveryFilter:
    """Suppression (``suppressed()`` gives the current keys) and per-destination consent rules."""

    def __init__(self, suppressed, secret, consent_rules=None):
        self._suppressed = suppressed
        self._key_of = SubjectHasher(secret) if secret is not None else None
        self._consent = {name: rules for name, rules in (consent_rules or {}).items() if rules}
        self._counters = {}

    def _without_suppressed(self, events, stage):
        keys = self._suppressed() if self._key_of is not None else ()
        if not keys:
            return events
        kept = [e for e in events if not is_suppressed(e, keys, self._key_of)]
        if len(kept) != len(events):
            metrics.EVENTS_SUPPRESSED.labels(stage=stage).inc(len(events) - len(kept))
        return kept

    def suppressed(self, event):
        """Is this event's subject suppressed? (Not counted: for views such as /debug/.)"""
        keys = self._suppressed() if self._key_of is not None else ()
        return bool(keys) and is_suppressed(event, keys, self._key_of)

    def at_door(self, events):
        """The events of a request that may be spooled."""
        return self._without_suppressed(events, "door")

    def for_destination(self, name, events):
        """The events of a spooled request that may be written to destination ``name``."""
        events = self._without_suppressed(events, "delivery")
        rules = self._consent.get(name)
        if not rules or not events:
            return events
        kept = []
        for event in events:
            refused = refusal(rules, event)
            if refused is None:
                kept.append(event)
            else:
                self._count(name, refused)
        return kept

    def _count(self, name, refused):
        counter = self._counters.get((name, refused))
        if counter is None:
            counter = self._counters[(name, refused)] = metrics.EVENTS_CONSENT_REFUSED.labels(
                destination=name, provider=refused[0], reason=refused[1])
        counter.inc()
