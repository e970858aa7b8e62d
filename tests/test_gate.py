"""The web layer's parts on their own: the gate (header-time checks), the request context
adapter, the endpoint dispatch (errors, cancellation on disconnect) and the answer writer."""

import attr
from klein import Klein
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel
from zope.interface.verify import verifyObject

from stilgar.stats import Stats
from stilgar.web.answers import text
from stilgar.web.context import IRequestContext, RequestContext
from stilgar.web.dispatch import EndpointDispatch
from stilgar.web.gate import SMALL_BODY_LIMIT, Gate, IGate
from stilgar.web.routes import ROUTES
from stilgar.web.server import StilgarRequest
from stilgar.web.writer import AnswerWriter, IAnswerWriter

from .helpers import ORIGIN, WRITE_KEY, FakeIntake, basic, event_body, make_app, make_config

PEER = IPv4Address("TCP", "203.0.113.9", 5555)


def request(headers=()):
    r = server.Request(DummyChannel())
    r.written_to = r.channel.transport.written   # the channel is dropped once the request ends
    for name, value in headers:
        r.requestHeaders.addRawHeader(name, value)
    return r


class RecordingIntake(FakeIntake):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.asked = []

    def accepting(self, write_key):
        self.asked.append(write_key)
        return super().accepting(write_key)


class ContextTests(unittest.TestCase):
    def test_one_context_per_request_kept_on_it(self):
        a, b = request(), request()
        self.assertIs(IRequestContext(a), IRequestContext(a))
        self.assertIsNot(IRequestContext(a), IRequestContext(b))
        self.assertTrue(verifyObject(IRequestContext, IRequestContext(a)))

    def test_the_channels_requests_keep_it_in_the_componentized_cache(self):
        r = StilgarRequest(DummyChannel())
        ctx = IRequestContext(r)
        self.assertIs(r.getComponent(IRequestContext), ctx)
        self.assertIs(IRequestContext(r), ctx)

    def test_with_cors(self):
        ctx = RequestContext(cors=[(b"Vary", b"Origin")])
        answer = ctx.with_cors(text(413, "too big"), close=True)
        self.assertIn((b"Vary", b"Origin"), answer.headers)
        self.assertTrue(answer.close)

    def test_objects_that_are_not_requests_have_none(self):
        self.assertIsNone(IRequestContext(object(), None))


class GateTests(unittest.TestCase):
    def setUp(self):
        self.config = make_config(server={"payload_size_limit": "1KiB"})
        self.intake = RecordingIntake()
        self.clock = task.Clock()
        self.clock.advance(100)
        self.gate = Gate(self.config.server, self.config.all_write_keys(), self.intake, self.clock)

    def check(self, path=b"/v1/track", method=b"POST", headers=((b"authorization", basic(WRITE_KEY)),),
              length=10):
        r = request(headers)
        return self.gate.check(r, method, path, length, PEER), IRequestContext(r)

    def test_interfaces(self):
        self.assertTrue(verifyObject(IGate, self.gate))
        app, _, _ = make_app()
        site = app.site()
        self.assertTrue(verifyObject(IGate, site.gate))
        self.assertTrue(verifyObject(IAnswerWriter, site.writer))

    def test_passed_request_context(self):
        verdict, ctx = self.check(headers=[(b"authorization", basic(WRITE_KEY)), (b"origin", ORIGIN.encode())])
        self.assertIsNone(verdict)
        self.assertEqual((ctx.route, ctx.write_key, str(ctx.client_ip)), (ROUTES["/v1/track"], WRITE_KEY,
                                                                           "203.0.113.9"))
        self.assertEqual(ctx.body_limit, 1024)
        self.assertEqual(ctx.started, 100)
        self.assertIn((b"Access-Control-Allow-Origin", ORIGIN.encode()), ctx.cors)
        self.assertEqual(self.intake.asked, [WRITE_KEY])

    def test_routes_without_events_get_the_small_body_limit(self):
        verdict, ctx = self.check(b"/ping", b"GET", headers=())
        self.assertIsNone(verdict)
        self.assertEqual(ctx.body_limit, SMALL_BODY_LIMIT)
        self.assertEqual(self.intake.asked, [])

    def test_request_ids(self):
        _, given = self.check(headers=[(b"authorization", basic(WRITE_KEY)), (b"x-request-id", b"r" * 300)])
        self.assertEqual(given.request_id, "r" * 128)
        _, one = self.check()
        _, two = self.check()
        self.assertNotEqual(one.request_id, two.request_id)

    def test_order_origin_before_route_before_auth_before_size_before_intake(self):
        bad_origin = [(b"origin", b"http://evil.example")]
        self.assertEqual(self.check(headers=bad_origin, length=10**9)[0].status, 403)
        self.assertEqual(self.check(b"/nowhere", headers=(), length=10**9)[0].status, 404)
        wrong_method = self.check(method=b"GET", headers=(), length=10**9)[0]
        self.assertEqual((wrong_method.status, dict(wrong_method.headers)[b"Allow"]), (405, b"POST, OPTIONS"))
        self.intake.full = True
        self.assertEqual(self.check(headers=(), length=10**9)[0].status, 401)
        too_big = self.check(length=1025)[0]
        self.assertEqual((too_big.status, too_big.close), (413, True))
        self.assertEqual(self.intake.asked, [])          # nothing asked before the size passed
        full = self.check()[0]
        self.assertEqual((full.status, dict(full.headers)[b"Retry-After"]), (503, b"30"))

    def test_preflight_answered_first(self):
        verdict, _ = self.check(b"/nowhere", b"OPTIONS", headers=[(b"origin", ORIGIN.encode())])
        self.assertEqual(verdict.status, 204)

    def test_the_intake_alone_says_whether_events_are_taken(self):
        # stopping only picks the Retry-After of a refusal accepting() made
        self.intake.stopping = True
        stopping = self.check()[0]
        self.assertEqual((stopping.status, dict(stopping.headers)[b"Retry-After"]), (503, b"5"))
        self.intake.accepting = lambda key: True
        self.assertIsNone(self.check()[0])

    def test_chunked_requests_pass_on_to_be_counted(self):
        verdict, ctx = self.check(length=None)
        self.assertIsNone(verdict)
        self.assertEqual(ctx.body_limit, 1024)


class DispatchTests(unittest.TestCase):
    def setUp(self):
        self.klein = Klein()
        self.errors = []
        self.dispatch = EndpointDispatch(self.klein, {"r": "r"}, self.on_error)

    def on_error(self, failure, request):
        self.errors.append(failure)
        return b"sorry"

    def route(self, handler):
        self.klein.route("/r", endpoint="r")(lambda request, ctx: handler(request))

    def request(self):
        r = request()
        IRequestContext(r).route = attr.evolve(ROUTES["/ping"], name="r")
        return r

    def test_bytes_returned_as_they_are(self):
        self.route(lambda request: b"hello")
        self.assertEqual(self.dispatch.render(self.request()), b"hello")

    def test_exception_answered_by_on_error(self):
        self.route(lambda request: 1 / 0)
        self.assertEqual(self.dispatch.render(self.request()), b"sorry")
        self.assertTrue(self.errors[0].check(ZeroDivisionError))

    def test_failed_deferred_answered_by_on_error(self):
        d = defer.Deferred()
        self.route(lambda request: d)
        r = self.request()
        self.assertEqual(self.dispatch.render(r), server.NOT_DONE_YET)
        d.errback(ZeroDivisionError())
        self.assertTrue(r.finished)
        self.assertIn(b"sorry", r.written_to.getvalue())

    def test_disconnect_cancels_the_handler(self):
        cancelled = []
        d = defer.Deferred(cancelled.append)
        self.route(lambda request: d)
        r = self.request()
        self.dispatch.render(r)
        r.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(self.errors, [])                # a cancellation is no error
        self.assertEqual(r.written_to.getvalue(), b"")

    def test_an_answer_after_the_disconnect_is_not_written(self):
        d = defer.Deferred(lambda d: d.callback(b"late"))   # a handler that answers when cancelled
        self.route(lambda request: d)
        r = self.request()
        self.dispatch.render(r)
        r.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.errors, [])
        self.assertEqual(r.written_to.getvalue(), b"")

    def test_an_error_after_the_disconnect_is_logged_not_answered(self):
        d = defer.Deferred(lambda d: d.errback(ZeroDivisionError()))
        self.route(lambda request: d)
        r = self.request()
        self.dispatch.render(r)
        r.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.errors, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(r.written_to.getvalue(), b"")


class SinglePathTests(unittest.TestCase):
    """Through app.site() on an in-memory transport, as in production."""

    def setUp(self):
        self.intake = FakeIntake(held=defer.Deferred())
        self.app, _, self.clock = make_app(intake=self.intake)
        self.site = self.app.site()
        self.site.startFactory()
        self.channel = self.site.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER)
        self.channel.makeConnection(self.transport)

    def send(self, path=b"/v1/track", body=None):
        body = event_body() if body is None else body
        self.channel.dataReceived(b"POST " + path + b" HTTP/1.1\r\nHost: s\r\nAuthorization: " + basic(WRITE_KEY)
                                  + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def test_events_stored_after_a_disconnect_are_counted(self):
        self.send()
        self.assertEqual(self.transport.value(), b"")
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.intake.held.callback(None)                  # on disk after the client left
        self.assertEqual(self.app.stats.accepted_events, 1)
        self.assertEqual(self.transport.value(), b"")

    def test_answer_once_stored(self):
        self.send()
        self.intake.held.callback(None)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK"))

    def test_handler_bug_answers_503(self):
        self.app.enrichment.for_key = lambda key: 1 / 0
        self.send()
        out = self.transport.value()
        self.assertTrue(out.startswith(b"HTTP/1.1 503 "), out)
        self.assertIn(b"Retry-After: 30", out)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class WriterTests(unittest.TestCase):
    def test_refusals_counted_even_without_a_request(self):
        stats = Stats(up_since=0)
        writer = AnswerWriter(stats, type("Hub", (), {"subscribers": 0})(), task.Clock())
        writer.record(None, None, None, text(414, "request line too long"))
        self.assertEqual(stats.rejected["request line too long"], 1)
