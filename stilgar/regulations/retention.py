"""Retention: keep a destination's data for ``retention`` (doc/privacy.md).

Where the server supports it (ClickHouse 22 and later) every table the
collector owns gets ``TTL received_at + INTERVAL n DAY`` and the server drops
old rows itself. On older servers this job drops the day partitions whose
every row is older than the retention, never one still holding a newer row.
Runs every ``interval`` seconds on worker 0 only (a ``TimerService``).
"""

from twisted.application import internet
from twisted.internet import defer
from twisted.logger import Logger

from .. import metrics

__all__ = ["RetentionService"]

log = Logger(namespace="stilgar.retention")


class RetentionService(internet.TimerService):
    """Applies the retention of each ``(erasable, seconds)`` pair periodically."""

    name = "retention"

    def __init__(self, targets, reactor, interval=600.0):
        super().__init__(interval, self.run_safely)
        self.targets = list(targets)
        self.reactor = reactor
        self.clock = reactor
        self._busy = False

    def run_safely(self):
        if self._busy:
            return None
        self._busy = True
        d = self.run()
        d.addErrback(lambda f: log.failure("retention: a pass failed (retried next period)", f))

        def done(result):
            self._busy = False
            return result
        return d.addBoth(done)

    @defer.inlineCallbacks
    def run(self):
        """One pass over every destination with a retention; returns what was done."""
        everything = []
        for erasable, seconds in self.targets:
            if not erasable.ready():
                continue
            try:
                done = yield erasable.apply_retention(seconds, self.reactor.seconds())
            except Exception as e:
                log.warn("retention of {destination}: {error}", destination=erasable.name, error=str(e))
                continue
            for table, what in done:
                log.info("retention of {destination}: {table}: {what}", destination=erasable.name,
                         table=table, what=what)
                if what.startswith("dropped partition"):
                    metrics.RETENTION_PARTITIONS_DROPPED.labels(destination=erasable.name).inc()
            everything += [(erasable.name, table, what) for table, what in done]
        return everything
