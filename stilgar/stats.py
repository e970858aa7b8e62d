"""Counters shared by /status, /health, /metrics and the logs."""

import collections
import datetime

import attr

from . import metrics

__all__ = ["Stats"]

# /status names the original gave its per-type counters
FORWARDED_KEYS = {"alias": "aliases", "group": "groups", "identify": "identifies",
                  "page": "pages", "screen": "screens", "track": "tracks"}


@attr.s
class Stats:
    """Process-wide counters (one set per worker)."""

    up_since: float = attr.ib()
    received: int = attr.ib(default=0)            # requests that reached a handler with a body read
    accepted_events: int = attr.ib(default=0)
    rejected: collections.Counter = attr.ib(factory=collections.Counter)
    forwarded: collections.Counter = attr.ib(factory=collections.Counter)

    def reject(self, reason):
        # 'unknown event type: X' carries client text: the label keeps the bounded part
        label = reason.split(":", 1)[0]
        self.rejected[label] += 1
        metrics.REQUESTS_REJECTED.labels(reason=metrics.reason_label(label)).inc()

    def count_forwarded(self, events):
        for event in events:
            key = FORWARDED_KEYS.get(event.get("type"))
            if key is not None:
                self.forwarded[key] += 1

    def events_json(self, queue_capacity):
        up = datetime.datetime.fromtimestamp(self.up_since, datetime.timezone.utc)
        return {
            "up_since": up.isoformat(timespec="microseconds"),
            "queue_capacity": queue_capacity,
            "received": self.received,
            "accepted": self.accepted_events,
            "forwarded": {k: self.forwarded.get(k, 0) for k in sorted(FORWARDED_KEYS.values())},
            "rejected": dict(sorted(self.rejected.items())),
        }
