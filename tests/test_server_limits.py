"""Limits enforced while a request is read, on the real channel with a Clock."""

import configparser
import json
import os
import socket

from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from stilgar.stats import Stats
from stilgar.web.app import StilgarApp
from stilgar.web.deadline import Deadline

from .helpers import WRITE_KEY, FakeIntake, basic, event_body, make_app, make_config


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


class HalfCloseTransport(StringTransport):
    """A StringTransport that can shut its write side, as TCP can."""

    write_closed = False

    def loseWriteConnection(self):
        self.write_closed = True


class ChannelTestCase(unittest.TestCase):
    server = {"payload_size_limit": "1KiB", "read_timeout": "5s", "idle_timeout": "20s"}

    def setUp(self):
        self.app, self.intake, self.clock = make_app(make_config(server=self.server))
        self.site = self.app.site()
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)

    def connect(self, host="127.0.0.1", transport_type=HalfCloseTransport):
        address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 4321)
        channel = self.site.buildProtocol(address)
        transport = transport_type(peerAddress=address)
        channel.makeConnection(transport)
        self.addCleanup(lambda: channel.connectionLost(None) if not transport.disconnecting else None)
        return channel, transport

    def assertAnswered(self, transport, status):
        out = transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 %d " % status), out[:200])
        self.assertIn(b"Connection: close", out)

    def assertClosing(self, transport):
        self.assertTrue(transport.disconnecting or transport.write_closed)


class RequestDeadlineTests(ChannelTestCase):
    """The request deadline runs from the accept, and from the first byte of a later request."""

    def test_request_line_byte_at_a_time_cut_at_read_timeout(self):
        channel, transport = self.connect()
        data = request_bytes(body=event_body())
        for i in range(5):
            channel.dataReceived(data[i:i + 1])   # each byte resets Twisted's idle timer
            self.clock.advance(0.99)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.06)                  # 5 s after the accept
        self.assertAnswered(transport, 408)
        self.assertClosing(transport)
        self.assertEqual(self.intake.accepted, [])

    def test_headers_byte_at_a_time_cut_at_read_timeout(self):
        channel, transport = self.connect()
        data = request_bytes(body=event_body())
        channel.dataReceived(data[:30])           # the request line and a bit
        for i in range(30, 34):
            self.clock.advance(1)
            channel.dataReceived(data[i:i + 1])
        self.clock.advance(1.01)
        self.assertAnswered(transport, 408)

    def test_silent_connection_closed_at_read_timeout(self):
        channel, transport = self.connect()
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(transport.value(), b"")  # nothing asked, nothing answered
        self.assertTrue(transport.disconnecting)

    def test_kept_alive_connection_next_request_deadline(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(body=event_body()))
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        transport.clear()
        self.clock.advance(15)                    # idle, within idle_timeout: kept
        self.assertFalse(transport.disconnecting)
        data = request_bytes(body=event_body())
        for i in range(5):
            channel.dataReceived(data[i:i + 1])
            self.clock.advance(1)
        self.clock.advance(0.01)
        self.assertAnswered(transport, 408)
        self.assertEqual(len(self.intake.accepted), 1)

    def test_pipelined_request_gets_its_own_deadline(self):
        channel, transport = self.connect()
        second = request_bytes(body=event_body())
        channel.dataReceived(request_bytes(body=event_body()) + second[:10])
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.clock.advance(4.9)
        channel.dataReceived(second[10:])
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(len(self.intake.accepted), 2)


class DeadlineTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.due = []
        self.deadline = Deadline(self.clock.callLater, lambda: self.due.append(self.clock.seconds()))

    def test_due_once_when_armed(self):
        self.deadline.arm(5)
        self.clock.advance(5)
        self.clock.advance(100)
        self.assertEqual((self.due, self.deadline.armed, self.clock.getDelayedCalls()), ([5], False, []))

    def test_disarmed_is_not_due_and_rearming_reuses_the_call(self):
        self.deadline.arm(5)
        [call] = self.clock.getDelayedCalls()
        self.deadline.disarm()
        self.clock.advance(3)
        self.deadline.arm(5)                    # later than the pending call: reset, not a new call
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.clock.advance(4.9)
        self.assertEqual(self.due, [])
        self.clock.advance(0.1)
        self.assertEqual(self.due, [8])

    def test_sooner(self):
        self.deadline.arm(10)
        self.deadline.arm(2)
        self.clock.advance(2)
        self.assertEqual(self.due, [2])

    def test_disarmed_call_comes_due_quietly_then_arm_schedules_again(self):
        self.deadline.arm(5)
        self.deadline.disarm()
        self.clock.advance(6)
        self.assertEqual((self.due, self.clock.getDelayedCalls()), ([], []))
        self.deadline.arm(1)
        self.clock.advance(1)
        self.assertEqual(self.due, [7])

    def test_stop_unschedules(self):
        self.deadline.arm(5)
        self.deadline.stop()
        self.assertEqual((self.clock.getDelayedCalls(), self.deadline.armed), ([], False))
        self.clock.advance(10)
        self.assertEqual(self.due, [])


class ConnectionTimerTests(ChannelTestCase):
    """A connection keeps its two timers (the read deadline, twisted.web's idle
    timeout) for its whole life, re-armed for each request, not made anew."""

    def count_calls(self):
        """The calls the connection schedules (not the site's once-a-second log clock)."""
        made = []
        call_later = self.clock.callLater

        def counting(delay, f, *a, **kw):
            if getattr(f, "__self__", None) is not self.site:
                made.append(f)
            return call_later(delay, f, *a, **kw)
        self.clock.callLater = counting
        return made

    def connection_calls(self):
        return [c for c in self.clock.getDelayedCalls() if getattr(c.func, "__self__", None) is not self.site]

    def test_requests_on_a_connection_make_no_new_timers(self):
        made = self.count_calls()
        channel, transport = self.connect()
        for i in range(3):
            channel.dataReceived(request_bytes(body=event_body()))
            self.clock.advance(1)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(len(made), 2, made)        # both made at the accept, none per request
        self.assertEqual(len(self.connection_calls()), 2)
        channel.connectionLost(None)
        self.assertEqual(self.connection_calls(), [])       # nothing holds a closed connection

    def test_a_request_answered_after_the_idle_timeout_is_not_cut(self):
        """The idle timeout is off while a request waits for its answer (the
        spool's disk), and runs again from its answer."""
        self.intake.held = defer.Deferred()
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(body=event_body()))
        self.clock.advance(30)                      # idle_timeout is 20 s
        self.assertFalse(transport.disconnecting)
        self.intake.held.callback(None)
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.clock.advance(19)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_data_keeps_an_idle_connection_open(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(body=event_body()))
        self.clock.advance(15)
        second = request_bytes(body=event_body())
        channel.dataReceived(second[:10])           # a new request's first bytes: the idle time starts again
        self.clock.advance(4.5)
        channel.dataReceived(second[10:])
        self.clock.advance(15)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.clock.advance(6)
        self.assertTrue(transport.disconnecting)


class OverlongLineTests(ChannelTestCase):
    def test_request_line_over_64_KiB_gets_414(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET /v1/track?x=" + b"a" * (70 * 1024))
        self.assertAnswered(transport, 414)
        self.assertTrue(transport.value().endswith(b"request line too long\n"))
        self.assertClosing(transport)

    def test_whole_overlong_request_line_gets_414(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET /?" + b"a" * (65 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertAnswered(transport, 414)

    def test_header_over_64_KiB_gets_431(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(body=event_body(), headers=[b"Cookie: " + b"c" * (65 * 1024)]))
        self.assertAnswered(transport, 431)
        self.assertTrue(transport.value().endswith(b"request header too large\n"))
        self.assertEqual(self.intake.accepted, [])

    def test_headers_over_64_KiB_in_all_get_431(self):
        channel, transport = self.connect()
        headers = [b"X-Pad-%d: %s" % (i, b"p" * 1000) for i in range(70)]
        channel.dataReceived(request_bytes(body=event_body(), headers=headers))
        self.assertAnswered(transport, 431)


class PerAddressCapTests(ChannelTestCase):
    server = dict(ChannelTestCase.server, max_connections_per_ip=2)

    def test_cap_per_peer_address(self):
        self.connect("203.0.113.7")
        channel, transport = self.connect("203.0.113.7")
        refused = self.site.buildProtocol(IPv4Address("TCP", "203.0.113.7", 1))
        refused_transport = StringTransport()
        refused.makeConnection(refused_transport)
        self.assertTrue(refused_transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertIn(b"Retry-After: ", refused_transport.value())
        self.assertTrue(refused_transport.disconnecting)
        # another address is not affected
        other, other_transport = self.connect("203.0.113.8")
        other.dataReceived(request_bytes(body=event_body()))
        self.assertIn(b"HTTP/1.1 200 OK", other_transport.value())
        # a closed connection frees its place
        transport.loseConnection()
        channel.connectionLost(None)
        again, again_transport = self.connect("203.0.113.7")
        again.dataReceived(request_bytes(body=event_body()))
        self.assertIn(b"HTTP/1.1 200 OK", again_transport.value())
        self.assertEqual(self.site.connections_per_peer[ipaddress_of("203.0.113.7")], 2)

    def test_ipv6_counted_per_64(self):
        self.connect("2001:db8:1:2::10")
        self.connect("2001:db8:1:2:ffff::1")
        refused = self.site.buildProtocol(IPv6Address("TCP", "2001:db8:1:2::99", 1))
        refused_transport = StringTransport()
        refused.makeConnection(refused_transport)
        self.assertTrue(refused_transport.value().startswith(b"HTTP/1.1 503 "))
        _, transport = self.connect("2001:db8:1:3::10")
        self.assertFalse(transport.disconnecting)

    def test_trusted_proxies_not_capped(self):
        transports = [self.connect("10.0.0.5")[1] for _ in range(5)]
        self.assertFalse(any(t.disconnecting for t in transports))
        self.assertEqual(self.site.connections_per_peer, {})


def ipaddress_of(text):
    import ipaddress
    return ipaddress.ip_address(text)


class BodyBudgetTests(ChannelTestCase):
    server = dict(ChannelTestCase.server, max_body_buffer="3000")

    def head(self, size):
        return request_bytes(length=size)

    def test_503_beyond_the_budget_then_room_again(self):
        body = event_body().ljust(1000)
        first, first_t = self.connect()
        first.dataReceived(request_bytes(body=body)[:-len(body)])
        second, _ = self.connect()
        second.dataReceived(request_bytes(body=body)[:-len(body)])
        third, third_t = self.connect()
        third.dataReceived(request_bytes(body=body[:900])[:-900])
        self.assertEqual(self.site.body_bytes_reserved, 2900)
        fourth, fourth_t = self.connect()
        fourth.dataReceived(request_bytes(body=body)[:-len(body)])
        self.assertAnswered(fourth_t, 503)
        self.assertIn(b"Retry-After: 5", fourth_t.value())
        self.assertEqual(self.site.body_bytes_reserved, 2900)
        # a finished request gives its bytes back
        first.dataReceived(body)
        self.assertIn(b"HTTP/1.1 200 OK", first_t.value())
        self.assertEqual(self.site.body_bytes_reserved, 1900)
        fifth, fifth_t = self.connect()
        fifth.dataReceived(request_bytes(body=body))
        self.assertIn(b"HTTP/1.1 200 OK", fifth_t.value())
        # so do a lost connection and a timed-out body
        second.transport.loseConnection()
        second.connectionLost(None)
        self.clock.advance(6)
        self.assertAnswered(third_t, 408)
        self.assertEqual(self.site.body_bytes_reserved, 0)

    def test_chunked_reserves_the_limit_and_refusal_releases(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(chunked=True))
        self.assertEqual(self.site.body_bytes_reserved, 1024)
        channel.dataReceived(chunk(b" " * 1100))
        self.assertAnswered(transport, 413)
        self.assertEqual(self.site.body_bytes_reserved, 0)

    def test_requests_without_body_reserve_nothing(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"pong", transport.value())
        self.assertEqual(self.site.body_bytes_reserved, 0)


class LingeringCloseTests(ChannelTestCase):
    """After an early answer: write side shut, the rest drained for a bounded time and size."""

    def test_early_413_lingers_then_closes(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(length=100_000))
        self.assertAnswered(transport, 413)
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)
        answered = transport.value()
        channel.dataReceived(b"x" * 1500)        # drained, not parsed, not answered
        self.assertEqual(transport.value(), answered)
        self.clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_linger_bounded_in_bytes(self):
        channel, transport = self.connect()
        channel.dataReceived(request_bytes(length=100_000))
        channel.dataReceived(b"x" * 2048)         # twice the 1 KiB limit: still draining
        self.assertFalse(transport.disconnecting)
        channel.dataReceived(b"x")
        self.assertTrue(transport.disconnecting)

    def test_transport_without_half_close_closes_at_once(self):
        channel, transport = self.connect(transport_type=StringTransport)
        channel.dataReceived(request_bytes(length=100_000))
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"x" * 10_000)


class LingeringCloseSocketTests(unittest.TestCase):
    """A real client that sends its whole oversized body before reading gets the answer."""

    timeout = 120
    body_size = 2 << 20

    def setUp(self):
        config = make_config(server={"payload_size_limit": "1MiB"})
        app = StilgarApp(config, FakeIntake(), Stats(up_since=reactor.seconds()), reactor)
        self.site = app.site()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.all_closed)

    @defer.inlineCallbacks
    def all_closed(self):
        # the client has read the end: the server sees its close a moment later
        for _ in range(500):
            if not self.site.open_connections:
                return
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"{self.site.open_connections} connections still open")

    def post(self, key):
        """Blocking (run in a thread): send headers and the whole body, then read to the end."""
        head = (b"POST /v1/batch HTTP/1.1\r\nHost: stilgar.test\r\nAuthorization: " + basic(key) +
                b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % self.body_size)
        with socket.create_connection(("127.0.0.1", self.port.getHost().port), timeout=30) as sock:
            sock.sendall(head)
            sock.sendall(b" " * self.body_size)
            answer = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    return answer
                answer += data

    @defer.inlineCallbacks
    def test_oversized_body_client_reads_413(self):
        for i in range(20):
            answer = yield threads.deferToThread(self.post, WRITE_KEY)
            self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), (i, answer[:100]))
            self.assertTrue(answer.endswith(b"request size exceeds max limit\n"), (i, answer[-100:]))

    @defer.inlineCallbacks
    def test_bad_key_client_reads_the_refusal(self):
        for i in range(5):
            answer = yield threads.deferToThread(self.post, "not-a-key")
            self.assertTrue(answer.startswith(b"HTTP/1.1 40"), (i, answer[:100]))


class DependencyFloorTests(unittest.TestCase):
    def test_twisted_floor_past_cve_2024_41671(self):
        cfg = configparser.ConfigParser()
        cfg.read(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg"))
        requires = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
        twisted = [r for r in requires if r.startswith("twisted")]
        self.assertEqual(len(twisted), 1)
        floor = tuple(int(p) for p in twisted[0].split(">=")[1].strip().split("."))
        self.assertGreaterEqual(floor, (24, 7, 0))
