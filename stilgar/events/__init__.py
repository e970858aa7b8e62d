"""Validation and normalisation of event payloads: pure functions, no I/O.

The web layer calls ``parse_json`` on a request body, ``pixel_payload`` for
the pixel routes, then ``normalise_payload``; a ``Rejected`` becomes the
answer's status and body. The output format is doc/events.md.
"""

from .errors import Rejected
from .jsonparse import MAX_DEPTH, parse_json
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
]
