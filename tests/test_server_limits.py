"""Limits enforced while a request is read, on the real channel with a Clock."""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from .helpers import WRITE_KEY, basic, event_body, make_app, make_config


def request_bytes(path=b"/v1/track", body=b"", headers=(), chunked=False, length=None):
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: stilgar.test", b"Authorization: " + basic(WRITE_KEY)]
    lines.extend(headers)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    else:
        lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if chunked else body)


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


class LimitsTests(unittest.TestCase):
    def setUp(self):
        self.config = make_config(server={"payload_size_limit": "1KiB", "read_timeout": "5s",
                                          "idle_timeout": "20s", "max_connections": 2})
        self.app, self.intake, self.clock = make_app(self.config)
        self.site = self.app.site()
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        channel.makeConnection(transport)
        self.addCleanup(lambda: channel.connectionLost(None) if not transport.disconnecting else None)
        return channel, transport

    def test_whole_request_accepted(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(body=event_body()))
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertTrue(transport.value().endswith(b"OK"))
        self.assertEqual(len(self.intake.accepted), 1)
        self.assertFalse(transport.disconnecting)

    def test_content_length_over_limit_refused_before_body(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(length=10_000, headers=[b"Expect: 100-continue"]))
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 413 "), out)
        self.assertNotIn(b"100 Continue", out)
        self.assertIn(b"Connection: close", out)
        self.assertTrue(out.endswith(b"request size exceeds max limit\n"))
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 10_000)  # the rest is ignored
        self.assertEqual(self.intake.accepted, [])

    def test_chunked_body_counted_as_it_arrives(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(chunked=True))
        channel.dataReceived(chunk(b" " * 600))
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(chunk(b" " * 600))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_within_limit(self):
        channel, transport = self.connect()
        body = event_body()
        channel.dataReceived(request_bytes(chunked=True))
        channel.dataReceived(chunk(body[:10]) + chunk(body[10:]) + b"0\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertEqual(len(self.intake.accepted), 1)

    def test_slow_body_cut_by_read_timeout(self):
        channel, transport = self.connect()
        body = event_body()
        channel.dataReceived(request_bytes(body=body)[:-10])
        for _ in range(4):
            self.clock.advance(1)
            channel.dataReceived(b"")  # bytes trickling in do not extend the deadline
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1.5)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.intake.accepted, [])

    def test_idle_connection_closed(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(body=event_body()))
        self.assertFalse(transport.disconnecting)
        self.clock.advance(21)
        self.assertTrue(transport.disconnecting)

    def test_refused_small_request_keeps_connection(self):
        channel, transport = self.connect()
        data = request_bytes(body=event_body()).replace(basic(WRITE_KEY), basic("bad"))
        channel.dataReceived(data)
        self.assertIn(b"HTTP/1.1 401 Unauthorized", transport.value())
        self.assertTrue(transport.value().endswith(b"invalid write key\n"))
        transport.clear()
        channel.dataReceived(request_bytes(body=event_body()))
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())

    def test_connection_cap(self):
        self.connect()
        self.connect()
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(transport.disconnecting)

    def test_batch_through_the_channel(self):
        channel, transport = self.connect()
        body = json.dumps({"batch": [json.loads(event_body(type="track"))]}).encode()
        channel.dataReceived(request_bytes(path=b"/v1/batch", body=body))
        self.assertIn(b"200 OK", transport.value())


class HeaderSizeTests(unittest.TestCase):
    def test_large_cookie_header_is_accepted(self):
        app, intake, _ = make_app()
        site = app.site()
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        channel.makeConnection(transport)
        cookie = b"Cookie: rl_session=" + b"x" * 30000
        channel.dataReceived(request_bytes(body=event_body(), headers=[cookie]))
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertEqual(len(intake.accepted), 1)
