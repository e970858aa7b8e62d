"""The mobile SDKs against a real Stilgar and a real ClickHouse (issue 17; doc/sdks.md).

The four native SDKs cannot run here, so their requests are replayed byte for byte as their source
code builds them (``tests/mobile_wire.py``): the same bodies, the same framing (gzip with
Content-Length for Android and iOS classic, chunked without gzip for Kotlin, plain Content-Length
for Swift), the same headers (each ``AnonymousId`` encoding) and the same ``/sourceConfig`` query
strings, over a raw TCP connection to a ``twistd -n stilgar`` child writing to ClickHouse. The
answer must be the one each SDK treats as success, and the rows must be in ClickHouse.

``StatusTableTests`` states, for every answer the collector can give on the event and
``/sourceConfig`` routes, what each SDK generation does with it (from the wire study of the SDKs'
code, doc/sdks.md), produces each answer through the app, and checks that none of the answers a
storable mobile batch can get makes an SDK resend it for ever.
"""

import base64
import gzip
import json
import os
import subprocess
import uuid

from twisted.internet import defer, endpoints, protocol, reactor, threads
from twisted.trial import unittest

from stilgar.destinations.blackhole import Blackhole
from stilgar.destinations.clickhouse.naming import column_name
from stilgar.destinations.clickhouse.rows import build_rows
from stilgar.destinations.clickhouse.schema import CONTEXT_KEY_MAP
from stilgar.events import MAX_DEPTH, normalise_payload, parse_json

from . import mobile_wire as wire
from .helpers import answer, basic, make_app, make_config, stub
from .processes import ROOT, TWISTD, fetch, wait_for
from .test_sdks import (LISTENING, RECENT, ClickHouse, SharedStilgar, _clickhouse_settings, _die_with_parent,
                        matches)

RUN = uuid.uuid4().hex[:8]
# a key the Kotlin/Swift SDKs put unencoded in the query: '+', '/' and '=' must survive
KEY = "mobile+write/key="
ROW_TIMEOUT = 30

BRAZE = {
    "id": "2LvUEsZMnLN6eBH5O0vBLRYHQXx", "name": "Braze Android", "enabled": True,
    "config": {"appKey": "a-b-c", "dataCenter": "US-03", "trackAnonymousUser": True},
    "destinationDefinitionId": "1XQoHKJnI6Uf67wN20RlvAQSUB9",
    "destinationDefinition": {"name": "BRAZE", "displayName": "Braze", "updatedAt": "2024-01-05T09:27:43.522Z"},
    "updatedAt": "2024-08-28T12:53:34.870Z",
    "shouldApplyDeviceModeTransformation": False, "propagateEventsUntransformedOnError": False,
}
CONSENT = {"providers": [{"provider": "oneTrust", "resolutionStrategy": "and"}]}


# -- a raw HTTP client: the bytes go out exactly as the SDK frames them ----------------------------

class _RawExchange(protocol.Protocol):
    def __init__(self, request):
        self.request = request
        self.data = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data += data
        head, sep, rest = self.data.partition(b"\r\n\r\n")
        if not sep or self.done.called:
            return
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if len(rest) >= int(headers.get(b"content-length", b"0")):
            status = int(lines[0].split()[1])
            self.done.callback((status, rest[:int(headers.get(b"content-length", b"0"))], headers))
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


def raw_exchange(port, request):
    exchange = _RawExchange(request)
    point = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    d = endpoints.connectProtocol(point, exchange)
    d.addCallback(lambda _: exchange.done)
    return d


# -- the collector under test -------------------------------------------------------------------

class MobileStilgar(SharedStilgar):
    """One ``twistd -n stilgar`` for this module, writing to its own ClickHouse database, with a
    ``source_config`` entry (test_sdks' collector has none); ``log`` and ``stop`` are its."""

    def __init__(self):
        super().__init__()
        self.directory = os.path.abspath(f"mobile-stilgar-{RUN}")
        self.log_path = os.path.join(self.directory, "stilgar.log")

    def config(self):
        host, _, port = self.ch.url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
        return f"""
server:
  ip: 127.0.0.1
spool:
  path: {json.dumps(os.path.join(self.directory, "spool"))}
forwarder:
  shutdown_timeout: 3s
destinations:
  - type: clickhouse
    name: mobile
    write_keys: [{json.dumps(KEY)}]
    host: {json.dumps(host)}
    port: {port}
    user: {json.dumps(self.ch.user)}
    password: {json.dumps(self.ch.password)}
    database: {json.dumps(self.ch.database)}
    cache_idle_timeout: 1s
    query_timeout: 5s
source_config:
  {json.dumps(KEY)}:
    destinations: [{json.dumps(BRAZE)}]
    consentManagementMetadata: {json.dumps(CONSENT)}
"""

    @defer.inlineCallbacks
    def start(self):
        url, user, password = yield threads.deferToThread(_clickhouse_settings)
        self.ch = ClickHouse(url, user, password, f"mobile_{RUN}")
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, "stilgar.yml")
        with open(path, "w") as f:
            f.write(self.config())
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(TWISTD + ["-n", "--pidfile=", "stilgar", "--config", path,
                                                   "--listen", "tcp:0:interface=127.0.0.1"],
                                         cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"stilgar exited with {self.proc.returncode}:\n{self.log()}")
            if self.port is None:
                found = LISTENING.search(self.log(tail=None))
                if not found:
                    return False
                self.port = int(found.group(1))
            d = fetch("GET", f"http://127.0.0.1:{self.port}/ping")
            d.addCallbacks(lambda r: r[:2] == (200, b"pong"), lambda f: False)
            return d
        yield wait_for(ready, timeout=30, interval=0.1)


_collector = None


@defer.inlineCallbacks
def collector():
    global _collector
    if _collector is None:
        candidate = MobileStilgar()
        try:
            yield candidate.start()
        except Exception:
            candidate.stop()
            raise
        _collector = candidate
        import atexit
        atexit.register(candidate.stop)
    return _collector


# -- what must be in ClickHouse -----------------------------------------------------------------

class Prefix:
    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return f"{self.text}..."


def value_matches(expected, actual):
    if isinstance(expected, Prefix):
        return isinstance(actual, str) and actual.startswith(expected.text)
    return matches(expected, actual)


def _time(text):
    """'2026-12-01T08:00:00.101Z' as ClickHouse prints it (DateTime or DateTime64)."""
    return Prefix(text[:10] + " " + text[11:19])


def expected_rows(body):
    """{table: {id: {column: value}}} for a mobile batch as sent."""
    tables = {}
    for e in json.loads(body)["batch"]:
        ctx = e["context"]
        row = {"anonymous_id": e["anonymousId"], "user_id": e["userId"], "channel": "mobile",
               "original_timestamp": _time(e["originalTimestamp"]), "sent_at": _time(e["sentAt"]),
               "received_at": RECENT, "timestamp": RECENT,
               "context_locale": ctx["locale"], "context_timezone": ctx["timezone"],
               "context_session_id": ctx["sessionId"]}
        if "sessionStart" in ctx:
            row["context_session_start"] = ctx["sessionStart"]
        if "userAgent" in ctx:
            row["context_user_agent"] = ctx["userAgent"]
        for section in ("app", "device", "library", "network", "os", "screen"):
            for key, value in ctx[section].items():
                row[CONTEXT_KEY_MAP[section].get(key) or column_name(f"context_{section}_", key)[0]] = value
        mid = e["messageId"]
        if e["type"] == "identify":
            traits = {column_name("context_traits_", k)[0]: v for k, v in ctx["traits"].items()}
            tables.setdefault("identifies", {})[mid] = {**row, **traits}
            tables.setdefault("users", {})[e["userId"]] = traits
        elif e["type"] == "track":
            tables.setdefault("tracks", {})[mid] = {**row, "event": e["event"]}
            table = e["event"].lower().replace(" ", "_")
            tables.setdefault(table, {})[mid] = {**row, "event": e["event"], **e["properties"]}
        elif e["type"] == "screen":
            tables.setdefault("screens", {})[mid] = {**row, "name": e["properties"]["name"],
                                                     "step": e["properties"]["step"]}
    return tables


class MobileTestCase(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def rows_of(self, ch, table, ids, column="id"):
        return (yield ch.rows(table, column, ids))

    @defer.inlineCallbacks
    def assert_landed(self, ch, tables):
        found = {}

        @defer.inlineCallbacks
        def complete():
            for table, rows in tables.items():
                found[table] = yield ch.rows(table, "id", list(rows))
            return all({r["id"] for r in found[t]} >= set(rows) for t, rows in tables.items())
        try:
            yield wait_for(complete, timeout=ROW_TIMEOUT, interval=0.25)
        except AssertionError:
            pass
        problems = []
        for table, rows in sorted(tables.items()):
            for key, columns in rows.items():
                mine = [r for r in found.get(table, []) if r["id"] == key]
                if len(mine) != 1:
                    problems.append(f"{table}: id {key!r} found {len(mine)} times (expected once)")
                    continue
                for column, value in columns.items():
                    actual = mine[0].get(column, "<no such column>")
                    if not value_matches(value, actual):
                        problems.append(f"{table}.{column} for {key!r}: expected {value!r}, got {actual!r}")
        if problems:
            raise AssertionError(f"{len(problems)} problem(s) in {ch.database}:\n  " + "\n  ".join(problems))

    @defer.inlineCallbacks
    def discards(self, ch, row_ids):
        found = []

        @defer.inlineCallbacks
        def some():
            found[:] = yield ch.rows("rudder_discards", "row_id", row_ids)
            return found
        try:
            yield wait_for(some, timeout=ROW_TIMEOUT, interval=0.25)
        except AssertionError:
            pass
        return found


# -- what each SDK needs in /sourceConfig (doc/sdks.md) ------------------------------------------

def check_source_config(case, sdk, document):
    """The document passes the SDK's model (the rules of the wire study, from the SDKs' classes)."""
    source = document["source"]
    if sdk in ("android", "ios"):
        case.assertIs(source["enabled"], True)          # missing/false: stored events are deleted
        case.assertIsInstance(source["destinations"], list)
    else:
        for name in ("id", "name", "writeKey", "workspaceId", "updatedAt"):
            case.assertIsInstance(source[name], str, name)
        case.assertIs(source["enabled"], True)
        if sdk == "swift":                               # plain JSONDecoder: everything required
            stats = source["config"]["statsCollection"]
            case.assertIsInstance(stats["errors"]["enabled"], bool)
            case.assertIsInstance(stats["metrics"]["enabled"], bool)
    case.assertNotIn("dataplanes", source)               # it would redirect the classic SDKs
    for destination in source["destinations"]:
        for name, kind in (("id", str), ("name", str), ("enabled", bool), ("destinationDefinitionId", str),
                           ("updatedAt", str), ("shouldApplyDeviceModeTransformation", bool),
                           ("propagateEventsUntransformedOnError", bool), ("config", dict)):
            case.assertIsInstance(destination[name], kind, name)
        case.assertIsInstance(destination["destinationDefinition"]["name"], str)
        case.assertIsInstance(destination["destinationDefinition"]["displayName"], str)


# -- the tests ----------------------------------------------------------------------------------

class WireReplayTests(MobileTestCase):
    """Each SDK's /sourceConfig GET and batch POST, as its code sends them."""

    @defer.inlineCallbacks
    def replay(self, sdk, attempts=({},)):
        s = yield collector()
        spec = wire.SDKS[sdk]
        host = f"127.0.0.1:{s.port}"
        auth = ("Authorization", "Basic " + base64.b64encode(f"{KEY}:".encode()).decode())

        # the control plane: only the Basic header for the classic SDKs, the key also unencoded in
        # the query for Kotlin and Swift
        path = spec["source_config"].format(key=KEY)
        status, body, headers = yield raw_exchange(s.port, wire.get_bytes(path, host, [auth] + spec["config_headers"]))
        self.assertEqual(status, 200, body)
        self.assertEqual(headers[b"content-type"], b"application/json")
        document = json.loads(body)
        check_source_config(self, sdk, document)
        self.assertEqual(document["source"]["writeKey"], KEY)
        self.assertEqual(document["source"]["destinations"], [BRAZE])     # device mode: served verbatim
        self.assertEqual(document["consentManagementMetadata"], CONSENT)

        # the data plane
        batch = wire.personalise(spec["body"], f"{sdk}{RUN}")
        for extra in attempts:
            head = [auth, ("AnonymousId", spec["anonymous_header"])] + spec["headers"] + list(extra.get("headers", ()))
            request = wire.request_bytes("/v1/batch", host, head, batch,
                                         extra.get("gzip", spec["gzip"]), spec["chunked"])
            status, body, _ = yield raw_exchange(s.port, request)
            # Android/iOS classic: success is exactly 200 (a 202/204 would be resent); Kotlin/Swift: 2xx
            self.assertEqual((status, body), (200, b"OK"))
        yield self.assert_landed(s.ch, expected_rows(batch))

    def test_android_classic(self):
        return self.replay("android")

    def test_ios_classic(self):
        return self.replay("ios")

    def test_kotlin(self):
        # the default (no gzip), then the same batch again with gzip on and the retry headers the
        # SDK adds on a re-send: one row per event all the same
        return self.replay("kotlin", attempts=({}, {"gzip": True, "headers": [
            ("Rsa-Retry-Attempt", "1"), ("Rsa-Since-Last-Attempt", "3120"), ("Rsa-Retry-Reason", "client-timeout")]}))

    def test_swift(self):
        return self.replay("swift")

    @defer.inlineCallbacks
    def test_kotlin_biggest_batch_chunked(self):
        # a Kotlin batch file closes only past 500 KB: 500 KB + one 32 KB event, chunked, no gzip,
        # under the default payload_size_limit (a 413 would make the SDK delete it)
        s = yield collector()
        body = kotlin_batch_of(532 * 1024, f"big{RUN}")
        self.assertGreater(len(body), 532 * 1024)
        spec = wire.SDKS["kotlin"]
        head = [("Authorization", "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()),
                ("AnonymousId", spec["anonymous_header"])] + spec["headers"]
        status, answer_body, _ = yield raw_exchange(
            s.port, wire.request_bytes("/v1/batch", f"127.0.0.1:{s.port}", head, body.decode(), False, True))
        self.assertEqual((status, answer_body), (200, b"OK"))
        ids = [e["messageId"] for e in json.loads(body)["batch"]]
        yield self.assert_landed(s.ch, {"tracks": {mid: {"event": "Order Completed"} for mid in ids}})


def kotlin_batch_of(size, tag):
    """A Kotlin batch file just over ``size`` bytes of ~30 KB track events (the SDK closes a file
    only once it is past 500 KB, and an event may be 32 KB)."""
    event = json.loads(wire.KOTLIN_BODY)["batch"][1]
    event["properties"]["padding"] = "x" * 30000
    n = size // len(json.dumps(event)) + 1
    events = []
    for i in range(n):
        event["messageId"] = f"{tag}-{i:03d}"
        events.append(json.dumps(event))
    return ('{"batch":[' + ",".join(events) + '],"sentAt":"2026-12-01T07:55:31.105Z"}').encode()


def thirty_events(tag, poison):
    """30 Android-classic events (identify, track, screen in turn); the 17th (a track) is poisoned."""
    template = json.loads(wire.ANDROID_BODY)["batch"]
    events = []
    for i in range(30):
        event = json.loads(json.dumps(template[i % 3]))
        event["messageId"] = f"{tag}-{i:02d}"
        event["userId"] = f"u-{tag}"
        events.append(event)
    poisoned = events[16]                                  # a track event
    if poison == "too_deep":
        poisoned["properties"]["nested"] = json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    elif poison == "no_ids":
        poisoned["anonymousId"] = ""                      # what Android sends blank: not its key-less case
        del poisoned["userId"]
    elif poison == "properties":
        poisoned["properties"] = "order o-77"
    body = '{"sentAt":"2026-12-01T07:55:30.635Z","batch": [' + ",".join(json.dumps(e) for e in events) + "]}"
    return body, [e["messageId"] for e in events]


class PoisonedBatchTests(MobileTestCase):
    """One unstorable event in 30 never refuses the batch: 200, 29 stored, 1 discard with the reason."""

    @defer.inlineCallbacks
    def send(self, poison):
        s = yield collector()
        tag = f"{poison}{RUN}"
        body, ids = thirty_events(tag, poison)
        spec = wire.SDKS["android"]
        head = [("Authorization", "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()),
                ("AnonymousId", spec["anonymous_header"])] + spec["headers"]
        status, answer_body, _ = yield raw_exchange(
            s.port, wire.request_bytes("/v1/batch", f"127.0.0.1:{s.port}", head, body, True, False))
        self.assertEqual((status, answer_body), (200, b"OK"))
        kinds = {0: "identifies", 1: "tracks", 2: "screens"}
        healthy = {}
        for i, mid in enumerate(ids):
            if i != 16:
                healthy.setdefault(kinds[i % 3], {})[mid] = {"anonymous_id": wire.ANONYMOUS_ID}
        healthy["order_completed"] = {mid: {"order_id": "o-77"} for t, rows in healthy.items()
                                      if t == "tracks" for mid in rows}
        yield self.assert_landed(s.ch, healthy)
        found = yield self.discards(s.ch, [ids[16]])
        return s, ids, found

    @defer.inlineCallbacks
    def test_too_deep(self):
        s, ids, found = yield self.send("too_deep")
        self.assertEqual(len(found), 1, found)
        self.assertEqual((found[0]["table_name"], found[0]["column_name"]), ("tracks", ""))
        self.assertEqual(found[0]["reason"], f"nested deeper than {MAX_DEPTH} levels")
        self.assertIn('"order_id":"o-77"', found[0]["column_value"])     # the event, as far as it could be read
        self.assertEqual((yield s.ch.rows("tracks", "id", [ids[16]])), [])

    @defer.inlineCallbacks
    def test_no_ids(self):
        s, ids, found = yield self.send("no_ids")
        self.assertEqual(len(found), 1, found)
        self.assertEqual(found[0]["reason"], "request neither has anonymousId nor userId")
        self.assertEqual((yield s.ch.rows("tracks", "id", [ids[16]])), [])

    @defer.inlineCallbacks
    def test_properties_not_an_object(self):
        # the event itself can be stored: its row lands without properties, the value is the discard
        s, ids, found = yield self.send("properties")
        self.assertEqual(len(found), 1, found)
        self.assertEqual((found[0]["table_name"], found[0]["column_name"], found[0]["reason"]),
                         ("tracks", "properties", "properties is not an object"))
        self.assertEqual(found[0]["column_value"], "order o-77")
        yield self.assert_landed(s.ch, {"tracks": {ids[16]: {"event": "Order Completed"}}})


# -- every answer, and what each SDK generation does with it -------------------------------------

SUCCESS, DELETE, STOP, RETRY, WEDGE, START, NO_START = (
    "success", "deletes the batch", "stops uploading", "retries with backoff until it is answered 200",
    "resends the same batch for ever, blocking every later event", "starts", "never starts uploading")


def classic_reaction(status, body):
    """Android classic 1.28 and iOS classic 1.31 on /v1/batch (RudderNetworkManager.java:138-159,
    RudderCloudModeManager.java:82-100; RSNetworkManager.m:77-92)."""
    if status == 200:
        return SUCCESS
    if "invalid write key" in body.lower() and status not in (400, 404):
        return STOP
    if status in (400, 404):
        return WEDGE          # every second, for ever
    return RETRY


def new_reaction(status, body):
    """Kotlin 1.6 and Swift 1.3.1 on /v1/batch (EventUpload.kt:134-201, EventUploader.swift:138-154)."""
    if 200 <= status < 300:
        return SUCCESS
    if status in (400, 413):
        return DELETE
    if status in (401, 404):
        return STOP
    return RETRY              # 5 backoffs then every 30 minutes, later batches waiting


def config_reaction(generation, status):
    """What a /sourceConfig answer does (RudderServerConfigManager.java:74-111, RSServerConfigManager.m:115-131,
    SourceConfigManager.kt:79-128, SourceConfigProvider.swift:85-136)."""
    if status == 200:
        return START
    if generation == "classic":
        return NO_START       # retried 4 times, then the cached copy; none: nothing is uploaded
    return START              # 5 retries, then the uploads go on (and meet the event route's answer)


class StatusTableTests(unittest.TestCase):
    """Each answer the collector gives, produced through the app, and each SDK generation's reaction."""

    def setUp(self):
        self.app, self.intake, _ = make_app(make_config(server={"payload_size_limit": "1MiB"}))
        self.treq = stub(self.app)

    @defer.inlineCallbacks
    def post(self, body, key="wk-test", encoding=None, path="/v1/batch"):
        headers = {b"Content-Type": [b"application/json"]}
        if key is not None:
            headers[b"Authorization"] = [basic(key)]
        if encoding:
            headers[b"Content-Encoding"] = [encoding]
        response = yield self.treq.post("http://stilgar.test" + path, data=body, headers=headers)
        status, got, _ = yield answer(response)
        return status, got.decode()

    @defer.inlineCallbacks
    def test_every_event_route_answer(self):
        storable = json.dumps({"batch": [json.loads(wire.KOTLIN_BODY)["batch"][1]]}).encode()
        poisoned, _ = thirty_events("t", "too_deep")
        kotlin_max = kotlin_batch_of(532 * 1024, "t")
        # (what is sent, is it a storable mobile batch?, expected answer)
        table = [
            ("a storable batch", storable, True, 200, "OK"),
            ("a batch with unstorable events", poisoned.encode(), True, 200, "OK"),
            ("the biggest Kotlin/Swift batch (500 KB + one 32 KB event)", kotlin_max, True, 200, "OK"),
            ("a gzipped batch", ("encoding", b"gzip"), True, 200, "OK"),
            ("an unknown write key", ("key", "nope"), False, 401, "invalid write key\n"),
            ("no Authorization header", ("key", None), False, 401, "failed to read writekey from header\n"),
            ("a body that is not JSON", b"{nope", False, 400, "invalid json\n"),
            ("an object that is not a batch", b'{"type": "track"}', False, 400, "empty batch payload\n"),
            ("an empty batch", b'{"batch": []}', False, 400, "empty batch payload\n"),
            ("an unknown content encoding", ("encoding", b"br"), False, 415, "unsupported content encoding\n"),
            ("a body over payload_size_limit", b" " * (1024 * 1024 + 1), False, 413,
             "request size exceeds max limit\n"),
            ("a wrong path", ("path", "/collect/v1/batch"), False, 404, "not found\n"),
        ]
        for what, body, storable_batch, status, text in table:
            kw = {}
            if isinstance(body, tuple):
                kw = {body[0]: body[1]}
                body = storable if body[0] != "encoding" else gzip.compress(storable)
            got = yield self.post(body, **kw)
            self.assertEqual(got, (status, text), what)
            reactions = {"classic": classic_reaction(status, text), "kotlin/swift": new_reaction(status, text)}
            if storable_batch:
                # nothing a storable batch can be answered makes an SDK resend it for ever (or drop it)
                self.assertEqual(reactions, {"classic": SUCCESS, "kotlin/swift": SUCCESS}, what)
            else:
                self.assertNotEqual(reactions["kotlin/swift"], SUCCESS, what)
        # 503 (spool full, stopping): a transient answer every SDK retries until it is answered 200
        self.intake.refuse = True
        got = yield self.post(storable)
        self.assertEqual(got, (503, "service unavailable\n"))
        self.assertEqual((classic_reaction(*got), new_reaction(*got)), (RETRY, RETRY))
        self.intake.refuse = False
        # the old answers, for the record: what they did (and why they are gone)
        self.assertEqual(new_reaction(403, "invalid write key\n"), RETRY)       # was: retried for ever
        self.assertEqual(classic_reaction(400, "invalid json\n"), WEDGE)         # was: one deep event
        self.assertEqual(classic_reaction(413, "request size exceeds max limit\n"), RETRY)  # limit < 1MiB

    @defer.inlineCallbacks
    def test_every_source_config_answer(self):
        cases = [
            ("a known key in the header", {b"Authorization": [basic("wk-test")]}, "/sourceConfig?p=ios&v=1.31.0", 200),
            ("a known key in the query", {}, "/sourceConfig?p=swift&writeKey=wk-test&v=1.3.1", 200),
            ("an unknown key", {b"Authorization": [basic("nope")]}, "/sourceConfig?p=android", 403),
            ("no key", {}, "/sourceConfig?p=android&v=1.28.0&bv=34", 403),
        ]
        for what, headers, path, status in cases:
            response = yield self.treq.get("http://stilgar.test" + path, headers=headers)
            got, body, _ = yield answer(response)
            self.assertEqual(got, status, what)
            document = json.loads(body)
            if status == 200:
                for sdk in ("android", "ios", "kotlin", "swift"):
                    check_source_config(self, sdk, document)
                self.assertEqual(config_reaction("classic", got), START)
                self.assertEqual(config_reaction("new", got), START)
            else:
                # not 400: for Kotlin/Swift a 400 here means "invalid key": shutdown, storage deleted
                self.assertEqual(document, {"source": {"enabled": False}})
                self.assertEqual(config_reaction("classic", got), NO_START)

    def test_payload_size_limit_under_1mib_is_warned(self):
        config = make_config(server={"payload_size_limit": "512KiB"})
        self.assertTrue(any("under 1MiB" in w for w in config.warnings))


class DiscardRecordTests(unittest.TestCase):
    """The discard record from the door to each destination (doc/events.md)."""

    def records(self):
        import datetime
        body = b'{"batch":[{"type":"track","userId":"u","event":"E"},{"type":"track","anonymousId":" ",' \
               b'"messageId":"m-bad"},{"type":"screen","userId":"u","properties":' + b"[" * 600 + b"]" * 600 + b"}]}"
        payload, cuts = parse_json(body, cut_deep=True)
        return normalise_payload(payload, route_type=None, client_ip=None,
                                 received_at=datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc),
                                 privacy=make_config().privacy, max_events=100, cut=cuts > 0)

    def test_clickhouse_rows(self):
        rows, discards = build_rows(self.records(), "2026-12-01T00:00:01.000000Z")
        self.assertEqual(sorted(r.table for r in rows), ["e", "tracks"])
        self.assertEqual([(d.data["table_name"], d.data["row_id"], d.data["column_name"], d.data["reason"])
                          for d in discards[:1]],
                         [("tracks", "m-bad", "", "request neither has anonymousId nor userId")])
        self.assertEqual(json.loads(discards[0].data["column_value"])["messageId"], "m-bad")
        self.assertEqual((discards[1].data["table_name"], discards[1].data["reason"]),
                         ("screens", f"nested deeper than {MAX_DEPTH} levels"))

    def test_blackhole_counts(self):
        hole = Blackhole(name="b", write_keys=["k"])
        hole.write(self.records())
        self.assertEqual((hole.status()["accepted"], hole.status()["discarded"]), (3, 2))

    def test_spool_record_round_trip(self):
        from stilgar.forwarder import Record
        records = self.records()
        record = Record("k", "r", records)
        self.assertEqual(Record.decode(record.encode(), None, None).events, records)
