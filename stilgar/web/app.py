"""The collector's HTTP surface: the gate, the Klein routes and the event handlers.

Every request takes one path, in tests as in production: :meth:`StilgarApp.site` ->
:class:`~stilgar.web.server.StilgarChannel` -> :class:`~stilgar.web.gate.Gate` at header
time (order of checks: doc/http.md) -> :class:`~stilgar.web.dispatch.EndpointDispatch` ->
the route's Klein endpoint -> decoding, JSON, validation, accept.
"""

import collections
import datetime

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import metrics
from ..enrichment import Enrichment
from ..events import DISCARD, Rejected, normalise_payload, parse_json, pixel_payload
from ..intake import IIntake, Unavailable
from ..live import LiveHub
from .answers import GIF, Answer, text, unavailable
from .auth import KeyRing
from .body import decode_body
from .context import IRequestContext, RequestContext
from .debug import DebugPages
from .dispatch import EndpointDispatch
from .gate import Gate
from .pages import InfoPages
from .regulations import RegulationRoutes
from .routes import ROUTES
from .server import StilgarSite
from .writer import AnswerWriter, RateLimitedLog, count_request

__all__ = ["IIntake", "Unavailable", "StilgarApp", "RequestContext"]

log = Logger(namespace="stilgar.web")


def _detached(d):
    """A Deferred with ``d``'s result whose cancelling leaves ``d`` running: a client that goes
    away cancels its answer, never the counting of events already on their way to disk."""
    if d.called:        # nothing left to cancel
        return d
    out = defer.Deferred()

    def relay(result):
        if not out.called:
            (out.errback if isinstance(result, Failure) else out.callback)(result)
    d.addBoth(relay)
    return out


class StilgarApp:
    """Routes, checks and answers; events go to an :class:`IIntake`."""

    def __init__(self, config, intake, stats, reactor, regulations=None, live=None, enrichment=None):
        self.config = config
        self.server = config.server
        self.intake = intake
        self.stats = stats
        self.reactor = reactor
        # enrich: once per event at the door (doc/enrichment.md); make_service passes its own
        self.enrichment = enrichment if enrichment is not None else Enrichment.from_config(
            config.enrich_by_write_key(), reactor, on_bot=metrics.count_bot)
        self.keys = KeyRing(config.all_write_keys())
        self.limit = config.server.payload_size_limit
        self.gate = Gate(config.server, self.keys, intake, reactor)
        # the live view: hooks below run only behind `if self.live.subscribers:` (doc/debugging.md)
        self.live = live if live is not None else LiveHub.from_config(config.debug, reactor)
        self.writer = AnswerWriter(stats, self.live, reactor)
        self._write = self.writer.write
        self._discard_log = RateLimitedLog(
            reactor, template="[discarded] {request_id} {path} from {client}: {reasons}"
                              " (answered 200; recorded in rudder_discards)")
        self.debug = DebugPages(config.debug, self.live, self._write, count_request, reactor)
        self.pages = InfoPages(config, self.keys, intake, stats, self._write, reactor)
        self.regulations = RegulationRoutes(self._write, regulations)   # an IRegulations, or None
        self._route_app()

    # -- wiring ---------------------------------------------------------

    def _route_app(self):
        # one Klein app per instance: routes carry the configured prefix
        self.app = app = Klein()
        handlers = {
            "batch": self.events, "import": self.events, "beacon": self.events,
            "pixel_track": self.pixel, "pixel_page": self.pixel,
            **self.pages.handlers(), **self.debug.handlers(),
            "regulations": self.regulations.collection, "regulation": self.regulations.item,
        }
        prefix = self.server.path_prefix
        self._endpoints = {}
        for route in ROUTES.values():
            handler = handlers.get(route.name, self.events)
            methods = [m.decode() for m in route.methods]
            for path in sorted({prefix + route.path or "/", prefix + route.path + "/"}):
                endpoint = f"{route.name}:{path}"
                self._endpoints.setdefault(route.name, endpoint)
                # EndpointDispatch calls handler(request, ctx); the regulation id is read from the path
                app.route(path, methods=methods, endpoint=endpoint)(handler)

    def _internal_error(self, failure, request):
        # a bug, never the client's fault: 503 so that SDKs retry instead of dropping
        log.failure("unexpected error answering {path}", failure, path=request.path)
        answer = unavailable(30, IRequestContext(request).cors)
        answer.reason = "internal error"
        return self._write(request, answer)

    def site(self):
        """The :class:`StilgarSite` serving this app with the configured limits."""
        return StilgarSite(
            EndpointDispatch(self.app, self._endpoints, self._internal_error), self.gate, self.writer,
            body_limit=self.limit, read_timeout=self.server.read_timeout,
            idle_timeout=self.server.idle_timeout, max_connections=self.server.max_connections,
            max_connections_per_ip=self.server.max_connections_per_ip,
            unlimited_peers=self.server.trusted_proxies, max_body_buffer=self.server.max_body_buffer,
            reactor=self.reactor)

    def _now(self):
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)

    # -- handlers -------------------------------------------------------------

    def _normalise(self, payload, ctx, write_key, cut=False):
        return normalise_payload(
            payload, route_type=ctx.route.event_type, received_at=self._now(),
            client_ip=str(ctx.client_ip) if ctx.client_ip is not None else None,
            privacy=self.config.privacy, max_events=self.server.max_events_per_request,
            cut=cut, enrich=self.enrichment.for_key(write_key))

    def events(self, request, ctx):
        self.stats.count_received()
        body = request.content.getvalue()
        encoding = (request.requestHeaders.getRawHeaders(b"content-encoding", [b""])[0]).lower()
        try:
            payload, cuts = parse_json(decode_body(body, encoding, self.limit), cut_deep=True)
            events = self._normalise(payload, ctx, ctx.write_key, cut=cuts > 0)
        except Rejected as rejected:
            return self._write(request, ctx.with_cors(text(rejected.status, rejected.reason)))
        if not events:  # every event was a bot dropped by enrich.bots: 200, so that nobody retries
            return self._write(request, ctx.with_cors(text(200, "OK")))
        metrics.EVENTS_RECEIVED.inc(len(events))
        # discard records travel with the events (a 200 means they are on disk too)
        discards = [e["reason"] for e in events if e["type"] == DISCARD]
        stored = self.intake.accept(ctx.write_key, ctx.request_id, events)

        def count(_):
            if self.live.subscribers:
                self.live.accepted(ctx.write_key, ctx.origin, [e for e in events if e["type"] != DISCARD])
            self.stats.count_accepted(len(events) - len(discards))
            if discards:
                self._count_discards(request, ctx, discards)

        def refused(failure):
            failure.trap(Unavailable)
            return self._write(request, ctx.with_cors(unavailable(failure.value.retry_after)))

        stored.addCallback(count)
        return _detached(stored).addCallbacks(lambda _: self._write(request, ctx.with_cors(text(200, "OK"))),
                                              refused)

    def _count_discards(self, request, ctx, reasons):
        counts = collections.Counter(reasons)
        for reason, n in counts.items():
            metrics.EVENTS_DISCARDED.labels(reason=reason).inc(n)
        self._discard_log(
            request_id=ctx.request_id, path=request.path.decode("latin-1")[:200],
            client=str(ctx.client_ip), reasons=", ".join(f"{n} {r}" for r, n in sorted(counts.items())))

    def pixel(self, request, ctx):
        gif = Answer(200, GIF, [(b"Content-Type", b"image/gif"), (b"Cache-Control", b"no-store"), *ctx.cors])
        key = (ctx.query.get("writeKey") or [""])[-1]
        events, problem = self._pixel_events(ctx, key)
        if problem is not None:
            return self._pixel_problem(request, gif, problem)
        if not events:  # a bot dropped by enrich.bots
            return self._write(request, gif)
        self.stats.count_received()
        stored = self.intake.accept(key, ctx.request_id, events)

        def count(_):
            if self.live.subscribers:
                self.live.accepted(key, ctx.origin, events)

        def unavailable_(failure):
            failure.trap(Unavailable)
            return self._pixel_problem(request, gif, "pixel while unavailable")
        stored.addCallback(count)
        return _detached(stored).addCallbacks(lambda _: self._write(request, gif), unavailable_)

    def _pixel_events(self, ctx, key):
        """(events, None) for a pixel request, or (None, why it carries none)."""
        if not key:
            return None, "pixel without writeKey"
        if key not in self.keys:
            return None, "pixel with an invalid write key"
        if not self.intake.accepting(key):
            return None, "pixel while unavailable"
        payload = pixel_payload(ctx.query, ctx.route.event_type, self._now())
        if payload is None:
            return None, "pixel track without event"
        try:
            return self._normalise(payload, ctx, key), None
        except Rejected as rejected:
            return None, f"pixel: {rejected.reason}"

    def _pixel_problem(self, request, gif, problem):
        # always the GIF (an email client cannot retry); the problem is counted and logged
        self.writer.refused(request, request.method, request.uri, Answer(200, reason=problem))
        return self._write(request, gif)
