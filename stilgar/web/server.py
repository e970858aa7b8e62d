"""twisted.web with its limits enforced while a request is read.

Out of the box, twisted.web buffers a whole body (chunked ones without limit)
before any handler runs, answers ``100 Continue`` by itself, only has an
idle timer that each byte resets and closes on an over-long line without an
answer. Here a *gate* (the web app's header-time checks) runs as soon as the
headers are in: a refused request is answered before its body is read (and
before any ``100 Continue``); bodies are counted as they arrive and reserved
against a global budget of body bytes; a whole request must arrive within
``read_timeout`` counted from the accept (the first request) or from its first
byte (later ones); an over-long request line or header gets 414 / 431; and
open connections are capped, in all and per client address. An answer that
ends a request early is followed by a lingering close, so that a client still
sending its body reads the answer instead of a reset (doc/security.md).
"""

import io
import ipaddress
import time
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python import failure, reflect
from twisted.web import http, server

from .answers import text, unavailable
from .clientip import in_networks, normalise_ip
from .context import IRequestContext
from .deadline import Deadline

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


_CONTEXT_KEY = reflect.qual(IRequestContext)   # Componentized's key for the adapter
_date = [None, b""]     # [the second, its HTTP date]


def _http_date():
    """The Date header's value for now, formatted once per second."""
    now = int(time.time())
    if now != _date[0]:
        _date[:] = [now, http.datetimeToString(now)]
    return _date[1]


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
    """A request whose body is held in memory, bounded by the gate's limit
    (``IRequestContext(request).body_limit``)."""

    defaultContentType = b"text/plain; charset=utf-8"
    verdict = None      # an Answer decided at header time, written once the body is in
    _body_size = 0
    _body_reserved = 0  # bytes of the site's body budget this request holds

    def __conform__(self, interface):
        # what Componentized.__conform__ does, minus its lookup by qualified name for the
        # interface read several times a request (the adapter is still made and kept by
        # Componentized, as Klein's IKleinRequest)
        if interface is IRequestContext:
            found = self._adapterCache.get(_CONTEXT_KEY)
            if found is not None:
                return found
        return self.getComponent(interface)

    def gotLength(self, length):
        # bounded by the gate (Content-Length checked, chunked counted), so memory it is
        self.content = io.BytesIO()

    def handleContentChunk(self, data):
        self._body_size += len(data)
        if self.verdict is not None:
            return
        limit = IRequestContext(self).body_limit
        if limit is not None and self._body_size > limit:
            self.channel.refuse_now(self, text(413, "request size exceeds max limit"))
            return
        self.content.write(data)

    def process(self):
        """twisted.web's ``Request.process`` for a site of one leaf resource: no traversal
        (the gate matched the route; ``*`` and unknown paths were answered there) and a
        Date header made once a second, not per request."""
        self.site = site = self.channel.site
        self.setHeader(b"Date", _http_date())
        self.setHeader(b"X-Content-Type-Options", b"nosniff")
        if self.verdict is not None:
            site.write_answer(self, self.verdict)
            return
        self.setHeader(b"Server", server.version)
        self.prepath = []
        self.postpath = list(map(unquote_to_bytes, self.path[1:].split(b"/")))
        self.sitepath = []
        try:
            self.render(site.resource)
        except BaseException:
            self.processingFailed(failure.Failure())

    def release_body(self):
        """Give the body's bytes back to the site's budget (once)."""
        if self._body_reserved:
            self.channel.site.release_body(self._body_reserved)
            self._body_reserved = 0

    def finish(self):
        self.release_body()
        return super().finish()

    def connectionLost(self, reason):
        self.release_body()
        super().connectionLost(reason)


class StilgarChannel(http.HTTPChannel):
    """An HTTP channel that consults the site's gate before reading bodies.

    ``state`` is ``reading`` (requests are read and answered), ``lingering``
    (an early answer was written and the write side shut: what the client
    still sends is read and thrown away, within the site's ``linger_timeout``
    and ``linger_bytes``) or ``closed`` (closing: nothing more is read).
    """

    # beacons carry the page's cookies for the data-plane host: 16 KiB (Twisted's default)
    # refuses some real browsers' headers
    totalHeadersSize = 64 * 1024
    MAX_LENGTH = 64 * 1024
    state = "reading"
    peer_key = None     # the client address counted against max_connections_per_ip
    _read_deadline = None   # the request's: from its first byte (the accept) to its last
    _idle_deadline = None   # twisted.web's idle timeout (TimeoutMixin's), on a Deadline
    _linger_timer = None
    _linger_left = 0

    def connectionMade(self):
        self.site.connection_opened(self)
        super().connectionMade()
        # the first request's deadline runs from the accept: a client that
        # trickles the request line byte by byte is cut like a slow body
        self._start_read_timer()

    def connectionLost(self, reason):
        for deadline in (self._read_deadline, self._idle_deadline):
            if deadline is not None:
                deadline.stop()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self.site.connection_closed(self)
        super().connectionLost(reason)

    def setTimeout(self, period):
        """TimeoutMixin's, on one Deadline re-armed for each request (twisted.web
        turns the idle timeout off while a request is handled, on after it)."""
        prev, self.timeOut = self.timeOut, period
        if self._idle_deadline is None:
            self._idle_deadline = Deadline(self.callLater, self.timeoutConnection)
        if period is None:
            self._idle_deadline.disarm()
        else:
            self._idle_deadline.arm(period)
        return prev

    def resetTimeout(self):
        if self._idle_deadline is not None and self._idle_deadline.armed and self.timeOut is not None:
            self._idle_deadline.arm(self.timeOut)

    def dataReceived(self, data):
        if self.state == "closed":
            return
        if self.state == "lingering":
            self._linger_left -= len(data)
            if self._linger_left < 0:
                self._linger_done()
            return
        if data and not (self._read_deadline and self._read_deadline.armed) and not self._handlingRequest:
            # a later request on a kept-alive connection: its deadline runs from its first byte
            self._start_read_timer()
        super().dataReceived(data)

    def lineReceived(self, line):
        if self.state != "reading":
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.refuse_now(self._current_request(), self._too_large())
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line):
        if self.state == "reading":
            self.refuse_now(self._current_request(), self._too_large())

    def _too_large(self):
        if getattr(self, "_command", None) is None:
            return text(414, "request line too long")
        return text(431, "request header too large")

    def _current_request(self):
        # the request being read, or None while its request line is incomplete
        if getattr(self, "_command", None) is None or not self.requests:
            return None
        return self.requests[-1]

    def allHeadersReceived(self):
        request = self.requests[-1]
        length = self.length
        peer = self.transport.getPeer() if self.transport is not None else None
        verdict = self.site.gate.check(request, self._command, self._path, length, peer)
        if verdict is None:
            verdict = self.site.reserve_body(request, length)
        if verdict is not None:
            expects_continue = request.requestHeaders.hasHeader(b"Expect")
            if verdict.close or expects_continue or length is None or length > self.site.discard_limit:
                # do not read (or invite) a body we would throw away
                self.refuse_now(request, verdict)
                return
            request.verdict = verdict
        super().allHeadersReceived()
        if request.verdict is not None:
            request.content = _Discard()

    def allContentReceived(self):
        if self.state != "reading":
            return
        self._cancel_read_timer()
        super().allContentReceived()

    def rawDataReceived(self, data):
        if self.state != "reading":
            return
        super().rawDataReceived(data)

    def refuse_now(self, request, answer):
        """Answer before the request is whole, then close the connection (lingering)."""
        if self.state != "reading":
            return
        self.state = "lingering"
        self._cancel_read_timer()
        if request is not None:
            request.release_body()
            request.content = _Discard()
        command = getattr(self, "_command", None)
        self.site.writer.record(request, command, getattr(self, "_path", None), answer)
        self.transport.write(raw_response(answer, head=command == b"HEAD"))
        self._linger()

    def _linger(self):
        # Closing while the client still sends makes the kernel reset the
        # connection, and a reset can destroy the answer before the client
        # reads it. So shut the write side only (the answer, then FIN) and
        # drain what still comes, a bounded time and number of bytes (as
        # Apache and nginx do), before closing.
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:        # a transport without half-close (TLS): close now
            self._close()
            return
        self.setTimeout(None)
        self._linger_left = self.site.linger_bytes
        self._linger_timer = self.callLater(self.site.linger_timeout, self._linger_done)
        self._networkProducer.resumeProducing()
        half_close()

    def _linger_done(self):
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        self._close()

    def _close(self):
        self.state = "closed"
        self.loseConnection()

    def _start_read_timer(self):
        if self._read_deadline is None:
            self._read_deadline = Deadline(self.callLater, self._read_timed_out)
        self._read_deadline.arm(self.site.read_timeout)

    def _read_timed_out(self):
        if self.requests or self._buffer:
            self.refuse_now(self._current_request(),
                            text(408, "request timeout", reason="read timeout"))
        else:   # not one byte of a request: nothing to answer
            self._close()

    def _cancel_read_timer(self):
        if self._read_deadline is not None:
            self._read_deadline.disarm()


class _Overloaded(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(raw_response(unavailable(5)))
        self.transport.loseConnection()


class StilgarSite(server.Site):
    """A Site with the collector's limits; ``gate`` decides at header time.

    ``gate.check(request, method, uri, length, peer)`` (an
    :class:`stilgar.web.gate.IGate`) returns None to read the body, or an
    :class:`~stilgar.web.answers.Answer` to refuse the request, and fills the
    request's :class:`~stilgar.web.context.IRequestContext`. ``writer`` (an
    :class:`stilgar.web.writer.IAnswerWriter`) applies an answer to a whole
    request (``write``) and counts and logs those written raw before the
    request was whole (``record``: they close the connection).

    ``max_body_buffer`` bounds the bytes that bodies being read may hold
    together (each reserves its Content-Length, or its limit when chunked);
    ``max_connections_per_ip`` the connections of one peer address, except
    peers in ``unlimited_peers`` (proxies carry many clients).
    """

    requestFactory = StilgarRequest
    protocol = StilgarChannel
    noisy = False
    linger_timeout = 2.0   # seconds a lingering close drains the client before closing

    def __init__(self, resource, gate, writer, *, body_limit, read_timeout, idle_timeout, max_connections,
                 max_connections_per_ip=None, max_body_buffer=None, unlimited_peers=(), reactor=None):
        super().__init__(resource, logPath=None, timeout=idle_timeout, reactor=reactor,
                         parsePOSTFormSubmission=False)
        self.gate = gate
        self.writer = writer
        self.body_limit = body_limit
        self.discard_limit = min(body_limit, 1 << 20)
        # a client that sends twice the limit after an early 413 still reads it
        self.linger_bytes = 2 * body_limit
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.unlimited_peers = unlimited_peers
        self.open_connections = 0
        self.connections_per_peer = {}
        self.max_body_buffer = max_body_buffer
        self.body_bytes_reserved = 0
        self._warned_at = None

    def buildProtocol(self, addr):
        if self.open_connections >= self.max_connections:
            self._warn_refused("connection cap reached ({cap}): refusing {addr}", self.max_connections, addr)
            return _Overloaded()
        key = self._peer_key(addr)
        if key is not None and self.connections_per_peer.get(key, 0) >= self.max_connections_per_ip:
            self._warn_refused("per-address connection cap reached ({cap}): refusing {addr}",
                               self.max_connections_per_ip, addr)
            return _Overloaded()
        channel = super().buildProtocol(addr)
        channel.peer_key = key
        return channel

    def _peer_key(self, addr):
        # what max_connections_per_ip counts: the IPv4 address, or the IPv6 /64
        # (one subscriber's share); None for a peer not counted
        host = getattr(addr, "host", None)
        ip = normalise_ip(host) if self.max_connections_per_ip is not None and isinstance(host, str) else None
        if ip is None or in_networks(ip, self.unlimited_peers):
            return None
        return ip if ip.version == 4 else ipaddress.ip_network((ip, 64), strict=False)

    def _warn_refused(self, message, cap, addr):
        # at most one line a second: a flood of connections must not flood the log
        now = int(self.reactor.seconds())
        if now != self._warned_at:
            self._warned_at = now
            log.warn(message, cap=cap, addr=addr)

    def connection_opened(self, channel):
        self.open_connections += 1
        if channel.peer_key is not None:
            self.connections_per_peer[channel.peer_key] = self.connections_per_peer.get(channel.peer_key, 0) + 1

    def connection_closed(self, channel):
        self.open_connections -= 1
        key = channel.peer_key
        if key is not None:
            left = self.connections_per_peer.pop(key) - 1
            if left:
                self.connections_per_peer[key] = left

    def reserve_body(self, request, length):
        """Reserve what the body of ``request`` may hold; None, or the answer
        when the budget is spent."""
        ctx = IRequestContext(request)
        limit = ctx.body_limit
        wanted = limit if length is None else length if limit is None else min(length, limit)
        if not wanted or self.max_body_buffer is None:
            return None
        if self.body_bytes_reserved + wanted > self.max_body_buffer:
            answer = ctx.with_cors(unavailable(5), close=True)
            answer.reason = "body budget spent"
            return answer
        self.body_bytes_reserved += wanted
        request._body_reserved = wanted
        return None

    def release_body(self, size):
        self.body_bytes_reserved -= size

    def log(self, request):
        # no access-log line per request: rejections are logged by the app
        pass

    def write_answer(self, request, answer):
        """Write an :class:`~stilgar.web.answers.Answer` on a request that is whole."""
        if answer.close:
            request.setHeader(b"Connection", b"close")
        request.write(self.writer.write(request, answer))
        request.finish()
