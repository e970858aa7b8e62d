"""One accepted request as the spool holds it, and its encoding."""

import attr

from .. import jsoncodec

__all__ = ["Record"]


@attr.s(slots=True)
class Record:
    """One accepted request: its write key, request id and normalised events."""

    write_key = attr.ib()
    request_id = attr.ib()
    events = attr.ib()
    pos = attr.ib(default=None)         # spool position (None without a spool)
    next_pos = attr.ib(default=None)    # where the next record starts: a lane's read position after it
    size = attr.ib(default=0, eq=False)  # bytes of its encoded form (what memory bounds count)

    def encode(self):
        return jsoncodec.dumps({"k": self.write_key, "r": self.request_id, "e": self.events})

    @classmethod
    def decode(cls, payload, pos=None, next_pos=None):
        """The record spooled as ``payload`` (one JSON decode for all its events)."""
        data = jsoncodec.loads(payload)
        return cls(data["k"], data["r"], data["e"], pos, next_pos, len(payload))
