"""Property tests: nothing a client sends makes the collector answer 500 or crash."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from .helpers import WRITE_KEY, basic, make_app

PATHS = ["/v1/batch", "/v1/track", "/v1/identify", "/v1/alias", "/beacon/v1/batch?writeKey=" + WRITE_KEY,
         "/v1/import", "/pixel/v1/track?writeKey=" + WRITE_KEY, "/sourceConfig", "/status", "/health",
         "/nope", "/v1/page/"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)

event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "x", 1, None])},
    optional={"anonymousId": json_values, "userId": json_values, "messageId": json_values,
              "event": json_values, "properties": json_values, "context": json_values,
              "traits": json_values, "timestamp": json_values, "originalTimestamp": json_values,
              "sentAt": json_values, "previousId": json_values, "groupId": json_values})

header_names = st.sampled_from([b"Content-Encoding", b"Origin", b"X-Forwarded-For", b"X-Real-IP",
                                b"Authorization", b"Content-Type", b"X-Request-Id", b"Expect"])
header_values = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


class FuzzTests(unittest.TestCase):
    def setUp(self):
        self.app, self.intake, self.clock = make_app()
        self.site = self.app.site()

    def exchange(self, method, path, body, headers):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        channel.makeConnection(transport)
        lines = [method + b" " + path + b" HTTP/1.1", b"Host: x", b"Content-Length: %d" % len(body)]
        lines.extend(k + b": " + v for k, v in headers)
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        out = transport.value()
        channel.connectionLost(None)
        return out

    def assertSane(self, out):
        if not out:
            return  # twisted refused the head itself (e.g. a bad header) and closed: fine
        status = int(out.split(b" ", 2)[1])
        self.assertTrue(status < 500 or status == 503, out[:300])

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(PATHS), body=st.binary(max_size=300),
           headers=st.lists(st.tuples(header_names, header_values), max_size=4))
    def test_random_bytes_and_headers(self, path, body, headers):
        headers = [(b"Authorization", basic(WRITE_KEY))] + headers
        self.assertSane(self.exchange(b"POST", path.encode(), body, headers))

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(PATHS[:6]), payload=st.one_of(
        json_values, event_like, st.fixed_dictionaries({"batch": st.lists(event_like, max_size=4)},
                                                       optional={"sentAt": json_values})))
    def test_random_json(self, path, payload):
        body = json.dumps(payload).encode()
        out = self.exchange(b"POST", path.encode(), body, [(b"Authorization", basic(WRITE_KEY))])
        self.assertSane(out)
        status = int(out.split(b" ", 2)[1])
        self.assertIn(status, (200, 400, 413))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from([b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"POST"]),
           path=st.text(max_size=30).map(lambda t: b"/" + t.encode("utf-8").replace(b" ", b"%20")
                                         .replace(b"\r", b"").replace(b"\n", b"")))
    def test_random_paths_and_methods(self, method, path):
        self.assertSane(self.exchange(method, path, b"", []))
