"""The admin routes of regulations: ``/v1/regulations`` and ``/v1/regulations/<id>`` (doc/privacy.md).

Same access rule as ``/status`` (the gate checks ``server.admin``). State-changing
requests are also guarded against cross-site requests, because browsers resend
cached Basic credentials: only ``Content-Type: application/json`` is accepted,
and an ``Origin`` (or, without one, a ``Referer``) naming another site than the
collector's own ``Host`` is refused.
"""

import json
from urllib.parse import urlsplit

from ..events import Rejected, parse_json
from ..regulations.api import BadRegulation, RegulationsUnavailable
from .answers import JSON, Answer, text
from .auth import parse_basic

__all__ = ["RegulationRoutes", "cross_site_refusal"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc, scheme=None):
    """``(host, port)`` of a netloc, the scheme's default port made explicit."""
    parts = urlsplit(f"//{netloc}")
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return (parts.hostname or "").lower(), port


def cross_site_refusal(headers):
    """Why a state-changing admin request must be refused (a str), or None.

    ``headers``: a twisted ``Headers``. Requests without Origin and Referer
    (curl, scripts) pass: only browsers add them, and browsers always do on a
    cross-site POST."""
    ctype = (headers.getRawHeaders(b"content-type", [b""])[0] or b"").decode("latin-1")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        return "content type must be application/json"
    host = (headers.getRawHeaders(b"host", [b""])[0] or b"").decode("latin-1").strip()
    for name in (b"origin", b"referer"):
        value = headers.getRawHeaders(name, [None])[0]
        if value is None:
            continue
        source = urlsplit(value.decode("latin-1").strip())
        if source.scheme not in _DEFAULT_PORTS or not source.netloc:
            return f"{name.decode()} is not this collector"
        own = {_host_port(host, s) for s in _DEFAULT_PORTS}
        if _host_port(source.netloc, source.scheme) not in own:
            return f"{name.decode()} is not this collector"
        return None
    return None


def _json(status, document):
    return Answer(status, json.dumps(document).encode("utf-8"), [(b"Content-Type", JSON)])


class RegulationRoutes:
    """Handlers for the app's ``regulations`` and ``regulation`` routes; ``write(request, answer)``
    is the app's answer writer."""

    def __init__(self, write, regulations):
        self._write = write
        self._regulations = regulations

    def _unavailable(self):
        if self._regulations is None:
            return text(503, "regulations are not enabled in this process", reason="regulations not enabled")
        reason = self._regulations.unavailable
        return text(503, reason, reason="regulations not configured") if reason else None

    def collection(self, request, ctx):
        refusal = self._unavailable()
        if refusal is not None:
            return self._write(request, refusal)
        if request.method == b"POST":
            return self._file(request)
        d = self._regulations.newest_first()
        return d.addCallback(lambda docs: self._write(request, _json(200, {"regulations": docs})))

    def _file(self, request):
        problem = cross_site_refusal(request.requestHeaders)
        if problem is not None:
            status = 415 if problem.startswith("content type") else 403
            return self._write(request, text(status, problem))
        try:
            document = parse_json(request.content.getvalue())
            d = self._regulations.file(document, self._admin(request))
        except Rejected as rejected:
            return self._write(request, text(rejected.status, rejected.reason))
        except BadRegulation as bad:
            return self._write(request, text(400, str(bad)))
        def not_durable(failure):
            failure.trap(RegulationsUnavailable)
            return self._write(request, text(503, "the regulation could not be recorded; retry later",
                                             [(b"Retry-After", b"30")], reason="regulation journal"))
        return d.addCallbacks(lambda doc: self._write(
            request, _json(202, {"id": doc["id"], "status": doc["status"]})), not_durable)

    def item(self, request, ctx):
        refusal = self._unavailable()
        if refusal is not None:
            return self._write(request, refusal)
        regulation_id = request.path.decode("latin-1").rstrip("/").rsplit("/", 1)[-1]
        d = self._regulations.get(regulation_id)
        return d.addCallback(lambda doc: self._write(
            request, _json(200, doc) if doc is not None else text(404, "no such regulation")))

    @staticmethod
    def _admin(request):
        creds = parse_basic(request.requestHeaders.getRawHeaders(b"authorization", [None])[0])
        return creds[0] if creds else None
