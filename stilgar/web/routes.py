"""The route table, shared by the header-time checks and the Klein handlers."""

import attr

from ..events import EVENT_TYPES

__all__ = ["Route", "ROUTES", "match_route"]

REGULATION_PATH = "/v1/regulations/<regulation_id>"   # the one route with a variable part


@attr.s(frozen=True, slots=True)
class Route:
    path: str = attr.ib()            # canonical path, no prefix, no trailing slash
    name: str = attr.ib()            # metric label / handler name
    methods: tuple = attr.ib()       # bytes; HEAD is implied wherever GET is
    auth: str = attr.ib(default="none")   # none | basic | query | query_or_basic | admin
    cors: bool = attr.ib(default=False)
    event_type: str = attr.ib(default=None)   # forced type of single-event routes
    events: bool = attr.ib(default=False)     # a POST route carrying events


def _routes():
    routes = [
        Route("/v1/batch", "batch", (b"POST",), auth="basic", cors=True, events=True),
        Route("/v1/import", "import", (b"POST",), auth="basic", cors=True, events=True),
        Route("/beacon/v1/batch", "beacon", (b"POST",), auth="query", cors=True, events=True),
        Route("/pixel/v1/track", "pixel_track", (b"GET",), auth="none", cors=True, event_type="track"),
        Route("/pixel/v1/page", "pixel_page", (b"GET",), auth="none", cors=True, event_type="page"),
        Route("/sourceConfig", "source_config", (b"GET",), auth="query_or_basic", cors=True),
        Route("/ping", "ping", (b"GET",)),
        Route("", "root", (b"GET",)),
        Route("/health", "health", (b"GET",)),
        Route("/version", "version", (b"GET",)),
        Route("/status", "status", (b"GET",), auth="admin"),
        Route("/metrics", "metrics", (b"GET",), auth="admin"),
        Route("/v1/regulations", "regulations", (b"GET", b"POST"), auth="admin"),
        Route(REGULATION_PATH, "regulation", (b"GET",), auth="admin"),
        # the live view (stilgar/web/debug.py, doc/debugging.md)
        Route("/debug", "debug_page", (b"GET",), auth="admin"),
        Route("/debug/debug.js", "debug_js", (b"GET",), auth="admin"),
        Route("/debug/debug.css", "debug_css", (b"GET",), auth="admin"),
        Route("/debug/events", "debug_events", (b"GET",), auth="admin"),
        Route("/debug/preview", "debug_preview", (b"POST",), auth="admin"),
    ]
    for t in sorted(EVENT_TYPES):
        routes.append(Route(f"/v1/{t}", t, (b"POST",), auth="basic", cors=True, event_type=t, events=True))
    return {r.path: r for r in routes}


ROUTES = _routes()


def match_route(path, prefix=""):
    """Return the :class:`Route` for a request path (str, no query), or None.

    A trailing slash is accepted on every route; ``prefix`` ('' or '/x')
    is stripped first.
    """
    if prefix:
        if path != prefix and not path.startswith(prefix + "/"):
            return None
        path = path[len(prefix):]
    if path.endswith("/"):
        path = path[:-1]
    route = ROUTES.get(path)
    if route is None and path.startswith("/v1/regulations/") and "/" not in path[16:]:
        return ROUTES[REGULATION_PATH]
    return route


def allowed_methods(route):
    """The methods of a route as the Allow header lists them."""
    methods = list(route.methods)
    if b"GET" in methods:
        methods.append(b"HEAD")
    methods.append(b"OPTIONS")
    return methods
