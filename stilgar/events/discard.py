"""The discard marker: the ``type`` of a discard record (doc/events.md).

A discard record is a batch element the door could not store (not an
object, nested too deep, unknown type, no identifier), acknowledged with 200
and spooled with the events; every destination records it. ``"discard"`` is
never an accepted event type, so a client cannot forge one: an event of that
type is itself an ``unknown_type`` discard. Defined here, in the events
layer that makes the records; ``stilgar.destinations.base`` re-exports it.
"""

__all__ = ["DISCARD", "is_discard"]

#: ``type`` of a discard record.
DISCARD = "discard"


def is_discard(event):
    """True for a discard record (doc/events.md), False for an event."""
    return event.get("type") == DISCARD
