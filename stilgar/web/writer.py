"""Writing answers: status, headers and body on a request, each counted and each refusal logged.

One :class:`AnswerWriter` serves the handlers (``write``: a whole request, its body returned
for Klein) and the channel (``record``: an answer written raw before the request was whole).
Either way the request is counted in ``stilgar_requests_total`` by route and status, and a
refusal (an answer with a ``reason``) is counted in the stats, shown in the live view and
logged, at most ``burst`` lines a second.
"""

import functools

from twisted.logger import Logger
from zope.interface import Interface, implementer

from .. import metrics
from .context import IRequestContext
from .debug import report_rejected

__all__ = ["IAnswerWriter", "AnswerWriter", "count_request"]

log = Logger(namespace="stilgar.web")


class RateLimitedLog:
    """At most ``burst`` lines per second; the rest are counted and summarised."""

    REFUSED = "[rejected] {request_id} {method} {path} from {client}: {status} {reason}"

    def __init__(self, clock, burst=20, template=REFUSED):
        self.clock = clock
        self.burst = burst
        self.template = template
        self.window = None
        self.count = 0
        self.suppressed = 0

    def __call__(self, **fields):
        now = int(self.clock.seconds())
        if now != self.window:
            if self.suppressed:
                log.warn("{suppressed} more refused requests not logged", suppressed=self.suppressed)
            self.window, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count > self.burst:
            self.suppressed += 1
            return
        log.warn(self.template, **fields)


@functools.lru_cache(maxsize=1024)
def _request_counter(route, status):
    return metrics.REQUESTS.labels(route=route, status=str(status))


@functools.lru_cache(maxsize=64)
def _request_duration(route):
    return metrics.REQUEST_DURATION.labels(route=route)


def count_request(route, status, ctx=None, now=None):
    """Count one answer; with the request's context and the time, observe its duration."""
    # the labelled child is looked up once per (route, status), not per request
    _request_counter(route, status).inc()
    if ctx is not None and ctx.started is not None and now is not None:
        _request_duration(route).observe(max(0.0, now - ctx.started))


class IAnswerWriter(Interface):
    """How answers reach requests, for the handlers and the site."""

    def write(request, answer):
        """Set an Answer's status and headers on a whole request; return its body."""

    def record(request, method, uri, answer):
        """Count (and log, when refused) an answer written raw before the request was whole."""


@implementer(IAnswerWriter)
class AnswerWriter:
    """Applies :class:`~stilgar.web.answers.Answer` values to requests, counting and logging them."""

    def __init__(self, stats, live, clock):
        self.stats = stats
        self.live = live
        self.clock = clock
        self._refusal_log = RateLimitedLog(clock)

    def write(self, request, answer):
        """Set status and headers on a whole request; return the body for Klein."""
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.responseHeaders.addRawHeader(name, value)
        request.setHeader(b"Content-Length", b"%d" % len(answer.body))
        self.record(request, request.method, request.uri, answer)
        return answer.body

    def record(self, request, method, uri, answer):
        """Count an answer (and log it when it is a refusal); ``request`` may be None."""
        ctx = IRequestContext(request, None)   # None: no request (or a stand-in)
        route = ctx.route.name if ctx is not None and ctx.route is not None else "unknown"
        count_request(route, answer.status, ctx, self.clock.seconds())
        if answer.reason is not None:
            self.refused(request, method, uri, answer)

    def refused(self, request, method, uri, answer):
        """Count, show and log a refusal (``answer.reason`` says why)."""
        self.stats.reject(answer.reason)
        ctx = IRequestContext(request, None)   # None: no request (or a stand-in)
        if self.live.subscribers and request is not None:
            report_rejected(self.live, request, ctx, method, uri, answer)
        self._refusal_log(
            request_id=ctx.request_id or "-" if ctx else "-",
            method=(method or b"-").decode("latin-1"),
            path=(uri or b"-").split(b"?", 1)[0].decode("latin-1")[:200],
            client=str(ctx.client_ip) if ctx is not None and ctx.client_ip is not None else "-",
            status=answer.status, reason=answer.reason)
