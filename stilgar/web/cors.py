"""CORS answers for the browser-facing routes (doc/http.md)."""

__all__ = ["OriginPolicy"]

PREFLIGHT_METHODS = b"GET, POST, OPTIONS"
PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


class OriginPolicy:
    """Which browser origins may call, from ``server.origins``."""

    def __init__(self, origins):
        self.any = "*" in origins
        self.origins = frozenset(o.encode("utf-8") for o in origins if o != "*")

    def allows(self, origin):
        """``origin`` is the raw Origin header (bytes) or None (not a browser: allowed)."""
        if origin is None:
            return True
        return self.any or origin in self.origins

    @staticmethod
    def headers(origin):
        """Headers for an answer to an allowed origin (any status)."""
        headers = [(b"Vary", b"Origin")]
        if origin is not None:
            headers.append((b"Access-Control-Allow-Origin", origin))
            headers.append((b"Access-Control-Allow-Credentials", b"true"))
        return headers

    @staticmethod
    def preflight_headers(origin, requested_headers):
        headers = [
            (b"Access-Control-Allow-Origin", origin),
            (b"Access-Control-Allow-Credentials", b"true"),
            (b"Access-Control-Allow-Methods", PREFLIGHT_METHODS),
            (b"Access-Control-Max-Age", b"900"),
            (b"Vary", PREFLIGHT_VARY),
        ]
        if requested_headers:
            headers.append((b"Access-Control-Allow-Headers", requested_headers))
        return headers
