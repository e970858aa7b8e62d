"""The gate: the checks a request passes on its headers alone, before its body is read.

Order (doc/http.md, "Order of checks"): preflight, CORS origin, route, method, auth, declared
size, then whether the intake takes events for the key. The first that fails answers; an
oversized or unauthorised body is never read. What the gate learns (route, write key, client
address, CORS headers, the body's limit) goes on the request's
:class:`~stilgar.web.context.IRequestContext` for the channel and the handlers.
"""

import itertools
import os
from urllib.parse import parse_qs, unquote_to_bytes

from zope.interface import Interface, implementer

from ..config import DEFAULT_ADMIN_NETWORKS
from .answers import Answer, text, unavailable
from .auth import KeyRing, credentials_match, parse_basic
from .clientip import client_ip, in_networks
from .context import IRequestContext
from .cors import OriginPolicy
from .routes import allowed_methods, match_route

__all__ = ["IGate", "Gate", "SMALL_BODY_LIMIT"]

# routes without events need no body: a small cap keeps them cheap
SMALL_BODY_LIMIT = 64 * 1024


class IGate(Interface):
    """What :class:`~stilgar.web.server.StilgarChannel` asks once a request's headers are in."""

    def check(request, method, uri, length, peer=None):
        """None to read the body, or the Answer refusing the request; fills the request's
        IRequestContext (its ``body_limit`` above all)."""


@implementer(IGate)
class Gate:
    """Header-time checks for one app: ``server`` is the ``server`` configuration section,
    ``intake`` an :class:`~stilgar.intake.IIntake`, ``clock`` gives ``seconds()``."""

    def __init__(self, server, write_keys, intake, clock):
        self.server = server
        self.keys = write_keys if isinstance(write_keys, KeyRing) else KeyRing(write_keys)
        self.origins = OriginPolicy(server.origins)
        self.prefix = server.path_prefix
        self.limit = server.payload_size_limit
        self.intake = intake
        self.clock = clock
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()

    def check(self, request, method, uri, length, peer=None):
        """None to read the body, or the :class:`Answer` refusing the request.

        ``length`` is the declared Content-Length (None when chunked); ``peer`` the
        connection's address. The request's context is filled as a side effect."""
        headers = request.requestHeaders
        path, _, query = uri.partition(b"?")
        route = match_route(unquote_to_bytes(path).decode("utf-8", "replace"), self.prefix)
        ctx = IRequestContext(request)
        ctx.route = route
        ctx.origin = origin = headers.getRawHeaders(b"origin", [None])[0]
        ctx.client_ip = client_ip(getattr(peer, "host", None), headers.getRawHeaders(b"x-forwarded-for"),
                                  headers.getRawHeaders(b"x-real-ip", [None])[0], self.server.trusted_proxies)
        rid = headers.getRawHeaders(b"x-request-id", [None])[0]
        ctx.request_id = rid.decode("ascii", "replace")[:128] if rid else f"{self._id_prefix}-{next(self._ids)}"
        ctx.started = self.clock.seconds()

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
        if not route.events:
            ctx.body_limit = SMALL_BODY_LIMIT
            return None
        if length is not None and length > self.limit:
            return ctx.with_cors(text(413, "request size exceeds max limit"), close=True)
        # the one rule is the intake's; stopping only picks the Retry-After
        if not self.intake.accepting(ctx.write_key):
            return ctx.with_cors(unavailable(5 if self.intake.stopping else 30))
        ctx.body_limit = self.limit
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
