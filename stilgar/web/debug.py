"""The live view's HTTP side: ``/debug/`` (a page), ``/debug/events`` (Server-Sent Events) and
``/debug/preview`` (the rows an event becomes). Admin routes, like /status (doc/debugging.md).

The page is three static files (stilgar/web/static/) served with a strict Content-Security-Policy:
scripts only from this collector, no inline script, no connection elsewhere; the script renders
every value with ``textContent``. The stream's items come from :class:`stilgar.live.LiveHub`.
"""

import json
from importlib import resources

from twisted.internet import defer, task
from twisted.logger import Logger

from ..events import EVENT_TYPES
from ..live import KINDS, Filters
from .answers import JSON, Answer, text
from .auth import parse_basic

__all__ = ["DebugPages", "SECURITY_HEADERS", "sse_frame", "report_rejected"]

log = Logger(namespace="stilgar.web.debug")

CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"Cache-Control", b"no-store"), (b"Content-Security-Policy", CSP),
                    (b"X-Frame-Options", b"DENY"), (b"Referrer-Policy", b"no-referrer")]
HEARTBEAT = 15.0          # seconds between SSE comments, so that proxies keep the stream open
_TYPES = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
          "css": b"text/css; charset=utf-8"}


def _static(name):
    return resources.files("stilgar.web").joinpath("static", name).read_bytes()


def sse_frame(kind, data):
    """One SSE message: the item's JSON (it holds no newline) as its data."""
    return b"data: " + data + b"\n\n"


def _one(query, name):
    values = query.get(name) or []
    return values[-1] if values else None


def _listed(query, name):
    return {v for value in query.get(name) or [] for v in value.split(",") if v}


class DebugPages:
    """Handlers of the ``debug_*`` routes; ``write(request, answer)`` is the app's answer writer
    (:class:`stilgar.web.writer.AnswerWriter`), ``count(route, status)`` counts a streamed answer."""

    def __init__(self, config, hub, write, count, clock):
        self.enabled = config.enabled
        self.hub = hub
        self.write = write
        self.count = count
        self.clock = clock
        self.files = {"debug_page": (_static("debug.html"), _TYPES["html"]),
                      "debug_js": (_static("debug.js"), _TYPES["js"]),
                      "debug_css": (_static("debug.css"), _TYPES["css"])}

    def handlers(self):
        return {"debug_page": self.page, "debug_js": self.static, "debug_css": self.static,
                "debug_events": self.events, "debug_preview": self.preview}

    def _answer(self, request, status, body, content_type):
        return self.write(request, Answer(status, body, [(b"Content-Type", content_type), *SECURITY_HEADERS]))

    def _refuse(self, request, status, message):
        return self.write(request, text(status, message, SECURITY_HEADERS))

    # -- the page

    def page(self, request, ctx):
        if not self.enabled:
            return self._refuse(request, 404, "not found")
        if not request.path.endswith(b"/"):
            # the page loads debug.js and debug/events relative to itself
            answer = text(301, "moved", [(b"Location", request.path + b"/"), *SECURITY_HEADERS])
            return self.write(request, answer)
        return self.static(request, ctx)

    def static(self, request, ctx):
        if not self.enabled:
            return self._refuse(request, 404, "not found")
        body, content_type = self.files[ctx.route.name]
        return self._answer(request, 200, body, content_type)

    # -- the stream

    def events(self, request, ctx):
        if not self.enabled:
            return self._refuse(request, 404, "not found")
        kinds = _listed(ctx.query, "kind")
        types = _listed(ctx.query, "type")
        if kinds - set(KINDS):
            return self._refuse(request, 400, f"kind must be among {', '.join(KINDS)}")
        if types - set(EVENT_TYPES):
            return self._refuse(request, 400, f"type must be among {', '.join(sorted(EVENT_TYPES))}")
        if self.hub.full():
            return self.write(request, text(503, "too many live view subscribers",
                                            [(b"Retry-After", b"10"), *SECURITY_HEADERS]))
        if request.method == b"HEAD":
            return self._answer(request, 200, b"", b"text/event-stream; charset=utf-8")
        filters = Filters(write_key=_one(ctx.query, "write_key"), kinds=kinds, types=types)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"X-Accel-Buffering", b"no")
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        self.count(ctx.route.name, 200)
        request.write(b"retry: 2000\n: stilgar live view\n\n")
        transport = request.channel.transport
        sub = self.hub.subscribe(filters, request.write, sse_frame, transport.abortConnection)
        request.registerProducer(sub, True)
        heartbeat = task.LoopingCall(lambda: sub.state == "streaming" and request.write(b": keep-alive\n\n"))
        heartbeat.clock = self.clock
        heartbeat.start(HEARTBEAT, now=False)
        done = defer.Deferred()

        def ended(_):
            if heartbeat.running:
                heartbeat.stop()
            sub.close()
            if not done.called:
                done.callback(None)
        request.notifyFinish().addBoth(ended)
        return done

    # -- what an event becomes

    def preview(self, request, ctx):
        if not self.enabled:
            return self._refuse(request, 404, "not found")
        content_type = request.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        if content_type.split(b";")[0].strip().lower() != JSON:
            return self._refuse(request, 415, "content type must be application/json")
        try:
            doc = json.loads(request.content.getvalue())
        except ValueError:
            return self._refuse(request, 400, "invalid JSON")
        event = doc.get("event") if isinstance(doc, dict) else None
        names = doc.get("destinations") if isinstance(doc, dict) else None
        if not isinstance(event, dict) or not isinstance(names, list) or \
                not all(isinstance(n, str) for n in names):
            return self._refuse(request, 400, "expected {\"event\": {...}, \"destinations\": [names]}")
        result = self.hub.preview(event, names)
        body = json.dumps(result, ensure_ascii=False, default=str).encode("utf-8")
        return self._answer(request, 200, body, JSON)


def report_rejected(hub, request, ctx, method, uri, answer):
    """Tell the live view's hub of a refused request (called only while someone watches);
    ``ctx`` is the request's :class:`~stilgar.web.context.IRequestContext`."""
    headers = request.requestHeaders
    key = ctx.write_key
    if key is None:
        creds = parse_basic(headers.getRawHeaders(b"authorization", [None])[0])
        key = creds[0] if creds else None
    if key is None:
        key = _one(ctx.query, "writeKey")
    if ctx.route is not None and ctx.route.auth == "admin":
        key = None              # admin credentials are not write keys: never shown
    origin = headers.getRawHeaders(b"origin", [None])[0]
    agent = headers.getRawHeaders(b"user-agent", [None])[0]
    hub.rejected(answer.status, answer.reason, key,
                 origin.decode("latin-1") if origin else None,
                 agent.decode("latin-1") if agent else None,
                 (method or b"-").decode("latin-1"),
                 (uri or b"-").split(b"?", 1)[0].decode("latin-1"))
