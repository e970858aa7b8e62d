"""The collector's HTTP surface: header-time checks (the gate) and Klein handlers.

Order of checks for an event request (contract section 2): CORS origin, route,
auth, size -- all decided from the headers, before the body is read -- then
decoding, JSON, validation, accept.
"""

import collections
import datetime
import functools
import hashlib
import io
import itertools
import json
import os
import platform
import sys
from urllib.parse import parse_qs, unquote_to_bytes

import attr
import twisted
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .. import __version__, metrics
from ..config import DEFAULT_ADMIN_NETWORKS
from ..intake import IIntake, Unavailable
from ..events import DISCARD, Rejected, normalise_payload, parse_json, pixel_payload
from ..enrichment import Enrichment
from ..live import LiveHub
from .answers import GIF, JSON, Answer, text
from .auth import KeyRing, credentials_match, parse_basic, query_value
from .body import decode_body
from .clientip import client_ip, in_networks
from .cors import OriginPolicy
from .debug import DebugPages
from .routes import ROUTES, allowed_methods, match_route
from .regulations import RegulationRoutes
from .server import StilgarSite

__all__ = ["IIntake", "Unavailable", "StilgarApp"]

log = Logger(namespace="stilgar.web")


@attr.s(slots=True)
class RequestContext:
    """What the gate learnt from the headers, for the handler."""

    route = attr.ib()
    request_id = attr.ib()
    client_ip = attr.ib()
    origin = attr.ib(default=None)
    cors = attr.ib(factory=list)
    write_key = attr.ib(default=None)
    query = attr.ib(factory=dict)
    started = attr.ib(default=None)     # reactor.seconds() when the headers were in


class _RateLimitedLog:
    """At most ``burst`` refusal lines per second; the rest are counted and summarised."""

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


class _GatedResource(Resource):
    isLeaf = True

    def __init__(self, app, inner):
        super().__init__()
        self._app = app
        self._inner = inner

    def render(self, request):
        if getattr(request, "context", None) is None:
            request.setHeader(b"X-Content-Type-Options", b"nosniff")
            content = request.content.read()
            request.content.seek(0)
            verdict = self._app.gate(request.channel, request, request.method, request.uri, len(content))
            if verdict is not None:
                return self._app._write(request, verdict)
            limit = getattr(request, "_body_limit", None)
            if limit is not None and len(content) > limit:
                return self._app._write(request, self._app._with_cors(
                    text(413, "request size exceeds max limit"), request.context))
            request.content = io.BytesIO(content)
        return self._inner.render(request)


@functools.lru_cache(maxsize=1024)
def _request_counter(route, status):
    return metrics.REQUESTS.labels(route=route, status=str(status))


@functools.lru_cache(maxsize=64)
def _request_duration(route):
    return metrics.REQUEST_DURATION.labels(route=route)


def _count_request(route, status, ctx=None, now=None):
    # the labelled child is looked up once per (route, status), not per request
    _request_counter(route, status).inc()
    if ctx is not None and ctx.started is not None and now is not None:
        _request_duration(route).observe(max(0.0, now - ctx.started))


class _GatedDispatch(Resource):
    """Runs the Klein endpoint the gate already matched.

    Under :class:`StilgarSite` the gate has matched the route from the
    headers; matching it again with werkzeug cost a third of a single-event
    request (measured with ``bench/run``), so the endpoint is executed by
    name through Klein's own ``execute_endpoint``.
    """

    isLeaf = True

    def __init__(self, app):
        super().__init__()
        self._app = app
        self._klein = app.app
        self._fallback = app.app.resource()

    def render(self, request):
        ctx = getattr(request, "context", None)
        endpoint = self._app._endpoints.get(ctx.route.name) if ctx is not None and ctx.route else None
        if endpoint is None:
            return self._fallback.render(request)
        result = self._klein.execute_endpoint(endpoint, request)
        if isinstance(result, bytes):
            return result
        result.addCallback(self._written, request)
        result.addErrback(lambda f: log.failure("writing an answer failed", f))
        return NOT_DONE_YET

    @staticmethod
    def _written(body, request):
        if request.finished or request._disconnected:
            return
        request.write(body)
        request.finish()


def _source_id(key):
    return hashlib.sha256(b"stilgar-source:" + key.encode("utf-8")).hexdigest()[:27]


class StilgarApp:
    """Routes, checks and answers; events go to an :class:`IIntake`."""

    def __init__(self, config, intake, stats, reactor, regulations=None, live=None, enrichment=None):
        self.config = config
        self.regulations = RegulationRoutes(self, regulations)   # an IRegulations, or None
        # enrich: once per event at the door (doc/enrichment.md); make_service passes its own
        self.enrichment = enrichment if enrichment is not None else Enrichment.from_config(
            config.enrich_by_write_key(), reactor, on_bot=metrics.count_bot)
        self.server = config.server
        self.intake = intake
        self.stats = stats
        self.reactor = reactor
        self.keys = KeyRing(config.all_write_keys())
        self.origins = OriginPolicy(config.server.origins)
        self.prefix = config.server.path_prefix
        self.limit = config.server.payload_size_limit
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._refusal_log = _RateLimitedLog(reactor)
        self._discard_log = _RateLimitedLog(
            reactor, template="[discarded] {request_id} {path} from {client}: {reasons}"
                              " (answered 200; recorded in rudder_discards)")
        self._source_documents = {}   # write key -> the /sourceConfig body
        self._started = datetime.datetime.fromtimestamp(reactor.seconds(), datetime.timezone.utc)
        # the live view: hooks below run only behind `if self.live.subscribers:` (doc/debugging.md)
        self.live = live if live is not None else LiveHub.from_config(config.debug, reactor)
        self.debug = DebugPages(config.debug, self.live, self._write, _count_request, reactor)
        self._route_app()

    # -- wiring ---------------------------------------------------------

    def _route_app(self):
        # one Klein app per instance: routes carry the configured prefix
        self.app = app = Klein()
        handlers = {
            "batch": self.events, "import": self.events, "beacon": self.events,
            "pixel_track": self.pixel, "pixel_page": self.pixel,
            "source_config": self.source_config, "ping": self.ping, "root": self.root,
            "health": self.health, "version": self.version, "status": self.status,
            "metrics": self.metrics_page, **self.debug.handlers(),
            "regulations": self.regulations.collection, "regulation": self.regulations.item,
        }
        self._endpoints = {}
        for route in ROUTES.values():
            handler = handlers.get(route.name, self.events)
            methods = [m.decode() for m in route.methods]
            paths = {self.prefix + route.path or "/", self.prefix + route.path + "/"}
            for path in sorted(paths):
                endpoint = f"{route.name}:{path}"
                self._endpoints.setdefault(route.name, endpoint)
                app.route(path, methods=methods, endpoint=endpoint)(self._guarded(handler))

    def _guarded(self, handler):
        def run(request, **_url_values):   # the regulation id is read from the path
            try:
                result = handler(request, request.context)
            except Exception:
                return self._internal_error(failure.Failure(), request)
            if isinstance(result, defer.Deferred):
                result.addErrback(self._internal_error, request)
            return result
        return run

    def _internal_error(self, failure, request):
        # a bug, never the client's fault: 503 so that SDKs retry instead of dropping
        log.failure("unexpected error answering {path}", failure, path=request.path)
        ctx = getattr(request, "context", None)
        cors = ctx.cors if ctx is not None else []
        return self._write(request, text(503, "service unavailable", [(b"Retry-After", b"30"), *cors],
                                         reason="internal error"))

    def resource(self):
        """The app as a resource; under a plain ``Site`` (e.g. ``StubTreq``) the
        gate runs once the body is in, with the same answers."""
        return _GatedResource(self, self.app.resource())

    def site(self):
        """The :class:`StilgarSite` serving this app with the configured limits."""
        return StilgarSite(
            _GatedDispatch(self), self.gate,
            body_limit=self.limit, read_timeout=self.server.read_timeout,
            idle_timeout=self.server.idle_timeout, max_connections=self.server.max_connections,
            max_connections_per_ip=self.server.max_connections_per_ip,
            unlimited_peers=self.server.trusted_proxies, max_body_buffer=self.server.max_body_buffer,
            unavailable=lambda request: self._unavailable(request.context, 5),
            write=self._write, on_answer=self._answered_early, reactor=self.reactor)

    # -- the gate: everything decided from the headers --------------------

    def gate(self, channel, request, method, uri, length):
        """Header-time checks; None to read the body, or the refusal."""
        headers = request.requestHeaders
        path, _, query = uri.partition(b"?")
        route = match_route(unquote_to_bytes(path).decode("utf-8", "replace"), self.prefix)
        origin = headers.getRawHeaders(b"origin", [None])[0]
        peer = channel.transport.getPeer() if channel.transport else None
        ip = client_ip(getattr(peer, "host", None), headers.getRawHeaders(b"x-forwarded-for"),
                       headers.getRawHeaders(b"x-real-ip", [None])[0], self.server.trusted_proxies)
        rid = headers.getRawHeaders(b"x-request-id", [None])[0]
        rid = rid.decode("ascii", "replace")[:128] if rid else f"{self._id_prefix}-{next(self._ids)}"
        ctx = RequestContext(route=route, request_id=rid, client_ip=ip, origin=origin)
        request.context = ctx
        ctx.started = self.reactor.seconds()

        if method == b"OPTIONS":
            return self._preflight(route, origin, headers)
        if route is not None and route.cors:
            if not self.origins.allows(origin):
                return text(403, "origin not allowed", [(b"Vary", b"Origin")])
            ctx.cors = OriginPolicy.headers(origin)
        if route is None:
            return text(404, "not found")
        if method not in route.methods and not (method == b"HEAD" and b"GET" in route.methods):
            return text(405, "method not allowed",
                        [(b"Allow", b", ".join(allowed_methods(route))), *ctx.cors])
        if query:
            ctx.query = parse_qs(query.decode("utf-8", "replace"))

        refusal = self._authorise(route, ctx, headers)
        if refusal is not None:
            refusal.headers.extend(ctx.cors)
            return refusal
        if length is not None and length > self.limit and route.events:
            return self._with_cors(text(413, "request size exceeds max limit"), ctx, close=True)
        if route.events:
            if self.intake.stopping:
                return self._unavailable(ctx, 5)
            if not self.intake.accepting(ctx.write_key):
                return self._unavailable(ctx, 30)
            request._body_limit = self.limit
        else:
            # routes without events need no body: a small cap keeps them cheap
            request._body_limit = 64 * 1024
        return None

    def _preflight(self, route, origin, headers):
        if origin is None:
            allow = allowed_methods(route) if route is not None else [b"GET", b"POST", b"OPTIONS"]
            return Answer(204, b"", [(b"Allow", b", ".join(allow))])
        if not self.origins.allows(origin) or (route is not None and not route.cors):
            return text(403, "origin not allowed", [(b"Vary", b"Origin")])
        requested = headers.getRawHeaders(b"access-control-request-headers", [None])[0]
        return Answer(204, b"", OriginPolicy.preflight_headers(origin, requested))

    def _authorise(self, route, ctx, headers):
        auth = route.auth
        if auth == "basic":
            creds = parse_basic(headers.getRawHeaders(b"authorization", [None])[0])
            if creds is None:
                return text(401, "failed to read writekey from header",
                            [(b"WWW-Authenticate", b'Basic realm="stilgar"')])
            # 401 as rudder-server: Kotlin/Swift stop on it but retry a 403 for ever;
            # the classic SDKs stop on this exact text (doc/sdks.md)
            if creds[0] not in self.keys:
                return text(401, "invalid write key")
            ctx.write_key = creds[0]
        elif auth == "query":
            key = (ctx.query.get("writeKey") or [""])[-1]
            if not key:
                return text(401, "failed to read writekey from query params")
            if key not in self.keys:
                return text(401, "invalid write key")
            ctx.write_key = key
        elif auth == "admin":
            return self._authorise_admin(ctx, headers)
        return None

    def _authorise_admin(self, ctx, headers):
        admin = self.server.admin
        networks = admin.allowed_networks if admin is not None and admin.allowed_networks is not None \
            else DEFAULT_ADMIN_NETWORKS
        if not in_networks(ctx.client_ip, networks):
            return text(403, "forbidden", reason="admin network")
        if admin is not None and admin.username is not None:
            header = headers.getRawHeaders(b"authorization", [None])[0]
            if header is None:
                return text(401, "authentication required",
                            [(b"WWW-Authenticate", b'Basic realm="stilgar"')])
            if not credentials_match(parse_basic(header), admin.username, admin.password):
                return text(403, "forbidden", reason="admin credentials")
        return None

    def _unavailable(self, ctx, retry_after):
        return self._with_cors(
            text(503, "service unavailable", [(b"Retry-After", str(retry_after).encode())]), ctx)

    @staticmethod
    def _with_cors(answer, ctx, close=False):
        answer.headers.extend(ctx.cors)
        answer.close = close
        return answer

    # -- writing answers ----------------------------------------------------

    def _write(self, request, answer):
        """Set status and headers on a whole request; return the body for Klein."""
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.responseHeaders.addRawHeader(name, value)
        request.setHeader(b"Content-Length", b"%d" % len(answer.body))
        ctx = getattr(request, "context", None)
        route = ctx.route.name if ctx is not None and ctx.route is not None else "unknown"
        _count_request(route, answer.status, ctx, self.reactor.seconds())
        if answer.reason is not None:
            self._log_refusal(request, request.method, request.uri, answer)
        return answer.body

    def _answered_early(self, request, method, uri, answer):
        ctx = getattr(request, "context", None)
        route = ctx.route.name if ctx is not None and ctx.route is not None else "unknown"
        _count_request(route, answer.status, ctx, self.reactor.seconds())
        if answer.reason is not None:
            self._log_refusal(request, method, uri, answer)

    def _log_refusal(self, request, method, uri, answer):
        self.stats.reject(answer.reason)
        if self.live.subscribers:
            self.debug.rejected(request, method, uri, answer)
        ctx = getattr(request, "context", None)
        self._refusal_log(
            request_id=ctx.request_id if ctx else "-",
            method=(method or b"-").decode("latin-1"),
            path=(uri or b"-").split(b"?", 1)[0].decode("latin-1")[:200],
            client=str(ctx.client_ip) if ctx else "-",
            status=answer.status, reason=answer.reason)

    def _now(self):
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)

    # -- handlers -------------------------------------------------------------

    def events(self, request, ctx):
        self.stats.count_received()
        body = request.content.getvalue()
        encoding = (request.requestHeaders.getRawHeaders(b"content-encoding", [b""])[0]).lower()
        try:
            data = decode_body(body, encoding, self.limit)
            payload, cuts = parse_json(data, cut_deep=True)
            events = normalise_payload(
                payload, route_type=ctx.route.event_type, received_at=self._now(),
                client_ip=str(ctx.client_ip) if ctx.client_ip is not None else None,
                privacy=self.config.privacy, max_events=self.server.max_events_per_request,
                cut=cuts > 0, enrich=self.enrichment.for_key(ctx.write_key))
        except Rejected as rejected:
            return self._write(request, self._with_cors(text(rejected.status, rejected.reason), ctx))
        if not events:  # every event was a bot dropped by enrich.bots: 200, so that nobody retries
            return self._write(request, self._with_cors(text(200, "OK"), ctx))
        metrics.EVENTS_RECEIVED.inc(len(events))
        # discard records travel with the events (a 200 means they are on disk too)
        discards = [e["reason"] for e in events if e["type"] == DISCARD]
        d = self.intake.accept(ctx.write_key, ctx.request_id, events)

        def stored(_):
            if self.live.subscribers:
                self.live.accepted(ctx.write_key, ctx.origin, [e for e in events if e["type"] != DISCARD])
            self.stats.count_accepted(len(events) - len(discards))
            if discards:
                self._count_discards(request, ctx, discards)
            return self._write(request, self._with_cors(text(200, "OK"), ctx))

        def refused(failure):
            failure.trap(Unavailable)
            return self._write(request, self._unavailable(ctx, failure.value.retry_after))

        return d.addCallbacks(stored, refused)

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
        problem = None
        if not key:
            problem = "pixel without writeKey"
        elif key not in self.keys:
            problem = "pixel with an invalid write key"
        elif self.intake.stopping or not self.intake.accepting(key):
            problem = "pixel while unavailable"
        if problem is None:
            payload = pixel_payload(ctx.query, ctx.route.event_type, self._now())
            if payload is None:
                problem = "pixel track without event"
        if problem is None:
            try:
                events = normalise_payload(
                    payload, route_type=ctx.route.event_type, received_at=self._now(),
                    client_ip=str(ctx.client_ip) if ctx.client_ip is not None else None,
                    privacy=self.config.privacy, max_events=self.server.max_events_per_request,
                    enrich=self.enrichment.for_key(key))
            except Rejected as rejected:
                problem = f"pixel: {rejected.reason}"
        if problem is not None:
            return self._pixel_problem(request, gif, problem)
        if not events:  # a bot dropped by enrich.bots
            return self._write(request, gif)
        self.stats.count_received()
        d = self.intake.accept(key, ctx.request_id, events)

        def stored(_):
            if self.live.subscribers:
                self.live.accepted(key, ctx.origin, events)
            return self._write(request, gif)

        def unavailable(failure):
            failure.trap(Unavailable)
            return self._pixel_problem(request, gif, "pixel while unavailable")
        return d.addCallbacks(stored, unavailable)

    def _pixel_problem(self, request, gif, problem):
        # always the GIF (an email client cannot retry); the problem is counted and logged
        self._log_refusal(request, request.method, request.uri, Answer(200, reason=problem))
        return self._write(request, gif)

    def source_config(self, request, ctx):
        # the Basic header first: Kotlin and Swift also put the key, unencoded, in the
        # query, where a '&' cuts it; the query is read without turning '+' into a space
        creds = parse_basic(request.requestHeaders.getRawHeaders(b"authorization", [None])[0])
        key = creds[0] if creds else query_value(request.uri, b"writeKey")
        if not key or key not in self.keys:
            body = json.dumps({"source": {"enabled": False}}).encode()
            return self._write(request, Answer(403, body, [(b"Content-Type", JSON), *ctx.cors],
                                               reason="sourceConfig with an unknown write key"))
        body = self._source_documents.get(key)
        if body is None:
            body = self._source_documents[key] = self._source_document(key)
        return self._write(request, Answer(200, body, [(b"Content-Type", JSON), *ctx.cors]))

    def _source_document(self, key):
        """The /sourceConfig body for a known key (doc/sdks.md): every field the SDKs'
        models require, and the operator's ``source_config`` entry verbatim."""
        served = self.config.source_config.get(key)
        source_id = _source_id(key)
        updated = self._started.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self._started.microsecond // 1000:03d}Z"
        source = {
            "id": source_id,
            "name": f"stilgar-{source_id[:8]}",
            "writeKey": key,
            "workspaceId": hashlib.sha256(b"stilgar-workspace").hexdigest()[:27],
            "enabled": True,
            "config": {"statsCollection": {"errors": {"enabled": False},
                                           "metrics": {"enabled": False}}},
            "destinations": list(served.destinations) if served is not None else [],
            "updatedAt": updated,
        }
        if served is not None and served.dataplanes is not None:
            source["dataplanes"] = served.dataplanes   # never unless configured: it redirects traffic
        consent = served.consent_management if served is not None else None
        document = {
            "source": source,
            "updatedAt": updated,
            "consentManagementMetadata": consent if consent is not None else {"providers": []},
        }
        return json.dumps(document).encode()

    def ping(self, request, ctx):
        return self._write(request, text(200, "pong"))

    def root(self, request, ctx):
        return self._write(request, text(200, ":-)"))

    def health(self, request, ctx):
        document = self.intake.health()
        status = 200 if document["acceptingEvents"] else 503
        return self._write(request, Answer(status, json.dumps(document).encode(), [(b"Content-Type", JSON)]))

    def version(self, request, ctx):
        document = {"version": __version__, "python": platform.python_version(),
                    "implementation": sys.implementation.name, "twisted": twisted.__version__}
        return self._write(request, Answer(200, json.dumps(document).encode(), [(b"Content-Type", JSON)]))

    def status(self, request, ctx):
        value = (ctx.query.get("with_destinations") or ["false"])[-1]
        if value not in ("true", "false"):
            return self._write(request, text(400, "with_destinations must be true or false"))
        document = {"events": self.stats.events_json(self.intake.queue_capacity())}
        document.update(self.intake.status(value == "true"))
        return self._write(request, Answer(200, json.dumps(document).encode(), [(b"Content-Type", JSON)]))

    def metrics_page(self, request, ctx):
        from ..metrics import render
        return self._write(request, Answer(200, render(), [(b"Content-Type", CONTENT_TYPE_LATEST.encode())]))
