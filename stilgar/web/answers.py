"""Answers as values: status, body and headers, written the same way early or late."""

import attr

__all__ = ["Answer", "text", "unavailable", "GIF"]

TEXT = b"text/plain; charset=utf-8"
JSON = b"application/json"

# the 43-byte transparent GIF every pixel answer carries
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
assert len(GIF) == 43


@attr.s(slots=True)
class Answer:
    status: int = attr.ib()
    body: bytes = attr.ib(default=b"")
    headers: list = attr.ib(factory=list)   # [(bytes, bytes)]
    reason: str = attr.ib(default=None)     # why it was refused, for the log and metrics
    close: bool = attr.ib(default=False)    # close the connection after writing


def text(status, message, headers=(), reason=None):
    """A text/plain answer; error bodies end with a newline."""
    body = message.encode("utf-8")
    if status >= 400 and not body.endswith(b"\n"):
        body += b"\n"
    return Answer(status, body, [(b"Content-Type", TEXT), *headers],
                  reason=reason if reason is not None else (message if status >= 400 else None))


def unavailable(retry_after, headers=()):
    """503: the client retries after ``retry_after`` seconds (events are never lost by it)."""
    return text(503, "service unavailable", [(b"Retry-After", str(retry_after).encode()), *headers])
