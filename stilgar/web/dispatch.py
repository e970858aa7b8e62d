"""The one resource every request that passed the gate reaches: it runs the route's Klein endpoint.

The gate has matched the route from the headers already; matching it again with werkzeug
(``KleinResource``) cost a third of a single-event request (measured with ``bench/run``),
so the endpoint is executed by name through Klein's own ``execute_endpoint``. What
``KleinResource.render`` does around it is kept: an error in a handler becomes an answer
(``on_error``, the app's 503), a handler's Deferred is cancelled when the client goes away,
and nothing is written to a request that already ended.
"""

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .context import IRequestContext

__all__ = ["EndpointDispatch"]

log = Logger(namespace="stilgar.web")


def _ended(request):
    return request.finished or request._disconnected


class EndpointDispatch(Resource):
    """Runs ``endpoints[route name]`` of the Klein app ``klein`` as ``endpoint(request, ctx)``
    (``ctx``: the request's :class:`IRequestContext`); ``on_error(failure, request)`` answers a
    handler's exception and returns the body."""

    isLeaf = True

    def __init__(self, klein, endpoints, on_error):
        super().__init__()
        self._klein = klein
        self._endpoints = endpoints
        self._on_error = on_error

    def render(self, request):
        ctx = IRequestContext(request)
        try:
            result = self._klein.execute_endpoint(self._endpoints[ctx.route.name], request, ctx)
        except Exception:
            return self._on_error(failure.Failure(), request)
        if not isinstance(result, defer.Deferred):
            return result
        if not result.called:
            # as KleinResource: a client gone away cancels what its answer waits for
            request.notifyFinish().addErrback(lambda _: result.cancel())
        result.addCallbacks(self._written, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        result.addErrback(lambda f: log.failure("writing an answer failed", f))
        return NOT_DONE_YET

    def _failed(self, reason, request):
        if _ended(request):
            # nobody to answer; a cancellation is what a disconnect does
            if not reason.check(defer.CancelledError):
                log.failure("unexpected error after {path} ended", reason, path=request.path)
            return
        self._written(self._on_error(reason, request), request)

    @staticmethod
    def _written(body, request):
        if _ended(request):
            return
        if isinstance(body, bytes):
            request.write(body)
        request.finish()
