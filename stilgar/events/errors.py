"""The one exception of :mod:`stilgar.events`: a structural fault."""

__all__ = [
    "Rejected",
    "INVALID_JSON",
    "EMPTY_BATCH",
    "NOT_AN_EVENT",
    "NO_IDENTIFIER",
    "TOO_LARGE",
]

INVALID_JSON = "invalid json"
EMPTY_BATCH = "empty batch payload"
NOT_AN_EVENT = "event is not a valid rudder event"
NO_IDENTIFIER = "request neither has anonymousId nor userId"
TOO_LARGE = "request size exceeds max limit"


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
