"""twisted.web with its limits enforced while a request is read.

Out of the box, twisted.web buffers a whole body (chunked ones without limit)
before any handler runs, answers ``100 Continue`` by itself and only has an
idle timer that each byte resets. Here a *gate* (the web app's header-time
checks) runs as soon as the headers are in: a refused request is answered
before its body is read (and before any ``100 Continue``); bodies are counted
as they arrive; a whole request must arrive within ``read_timeout``; and the
number of open connections is capped.
"""

import io
from http import HTTPStatus

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.web import http, server

from .answers import Answer, text

__all__ = ["StilgarSite", "StilgarRequest", "StilgarChannel"]

log = Logger()


def _phrase(status):
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def raw_response(answer, head=False):
    """The bytes of a whole HTTP/1.1 response that closes the connection."""
    lines = [b"HTTP/1.1 %d %s" % (answer.status, _phrase(answer.status))]
    lines.extend(b"%s: %s" % (k, v) for k, v in answer.headers)
    lines.append(b"X-Content-Type-Options: nosniff")
    lines.append(b"Content-Length: %d" % len(answer.body))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else answer.body)


class _Discard:
    """A content sink for bodies of requests already refused."""

    def write(self, data):
        pass

    def seek(self, *args):
        pass

    def tell(self):
        return 0

    def read(self, *args):
        return b""

    def close(self):
        pass


class StilgarRequest(server.Request):
    """A request whose body is held in memory, bounded by the gate's limit."""

    defaultContentType = b"text/plain; charset=utf-8"
    verdict = None      # an Answer decided at header time, written once the body is in
    context = None      # what the gate learnt (route, write key, client IP, ...)
    _body_size = 0
    _body_limit = None

    def gotLength(self, length):
        # bounded by the gate (Content-Length checked, chunked counted), so memory it is
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        self._body_size += len(data)
        if self.verdict is not None:
            return
        if self._body_limit is not None and self._body_size > self._body_limit:
            self.channel.refuse_now(self, text(413, "request size exceeds max limit"))
            return
        self.content.write(data)

    def process(self):
        self.site = self.channel.site
        self.setHeader(b"X-Content-Type-Options", b"nosniff")
        if self.verdict is not None:
            self.setHeader(b"Date", http.datetimeToString())
            self.site.write_answer(self, self.verdict)
            return
        super().process()


class StilgarChannel(http.HTTPChannel):
    """An HTTP channel that consults the site's gate before reading bodies."""

    # beacons carry the page's cookies for the data-plane host: 16 KiB (Twisted's default)
    # refuses some real browsers' headers
    totalHeadersSize = 64 * 1024
    MAX_LENGTH = 64 * 1024
    _read_timer = None
    _refused = False

    def connectionMade(self):
        self.site.connection_opened(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self._cancel_read_timer()
        self.site.connection_closed(self)
        super().connectionLost(reason)

    def lineReceived(self, line):
        if self._refused:
            return
        if self._read_timer is None and not self._handlingRequest:
            self._read_timer = self.callLater(self.site.read_timeout, self._read_timed_out)
        super().lineReceived(line)

    def allHeadersReceived(self):
        request = self.requests[-1]
        length = self.length
        verdict = self.site.gate(self, request, self._command, self._path, length)
        if verdict is not None:
            expects_continue = request.requestHeaders.hasHeader(b"Expect")
            if verdict.close or expects_continue or length is None or length > self.site.discard_limit:
                # do not read (or invite) a body we would throw away
                self.refuse_now(request, verdict)
                return
            request.verdict = verdict
            request._body_limit = None
        super().allHeadersReceived()
        if request.verdict is not None:
            request.content = _Discard()

    def allContentReceived(self):
        if self._refused:
            return
        self._cancel_read_timer()
        super().allContentReceived()

    def rawDataReceived(self, data):
        if self._refused:
            return
        super().rawDataReceived(data)

    def refuse_now(self, request, answer):
        """Answer before the request is whole, then close the connection."""
        if self._refused:
            return
        self._refused = True
        self._cancel_read_timer()
        self.site.log_refusal(request, self._command, self._path, answer)
        head = getattr(self, "_command", None) == b"HEAD"
        self.transport.write(raw_response(answer, head=head))
        self.loseConnection()

    def _read_timed_out(self):
        self._read_timer = None
        if self.requests:
            self.refuse_now(self.requests[-1], text(408, "request timeout", reason="read timeout"))
        else:
            self.loseConnection()

    def _cancel_read_timer(self):
        if self._read_timer is not None:
            if self._read_timer.active():
                self._read_timer.cancel()
            self._read_timer = None


class _Overloaded(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(raw_response(text(503, "service unavailable", [(b"Retry-After", b"5")])))
        self.transport.loseConnection()


class StilgarSite(server.Site):
    """A Site with the collector's limits; ``gate`` decides at header time.

    ``gate(channel, request, method, uri, length)`` returns None to read the
    body, or an :class:`Answer` to refuse the request. ``write(request,
    answer)`` applies an answer to a whole request and returns its body;
    ``on_answer(request, method, uri, answer)`` hears of answers written before
    the request was whole (they close the connection).
    """

    requestFactory = StilgarRequest
    protocol = StilgarChannel
    noisy = False

    def __init__(self, resource, gate, *, write, body_limit, read_timeout, idle_timeout, max_connections,
                 on_answer=None, reactor=None):
        super().__init__(resource, logPath=None, timeout=idle_timeout, reactor=reactor,
                         parsePOSTFormSubmission=False)
        self.gate = gate
        self.body_limit = body_limit
        self.discard_limit = min(body_limit, 1 << 20)
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self.on_answer = on_answer
        self.write = write

    def buildProtocol(self, addr):
        if self.open_connections >= self.max_connections:
            log.warn("connection cap reached ({cap}): refusing {addr}", cap=self.max_connections, addr=addr)
            return _Overloaded()
        return super().buildProtocol(addr)

    def connection_opened(self, channel):
        self.open_connections += 1

    def connection_closed(self, channel):
        self.open_connections -= 1

    def log(self, request):
        # no access-log line per request: rejections are logged by the app
        pass

    def write_answer(self, request, answer):
        """Write an :class:`Answer` on a request that is whole (``write`` sets status and
        headers, counts and logs it, and returns the body)."""
        if answer.close:
            request.setHeader(b"Connection", b"close")
        request.write(self.write(request, answer))
        request.finish()

    def log_refusal(self, request, method, uri, answer):
        if self.on_answer is not None:
            self.on_answer(request, method, uri, answer)
