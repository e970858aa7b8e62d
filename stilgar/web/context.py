"""What the gate learnt about a request, attached to it the way Klein attaches ``IKleinRequest``.

``IRequestContext(request)`` is the request's one :class:`RequestContext`: a twisted.web
request is ``Componentized``, so the adapter registered below is built on first use and
kept on the request (its adapter cache) for the request's life. The gate fills it from the
headers; the channel reads ``body_limit`` while the body arrives; the handlers, the answer
writer and the site read the rest.
"""

import attr
from twisted.python.components import registerAdapter
from twisted.web.server import Request
from zope.interface import Attribute, Interface, implementer

__all__ = ["IRequestContext", "RequestContext"]


class IRequestContext(Interface):
    """What the header-time checks decided for one request."""

    route = Attribute("The matched stilgar.web.routes.Route, or None.")
    request_id = Attribute("X-Request-Id as sent, or one of ours.")
    client_ip = Attribute("The client's address (ipaddress object, or None).")
    origin = Attribute("The raw Origin header (bytes), or None.")
    cors = Attribute("Headers every answer to this request carries: [(bytes, bytes)].")
    write_key = Attribute("The authenticated write key, or None.")
    query = Attribute("The parsed query string: {str: [str]}.")
    started = Attribute("clock.seconds() when the headers were in, or None.")
    body_limit = Attribute("Bytes the body may hold (counted as it arrives), or None: no limit.")

    def with_cors(answer, close=False):
        """``answer`` with this request's CORS headers added (and ``close`` set)."""


@implementer(IRequestContext)
@attr.s(slots=True)
class RequestContext:
    route = attr.ib(default=None)
    request_id = attr.ib(default=None)
    client_ip = attr.ib(default=None)
    origin = attr.ib(default=None)
    cors = attr.ib(factory=list)
    write_key = attr.ib(default=None)
    query = attr.ib(factory=dict)
    started = attr.ib(default=None)
    body_limit = attr.ib(default=None)

    def with_cors(self, answer, close=False):
        answer.headers.extend(self.cors)
        answer.close = close
        return answer


def _context_of(request):
    # the adapter factory: Componentized caches what it returns on the request
    return RequestContext()


registerAdapter(_context_of, Request, IRequestContext)
