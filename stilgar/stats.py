"""The counts ``/status`` shows (its ``events`` object), read from the Prometheus counters.

The counters of :mod:`stilgar.metrics` are the one source of counts: this module adds to
them and reads them back, from where they stood when the :class:`Stats` was made (the
service's start, ``up_since``), for this process only.
"""

import collections
import datetime

import attr

from . import metrics

__all__ = ["Stats"]

# /status names the original gave its per-type counters
FORWARDED_KEYS = {"alias": "aliases", "group": "groups", "identify": "identifies",
                  "page": "pages", "screen": "screens", "track": "tracks"}
_FORWARDED = {t: metrics.EVENTS_FORWARDED.labels(type=t) for t in FORWARDED_KEYS}
_COUNTERS = {"received": metrics.REQUESTS_RECEIVED, "accepted": metrics.EVENTS_ACCEPTED,
             "rejected": metrics.REQUESTS_REJECTED, "forwarded": metrics.EVENTS_FORWARDED}


def _snapshot():
    return {name: metrics.counts(counter) for name, counter in _COUNTERS.items()}


@attr.s
class Stats:
    """Process-wide counts (one set per worker), since ``up_since``."""

    up_since: float = attr.ib()
    _start: dict = attr.ib(init=False, factory=_snapshot, repr=False)
    # the refusal texts seen, by their metric label: /status keeps the text ('invalid json'),
    # the metric its snake_case label; both are bounded (the text before any ':')
    _texts: dict = attr.ib(init=False, factory=dict, repr=False)

    def count_received(self):
        """One event or pixel request read whole and handed to the intake."""
        metrics.REQUESTS_RECEIVED.inc()

    def count_accepted(self, n):
        """``n`` events acknowledged with 200 (discard records not included)."""
        metrics.EVENTS_ACCEPTED.inc(n)

    def reject(self, reason):
        # 'unknown event type: X' carries client text: the label keeps the bounded part
        text = reason.split(":", 1)[0]
        label = metrics.reason_label(text)
        self._texts.setdefault(label, text)
        metrics.REQUESTS_REJECTED.labels(reason=label).inc()

    def count_forwarded(self, events):
        """Events a destination confirmed (the six types; discard records are not counted)."""
        for kind, n in collections.Counter(event.get("type") for event in events).items():
            child = _FORWARDED.get(kind)
            if child is not None:
                child.inc(n)

    def _since_start(self, name):
        start = self._start[name]
        return {labels: n - start.get(labels, 0) for labels, n in metrics.counts(_COUNTERS[name]).items()
                if n > start.get(labels, 0)}

    @property
    def received(self):
        return self._since_start("received").get((), 0)

    @property
    def accepted_events(self):
        return self._since_start("accepted").get((), 0)

    @property
    def rejected(self):
        """{refusal text: count}."""
        return {self._texts.get(label, label): n for (label,), n in self._since_start("rejected").items()}

    @property
    def forwarded(self):
        """{plural type name, as /status has it: count}, every type present."""
        counted = self._since_start("forwarded")
        return {FORWARDED_KEYS[t]: counted.get((t,), 0) for t in FORWARDED_KEYS}

    def events_json(self, queue_capacity):
        up = datetime.datetime.fromtimestamp(self.up_since, datetime.timezone.utc)
        return {
            "up_since": up.isoformat(timespec="microseconds"),
            "queue_capacity": queue_capacity,
            "received": self.received,
            "accepted": self.accepted_events,
            "forwarded": dict(sorted(self.forwarded.items())),
            "rejected": dict(sorted(self.rejected.items())),
        }
