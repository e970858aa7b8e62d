"""Validation and normalisation of event payloads: pure functions, no I/O.

The web layer calls ``parse_json`` on a request body, ``pixel_payload`` for
the pixel routes, then ``normalise_payload``; a ``Rejected`` becomes the
answer's status and body; a batch element that cannot be stored comes back
as a discard record (``is_discard``), spooled with the events. The output
format is doc/events.md.
"""

from .errors import Rejected
from .jsonparse import MAX_DEPTH, TOO_DEEP_MARK, parse_json
from .discard import DISCARD, is_discard
from .normalise import EVENT_TYPES, normalise_payload
from .pixel import pixel_payload
from .timeparse import format_datetime, parse_datetime

__all__ = [
    "Rejected",
    "parse_json",
    "normalise_payload",
    "pixel_payload",
    "parse_datetime",
    "format_datetime",
    "EVENT_TYPES",
    "MAX_DEPTH",
    "TOO_DEEP_MARK",
    "DISCARD",
    "is_discard",
]
