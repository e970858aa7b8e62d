"""The HTTP surface through app.site() in memory (StubTreq, tests/helpers.stub): routes, answers, auth, CORS."""

import gzip
import json
import zlib

from twisted.internet import defer
from twisted.trial import unittest

from stilgar import metrics
from stilgar.events import Rejected
from stilgar.web import auth
from stilgar.web.body import decode_body
from stilgar.web.clientip import client_ip

from .helpers import (ORIGIN, OTHER_KEY, WRITE_KEY, answer, basic, event_body, make_app,
                      make_config, stub)


class EventRoutesTests(unittest.TestCase):
    def setUp(self):
        self.app, self.intake, self.clock = make_app()
        self.treq = stub(self.app)

    @defer.inlineCallbacks
    def post(self, path, body, headers=None, key=WRITE_KEY):
        h = {b"Content-Type": [b"application/json"]}
        if key is not None:
            h[b"Authorization"] = [basic(key)]
        h.update(headers or {})
        response = yield self.treq.post("http://stilgar.test" + path, data=body, headers=h)
        result = yield answer(response)
        return result

    @defer.inlineCallbacks
    def test_single_event_routes_force_type(self):
        for kind in ("identify", "track", "page", "screen", "group", "alias"):
            status, body, headers = yield self.post(f"/v1/{kind}", event_body(type="other"))
            self.assertEqual((status, body), (200, b"OK"), kind)
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
            self.assertEqual(headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
            self.assertEqual(self.intake.events()[-1]["type"], kind)
        self.assertEqual(len(self.intake.accepted), 6)

    @defer.inlineCallbacks
    def test_trailing_slash_and_batch(self):
        batch = {"batch": [json.loads(event_body(type="track")), json.loads(event_body(type="page"))],
                 "sentAt": "2024-01-01T00:00:00Z"}
        status, body, _ = yield self.post("/v1/batch/", json.dumps(batch).encode())
        self.assertEqual((status, body), (200, b"OK"))
        self.assertEqual([e["type"] for e in self.intake.events()], ["track", "page"])
        status, _, _ = yield self.post("/v1/import", json.dumps(batch).encode())
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_batch_on_single_route(self):
        batch = {"batch": [json.loads(event_body(type="identify", userId="u"))]}
        status, _, _ = yield self.post("/v1/track", json.dumps(batch).encode())
        self.assertEqual(status, 200)
        self.assertEqual(self.intake.events()[0]["type"], "identify")

    @defer.inlineCallbacks
    def test_status_table(self):
        cases = [
            (b"{not json", 400, b"invalid json\n"),
            (b"[1, 2]", 400, b"invalid json\n"),
            (b'{"a": NaN}', 400, b"invalid json\n"),
            (b'\xff\xfe', 400, b"invalid json\n"),
        ]
        for body, code, text in cases:
            status, got, _ = yield self.post("/v1/track", body)
            self.assertEqual((status, got), (code, text), body)
        for body, text in [(b'{"batch": []}', b"empty batch payload\n"),
                           (b'{"foo": 1}', b"empty batch payload\n")]:
            status, got, _ = yield self.post("/v1/batch", body)
            self.assertEqual((status, got), (400, text), body)
        # a single-event route refuses its one bad event (the SDKs using them drop a 4xx)
        status, got, _ = yield self.post("/v1/track", b'{"userId": " "}')
        self.assertEqual((status, got), (400, b"request neither has anonymousId nor userId\n"))
        deep = b'{"userId": "u", "properties": ' + b"[" * 600 + b"]" * 600 + b"}"
        status, got, _ = yield self.post("/v1/track", deep)
        self.assertEqual((status, got), (400, b"invalid json\n"))
        self.assertEqual(self.intake.accepted, [])
        # in a batch, each becomes a discard record and the answer is 200
        for body, reason in [(b'{"batch": [1]}', "not_an_object"),
                             (b'{"batch": [{"type": "bogus", "userId": "u"}]}', "unknown_type"),
                             (b'{"batch": [{"type": "track", "userId": " "}]}', "no_identifier"),
                             (b'{"batch": [{"type": "track", "userId": "u", "properties": '
                              + b"[" * 600 + b"]" * 600 + b"}]}", "too_deep")]:
            before = metrics.EVENTS_DISCARDED.labels(reason=reason)._value.get()
            status, got, _ = yield self.post("/v1/batch", body)
            self.assertEqual((status, got), (200, b"OK"), body)
            (record,) = self.intake.accepted[-1][2]
            self.assertEqual((record["type"], record["reason"]), ("discard", reason))
            self.assertEqual(metrics.EVENTS_DISCARDED.labels(reason=reason)._value.get(), before + 1)

    @defer.inlineCallbacks
    def test_one_bad_event_never_refuses_the_batch(self):
        batch = {"batch": [json.loads(event_body(type="track")), {"type": "track"}]}
        status, body, _ = yield self.post("/v1/batch", json.dumps(batch).encode())
        self.assertEqual((status, body), (200, b"OK"))
        (_, _, events), = self.intake.accepted
        self.assertEqual([e["type"] for e in events], ["track", "discard"])
        self.assertEqual(self.app.stats.accepted_events, 1)

    @defer.inlineCallbacks
    def test_auth(self):
        status, body, headers = yield self.post("/v1/track", event_body(), key=None)
        self.assertEqual((status, body), (401, b"failed to read writekey from header\n"))
        self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Basic realm="stilgar"'])
        status, body, _ = yield self.post("/v1/track", event_body(),
                                          headers={b"Authorization": [b"Basic %%%"]}, key=None)
        self.assertEqual(status, 401)
        # an unknown key is 401 as rudder-server answers (Kotlin/Swift retry a 403 for ever)
        status, body, headers = yield self.post("/v1/track", event_body(), key="nope")
        self.assertEqual((status, body), (401, b"invalid write key\n"))
        self.assertIsNone(headers.getRawHeaders(b"www-authenticate"))
        # a password is ignored, padding may be missing, extra spaces are fine
        status, _, _ = yield self.post("/v1/track", event_body(),
                                       headers={b"Authorization": [basic(WRITE_KEY, "secret")]}, key=None)
        self.assertEqual(status, 200)
        import base64
        token = base64.b64encode(WRITE_KEY.encode()).rstrip(b"=")
        status, _, _ = yield self.post("/v1/track", event_body(),
                                       headers={b"Authorization": [b"basic   " + token + b"  "]}, key=None)
        self.assertEqual(status, 200)
        status, _, _ = yield self.post("/v1/track", event_body(), key=OTHER_KEY)
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_content_encodings(self):
        body = event_body()
        for encoding, data in [(b"gzip", gzip.compress(body)), (b"x-gzip", gzip.compress(body)),
                               (b"GZIP", gzip.compress(body)), (b"deflate", zlib.compress(body)),
                               (b"deflate", zlib.compress(body)[2:-4]), (b"identity", body)]:
            status, got, _ = yield self.post("/v1/track", data, headers={b"Content-Encoding": [encoding]})
            self.assertEqual((status, got), (200, b"OK"), encoding)
        status, got, _ = yield self.post("/v1/track", body, headers={b"Content-Encoding": [b"br"]})
        self.assertEqual((status, got), (415, b"unsupported content encoding\n"))
        status, got, _ = yield self.post("/v1/track", b"\x1f\x8bgarbage", headers={b"Content-Encoding": [b"gzip"]})
        self.assertEqual((status, got), (400, b"invalid json\n"))

    @defer.inlineCallbacks
    def test_gzip_bomb(self):
        bomb = gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}")
        self.assertLess(len(bomb), 200_000)
        status, got, _ = yield self.post("/v1/batch", bomb, headers={b"Content-Encoding": [b"gzip"]})
        self.assertEqual((status, got), (413, b"request size exceeds max limit\n"))

    @defer.inlineCallbacks
    def test_size_limit_and_event_count(self):
        app, intake, _ = make_app(make_config(server={"payload_size_limit": "1KiB",
                                                       "max_events_per_request": 2}))
        self.treq = stub(app)
        status, got, _ = yield self.post("/v1/track", event_body(pad="x" * 2000))
        self.assertEqual((status, got), (413, b"request size exceeds max limit\n"))
        batch = {"batch": [json.loads(event_body())] * 3}
        status, got, _ = yield self.post("/v1/batch", json.dumps(batch).encode())
        self.assertEqual(status, 413)

    @defer.inlineCallbacks
    def test_unavailable(self):
        self.intake.refuse = True
        status, got, headers = yield self.post("/v1/track", event_body())
        self.assertEqual((status, got), (503, b"service unavailable\n"))
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"30"])
        self.intake.refuse, self.intake.full = False, True
        status, _, headers = yield self.post("/v1/track", event_body())
        self.assertEqual(status, 503)
        self.intake.full, self.intake.stopping = False, True
        status, _, headers = yield self.post("/v1/track", event_body())
        self.assertEqual((status, headers.getRawHeaders(b"retry-after")), (503, [b"5"]))

    @defer.inlineCallbacks
    def test_beacon(self):
        body = json.dumps({"batch": [json.loads(event_body(type="track"))]}).encode()
        response = yield self.treq.post(f"http://stilgar.test/beacon/v1/batch?writeKey={WRITE_KEY}",
                                        data=body, headers={b"Content-Type": [b"text/plain"]})
        self.assertEqual((yield answer(response))[:2], (200, b"OK"))
        response = yield self.treq.post("http://stilgar.test/beacon/v1/batch", data=body)
        self.assertEqual((yield answer(response))[:2], (401, b"failed to read writekey from query params\n"))
        response = yield self.treq.post("http://stilgar.test/beacon/v1/batch?writeKey=bad", data=body)
        self.assertEqual((yield answer(response))[:2], (401, b"invalid write key\n"))


class CorsTests(unittest.TestCase):
    def setUp(self):
        self.app, self.intake, _ = make_app()
        self.treq = stub(self.app)

    @defer.inlineCallbacks
    def test_preflight_allowed(self):
        response = yield self.treq.request("OPTIONS", "http://stilgar.test/v1/track", headers={
            b"Origin": [ORIGIN.encode()], b"Access-Control-Request-Method": [b"POST"],
            b"Access-Control-Request-Headers": [b"anonymousid,authorization,content-type,sentat"]})
        status, body, h = yield answer(response)
        self.assertEqual((status, body), (204, b""))
        self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [ORIGIN.encode()])
        self.assertEqual(h.getRawHeaders(b"access-control-allow-credentials"), [b"true"])
        self.assertEqual(h.getRawHeaders(b"access-control-allow-headers"),
                         [b"anonymousid,authorization,content-type,sentat"])
        self.assertEqual(h.getRawHeaders(b"access-control-allow-methods"), [b"GET, POST, OPTIONS"])
        self.assertEqual(h.getRawHeaders(b"access-control-max-age"), [b"900"])
        self.assertEqual(h.getRawHeaders(b"vary"),
                         [b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"])

    @defer.inlineCallbacks
    def test_preflight_disallowed(self):
        response = yield self.treq.request("OPTIONS", "http://stilgar.test/v1/track", headers={
            b"Origin": [b"http://evil.example"], b"Access-Control-Request-Method": [b"POST"]})
        status, body, h = yield answer(response)
        self.assertEqual((status, body), (403, b"origin not allowed\n"))
        self.assertIsNone(h.getRawHeaders(b"access-control-allow-origin"))

    @defer.inlineCallbacks
    def test_simple_requests_carry_cors_on_every_answer(self):
        for key, code in [(WRITE_KEY, 200), ("bad", 401)]:
            response = yield self.treq.post("http://stilgar.test/v1/track", data=event_body(), headers={
                b"Origin": [ORIGIN.encode()], b"Authorization": [basic(key)]})
            status, _, h = yield answer(response)
            self.assertEqual(status, code)
            self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [ORIGIN.encode()])
            self.assertEqual(h.getRawHeaders(b"access-control-allow-credentials"), [b"true"])
            self.assertEqual(h.getRawHeaders(b"vary"), [b"Origin"])
        response = yield self.treq.post("http://stilgar.test/v1/track", data=event_body(), headers={
            b"Origin": [b"http://evil.example"], b"Authorization": [basic(WRITE_KEY)]})
        status, body, h = yield answer(response)
        self.assertEqual((status, body), (403, b"origin not allowed\n"))
        self.assertEqual(self.intake.accepted and len(self.intake.accepted), 1)

    @defer.inlineCallbacks
    def test_wildcard_origin(self):
        app, _, _ = make_app(make_config(server={"origins": ["*"]}))
        response = yield stub(app).post("http://stilgar.test/v1/track", data=event_body(), headers={
            b"Origin": [b"http://any.example"], b"Authorization": [basic(WRITE_KEY)]})
        status, _, h = yield answer(response)
        self.assertEqual(status, 200)
        self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [b"http://any.example"])

    @defer.inlineCallbacks
    def test_no_cors_on_admin_routes(self):
        response = yield self.treq.get("http://stilgar.test/health", headers={b"Origin": [ORIGIN.encode()]})
        status, _, h = yield answer(response)
        self.assertEqual(status, 200)
        self.assertIsNone(h.getRawHeaders(b"access-control-allow-origin"))


class OtherRoutesTests(unittest.TestCase):
    def setUp(self):
        self.app, self.intake, _ = make_app()
        self.treq = stub(self.app)

    @defer.inlineCallbacks
    def get(self, path, headers=None):
        response = yield self.treq.get("http://stilgar.test" + path, headers=headers or {})
        result = yield answer(response)
        return result

    @defer.inlineCallbacks
    def test_simple_routes(self):
        self.assertEqual((yield self.get("/ping"))[:2], (200, b"pong"))
        self.assertEqual((yield self.get("/ping/"))[:2], (200, b"pong"))
        self.assertEqual((yield self.get("/"))[:2], (200, b":-)"))
        status, body, h = yield self.get("/version")
        self.assertEqual(status, 200)
        self.assertEqual(set(json.loads(body)) >= {"version", "python", "twisted"}, True)
        status, body, _ = yield self.get("/health")
        self.assertEqual((status, json.loads(body)["status"]), (200, "UP"))
        self.intake.full = True
        status, body, _ = yield self.get("/health")
        self.assertEqual(status, 503)

    @defer.inlineCallbacks
    def test_unknown_path_and_wrong_method(self):
        self.assertEqual((yield self.get("/nope"))[:2], (404, b"not found\n"))
        status, body, h = yield self.get("/v1/track")
        self.assertEqual((status, body), (405, b"method not allowed\n"))
        self.assertIn(b"POST", h.getRawHeaders(b"allow")[0])
        response = yield self.treq.post("http://stilgar.test/ping", data=b"")
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def test_head(self):
        response = yield self.treq.head("http://stilgar.test/ping")
        status, body, _ = yield answer(response)
        self.assertEqual((status, body), (200, b""))

    @defer.inlineCallbacks
    def test_source_config(self):
        status, body, h = yield self.get(f"/sourceConfig/?p=npm&v=3.0&writeKey={WRITE_KEY}",
                                         {b"Origin": [ORIGIN.encode()]})
        self.assertEqual(status, 200)
        doc = json.loads(body)
        self.assertTrue(doc["source"]["enabled"])
        self.assertEqual(doc["source"]["writeKey"], WRITE_KEY)
        self.assertEqual(doc["source"]["destinations"], [])
        self.assertEqual(doc["source"]["config"]["statsCollection"]["errors"]["enabled"], False)
        self.assertTrue(doc["source"]["id"])
        self.assertEqual(h.getRawHeaders(b"access-control-allow-origin"), [ORIGIN.encode()])
        # mobile SDKs send only the header; the id is stable
        status, body2, _ = yield self.get("/sourceConfig?p=android", {b"Authorization": [basic(WRITE_KEY)]})
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body2)["source"]["id"], doc["source"]["id"])
        for path in ("/sourceConfig", "/sourceConfig?writeKey=bad"):
            status, body, _ = yield self.get(path)
            self.assertEqual((status, json.loads(body)), (403, {"source": {"enabled": False}}))
        self.assertNotIn("dataplanes", doc["source"])
        self.assertEqual(doc["consentManagementMetadata"], {"providers": []})

    @defer.inlineCallbacks
    def test_source_config_key_with_plus_and_ampersand(self):
        # Kotlin/Swift put the key unencoded in the query: '+' must stay '+', and the
        # Basic header wins when both are there (a '&' cuts the query's copy)
        keys = ["a+b/c=", "x&y+z"]
        app, _, _ = make_app(make_config(destinations=[{"type": "blackhole", "write_keys": keys}]))
        treq = stub(app)
        for key in keys:
            response = yield treq.get(f"http://stilgar.test/sourceConfig?p=android&v=1.6.0&writeKey={key}&bv=34",
                                      headers={b"Authorization": [basic(key)]})
            status, body, _ = yield answer(response)
            self.assertEqual((status, json.loads(body)["source"]["writeKey"]), (200, key))
        # without the header, the raw query is read without form-decoding '+'
        response = yield treq.get("http://stilgar.test/sourceConfig?p=swift&writeKey=a+b/c=&v=1.3.1")
        status, body, _ = yield answer(response)
        self.assertEqual((status, json.loads(body)["source"]["writeKey"]), (200, "a+b/c="))
        response = yield treq.get("http://stilgar.test/sourceConfig?writeKey=a%2Bb%2Fc%3D")
        self.assertEqual((yield answer(response))[0], 200)
        # the header is preferred even when the query names another known key
        response = yield treq.get("http://stilgar.test/sourceConfig?writeKey=a+b/c=",
                                  headers={b"Authorization": [basic("x&y+z")]})
        status, body, _ = yield answer(response)
        self.assertEqual(json.loads(body)["source"]["writeKey"], "x&y+z")

    @defer.inlineCallbacks
    def test_source_config_serves_the_configured_destinations(self):
        destination = {
            "id": "d1", "name": "Braze Android", "enabled": True, "config": {"apiKey": "k", "n": 3},
            "destinationDefinitionId": "dd1", "updatedAt": "2024-08-28T12:53:34.870Z",
            "destinationDefinition": {"name": "BRAZE", "displayName": "Braze"},
            "shouldApplyDeviceModeTransformation": False, "propagateEventsUntransformedOnError": False}
        consent = {"providers": [{"provider": "oneTrust", "resolutionStrategy": "and"}]}
        config = make_config(source_config={WRITE_KEY: {"destinations": [destination],
                                                        "consentManagementMetadata": consent}})
        app, _, _ = make_app(config)
        response = yield stub(app).get("http://stilgar.test/sourceConfig", headers={b"Authorization": [basic(WRITE_KEY)]})
        status, body, _ = yield answer(response)
        doc = json.loads(body)
        self.assertEqual(doc["source"]["destinations"], [destination])
        self.assertEqual(doc["consentManagementMetadata"], consent)
        self.assertNotIn("dataplanes", doc["source"])
        response = yield stub(app).get("http://stilgar.test/sourceConfig", headers={b"Authorization": [basic(OTHER_KEY)]})
        doc = json.loads((yield answer(response))[1])
        self.assertEqual((doc["source"]["destinations"], doc["consentManagementMetadata"]), ([], {"providers": []}))

    @defer.inlineCallbacks
    def test_pixel(self):
        status, body, h = yield self.get(
            f"/pixel/v1/track?writeKey={WRITE_KEY}&anonymousId=a1&event=Opened&properties.campaign=x")
        self.assertEqual((status, len(body)), (200, 43))
        self.assertEqual(h.getRawHeaders(b"content-type"), [b"image/gif"])
        self.assertEqual(h.getRawHeaders(b"cache-control"), [b"no-store"])
        event = self.intake.events()[-1]
        self.assertEqual((event["type"], event["event"], event["properties"]), ("track", "Opened", {"campaign": "x"}))
        status, body, _ = yield self.get("/pixel/v1/page?writeKey=bad&anonymousId=a1")
        self.assertEqual((status, len(body)), (200, 43))
        status, body, _ = yield self.get("/pixel/v1/page?anonymousId=a1")
        self.assertEqual((status, len(body)), (200, 43))
        self.assertEqual(len(self.intake.accepted), 1)


class AdminTests(unittest.TestCase):
    @defer.inlineCallbacks
    def get(self, app, path, headers=None):
        response = yield stub(app).get("http://stilgar.test" + path, headers=headers or {})
        result = yield answer(response)
        return result

    @defer.inlineCallbacks
    def test_status_default_trusted_networks(self):
        app, _, _ = make_app()
        status, body, _ = yield self.get(app, "/status")
        self.assertEqual(status, 200)
        doc = json.loads(body)
        self.assertEqual(set(doc["events"]["forwarded"]),
                         {"aliases", "groups", "identifies", "pages", "screens", "tracks"})
        status, body, _ = yield self.get(app, "/status?with_destinations=true")
        self.assertIn("blackhole", json.loads(body))
        status, body, _ = yield self.get(app, "/status?with_destinations=maybe")
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_credentials_and_networks(self):
        app, _, _ = make_app(make_config(server={"admin": {
            "username": "admin", "password": "p4ss", "allowed_networks": ["203.0.113.0/24"]}}))
        # the StubTreq peer is loopback (a trusted proxy): X-Forwarded-For is believed
        status, _, _ = yield self.get(app, "/status", {b"X-Forwarded-For": [b"203.0.113.5"],
                                                       b"Authorization": [basic("admin", "p4ss")]})
        self.assertEqual(status, 200)
        status, _, _ = yield self.get(app, "/status", {b"Authorization": [basic("admin", "p4ss")]})
        self.assertEqual(status, 403)  # 127.0.0.1 is not in 203.0.113/24
        status, _, h = yield self.get(app, "/status", {b"X-Forwarded-For": [b"203.0.113.5"]})
        self.assertEqual(status, 401)
        status, _, _ = yield self.get(app, "/status", {b"X-Forwarded-For": [b"203.0.113.5"],
                                                       b"Authorization": [basic("admin", "wrong")]})
        self.assertEqual(status, 403)
        # a spoofed entry on the left does not help: the right-most untrusted one counts
        status, _, _ = yield self.get(app, "/metrics", {b"X-Forwarded-For": [b"203.0.113.5, 8.8.8.8"],
                                                        b"Authorization": [basic("admin", "p4ss")]})
        self.assertEqual(status, 403)
        status, body, h = yield self.get(app, "/metrics", {b"X-Forwarded-For": [b"8.8.8.8, 203.0.113.5"],
                                                           b"Authorization": [basic("admin", "p4ss")]})
        self.assertEqual(status, 200)
        self.assertIn(b"stilgar_http_requests", body)


    @defer.inlineCallbacks
    def test_left_most_entry_never_believed(self):
        # the client (10.1.2.3, SNAT or a pod: in a trusted range) wrote 192.168.77.5 itself
        app, _, _ = make_app(make_config(server={"admin": {"allowed_networks": ["192.168.77.0/24"]}}))
        status, _, _ = yield self.get(app, "/status", {b"X-Forwarded-For": [b"192.168.77.5, 10.1.2.3"]})
        self.assertEqual(status, 403)
        status, _, _ = yield self.get(app, "/status", {b"X-Forwarded-For": [b"192.168.77.5"],
                                                       b"X-Real-IP": [b"10.1.2.3"]})
        self.assertEqual(status, 200)  # the proxy's own entry is in the allowed network

    @defer.inlineCallbacks
    def test_admin_default_is_loopback_only(self):
        app, _, _ = make_app()
        # a host of a private (trusted-proxy) network behind a local proxy
        status, _, _ = yield self.get(app, "/status", {b"X-Forwarded-For": [b"10.1.2.3"]})
        self.assertEqual(status, 403)
        status, _, _ = yield self.get(app, "/metrics", {b"X-Forwarded-For": [b"192.168.1.20"]})
        self.assertEqual(status, 403)
        status, _, _ = yield self.get(app, "/status", {b"X-Forwarded-For": [b"127.0.0.1"]})
        self.assertEqual(status, 200)
        # credentials are still required when configured, from loopback too
        app, _, _ = make_app(make_config(server={"admin": {"username": "admin", "password": "p4ss"}}))
        status, _, _ = yield self.get(app, "/status")
        self.assertEqual(status, 401)
        status, _, _ = yield self.get(app, "/status", {b"Authorization": [basic("admin", "p4ss")]})
        self.assertEqual(status, 200)


class ClientIpTests(unittest.TestCase):
    trusted = make_config().server.trusted_proxies

    def ip(self, peer, forwarded=None, real_ip=None):
        return str(client_ip(peer, forwarded, real_ip, self.trusted))

    def test_right_most_untrusted_entry(self):
        self.assertEqual(self.ip("127.0.0.1", [b"203.0.113.9, 198.51.100.1, 10.0.0.2"]), "198.51.100.1")
        self.assertEqual(self.ip("127.0.0.1", [b"203.0.113.9", b"198.51.100.1"]), "198.51.100.1")

    def test_every_entry_trusted_gives_the_right_most(self):
        self.assertEqual(self.ip("10.0.0.1", [b"192.168.77.5, 10.1.2.3"]), "10.1.2.3")
        self.assertEqual(self.ip("10.0.0.1", [b"192.168.77.5", b"garbage, 10.1.2.3"]), "10.1.2.3")

    def test_headers_of_untrusted_peers_ignored(self):
        self.assertEqual(self.ip("198.51.100.7", [b"127.0.0.1"], b"127.0.0.1"), "198.51.100.7")
        self.assertEqual(self.ip("127.0.0.1", None, b"198.51.100.8"), "198.51.100.8")
        self.assertEqual(self.ip("127.0.0.1", [b"nonsense"]), "127.0.0.1")


class PathPrefixTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_routes_live_under_the_prefix(self):
        app, intake, _ = make_app(make_config(server={"path_prefix": "/collect"}))
        treq = stub(app)
        response = yield treq.post("http://stilgar.test/collect/v1/track", data=event_body(),
                                   headers={b"Authorization": [basic(WRITE_KEY)]})
        self.assertEqual((yield answer(response))[:2], (200, b"OK"))
        response = yield treq.get("http://stilgar.test/collect/ping/")
        self.assertEqual((yield answer(response))[:2], (200, b"pong"))
        response = yield treq.post("http://stilgar.test/v1/track", data=event_body(),
                                   headers={b"Authorization": [basic(WRITE_KEY)]})
        self.assertEqual((yield answer(response))[:2], (404, b"not found\n"))
        self.assertEqual(len(intake.accepted), 1)


class BodyDecodingTests(unittest.TestCase):
    """decode_body: every gzip member, the inflated cap across members, no trailing data."""

    def test_every_gzip_member_is_decoded(self):
        body = gzip.compress(b'{"batch": [') + gzip.compress(b'{"event": "x"}]}')
        self.assertEqual(decode_body(body, b"gzip", 1024), b'{"batch": [{"event": "x"}]}')

    def test_inflated_cap_counts_all_members(self):
        body = gzip.compress(b" " * 600) + gzip.compress(b" " * 600)
        self.assertEqual(len(decode_body(body, b"gzip", 1200)), 1200)
        with self.assertRaises(Rejected) as caught:
            decode_body(body, b"gzip", 1000)
        self.assertEqual(caught.exception.status, 413)

    def test_garbage_after_a_member_is_refused(self):
        for trailing in (b"garbage", b"\x00" * 8):
            with self.assertRaises(Rejected) as caught:
                decode_body(gzip.compress(b"{}") + trailing, b"gzip", 1024)
            self.assertEqual((caught.exception.status, caught.exception.reason), (400, "invalid json"))

    def test_data_after_a_deflate_stream_is_refused(self):
        for stream in (zlib.compress(b"{}"), zlib.compress(b"{}")[2:-4]):
            self.assertEqual(decode_body(stream, b"deflate", 1024), b"{}")
            with self.assertRaises(Rejected) as caught:
                decode_body(stream + b'{"more": 1}', b"deflate", 1024)
            self.assertEqual(caught.exception.status, 400)


class BasicAuthCacheTests(unittest.TestCase):
    def _cached_entries(self):
        return sum(f.cache_info().currsize for f in vars(auth).values() if hasattr(f, "cache_info"))

    def test_large_authorization_values_are_not_kept(self):
        for f in vars(auth).values():
            if hasattr(f, "cache_clear"):
                f.cache_clear()
        for i in range(50):
            header = basic(f"{i:04d}" + "k" * 8000)
            self.assertEqual(auth.parse_basic(header), (f"{i:04d}" + "k" * 8000, ""))
        self.assertEqual(self._cached_entries(), 0)
        # small values (what SDKs send) are still cached
        self.assertEqual(auth.parse_basic(basic(WRITE_KEY)), (WRITE_KEY, ""))
        self.assertEqual(self._cached_entries(), 1)
