"""Regulations (doc/privacy.md): requests, the journal, the admin routes, suppression, erasure.

Logic with Clock and fakes; erasure, sharing between instances and kill -9 with the real
ClickHouse 18.16 (``$STILGAR_TEST_CLICKHOUSE_URL`` or tests/chserver.py); the end-to-end
erasure with the real Python SDK needs ``scripts/sdk-setup``.
"""

import base64
import json
import os
import tempfile

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest
from zope.interface import implementer

from stilgar.destinations.clickhouse.capabilities import MODERN
from stilgar.forwarder import Forwarder
from stilgar.regulations import commands
from stilgar.regulations.clickhouse import REGULATIONS_TABLE, ClickHouseErasure, subject_where
from stilgar.regulations.erasure import ErasureFailed, IErasable
from stilgar.regulations.journal import Journal
from stilgar.regulations.model import (BadRegulation, Ledger, SubjectHasher, parse_request, subject_key,
                                       suppressed_keys)
from stilgar.regulations.service import RegulationService
from stilgar.regulations.suppression import DeliveryFilter
from stilgar.regulations.wiring import erasables_of
from stilgar.stats import Stats
from stilgar.web.app import StilgarApp

from .helpers import FakeIntake, answer, make_config, stub
from .processes import StilgarProcess, fetch, free_port, wait_for
from .test_clickhouse_chdb import write
from .test_clickhouse_integration import IntegrationBase, ev
from .test_clickhouse_units import event as unit_event
from .test_forwarder import FakeDestination, FakeSpool
from .test_retention import ChdbDestination, fresh_chdb_database
from .test_sdks import need_python_sdk, python_sdk

SECRET = b"regulations-test-secret-0123456789"
ADMIN = ("admin", "admin-pw")


def now_thread(f, *args):
    """Journal work done at once (tests on a Clock)."""
    return defer.maybeDeferred(f, *args)


def journal(directory=None, reactor=None):
    return Journal(directory or tempfile.mkdtemp(prefix="stilgar-reg-"), reactor or task.Clock(),
                   in_thread=now_thread)


def body(kind="SUPPRESS", subject="USER_ID", ids=("u1",)):
    return json.dumps({"regulationType": kind, "subjectType": subject, "subjectIds": list(ids)}).encode()


def admin_header(user=ADMIN[0], password=ADMIN[1]):
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


# -- pure -------------------------------------------------------------------------------------

class RequestTests(unittest.TestCase):
    def test_valid(self):
        self.assertEqual(parse_request({"regulationType": "DELETE_ONLY", "subjectType": "ANONYMOUS_ID",
                                        "subjectIds": ["a", "b", "a"]}),
                         ("DELETE_ONLY", "ANONYMOUS_ID", ("a", "b")))

    def test_malformed(self):
        good = {"regulationType": "SUPPRESS", "subjectType": "USER_ID", "subjectIds": ["u"]}
        cases = [
            ([], "JSON object"),
            (dict(good, regulationType="ERASE"), "regulationType"),
            (dict(good, subjectType="EMAIL"), "subjectType"),
            (dict(good, subjectIds=[]), "non-empty list"),
            (dict(good, subjectIds="u"), "non-empty list"),
            (dict(good, subjectIds=[1]), "subjectIds[0]"),
            (dict(good, subjectIds=["u", " "]), "subjectIds[1]"),
            (dict(good, subjectIds=["x" * 1025]), "longer than"),
            (dict(good, subjectIds=[str(i) for i in range(1001)]), "more than 1000"),
            (dict(good, extra=1), "unknown key 'extra'"),
        ]
        for document, reason in cases:
            with self.assertRaises(BadRegulation) as caught:
                parse_request(document)
            self.assertIn(reason, str(caught.exception), document)

    def test_subject_key_is_keyed_and_typed(self):
        a = subject_key(SECRET, "USER_ID", "u1")
        self.assertEqual(a, subject_key(SECRET, "USER_ID", "u1"))
        self.assertNotEqual(a, subject_key(SECRET, "ANONYMOUS_ID", "u1"))
        self.assertNotEqual(a, subject_key(b"another secret", "USER_ID", "u1"))
        self.assertNotIn("u1", a)
        hasher = SubjectHasher(SECRET, capacity=2)
        for subject_id in ("u1", "é", "u1", "x", "y", "u1"):
            self.assertEqual(hasher("USER_ID", subject_id), subject_key(SECRET, "USER_ID", subject_id))

    def test_fold_latest_wins_and_holds(self):
        self.assertEqual(suppressed_keys([(1, "r1", "suppress", "k"), (2, "r2", "unsuppress", "k")]),
                         frozenset())
        self.assertEqual(suppressed_keys([(2, "r2", "unsuppress", "k"), (1, "r1", "suppress", "k")]),
                         frozenset())
        self.assertEqual(suppressed_keys([(1, "r1", "unsuppress", "k"), (2, "r2", "suppress", "k")]),
                         frozenset(["k"]))
        # a DELETE_ONLY holds its subject until released, whatever order rows arrive in
        self.assertEqual(suppressed_keys([(1, "r1", "hold", "k")]), frozenset(["k"]))
        self.assertEqual(suppressed_keys([(5, "r1", "release", "k"), (1, "r1", "hold", "k")]), frozenset())
        self.assertEqual(suppressed_keys([(1, "r1", "hold", "k"), (2, "r2", "unsuppress", "k")]),
                         frozenset(["k"]))

    def test_ledger_apply_twice_is_harmless(self):
        ledger = Ledger()
        filed = {"k": "filed", "id": "r1", "at": 1.0, "type": "SUPPRESS", "subject_type": "USER_ID",
                 "keys": ["k1"], "admin": "a"}
        state = {"k": "state", "id": "r1", "status": "FINISHED", "at": 1.0}
        for record in (filed, state, filed, state):
            ledger.apply(record)
        self.assertEqual(ledger.suppressed(), frozenset(["k1"]))
        self.assertEqual(len(ledger.regulations), 1)
        self.assertFalse(ledger.apply({"k": "table", "id": "unknown"}))
        self.assertFalse(ledger.apply({"nonsense": True}))


# -- the journal ---------------------------------------------------------------------------------

class JournalTests(unittest.TestCase):
    def test_records_survive_reopening_and_a_torn_line(self):
        directory = tempfile.mkdtemp(prefix="stilgar-reg-")
        j = journal(directory)
        self.assertEqual(j.open(), [])
        self.successResultOf(j.append({"k": "filed", "id": "r1"}))
        # a crash in the middle of a write leaves a torn line ...
        with open(j.path, "ab") as f:
            f.write(b'\n{"k": "fil')
        j.close()
        again = journal(directory)
        self.assertEqual(again.open(), [{"k": "filed", "id": "r1"}])
        # ... which the next record's leading newline ends: it is skipped, the record is not
        self.successResultOf(again.append({"k": "state", "id": "r1"}))
        third = journal(directory)
        self.assertEqual(third.open(), [{"k": "filed", "id": "r1"}, {"k": "state", "id": "r1"}])
        self.assertEqual(third.skipped, 1)

    def test_other_writers_are_read(self):
        directory = tempfile.mkdtemp(prefix="stilgar-reg-")
        a, b = journal(directory), journal(directory)
        a.open()
        b.open()
        self.successResultOf(a.append({"k": "x", "id": "1"}))
        self.assertEqual(self.successResultOf(b.read_new()), [{"k": "x", "id": "1"}])
        self.assertEqual(self.successResultOf(b.read_new()), [])

    def test_pending_subjects(self):
        j = journal()
        j.open()
        self.successResultOf(j.save_subjects("reg-1", ["u1", "u2"]))
        self.assertEqual(j.load_subjects("reg-1"), ["u1", "u2"])
        self.successResultOf(j.drop_subjects("reg-1"))
        self.assertIsNone(j.load_subjects("reg-1"))
        self.successResultOf(j.drop_subjects("reg-1"))   # twice: harmless


# -- the admin routes --------------------------------------------------------------------------

def regulations_app(directory=None, admin=True, networks=None, secret=SECRET, erasables=()):
    clock = task.Clock()
    clock.advance(1_700_000_000)
    server = {}
    if admin:
        server["admin"] = {"username": ADMIN[0], "password": ADMIN[1]}
        if networks is not None:
            server["admin"]["allowed_networks"] = networks
    config = make_config(server=server)
    service = RegulationService(journal(directory, clock), secret, erasables, clock, settle=5)
    app = StilgarApp(config, FakeIntake(), Stats(up_since=clock.seconds()), clock, regulations=service)
    return app, service, clock


class RoutesTests(unittest.TestCase):
    def setUp(self):
        self.app, self.service, self.clock = regulations_app()
        self.treq = stub(self.app)

    @defer.inlineCallbacks
    def call(self, method, path, data=None, headers=None, auth=True, ctype=b"application/json"):
        h = {}
        if ctype is not None:
            h[b"Content-Type"] = [ctype]
        if auth:
            h[b"Authorization"] = [admin_header()]
        h.update(headers or {})
        response = yield self.treq.request(method, "http://stilgar.test" + path, data=data, headers=h)
        status, content, headers = yield answer(response)
        return status, content

    @defer.inlineCallbacks
    def test_file_get_and_list(self):
        status, content = yield self.call("POST", "/v1/regulations", body("SUPPRESS", ids=["u1"]))
        self.assertEqual(status, 202)
        filed = json.loads(content)
        self.assertEqual(filed["status"], "FINISHED")
        self.clock.advance(1)
        status, content = yield self.call("POST", "/v1/regulations/", body("UNSUPPRESS", ids=["u1"]))
        second = json.loads(content)
        status, content = yield self.call("GET", "/v1/regulations")
        self.assertEqual(status, 200)
        listed = json.loads(content)["regulations"]
        self.assertEqual([r["id"] for r in listed], [second["id"], filed["id"]])   # newest first
        status, content = yield self.call("GET", f"/v1/regulations/{filed['id']}")
        self.assertEqual(status, 200)
        doc = json.loads(content)
        self.assertEqual((doc["regulationType"], doc["subjectType"], doc["subjectCount"], doc["admin"]),
                         ("SUPPRESS", "USER_ID", 1, "admin"))
        self.assertNotIn("u1", content.decode())   # the trail holds no subject id
        status, content = yield self.call("GET", "/v1/regulations/reg-nope")
        self.assertEqual((status, content), (404, b"no such regulation\n"))
        # the journal holds no subject id either
        with open(self.service.journal.path, "rb") as f:
            self.assertNotIn(b"u1", f.read())

    @defer.inlineCallbacks
    def test_malformed_bodies_change_nothing(self):
        for data, reason in [(b"{", b"invalid json\n"), (b"[]", b"invalid json\n"),
                             (body("ERASE"), None), (body(ids=[]), None), (body(subject="EMAIL"), None)]:
            status, content = yield self.call("POST", "/v1/regulations", data)
            self.assertEqual(status, 400, data)
            if reason is not None:
                self.assertEqual(content, reason)
        status, content = yield self.call("GET", "/v1/regulations")
        self.assertEqual(json.loads(content), {"regulations": []})
        self.assertEqual(self.service.suppressed(), frozenset())
        self.assertFalse(os.path.exists(self.service.journal.path))   # nothing written

    @defer.inlineCallbacks
    def test_cross_site_requests_refused(self):
        cases = [
            ({}, b"text/plain", 415),
            ({}, b"application/x-www-form-urlencoded", 415),
            ({}, None, 415),
            ({b"Origin": [b"https://evil.example"]}, b"application/json", 403),
            ({b"Origin": [b"null"]}, b"application/json", 403),
            ({b"Referer": [b"https://evil.example/page"]}, b"application/json", 403),
            ({b"Origin": [b"http://stilgar.test.evil.example"]}, b"application/json", 403),
        ]
        for headers, ctype, code in cases:
            status, _ = yield self.call("POST", "/v1/regulations", body(), headers=headers, ctype=ctype)
            self.assertEqual(status, code, (headers, ctype))
        self.assertEqual(self.service.suppressed(), frozenset())
        # the collector's own pages (the admin live view) may file
        for headers in ({b"Origin": [b"http://stilgar.test"]}, {b"Referer": [b"http://stilgar.test/admin"]},
                        {b"Origin": [b"http://STILGAR.test:80"]}):
            status, _ = yield self.call("POST", "/v1/regulations", body(), headers=headers,
                                        ctype=b"application/json; charset=utf-8")
            self.assertEqual(status, 202, headers)
        # a cross-origin preflight is refused too
        status, _ = yield self.call("OPTIONS", "/v1/regulations", headers={
            b"Origin": [b"https://evil.example"], b"Access-Control-Request-Method": [b"POST"]})
        self.assertEqual(status, 403)

    @defer.inlineCallbacks
    def test_access(self):
        status, _ = yield self.call("POST", "/v1/regulations", body(), auth=False)
        self.assertEqual(status, 401)
        status, _ = yield self.call("GET", "/v1/regulations/x", auth=False)
        self.assertEqual(status, 401)
        status, _ = yield self.call("POST", "/v1/regulations", body(),
                                    headers={b"Authorization": [admin_header(password="wrong")]})
        self.assertEqual(status, 403)
        self.assertEqual(self.service.suppressed(), frozenset())
        # from outside the admin networks
        app, service, _ = regulations_app(networks=["203.0.113.0/24"])
        self.treq = stub(app)
        status, _ = yield self.call("POST", "/v1/regulations", body())
        self.assertEqual(status, 403)
        status, _ = yield self.call("GET", "/v1/regulations")
        self.assertEqual(status, 403)
        self.assertEqual(service.suppressed(), frozenset())

    @defer.inlineCallbacks
    def test_without_secret(self):
        app, _, _ = regulations_app(secret=None)
        self.treq = stub(app)
        status, content = yield self.call("POST", "/v1/regulations", body())
        self.assertEqual(status, 503)
        self.assertIn(b"regulations_secret", content)


# -- suppression in the forwarder ----------------------------------------------------------------

def event(mid, user=None, anon="anon-x", kind="track", **extra):
    e = {"type": kind, "messageId": mid, "anonymousId": anon, "receivedAt": "2026-01-01T00:00:00.000Z"}
    if user is not None:
        e["userId"] = user
    e.update(extra)
    return e


class SuppressionTests(unittest.TestCase):
    def setUp(self):
        self.keys = set()
        self.filter = DeliveryFilter(lambda: frozenset(self.keys), SECRET)

    def suppress_subject(self, subject_type, subject_id):
        self.keys.add(subject_key(SECRET, subject_type, subject_id))

    def make(self, destinations, spool):
        clock = task.Clock()
        forwarder = Forwarder(destinations, spool=spool, stats=Stats(up_since=0), reactor=clock,
                              delivery_filter=self.filter)
        forwarder.startService()
        return forwarder, clock

    def test_at_the_door(self):
        spool = FakeSpool()
        dest = FakeDestination("d", ["k"])
        forwarder, clock = self.make([dest], spool)
        self.suppress_subject("USER_ID", "u1")
        self.suppress_subject("ANONYMOUS_ID", "anon-2")
        d = forwarder.accept("k", "r1", [event("m1", "u1"), event("m2", "u2"), event("m3", None, "anon-2"),
                                          event("m4", "u3", kind="alias", previousId="u1")])
        self.successResultOf(d)
        d = forwarder.accept("k", "r2", [event("m5", "u1")])
        self.successResultOf(d)            # answered 200 ...
        self.assertEqual(len(spool.records), 1)    # ... and nothing spooled for r2
        clock.advance(0.01)
        self.assertEqual([e["messageId"] for e in dest.received], ["m2"])
        self.assertNotIn(b"u1", spool.records[0][2])

    def test_spooled_before_the_suppression(self):
        spool = FakeSpool()
        slow = FakeDestination("slow", ["k"], auto=False)
        other = FakeDestination("other", ["k"])
        forwarder, clock = self.make([slow, other], spool)
        self.successResultOf(forwarder.accept("k", "r1", [event("m1", "u1"), event("m2", "u2")]))
        self.successResultOf(forwarder.accept("k", "r2", [event("m3", "u1")]))
        self.suppress_subject("USER_ID", "u1")
        clock.advance(0.01)
        self.assertEqual([e["messageId"] for e in other.received], ["m2"])
        slow.confirm_all()
        self.assertEqual([e["messageId"] for e in slow.received], ["m2"])
        # the fully suppressed request counts as delivered: the cursors move past it
        forwarder.save_cursors()
        self.assertEqual(spool.cursors["other"], spool.head)
        self.assertEqual(spool.cursors["slow"], spool.head)

    def test_nothing_suppressed_is_the_same_list(self):
        events = [event("m1", "u1")]
        self.assertIs(self.filter.at_door(events), events)
        self.assertIs(self.filter.for_destination("d", events), events)


# -- execution, with a fake destination ------------------------------------------------------------

class _Item:
    def __init__(self, table):
        self.table = table


@implementer(IErasable)
class FakeErasable:
    """Tables of rows {user_id, anonymous_id}; mutations done after ``lag`` polls."""

    def __init__(self, name="ch"):
        self.name = name
        self.tables = {"tracks": [], "users": []}
        self.shared = []
        self.up = True
        self.lag = 1
        self.polls = 0
        self.deletes = 0
        self.fail_plan = None
        self.flushed = 0

    def ready(self):
        return self.up

    def settle_delay(self):
        return 1.0

    def flush(self):
        self.flushed += 1
        return defer.succeed(None)

    def publish(self, rows):
        if not self.up:
            return defer.fail(ConnectionError("down"))
        self.shared.extend(rows)
        return defer.succeed(None)

    def fetch(self):
        return defer.succeed([r[:4] for r in self.shared])

    def plan(self, subject_type, ids):
        if not self.up:
            return defer.fail(ConnectionError("down"))
        if self.fail_plan:
            return defer.fail(ErasureFailed(self.fail_plan))
        self._match = (("user_id" if subject_type == "USER_ID" else "anonymous_id"), set(ids))
        return defer.succeed([_Item(t) for t in sorted(self.tables)])

    def _hits(self, table):
        column, ids = self._match
        return [r for r in self.tables[table] if r.get(column) in ids]

    def count(self, item):
        return defer.succeed(len(self._hits(item.table)))

    def delete(self, item):
        self.deletes += 1
        hits = self._hits(item.table)
        self.tables[item.table] = [r for r in self.tables[item.table] if r not in hits]
        self.polls = 0
        return defer.succeed(None)

    def deleted(self, item):
        self.polls += 1
        return defer.succeed(self.polls > self.lag)


class ExecutionTests(unittest.TestCase):
    def make(self, directory=None, erasable=None, clock=None):
        self.clock = clock or task.Clock()
        self.erasable = erasable or FakeErasable()
        service = RegulationService(journal(directory, self.clock), SECRET, [self.erasable], self.clock,
                                    settle=30, sync_interval=10)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def test_suppress_with_delete_rounds(self):
        service = self.make()
        ch = self.erasable
        ch.tables["tracks"] = [{"user_id": "u1"}, {"user_id": "u2"}, {"user_id": "u1"}]
        ch.tables["users"] = [{"user_id": "u1"}]
        doc = self.successResultOf(service.file(json.loads(body("SUPPRESS_WITH_DELETE", ids=["u1"])), "adm"))
        self.assertEqual(doc["status"], "RUNNING")
        rid = doc["id"]
        key = subject_key(SECRET, "USER_ID", "u1")
        self.assertIn(key, service.suppressed())       # suppressed before anything is deleted
        self.assertEqual({r[3] for r in ch.shared}, {key})   # and shared
        self.clock.advance(1)                           # the mutations are polled
        self.assertEqual(ch.tables["tracks"], [{"user_id": "u2"}])
        # a row that was on its way (another instance's buffer) lands during the settle
        ch.tables["tracks"].append({"user_id": "u1"})
        self.clock.advance(30)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(service.get(rid))["status"], "RUNNING")
        self.assertEqual(ch.tables["tracks"], [{"user_id": "u2"}])
        self.clock.advance(30)
        self.clock.advance(1)
        doc = self.successResultOf(service.get(rid))
        self.assertEqual(doc["status"], "FINISHED", doc)
        tables = {t["table"]: t for t in doc["tables"]}
        self.assertEqual(tables["tracks"], {"destination": "ch", "table": "tracks", "rowsBefore": 2,
                                            "rowsAfter": 0, "mutationDone": True})
        self.assertEqual(tables["users"]["rowsBefore"], 1)
        self.assertIn(key, service.suppressed())        # still suppressed afterwards
        self.assertIsNone(service.journal.load_subjects(rid))   # raw ids gone

    def test_delete_only_holds_while_running(self):
        service = self.make()
        self.erasable.tables["tracks"] = [{"user_id": "u1"}]
        doc = self.successResultOf(service.file(json.loads(body("DELETE_ONLY", ids=["u1"])), None))
        key = subject_key(SECRET, "USER_ID", "u1")
        self.assertIn(key, service.suppressed())
        for _ in range(70):
            self.clock.advance(1)
        self.assertEqual(self.successResultOf(service.get(doc["id"]))["status"], "FINISHED")
        self.assertNotIn(key, service.suppressed())
        self.assertIn("release", {r[2] for r in self.erasable.shared})

    def test_transient_trouble_is_retried_then_failure_recorded(self):
        service = self.make()
        ch = self.erasable
        ch.up = False
        doc = self.successResultOf(service.file(json.loads(body("SUPPRESS_WITH_DELETE", ids=["u1"])), None))
        for _ in range(10):
            self.clock.advance(10)
        running = self.successResultOf(service.get(doc["id"]))
        self.assertEqual(running["status"], "RUNNING")
        self.assertIn("down", running["lastError"])
        ch.up = True
        ch.fail_plan = "Code: 62: syntax error"
        for _ in range(10):
            self.clock.advance(60)
        failed = self.successResultOf(service.get(doc["id"]))
        self.assertEqual((failed["status"], failed["reason"]), ("FAILED", "Code: 62: syntax error"))

    def test_resumed_after_a_restart(self):
        directory = tempfile.mkdtemp(prefix="stilgar-reg-")
        first = self.make(directory)
        self.erasable.tables["tracks"] = [{"user_id": "u1"}]
        self.erasable.lag = 10 ** 6          # the mutation never ends in this run
        doc = self.successResultOf(first.file(json.loads(body("SUPPRESS_WITH_DELETE", ids=["u1"])), None))
        self.clock.advance(5)
        first.journal.close()                # kill -9: nothing more is written
        # a new process over the same journal and the same database
        erasable = self.erasable
        erasable.lag = 0
        erasable.tables["tracks"].append({"user_id": "u1"})
        second = self.make(directory, erasable=erasable, clock=task.Clock())
        self.assertIn(subject_key(SECRET, "USER_ID", "u1"), second.suppressed())
        for _ in range(40):
            self.clock.advance(1)
        doc = self.successResultOf(second.get(doc["id"]))
        self.assertEqual(doc["status"], "FINISHED")
        self.assertEqual(erasable.tables["tracks"], [])


# -- with the real ClickHouse 18.16 -------------------------------------------------------------------

def subject_events(user, anon, prefix):
    """One event of every type for a user, a second per-event table and an alias by previous id."""
    return [
        ev("identify", f"{prefix}-i", userId=user, anonymousId=anon, context={"traits": {"email": f"{user}@x"}}),
        ev("track", f"{prefix}-t1", userId=user, anonymousId=anon, event="Order Done",
           properties={"total": 3, "id": "reserved: a discard"}),
        ev("track", f"{prefix}-t2", userId=user, anonymousId=anon, event="Signed Up"),
        # a third event table is over max_event_tables: the whole row goes to rudder_discards
        ev("track", f"{prefix}-t3", userId=user, anonymousId=anon, event="Too Many"),
        ev("page", f"{prefix}-p", userId=user, anonymousId=anon, name="Home"),
        ev("screen", f"{prefix}-s", userId=user, anonymousId=anon, name="Main"),
        ev("group", f"{prefix}-g", userId=user, anonymousId=anon, groupId="acme"),
        ev("alias", f"{prefix}-a", userId=f"{user}-new", anonymousId=anon, previousId=user),
    ]


class ErasureIntegrationTests(IntegrationBase):
    timeout = 120

    def setUp(self):
        super().setUp()
        self.services = []

    def tearDown(self):
        ds = [defer.maybeDeferred(s.stopService) for s in self.services if s.running]
        d = defer.DeferredList(ds)
        d.addCallback(lambda _: super(ErasureIntegrationTests, self).tearDown())
        return d

    @defer.inlineCallbacks
    def service(self, dest, directory=None, settle=1.0):
        service = RegulationService(Journal(directory or tempfile.mkdtemp(prefix="stilgar-reg-"), reactor),
                                    SECRET, erasables_of([dest]).values(), reactor, sync_interval=0.5,
                                    settle=settle, poll_interval=0.2)
        service.startService()
        self.services.append(service)
        yield service.sync()
        return service

    @defer.inlineCallbacks
    def finished(self, service, rid, timeout=60):
        def done():
            d = service.get(rid)
            return d.addCallback(lambda doc: doc if doc["status"] != "RUNNING" else None)
        doc = yield wait_for(done, timeout=timeout, interval=0.2)
        return doc

    @defer.inlineCallbacks
    def subject_rows(self, subject_type, subject_id):
        """table -> rows of the subject (every owned table, by the rule of doc/privacy.md)."""
        tables = yield self.select(f"SELECT table, groupArray(name) FROM system.columns WHERE database = "
                                   f"'{self.db}' GROUP BY table")
        found = {}
        for table, names in tables:
            if table == REGULATIONS_TABLE:
                continue
            columns = set(json.loads(names.replace("'", '"')))
            mids = set()
            if table == "rudder_discards":
                for other, other_cols in tables:
                    if other not in ("rudder_discards", "users", REGULATIONS_TABLE):
                        cols = set(json.loads(other_cols.replace("'", '"')))
                        w = subject_where(other, cols, subject_type, [subject_id])
                        mids.update(r[0] for r in (yield self.select(f"SELECT id FROM `{self.db}`.`{other}`"
                                                                     f" WHERE {w}")))
                mids.update(f"{subject_id}-{s}" for s in ("i", "t1", "t2", "t3", "p", "s", "g", "a"))
            where = subject_where(table, columns, subject_type, [subject_id], sorted(mids))
            if where is None:
                continue
            [[n]] = yield self.select(f"SELECT count() FROM `{self.db}`.`{table}` WHERE {where}")
            found[table] = int(n)
        return found

    @defer.inlineCallbacks
    def test_suppress_with_delete_erases_every_table(self):
        dest = yield self.destination(max_event_tables=2)
        yield self.write(dest, subject_events("u1", "anon-1", "u1") + subject_events("u2", "anon-2", "u2"))
        before = yield self.subject_rows("USER_ID", "u1")
        other_before = yield self.subject_rows("USER_ID", "u2")
        for table in ("tracks", "identifies", "users", "pages", "screens", "groups", "aliases", "order_done",
                      "signed_up", "rudder_discards"):
            self.assertGreater(before.get(table, 0), 0, (table, before))
        [[discards]] = yield self.select(f"SELECT count() FROM `{self.db}`.rudder_discards WHERE "
                                         f"row_id = 'u1-t1' OR position(column_value, '\"u1\"') > 0")
        self.assertGreaterEqual(int(discards), 2)     # a value discard and a whole-row discard

        service = yield self.service(dest)
        doc = yield service.file({"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID",
                                  "subjectIds": ["u1"]}, "admin")
        doc = yield self.finished(service, doc["id"])
        self.assertEqual(doc["status"], "FINISHED", doc)
        after = yield self.subject_rows("USER_ID", "u1")
        self.assertEqual({t: n for t, n in after.items() if n}, {})
        for sql in ("tracks WHERE user_id = 'u1'", "users WHERE id = 'u1'", "aliases WHERE previous_id = 'u1'",
                    "order_done WHERE user_id = 'u1'", "rudder_discards WHERE row_id LIKE 'u1-%'",
                    "rudder_discards WHERE column_value LIKE '%u1%'"):
            self.assertEqual((yield self.select(f"SELECT count() FROM `{self.db}`.{sql}")), [["0"]], sql)
        self.assertEqual((yield self.subject_rows("USER_ID", "u2")), other_before)
        tables = {t["table"]: t for t in doc["tables"]}
        self.assertEqual(tables["tracks"]["rowsBefore"], before["tracks"])
        self.assertTrue(all(t["mutationDone"] and t["rowsAfter"] == 0 for t in doc["tables"]), doc)
        # the shared table holds keyed hashes, never the id
        text = yield self.query(f"SELECT * FROM `{self.db}`.{REGULATIONS_TABLE} FORMAT TabSeparated")
        self.assertIn(subject_key(SECRET, "USER_ID", "u1").encode(), text)
        self.assertNotIn(b"u1", text.replace(subject_key(SECRET, "USER_ID", "u1").encode(), b""))

        # later events of u1 are answered and not stored; UNSUPPRESS restores collection
        spool = FakeSpool()
        forwarder = Forwarder([dest], spool=spool, stats=Stats(up_since=0), reactor=reactor,
                              delivery_filter=DeliveryFilter(service.suppressed, SECRET))
        forwarder.startService()
        self.addCleanup(lambda: forwarder.running and forwarder.stopService())
        yield forwarder.accept("k", "r1", [ev("track", "late-1", userId="u1", event="Later"),
                                           ev("track", "late-2", userId="u2", event="Later")])
        yield service.file({"regulationType": "UNSUPPRESS", "subjectType": "USER_ID", "subjectIds": ["u1"]},
                           "admin")
        yield forwarder.accept("k", "r2", [ev("track", "late-3", userId="u1", event="Later")])
        yield wait_for(lambda: forwarder.lanes[dest.name].in_flight == 0 and not forwarder.queue.pending)
        yield dest.flush()
        rows = yield self.select(f"SELECT id FROM `{self.db}`.tracks FINAL WHERE event = 'Later' ORDER BY id")
        self.assertEqual(rows, [["late-2"], ["late-3"]])

    @defer.inlineCallbacks
    def test_anonymous_id_and_delete_only(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("track", "x1", userId=None, anonymousId="anon-9", event="E"),
                                ev("alias", "x2", userId="u9", anonymousId="anon-9", previousId="anon-9"),
                                ev("page", "x3", userId=None, anonymousId="anon-8")])
        service = yield self.service(dest)
        doc = yield service.file({"regulationType": "DELETE_ONLY", "subjectType": "ANONYMOUS_ID",
                                  "subjectIds": ["anon-9"]}, None)
        doc = yield self.finished(service, doc["id"])
        self.assertEqual(doc["status"], "FINISHED", doc)
        rows = yield self.select(f"SELECT id FROM `{self.db}`.tracks")
        self.assertEqual(rows, [])
        self.assertEqual((yield self.select(f"SELECT id FROM `{self.db}`.aliases")), [])
        self.assertEqual((yield self.select(f"SELECT id FROM `{self.db}`.pages FINAL")), [["x3"]])
        self.assertEqual(service.suppressed(), frozenset())   # DELETE_ONLY suppresses only while it runs

    @defer.inlineCallbacks
    def test_suppression_reaches_a_second_instance_and_worker(self):
        dest_a = yield self.destination()
        dest_b = yield self.destination()
        shared = tempfile.mkdtemp(prefix="stilgar-reg-")
        a = yield self.service(dest_a, directory=shared)
        worker = yield self.service(dest_a, directory=shared)          # a second worker, same journal
        b = yield self.service(dest_b)                                 # another instance, same ClickHouse
        key = subject_key(SECRET, "USER_ID", "u7")
        yield a.file({"regulationType": "SUPPRESS", "subjectType": "USER_ID", "subjectIds": ["u7"]}, "admin")
        self.assertIn(key, a.suppressed())
        yield wait_for(lambda: key in b.suppressed() and key in worker.suppressed(), timeout=10)
        yield a.file({"regulationType": "UNSUPPRESS", "subjectType": "USER_ID", "subjectIds": ["u7"]}, "admin")
        yield wait_for(lambda: key not in b.suppressed(), timeout=10)


class ProcessBase(IntegrationBase):
    """A real twistd child writing to its own database."""

    @defer.inlineCallbacks
    def file_over_http(self, base, subject_id):
        status, content, _ = yield fetch("POST", base + "/v1/regulations", data=json.dumps({
            "regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID",
            "subjectIds": [subject_id]}).encode(), headers={b"Content-Type": [b"application/json"]})
        self.assertEqual(status, 202, content)
        return json.loads(content)["id"]

    def regulation_when(self, base, rid, condition, timeout=60):
        """The regulation's document once ``condition(doc)`` holds (polled over HTTP)."""

        @defer.inlineCallbacks
        def check():
            _, content, _ = yield fetch("GET", f"{base}/v1/regulations/{rid}")
            doc = json.loads(content)
            return condition(doc) and doc
        return wait_for(check, timeout=timeout, interval=0.2)

    def write_config(self, directory, port, settle):
        path = os.path.join(directory, "stilgar.yml")
        with open(path, "w") as f:
            f.write(json.dumps({
                "server": {"ip": "127.0.0.1", "port": port},
                "spool": {"path": os.path.join(directory, "spool")},
                "privacy": {"regulations_secret": SECRET.decode(), "regulations_sync_interval": "1s",
                            "regulations_settle": settle},
                "destinations": [{"type": "clickhouse", "name": "ch", "write_keys": ["wk"],
                                  "url": self.server.url, "user": self.server.user,
                                  "password": self.server.password, "database": self.db,
                                  "cache_idle_timeout": "1s"}],
            }))
        return path



class KillTests(ProcessBase):
    """A regulation interrupted by kill -9 finishes after the restart (a real twistd child)."""

    timeout = 180

    @defer.inlineCallbacks
    def test_kill_9_mid_regulation(self):
        directory = tempfile.mkdtemp(prefix="stilgar-reg-kill-")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = self.write_config(directory, port, "60s")
        args = ["-n", "--pidfile=", "stilgar", "--config", config]
        first = StilgarProcess(args, cwd=directory)
        yield first.start()
        self.addCleanup(lambda: first.kill())
        batch = {"batch": [{"type": "track", "event": "Bought", "userId": u, "messageId": f"{u}-{i}"}
                           for u in ("u1", "u2") for i in range(3)]}
        status, _, _ = yield fetch("POST", base + "/v1/batch", data=json.dumps(batch).encode(), headers={
            b"Authorization": [b"Basic " + base64.b64encode(b"wk:")], b"Content-Type": [b"application/json"]})
        self.assertEqual(status, 200)

        @defer.inlineCallbacks
        def stored():
            try:
                rows = yield self.select(f"SELECT count() FROM `{self.db}`.bought FINAL")
            except Exception:      # not created yet
                return False
            return rows == [["6"]]
        yield wait_for(stored, timeout=30, interval=0.2)
        rid = yield self.file_over_http(base, "u1")
        doc = yield self.regulation_when(base, rid, lambda doc: doc["tables"] and all(
            t["mutationDone"] for t in doc["tables"]), timeout=30)
        self.assertEqual(doc["status"], "RUNNING")        # now in its 60 s settle
        yield first.kill()
        # a row of u1 written by another instance that had not learnt the suppression yet
        yield self.query(f"INSERT INTO `{self.db}`.bought (id, user_id, received_at, event) VALUES "
                         f"('u1-late', 'u1', now(), 'Bought')")

        config = self.write_config(directory, port, "1s")
        second = StilgarProcess(args, cwd=directory)
        yield second.start()
        self.addCleanup(lambda: second.stop())

        doc = yield self.regulation_when(base, rid, lambda doc: doc["status"] != "RUNNING")
        self.assertEqual(doc["status"], "FINISHED", doc)
        rows = yield self.select(f"SELECT user_id, count() FROM `{self.db}`.bought FINAL GROUP BY user_id")
        self.assertEqual(rows, [["u2", "3"]])
        self.assertIn("resumed after a restart", second.output())
        self.assertFalse(os.listdir(os.path.join(directory, "spool", "regulations", "pending")))


class ModernErasureTests(unittest.TestCase):
    """The erasure statements on a modern engine (chdb 26.9: AggregatingMergeTree users, DateTime64)."""

    def test_erase_on_chdb(self):
        db = "stilgar_regulations_chdb"
        c = fresh_chdb_database(self, db)
        events = []
        for user in ("u1", "u2"):
            for kind, extra in (("identify", {}), ("track", {"event": "Order Done", "properties": {"id": "x"}}),
                                ("page", {}), ("alias", {"previousId": user, "userId": user + "-new"})):
                fields = {"userId": user, "anonymousId": "a-" + user, "messageId": f"{user}-{kind}"}
                fields.update(extra)
                events.append(unit_event(kind, **fields))
        write(db, MODERN, events)

        erasable = ClickHouseErasure(ChdbDestination(c, db))
        items = self.successResultOf(erasable.plan("USER_ID", ["u1"]))
        tables = [i.table for i in items]
        self.assertEqual(tables[0], "rudder_discards")     # first: found through the message ids
        self.assertEqual(set(tables), {"rudder_discards", "identifies", "users", "tracks", "order_done", "pages",
                                       "aliases"})
        counts = {i.table: self.successResultOf(erasable.count(i)) for i in items}
        self.assertTrue(all(counts.values()), counts)
        for item in items:
            self.successResultOf(erasable.delete(item))
        for item in items:
            self.assertTrue(self.successResultOf(erasable.deleted(item)))
            self.assertEqual(self.successResultOf(erasable.count(item)), 0, item.table)
        left = c.query(f"SELECT count() FROM {db}.tracks WHERE user_id = 'u2'", "TabSeparated").bytes()
        self.assertEqual(left.strip(), b"1")
        rows = c.query(f"SELECT id FROM {db}.users ORDER BY id", "TabSeparated").bytes().split()
        self.assertEqual(rows, [b"u2"])


class SdkErasureTests(ProcessBase):
    """End to end: the real rudder-sdk-python sends identify/track/page for two users, then one is erased."""

    timeout = 240

    def sdk_calls(self, round_):
        calls = []
        for user in ("sdk-u1", "sdk-u2"):
            calls += [
                {"method": "identify", "kwargs": {"user_id": user, "traits": {"email": f"{user}@example.com"},
                                                  "message_id": f"{user}-i{round_}"}},
                {"method": "track", "kwargs": {"user_id": user, "event": "Checkout", "properties": {"total": 5},
                                               "message_id": f"{user}-t{round_}"}},
                {"method": "page", "kwargs": {"user_id": user, "name": "Home", "message_id": f"{user}-p{round_}"}},
            ]
        return [{"writeKey": "wk", "gzip": True, "maxRetries": 2, "calls": calls}]

    @defer.inlineCallbacks
    def count_by_user(self):
        found = {}
        for table, column in (("identifies", "user_id"), ("users", "id"), ("tracks", "user_id"),
                              ("checkout", "user_id"), ("pages", "user_id")):
            try:
                rows = yield self.select(f"SELECT {column}, count() FROM `{self.db}`.{table} FINAL"
                                         f" GROUP BY {column}")
            except Exception:
                rows = []
            for user, n in rows:
                found[(table, user)] = int(n)
        return found

    @defer.inlineCallbacks
    def test_python_sdk_then_erasure(self):
        need_python_sdk()
        directory = tempfile.mkdtemp(prefix="stilgar-reg-sdk-")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = self.write_config(directory, port, "1s")
        proc = StilgarProcess(["-n", "--pidfile=", "stilgar", "--config", config], cwd=directory)
        yield proc.start()
        self.addCleanup(proc.stop)
        result = yield python_sdk(base, self.sdk_calls(1))
        self.assertEqual(result["errors"], [])
        expected = {(t, u): 1 for t in ("identifies", "users", "tracks", "checkout", "pages")
                    for u in ("sdk-u1", "sdk-u2")}

        @defer.inlineCallbacks
        def arrived(want):
            got = yield self.count_by_user()
            return got == want
        yield wait_for(lambda: arrived(expected), timeout=30, interval=0.3)

        rid = yield self.file_over_http(base, "sdk-u1")
        doc = yield self.regulation_when(base, rid, lambda doc: doc["status"] != "RUNNING")
        self.assertEqual(doc["status"], "FINISHED", doc)
        only_u2 = {k: n for k, n in expected.items() if k[1] == "sdk-u2"}
        self.assertEqual((yield self.count_by_user()), only_u2)

        # the SDK keeps sending for both: answered 200, only sdk-u2 is stored
        result = yield python_sdk(base, self.sdk_calls(2))
        self.assertEqual(result["errors"], [])
        yield wait_for(lambda: arrived({k: 2 if k[0] != "users" else 1 for k in only_u2}), timeout=30,
                       interval=0.3)
        _, metrics_page, _ = yield fetch("GET", base + "/metrics")
        self.assertIn(b'stilgar_events_suppressed_total{stage="door"} 3.0', metrics_page)


class CommandTests(unittest.TestCase):
    """The functions a ``stilgar regulations`` command calls, against a real listening app."""

    def test_against_a_listening_collector(self):
        spool = tempfile.mkdtemp(prefix="stilgar-reg-")
        app, service, _ = regulations_app(directory=os.path.join(spool, "regulations"), admin=True)
        port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"

        def blocking():
            filed = commands.file_regulation(base, "SUPPRESS", "USER_ID", ["cli-user"], *ADMIN)
            listed = commands.list_regulations(base, *ADMIN)
            shown = commands.show_regulation(base, filed["id"], *ADMIN)
            try:
                commands.list_regulations(base, "admin", "wrong")
            except commands.AdminError as e:
                refused = e.status
            try:
                commands.file_regulation(base, "ERASE", "USER_ID", ["x"])
            except BadRegulation:
                bad = True
            return filed, listed, shown, refused, bad

        def check(result):
            filed, listed, shown, refused, bad = result
            self.assertEqual(filed["status"], "FINISHED")
            self.assertEqual([r["id"] for r in listed], [filed["id"]])
            self.assertEqual(shown["regulationType"], "SUPPRESS")
            self.assertEqual(refused, 403)
            self.assertTrue(bad)
            self.assertEqual([r["id"] for r in commands.journal_regulations(spool)], [filed["id"]])
        return threads.deferToThread(blocking).addCallback(check)


class OrphanTests(unittest.TestCase):
    def test_pending_file_without_a_filed_record_is_removed_at_start(self):
        directory = tempfile.mkdtemp(prefix="stilgar-reg-")
        j = journal(directory)
        j.open()
        self.successResultOf(j.save_subjects("reg-0000-crashed", ["u1"]))   # then a crash before "filed"
        clock = task.Clock()
        service = RegulationService(journal(directory, clock), SECRET, [], clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.journal.pending_ids(), [])


class JournalFailureTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_unwritable_journal_is_503_and_nothing_changes(self):
        app, service, _ = regulations_app()

        def broken(line):
            raise OSError(28, "No space left on device")
        service.journal._write = broken
        response = yield stub(app).post("http://stilgar.test/v1/regulations", data=body(), headers={
            b"Content-Type": [b"application/json"], b"Authorization": [admin_header()]})
        status, content, headers = yield answer(response)
        self.assertEqual((status, headers.getRawHeaders(b"retry-after")), (503, [b"30"]))
        self.assertEqual(content, b"the regulation could not be recorded; retry later\n")
        self.assertEqual(service.suppressed(), frozenset())
        self.assertEqual(self.successResultOf(service.newest_first()), [])
        self.flushLoggedErrors()
