"""The connection state of one ClickHouse destination: DOWN, CONNECTING or
UP, the re-initialisation with backoff, and ``health()``
(doc/clickhouse.md, "Batching, retries, backpressure" and "Health").

Every failure that leaves rows unwritten (no answer, a transient code, the
database gone) marks the link down; it then re-initialises (database,
capability probe, schema, base tables) after :func:`stilgar.backoff.backoff_delay`,
without limit, and the backoff grows until an INSERT succeeds.
"""

import enum

import attr
from twisted.internet import defer
from twisted.logger import Logger

from ... import metrics
from ...backoff import backoff_delay

__all__ = ["LinkState", "Link"]

log = Logger()


class LinkState(enum.Enum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"


@attr.s(eq=False)
class Link:
    """``initialise()`` fires once the server is ready for rows; ``on_up`` /
    ``on_down`` tell the destination."""

    name = attr.ib()
    reactor = attr.ib()
    initialise = attr.ib()
    on_up = attr.ib()
    on_down = attr.ib()
    rand = attr.ib()
    state = attr.ib(default=LinkState.DOWN)
    since = attr.ib(default=None)
    last_error = attr.ib(default=None)
    failures = attr.ib(default=0)           # failed attempts since the last success: the backoff step
    stopping = attr.ib(default=False)
    _retry_timer = attr.ib(default=None)
    _first = attr.ib(default=None)

    def __attrs_post_init__(self):
        self.since = self.reactor.seconds()
        metrics.DESTINATION_UP.labels(self.name).set(0)

    @property
    def up(self):
        return self.state is LinkState.UP

    def start(self):
        """Connect; fires after the first attempt, whatever its outcome."""
        self._first = defer.Deferred()
        first = self._first
        self.connect()
        return first

    def connect(self):
        if self.state is LinkState.CONNECTING or self.stopping:
            return
        self.state = LinkState.CONNECTING
        d = self.initialise()

        def ok(_):
            self.state = LinkState.DOWN
            self.mark_up()

        def failed(f):
            self.state = LinkState.DOWN
            self.mark_down(f.value)
        d.addCallbacks(ok, failed)
        d.addBoth(self._fire_first)
        d.addErrback(self.bug)

    def _fire_first(self, _):
        if self._first is not None:
            first, self._first = self._first, None
            first.callback(None)

    def mark_up(self):
        if self.state is not LinkState.UP:
            self.state = LinkState.UP
            self.since = self.reactor.seconds()
            metrics.DESTINATION_UP.labels(self.name).set(1)
        self.on_up()

    def mark_down(self, err):
        """A failure: down (if up), and a re-initialisation after the backoff."""
        self.last_error = str(err)
        if self.state is LinkState.UP:
            self.state = LinkState.DOWN
            self.since = self.reactor.seconds()
            metrics.DESTINATION_UP.labels(self.name).set(0)
            log.warn("ClickHouse {destination} is down: {error}", destination=self.name, error=str(err))
        elif self.failures == 0:
            log.warn("ClickHouse {destination} unreachable: {error}", destination=self.name, error=str(err))
        if self._retry_timer is None and not self.stopping:
            delay = backoff_delay(self.failures, self.rand)
            self.failures += 1
            self._retry_timer = self.reactor.callLater(delay, self._retry)
        self.on_down()

    def _retry(self):
        self._retry_timer = None
        self.connect()

    def cancel(self):
        if self._retry_timer is not None and self._retry_timer.active():
            self._retry_timer.cancel()
        self._retry_timer = None

    def health(self):
        return {"up": self.up, "since": self.since}

    def bug(self, f):
        log.failure("ClickHouse {destination}: internal error", f, destination=self.name)
