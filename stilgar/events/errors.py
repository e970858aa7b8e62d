"""The one exception of :mod:`stilgar.events`: a structural fault."""

__all__ = [
    "Rejected",
    "INVALID_JSON",
    "EMPTY_BATCH",
    "NOT_AN_EVENT",
    "NO_IDENTIFIER",
    "TOO_LARGE",
    "Discard",
    "NOT_AN_OBJECT",
    "UNKNOWN_TYPE",
    "NO_IDS",
    "TOO_DEEP",
]

INVALID_JSON = "invalid json"
EMPTY_BATCH = "empty batch payload"
NOT_AN_EVENT = "event is not a valid rudder event"
NO_IDENTIFIER = "request neither has anonymousId nor userId"
TOO_LARGE = "request size exceeds max limit"

# Why a batch element became a discard instead of an event: the snake_case
# label (metrics, the spool record) and the text written to rudder_discards.
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_TYPE = "unknown_type"
NO_IDS = "no_identifier"
TOO_DEEP = "too_deep"


class Rejected(Exception):
    """A structural fault: the whole request is refused.

    ``status`` is the HTTP status; ``reason`` the exact body text, without the
    trailing newline the web layer adds.
    """

    def __init__(self, status, reason):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self):
        return self.reason

    def __repr__(self):
        return f"Rejected({self.status!r}, {self.reason!r})"

    def __eq__(self, other):
        if not isinstance(other, Rejected):
            return NotImplemented
        return (self.status, self.reason) == (other.status, other.reason)

    def __hash__(self):
        return hash((self.status, self.reason))


class Discard(Exception):
    """One batch element that cannot be stored: ``label`` is one of the
    snake_case reasons above, ``message`` the text for rudder_discards.
    Raised inside the normaliser only; the web layer never sees it."""

    def __init__(self, label, message):
        super().__init__(label, message)
        self.label = label
        self.message = message
