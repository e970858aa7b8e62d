"""The live view (issue 15, doc/debugging.md): the hub with a Clock, the /debug routes through
StubTreq, the SSE stream over real sockets (filters, a client that stops reading, two workers),
the page in Debian Chromium while real SDKs send."""

import base64
import json
import os
import re
import shutil
import socket
import sys

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from stilgar.destinations.clickhouse import ClickHouseType
from stilgar.destinations.clickhouse.settings import parse_settings as clickhouse_settings
from stilgar.live import Filters, LiveHub, mask_key
from stilgar.stats import Stats
from stilgar.web.app import StilgarApp

from . import test_clickhouse_destination as chdest
from .helpers import WRITE_KEY, FakeIntake, answer, basic, event_body, make_app, make_config, stub
from .processes import StilgarProcess, fetch, free_port, wait_for


def event(n=1, etype="track", name="Clicked", **extra):
    e = {"type": etype, "messageId": f"m-{n}", "anonymousId": f"a-{n}", "receivedAt": "2026-12-01T00:00:00.000Z",
         "context": {"library": {"name": "analytics-python", "version": "2.1.9"}}}
    if etype == "track":
        e["event"] = name
    e.update(extra)
    return e


class Collector:
    """A subscriber's connection in memory: frames in order; ``cut`` counted."""

    def __init__(self):
        self.frames = []
        self.cuts = 0

    def send(self, data):
        self.frames.append(data)

    def cut(self):
        self.cuts += 1

    def items(self):
        return [json.loads(f.split(b" ", 1)[1]) for f in self.frames]


def peer_like(kind, data):
    return kind.encode() + b" " + data


class HubTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    def hub(self, **kw):
        return LiveHub(clock=self.clock, **kw)

    def watch(self, hub, filters=Filters()):
        c = Collector()
        c.sub = hub.subscribe(filters, c.send, peer_like, c.cut)
        return c

    def test_masking(self):
        self.assertEqual(mask_key("2AbCdEfGhIjKlMnOpQrStUvWxYz"), "2AbC…Yz")
        self.assertEqual(mask_key("short"), "s…")
        self.assertEqual(mask_key(None), "")

    def test_items_and_fields(self):
        hub = self.hub(routes={WRITE_KEY: ["ch"]})
        c = self.watch(hub)
        hub.accepted(WRITE_KEY, b"http://app.example", [event(1)])
        hub.rejected(403, "invalid write key", "bad-key-123456", "http://x", "UA/1", "POST", "/v1/track")
        hub.discards("ch", [{"table_name": "tracks", "column_name": "price", "reason": "does not fit",
                             "row_id": "m-1", "column_value": "x" * 500}])
        e, r, d = c.items()
        self.assertEqual((e["kind"], e["type"], e["event"], e["anonymous_id"], e["origin"], e["write_key"]),
                         ("event", "track", "Clicked", "a-1", "http://app.example", mask_key(WRITE_KEY)))
        self.assertEqual(e["library"], {"name": "analytics-python", "version": "2.1.9"})
        self.assertEqual(e["destinations"], ["ch"])
        self.assertEqual(e["payload"]["messageId"], "m-1")
        self.assertEqual((r["status"], r["reason"], r["write_key"], r["user_agent"]),
                         (403, "invalid write key", "bad-…56", "UA/1"))
        self.assertEqual((d["table"], d["column"], d["reason"]), ("tracks", "price", "does not fit"))
        self.assertEqual(len(d["value"]), 201)      # truncated, with an ellipsis
        self.assertNotIn(WRITE_KEY, b"".join(c.frames).decode())

    def test_filters(self):
        hub = self.hub()
        by_kind = self.watch(hub, Filters(kinds={"rejected"}))
        by_type = self.watch(hub, Filters(types={"page"}))
        by_key = self.watch(hub, Filters(write_key="other-key-000"))
        by_mask = self.watch(hub, Filters(write_key=mask_key(WRITE_KEY)))
        hub.accepted(WRITE_KEY, None, [event(1), event(2, etype="page", name=None)])
        hub.rejected(401, "no key", None, None, None, "POST", "/v1/batch")
        self.assertEqual([i["kind"] for i in by_kind.items()], ["rejected"])
        self.assertEqual([i.get("type") for i in by_type.items()], ["page", None])
        self.assertEqual([i["kind"] for i in by_key.items()], [])
        self.assertEqual([i["kind"] for i in by_mask.items()], ["event", "event"])

    def test_hide_hook(self):
        hub = self.hub(hide=lambda e: e.get("userId") == "suppressed")
        c = self.watch(hub)
        hub.accepted(WRITE_KEY, None, [event(1, userId="suppressed"), event(2, userId="kept")])
        self.assertEqual([i["user_id"] for i in c.items()], ["kept"])

    def test_a_fault_of_the_view_never_reaches_the_request_path(self):
        hub = self.hub()
        c = self.watch(hub)
        hub.encode = lambda item: 1 / 0
        hub.accepted(WRITE_KEY, None, [event(1)])        # logged, not raised
        hub.rejected(403, "x", None, None, None, "GET", "/")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        self.assertEqual(c.frames, [])

    def test_sampling(self):
        hub = self.hub(max_rate=3)
        c = self.watch(hub)
        hub.accepted(WRITE_KEY, None, [event(n) for n in range(10)])
        self.assertEqual(len(c.items()), 3)
        self.clock.advance(1)
        hub.accepted(WRITE_KEY, None, [event(11)])
        kinds = [(i["kind"], i.get("count")) for i in c.items()[3:]]
        self.assertEqual(kinds, [("skipped", 7), ("event", None)])

    def test_ring_replays_to_a_new_subscriber(self):
        hub = self.hub(ring_size=3)
        first = self.watch(hub)
        hub.accepted(WRITE_KEY, None, [event(n) for n in range(5)])
        first.sub.close()
        late = self.watch(hub, Filters(types={"track"}))
        self.assertEqual([i["message_id"] for i in late.items()], ["m-2", "m-3", "m-4"])

    def test_ring_bounded_in_bytes(self):
        hub = self.hub(ring_size=100, ring_bytes=3000)
        self.watch(hub)
        hub.accepted(WRITE_KEY, None, [event(n, properties={"pad": "x" * 900}) for n in range(10)])
        self.assertLessEqual(sum(len(e[3]) for e in hub.ring), 3000)
        self.assertGreater(len(hub.ring), 0)

    def test_a_paused_subscriber_is_cut_off_when_its_buffer_is_full(self):
        hub = self.hub(buffer_bytes=2000)
        slow, fast = self.watch(hub), self.watch(hub)
        slow.sub.pauseProducing()
        hub.accepted(WRITE_KEY, None, [event(n, properties={"pad": "x" * 300}) for n in range(20)])
        self.assertEqual(slow.cuts, 1)
        self.assertEqual(slow.frames, [])
        self.assertEqual(hub.subscribers, [fast.sub])
        self.assertEqual(len(fast.items()), 20)

    def test_resume_sends_what_waited(self):
        hub = self.hub()
        c = self.watch(hub)
        c.sub.pauseProducing()
        hub.accepted(WRITE_KEY, None, [event(1), event(2)])
        self.assertEqual(c.frames, [])
        c.sub.resumeProducing()
        self.assertEqual([i["message_id"] for i in c.items()], ["m-1", "m-2"])

    def test_state_while_watched_only(self):
        calls = []

        def status():
            calls.append(self.clock.seconds())
            return {"events": {"received": 3}, "spool": {"bytes": 10}, "ch": {"last_error": "boom"}}
        hub = self.hub(status_source=status,
                       health_source=lambda: {"status": "DEGRADED", "destinations": {
                           "ch": {"status": "DOWN", "since": "t", "backlog": 7}}})
        self.assertEqual(calls, [])
        c = self.watch(hub)
        self.clock.advance(2)
        self.assertEqual(len(calls), 2)
        dest = [i for i in c.items() if i["kind"] == "destination"][-1]
        self.assertEqual((dest["name"], dest["up"], dest["backlog"], dest["last_error"]), ("ch", False, 7, "boom"))
        totals = [i for i in c.items() if i["kind"] == "status"][-1]
        self.assertEqual((totals["events"]["received"], totals["health"]), (3, "DEGRADED"))
        second = self.watch(hub, Filters(kinds={"destination"}))
        self.assertEqual([i["kind"] for i in second.items()], ["destination"])   # the latest state, at once
        c.sub.close()
        second.sub.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(len(calls), 2)

    def test_pause_resume_producer_through_a_transport(self):
        hub = self.hub(buffer_bytes=10_000)
        transport = StringTransport()
        sub = hub.subscribe(Filters(), transport.write, peer_like, transport.loseConnection)
        transport.registerProducer(sub, True)
        transport.producer.pauseProducing()
        hub.accepted(WRITE_KEY, None, [event(1)])
        self.assertEqual(transport.value(), b"")
        transport.producer.resumeProducing()
        self.assertIn(b'"m-1"', transport.value())


class DiscardHookTests(chdest.DestinationTestCase):
    """The ClickHouse destination tells the hub of the rudder_discards rows ClickHouse confirmed."""

    def test_discards_reach_the_hub(self):
        dest = self.make(max_event_tables=1)
        hub = LiveHub(clock=self.clock)
        dest.on_discards = hub.discards
        seen = Collector()
        hub.subscribe(Filters(kinds={"discard"}), seen.send, peer_like, seen.cut)
        dest.start()
        dest.write([chdest.event("track", event="one"), chdest.event("track", event="two", messageId="m2")])
        self.flush()
        [item] = seen.items()
        self.assertEqual((item["destination"], item["table"], item["row_id"]), ("clickhouse:db", "two", "m2"))
        self.assertIn("max_event_tables", item["reason"])


class NoCostTests(unittest.TestCase):
    """Without a subscriber the hub is never called from the request path."""

    @defer.inlineCallbacks
    def test_no_hub_call_without_subscribers(self):
        class Tripwire(LiveHub):
            def accepted(self, *a):
                raise AssertionError("the hub was called without subscribers")
            rejected = accepted
        config = make_config()
        intake = FakeIntake()
        clock = task.Clock()
        app = StilgarApp(config, intake, Stats(up_since=0), clock, live=Tripwire(clock=clock))
        response = yield stub(app).post("http://stilgar.test/v1/track", data=event_body(),
                                        headers={b"Authorization": [basic(WRITE_KEY)]})
        status, _, _ = yield answer(response)
        self.assertEqual(status, 200)
        response = yield stub(app).post("http://stilgar.test/v1/track", data=event_body(),
                                        headers={b"Authorization": [basic("nope")]})
        status, _, _ = yield answer(response)
        self.assertEqual(status, 401)


class DebugRouteTests(unittest.TestCase):
    @defer.inlineCallbacks
    def get(self, app, path, headers=None):
        response = yield stub(app).get("http://stilgar.test" + path, headers=headers or {},
                                       allow_redirects=False)
        result = yield answer(response)
        return result

    @defer.inlineCallbacks
    def test_page_headers_and_no_inline_script(self):
        app, _, _ = make_app()
        status, body, headers = yield self.get(app, "/debug/")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        csp = headers.getRawHeaders(b"content-security-policy")[0]
        self.assertIn(b"script-src 'self'", csp)
        self.assertIn(b"default-src 'none'", csp)
        self.assertNotIn(b"unsafe-inline", csp)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/html"))
        scripts = re.findall(rb"<script([^>]*)>(.*?)</script>", body, re.S)
        self.assertEqual(scripts, [(b' src="debug.js" defer', b"")])
        self.assertNotIn(b"style=", body)
        for path, kind in (("/debug/debug.js", b"text/javascript"), ("/debug/debug.css", b"text/css")):
            status, static, headers = yield self.get(app, path)
            self.assertEqual(status, 200)
            self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(kind))
            self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
            self.assertNotIn(b"innerHTML", static)       # values are set with textContent only

    @defer.inlineCallbacks
    def test_redirect_to_the_slash(self):
        app, _, _ = make_app()
        status, _, headers = yield self.get(app, "/debug")
        self.assertEqual(status, 301)
        self.assertEqual(headers.getRawHeaders(b"location"), [b"/debug/"])

    @defer.inlineCallbacks
    def test_admin_credentials_and_networks(self):
        app, _, _ = make_app(make_config(server={"admin": {
            "username": "admin", "password": "p4ss", "allowed_networks": ["203.0.113.0/24"]}}))
        inside = {b"X-Forwarded-For": [b"203.0.113.5"]}
        for path in ("/debug/", "/debug/events", "/debug/debug.js"):
            status, _, _ = yield self.get(app, path, inside)
            self.assertEqual(status, 401, path)
            status, _, _ = yield self.get(app, path, {**inside, b"Authorization": [basic("admin", "no")]})
            self.assertEqual(status, 403, path)
            status, _, _ = yield self.get(app, path, {b"Authorization": [basic("admin", "p4ss")]})
            self.assertEqual(status, 403, path)            # 127.0.0.1 is outside 203.0.113/24
        status, _, _ = yield self.get(app, "/debug/", {**inside, b"Authorization": [basic("admin", "p4ss")]})
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_disabled(self):
        app, _, _ = make_app(make_config(debug={"enabled": False}))
        for path in ("/debug/", "/debug/events", "/debug/debug.js"):
            status, _, _ = yield self.get(app, path)
            self.assertEqual(status, 404, path)

    @defer.inlineCallbacks
    def test_bad_stream_filters(self):
        app, _, _ = make_app()
        status, body, _ = yield self.get(app, "/debug/events?kind=nope")
        self.assertEqual(status, 400)
        self.assertIn(b"kind must be among", body)
        status, body, _ = yield self.get(app, "/debug/events?type=purchase")
        self.assertEqual(status, 400)
        response = yield stub(app).head("http://stilgar.test/debug/events")   # no stream for a HEAD
        self.assertEqual(response.code, 200)
        self.assertEqual(app.live.subscribers, [])

    @defer.inlineCallbacks
    def test_preview(self):
        settings = clickhouse_settings({"type": "clickhouse", "host": "127.0.0.1", "database": "shop"}, "destinations[0]",
                                       lambda w: None)
        clock = task.Clock()
        hub = LiveHub(clock=clock, previews={"ch": lambda e, now: ClickHouseType.preview(settings, e, now)})
        app = StilgarApp(make_config(), FakeIntake(), Stats(up_since=0), clock, live=hub)
        client = stub(app)

        @defer.inlineCallbacks
        def post(body, content_type=b"application/json"):
            response = yield client.post("http://stilgar.test/debug/preview", data=body,
                                         headers={b"Content-Type": [content_type]})
            result = yield answer(response)
            return result
        ev = event(1, name="Order Done", properties={"price": 3, "<script>": "x"})
        status, body, headers = yield post(json.dumps({"event": ev, "destinations": ["ch", "blackhole"]}))
        self.assertEqual(status, 200, body)
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        doc = json.loads(body)
        self.assertEqual(list(doc), ["ch"])
        self.assertEqual(doc["ch"]["database"], "shop")
        tables = [r["table"] for r in doc["ch"]["rows"]]
        self.assertEqual(tables, ["tracks", "order_done"])
        self.assertEqual(doc["ch"]["rows"][1]["columns"]["price"], 3)
        status, _, _ = yield post(b"{}", b"text/plain")
        self.assertEqual(status, 415)
        status, _, _ = yield post(b"{not json")
        self.assertEqual(status, 400)
        status, _, _ = yield post(json.dumps({"event": [], "destinations": []}))
        self.assertEqual(status, 400)


# -- the stream over real sockets ----------------------------------------------------------------

class SSEClient(protocol.Protocol):
    """A plain HTTP/1.1 client of /debug/events: the items it read, as dicts."""

    def __init__(self, path, headers=b""):
        self.path = path
        self.headers = headers
        self.buffer = b""
        self.head = None
        self.items = []
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (self.path.encode(), self.headers))

    def dataReceived(self, data):
        self.buffer += data
        if self.head is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        for line in re.findall(rb"data: (\{.*?\})\n", self.buffer):
            self.items.append(json.loads(line))
        self.buffer = self.buffer[self.buffer.rfind(b"\n") + 1:] if b"\n" in self.buffer else self.buffer

    def connectionLost(self, reason):
        self.lost.callback(None)

    def kinds(self):
        return [i["kind"] for i in self.items]


@defer.inlineCallbacks
def open_stream(port, path):
    client = SSEClient(path)
    yield protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
    yield wait_for(lambda: client.head is not None, timeout=10)
    return client


AUTH = {b"Authorization": [b"Basic " + base64.b64encode(WRITE_KEY.encode() + b":")]}


class StreamTests(unittest.TestCase):
    timeout = 60

    def serve(self, **debug):
        self.intake = FakeIntake()
        self.app = StilgarApp(make_config(debug=debug), self.intake, Stats(up_since=0), reactor)
        self.site = self.app.site()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.stop)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        return self.port.getHost().port

    @defer.inlineCallbacks
    def stop(self):
        yield self.port.stopListening()
        yield wait_for(lambda: self.site.open_connections == 0, timeout=10)
        yield task.deferLater(reactor, 0, lambda: None)

    @defer.inlineCallbacks
    def close(self, client):
        client.transport.abortConnection()
        yield client.lost

    @defer.inlineCallbacks
    def test_items_arrive_and_filters_work(self):
        port = self.serve()
        everything = yield open_stream(port, "/debug/events")
        pages = yield open_stream(port, "/debug/events?type=page&kind=event")
        rejected = yield open_stream(port, "/debug/events?kind=rejected")
        other_key = yield open_stream(port, "/debug/events?write_key=wk-other")
        self.assertIn(b"text/event-stream", everything.head)
        self.assertIn(b"Cache-Control: no-store", everything.head)
        for name, etype in (("Clicked", "track"), ("Home", "page")):
            status, _, _ = yield fetch("POST", f"{self.base}/v1/{etype}", headers=AUTH,
                                       data=event_body(name=name, messageId=f"m-{etype}"))
            self.assertEqual(status, 200)
        status, _, _ = yield fetch("POST", f"{self.base}/v1/track", data=event_body(),
                                   headers={b"Authorization": [basic("not-a-key-42")]})
        self.assertEqual(status, 401)
        yield wait_for(lambda: everything.kinds().count("event") == 2 and "rejected" in everything.kinds())
        yield wait_for(lambda: rejected.kinds() == ["rejected"])
        self.assertEqual([(i["type"], i["message_id"]) for i in pages.items], [("page", "m-page")])
        bad = rejected.items[0]
        self.assertEqual((bad["status"], bad["reason"], bad["write_key"]), (401, "invalid write key", "not-…42"))
        self.assertEqual([i["kind"] for i in other_key.items if i["kind"] in ("event", "rejected")], [])
        self.assertEqual(len(self.app.live.subscribers), 4)
        for client in (everything, pages, rejected, other_key):
            yield self.close(client)
        yield wait_for(lambda: self.app.live.subscribers == [], timeout=10)

    @defer.inlineCallbacks
    def test_a_client_that_stops_reading_is_cut_off_and_intake_goes_on(self):
        port = self.serve(buffer_size="64KiB", max_rate=1_000_000)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /debug/events HTTP/1.1\r\nHost: x\r\n\r\n")     # and never reads again
        self.addCleanup(sock.close)
        yield wait_for(lambda: len(self.app.live.subscribers) == 1, timeout=10)
        watching = yield open_stream(port, "/debug/events?kind=event")
        pad = "x" * 20_000
        sent = 0
        while self.app.live.subscribers and len(self.app.live.subscribers) > 1 and sent < 2000:
            status, _, _ = yield fetch("POST", f"{self.base}/v1/track", headers=AUTH,
                                       data=event_body(messageId=f"m-{sent}", properties={"pad": pad}))
            self.assertEqual(status, 200)
            sent += 1
        self.assertEqual(len(self.app.live.subscribers), 1, "the client that stopped reading was not cut off")
        self.assertEqual(len(self.intake.events()), sent)
        # the reader that kept up got everything
        yield wait_for(lambda: len(watching.items) == sent, timeout=10)
        yield self.close(watching)

    @defer.inlineCallbacks
    def test_sampling_over_the_stream(self):
        port = self.serve(max_rate=5)
        client = yield open_stream(port, "/debug/events?kind=event,skipped")
        began = reactor.seconds()
        for n in range(12):
            status, _, _ = yield fetch("POST", f"{self.base}/v1/track", headers=AUTH,
                                       data=event_body(messageId=f"m-{n}"))
            self.assertEqual(status, 200)
        windows = int(reactor.seconds() - began) + 2        # the seconds the posts spanned
        self.assertLessEqual(client.kinds().count("event"), min(5 * windows, 11))
        self.assertEqual(len(self.intake.events()), 12)
        yield self.close(client)


class WorkersStreamTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_both_workers_events_appear(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        config = os.path.join(directory, "stilgar.yml")
        with open(config, "w") as f:
            f.write(f"""
server:
  ip: 127.0.0.1
  port: {port}
  workers: 2
spool:
  path: {os.path.join(directory, "spool")}
forwarder:
  shutdown_timeout: 3s
destinations:
  - type: blackhole
    write_keys: [{WRITE_KEY}]
""")
        process = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=directory)
        yield process.start(timeout=60)
        self.addCleanup(lambda: process.stop(30))
        yield wait_for(lambda: len(re.findall(r"worker \d+ \(pid \d+\) serving", process.output())) >= 2, 60)
        base = f"http://127.0.0.1:{port}"
        client = yield open_stream(port, "/debug/events?kind=event")
        self.addCleanup(lambda: client.transport.abortConnection())
        yield task.deferLater(reactor, 0.5, lambda: None)        # the link to the other worker
        sent = 0

        def workers():
            return {i["worker"] for i in client.items}
        while workers() != {0, 1} and sent < 200:
            status, _, _ = yield fetch("POST", base + "/v1/track", headers=AUTH,
                                       data=event_body(messageId=f"w-{sent}"))
            self.assertEqual(status, 200)
            sent += 1
            if sent % 10 == 0:
                yield task.deferLater(reactor, 0.2, lambda: None)
        yield wait_for(lambda: workers() == {0, 1}, timeout=10)
        # linked to both workers now (events a worker took before its link was up are not
        # replayed: the live view streams, it does not store); from here on none is missed
        linked = sent
        for n in range(linked, linked + 20):
            status, _, _ = yield fetch("POST", base + "/v1/track", headers=AUTH, data=event_body(messageId=f"w-{n}"))
            self.assertEqual(status, 200)
        after = {f"w-{n}" for n in range(linked, linked + 20)}
        yield wait_for(lambda: after <= {i["message_id"] for i in client.items}, timeout=10)
        ids = [i["message_id"] for i in client.items]
        self.assertEqual(len(ids), len(set(ids)))                      # each event once
        self.assertEqual({int(i["message_id"][2:]) // 1 for i in client.items if i["message_id"] in after},
                         set(range(linked, linked + 20)))


# -- in a browser, with real SDKs ------------------------------------------------------------------

ADMIN = ("admin", "live-view-test-pw")
XSS_LABEL = "<script>window.__xss=1</script>\"><img src=x onerror=\"window.__xss=2\">"
SCREENSHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "doc", "img")


class BrowserTests(unittest.TestCase):
    """/debug/ in Debian Chromium while the browser SDK v3 (another origin) and rudder-sdk-python send.

    The screenshots of doc/debugging.md are made here: STILGAR_UPDATE_SCREENSHOTS=1 copies them to doc/img/.
    """

    timeout = 240

    @defer.inlineCallbacks
    def test_live_view_in_a_browser(self):
        from . import test_sdks as sdks
        sdks.need_browser()
        sdks.need_python_sdk()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        url, user, password = yield threads.deferToThread(sdks._clickhouse_settings)
        ch = sdks.ClickHouse(url, user, password, f"live_{sdks.RUN}")
        self.addCleanup(lambda: threads.deferToThread(ch.drop_blocking))
        port, page_port = free_port(), free_port()
        origins = [f"http://127.0.0.1:{page_port}"]     # the SDK page's origin
        config = sdks.stilgar_config(directory, port, ch, ch.database, origins, extra="""
debug:
  max_rate: 200
""")
        with open(config) as f:
            text_config = f.read()
        text_config = text_config.replace("  ip: 127.0.0.1\n", f"""  ip: 127.0.0.1
  admin:
    username: {ADMIN[0]}
    password: {ADMIN[1]}
    allowed_networks: ["127.0.0.0/8"]
""", 1)
        with open(config, "w") as f:
            f.write(text_config)
        base = f"http://127.0.0.1:{port}"
        process = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=directory,
                                 ping_url=base + "/ping")
        try:
            yield process.start(timeout=60)
        except Exception:
            self.fail("stilgar did not start:\n" + process.output())
        self.addCleanup(lambda: process.stop(30))

        # access: like /status
        admin = {b"Authorization": [basic(*ADMIN)]}
        status, _, headers = yield fetch("GET", base + "/debug/")
        self.assertEqual(status, 401)
        status, _, _ = yield fetch("GET", base + "/debug/", headers={b"Authorization": [basic(ADMIN[0], "no")]})
        self.assertEqual(status, 403)
        status, _, _ = yield fetch("GET", base + "/debug/", headers={**admin, b"X-Forwarded-For": [b"203.0.113.9"]})
        self.assertEqual(status, 403)
        status, _, _ = yield fetch("GET", base + "/debug/", headers=admin)
        self.assertEqual(status, 200)

        events = sdks.six_events("live")
        shots = os.path.join(directory, "screenshots")
        os.makedirs(shots)
        out = yield sdks.run_json([sdks._node(), os.path.join(sdks.SDK_DIR, "live_view.js"), json.dumps({
            "stilgar": base, "pagePort": page_port, "writeKey": sdks.KEY, "badKey": "live-not-a-key-77", "admin": list(ADMIN),
            "python": sys.executable, "label": XSS_LABEL, "pythonCalls": sdks.python_calls(events),
            "screenshots": shots})], timeout=180)
        context = json.dumps({k: v for k, v in out.items() if k != "detailJson"})[:4000] + "\n" + process.output()[-3000:]
        self.assertNotIn("error", out, context)
        self.assertEqual(out["pageStatus"], 200)
        self.assertEqual(out["headers"]["cache-control"], "no-store")
        self.assertIn("script-src 'self'", out["headers"]["content-security-policy"])
        self.assertEqual(out["foreign"], [], "a page asked for something of another host")
        # the events appear within 2 s
        self.assertEqual(len(out["browser"]["sent"]), 5, context)
        self.assertLess(out["browser"]["delayMs"], 2000, context)
        self.assertLess(out["python"]["delayMs"], 2000, context)
        self.assertEqual(out["python"]["result"]["errors"], [], context)
        # the bad write key, masked
        rejected = [r for r in out["rejectedRows"] if "invalid write key" in r]
        self.assertTrue(rejected, context)
        self.assertEqual(rejected[0][1], "401")
        self.assertEqual(rejected[0][3], "live…77")
        self.assertIn("live-view-test/1", rejected[0])
        self.assertFalse(any("live-not-a-key-77" in cell for row in out["rejectedRows"] for cell in row))
        # filtered by event name: the two Product Viewed (browser and Python), nothing else
        names = [row["cells"][3] for row in out["filtered"]]
        self.assertEqual(names, ["Product Viewed"] * len(names))
        self.assertGreaterEqual(len(names), 2)
        libraries = {row["cells"][5] for row in out["filtered"]}
        self.assertIn("analytics-python 2.1.9", libraries)
        self.assertTrue(any(lib.startswith("RudderLabs JavaScript SDK") for lib in libraries), libraries)
        # the event's JSON, with the markup shown as text, and its ClickHouse rows
        self.assertIn(json.dumps(XSS_LABEL), out["detailJson"])
        self.assertEqual(out["injected"], {"xss": None, "images": 0, "scripts": 1})
        self.assertEqual(out["detailTables"][:2], ["tracks", "product_viewed"])
        per_event = dict(out["detailColumns"][1]["columns"])
        self.assertEqual(per_event["sdk_label"], XSS_LABEL)
        self.assertEqual(per_event["product_id"], "P-42")
        # pause holds new items back, resume shows them
        self.assertEqual((out["whilePaused"], out["afterResume"]), (0, 1))
        for name in ("debug-live.png", "debug-event.png"):
            self.assertGreater(os.path.getsize(os.path.join(shots, name)), 10_000)
            if os.environ.get("STILGAR_UPDATE_SCREENSHOTS"):
                os.makedirs(SCREENSHOTS, exist_ok=True)
                shutil.copy(os.path.join(shots, name), os.path.join(SCREENSHOTS, name))
