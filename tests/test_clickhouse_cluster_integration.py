"""The ClickHouse destination against a real cluster: ZooKeeper and four
ClickHouse 18.16 nodes, 2 shards x 2 replicas (tests/clusterserver.py).

Each test has its own database; nodes and ZooKeeper killed by a test are
started again in its tearDown. The reactor is real."""

import os
import re
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from stilgar.destinations.clickhouse import ClickHouseType

from . import clusterserver
from .processes import wait_for
from .test_clickhouse_integration import DestinationHelpers
from .test_clickhouse_units import event

RECV = "2024-05-06T07:08:09.123456Z"


def ev(mid, kind="track", **kw):
    kw.setdefault("receivedAt", RECV)
    if kind == "track":
        kw.setdefault("event", "Order Completed")
    return event(kind, messageId=mid, **kw)


class ClusterBase(DestinationHelpers, unittest.TestCase):
    timeout = 180

    def setUp(self):
        self.cluster = clusterserver.cluster()
        name = re.sub(r"\W", "_", self.id().split(".")[-1])
        self.db = f"stilgar_cl_{os.getpid()}_{name}"[:60]
        self.dests = []

    @defer.inlineCallbacks
    def tearDown(self):
        for d in self.dests:
            yield d.stop()
        yield threads.deferToThread(self._restore)

    def _restore(self):
        self.cluster.start_zookeeper()
        for n in (1, 2, 3, 4):
            self.cluster.start_node(n)
        for n in (1, 2, 3, 4):
            for _ in range(100):      # a node restarted just now may not see ZooKeeper yet
                try:
                    self.cluster.query(f"DROP DATABASE IF EXISTS `{self.db}`", node=n)
                    break
                except RuntimeError:
                    time.sleep(0.2)      # a thread of the tearDown, not the reactor

    def settings(self, **kw):
        block = {"hosts": self.cluster.hosts, "cluster": self.cluster.name, "user": self.cluster.user,
                 "password": self.cluster.password, "database": self.db, "cache_idle_timeout": "1s",
                 "query_timeout": "5s", "alter_timeout": "6s"}
        block.update(kw)
        return ClickHouseType.parse_settings(block, "d", lambda w: None)

    def query(self, sql, node=1):
        return threads.deferToThread(self.cluster.query, sql, node)

    @defer.inlineCallbacks
    def rows(self, sql, node=1):
        text = yield self.query(sql + " FORMAT TabSeparated", node)
        return [line.split("\t") for line in text.splitlines()]

    @defer.inlineCallbacks
    def count_on_every_replica(self, table, expected):
        """Wait until every node's local table holds ``expected`` distinct ids
        in total per shard pair, i.e. each replica of a shard has its shard's rows."""
        @defer.inlineCallbacks
        def replicated():
            counts = []
            for n in (1, 2, 3, 4):
                [[c]] = yield self.rows(f"SELECT uniqExact(id) FROM `{self.db}`.`{table}_local`", n)
                counts.append(int(c))
            return counts[0] == counts[1] and counts[2] == counts[3] and counts[0] + counts[2] == expected
        yield wait_for(replicated, timeout=60, interval=0.5)


class SchemaTests(ClusterBase):
    @defer.inlineCallbacks
    def test_every_table_local_and_distributed_on_every_node(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("t1", properties={"price": 9.5}), ev("i1", kind="identify"),
                                ev("p1", kind="page"), ev("s1", kind="screen"),
                                ev("g1", kind="group", groupId="acme"), ev("a1", kind="alias", previousId="x")])
        expected = {"tracks", "identifies", "users", "pages", "screens", "groups", "aliases", "rudder_discards",
                    "order_completed"}
        for n in (1, 2, 3, 4):
            tables = dict((yield self.rows(f"SELECT name, engine FROM system.tables WHERE database = '{self.db}'", n)))
            for t in expected:
                self.assertEqual(tables.get(t), "Distributed", (n, t))
                self.assertTrue(tables.get(t + "_local", "").startswith("Replicated"), (n, t, tables))
        yield self.count_on_every_replica("order_completed", 1)
        self.assertEqual(dest._schema.layout.cluster, "stilgar")

    @defer.inlineCallbacks
    def test_widening_and_new_columns_on_every_node(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("t1", properties={"qty": 2})])
        yield self.write(dest, [ev("t2", properties={"qty": "two", "colour": "red"})])
        for n in (1, 2, 3, 4):
            for table in ("order_completed", "order_completed_local"):
                cols = dict((yield self.rows(f"SELECT name, type FROM system.columns WHERE database = '{self.db}' "
                                             f"AND table = '{table}'", n)))
                self.assertEqual((cols.get("qty"), cols.get("colour")), ("Nullable(String)", "Nullable(String)"),
                                 (n, table))
        yield self.count_on_every_replica("order_completed", 2)
        got = yield self.rows(f"SELECT id, qty, colour FROM `{self.db}`.order_completed ORDER BY id", 4)
        self.assertEqual(got, [["t1", "2", "\\N"], ["t2", "two", "red"]])


class ExactlyOnceTests(ClusterBase):
    @defer.inlineCallbacks
    def test_counts_through_the_distributed_table(self):
        dest = yield self.destination()
        events = [ev(f"m{i}") for i in range(300)]
        yield self.write(dest, events)
        yield self.write(dest, events[:100])      # a resend: same ids, same receivedAt
        yield self.count_on_every_replica("tracks", 300)
        [[c]] = yield self.rows(f"SELECT count() FROM `{self.db}`.tracks FINAL", 2)
        self.assertEqual(c, "300")
        [[c]] = yield self.rows(f"SELECT count() FROM (SELECT id FROM `{self.db}`.tracks GROUP BY id)", 3)
        self.assertEqual(c, "300")
        [[s1]] = yield self.rows(f"SELECT uniqExact(id) FROM `{self.db}`.tracks_local", 1)
        [[s2]] = yield self.rows(f"SELECT uniqExact(id) FROM `{self.db}`.tracks_local", 3)
        self.assertTrue(int(s1) > 50 and int(s2) > 50, (s1, s2))    # both shards hold rows


class FaultTests(ClusterBase):
    @defer.inlineCallbacks
    def test_ddl_while_a_replica_is_down_completes_when_it_returns(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("t1", properties={"a": 1})])
        yield threads.deferToThread(self.cluster.kill_node, 2)
        yield self.write(dest, [ev("t2", properties={"a": 2, "late": "x"})])
        yield threads.deferToThread(self.cluster.start_node, 2)

        @defer.inlineCallbacks
        def on_node_2():
            try:
                names = yield self.rows(f"SELECT table FROM system.columns WHERE database = '{self.db}' "
                                        f"AND name = 'late'", 2)
            except RuntimeError:
                return False
            return sorted(r[0] for r in names) == ["order_completed", "order_completed_local"]
        yield wait_for(on_node_2, timeout=60, interval=0.5)
        yield self.count_on_every_replica("order_completed", 2)

    @defer.inlineCallbacks
    def test_replica_killed_mid_load(self):
        dest = yield self.destination(cache_threshold=50)
        writes = []
        for i in range(10):
            writes.append(dest.write([ev(f"k{i}-{j}") for j in range(50)]))
            if i == 3:
                yield threads.deferToThread(self.cluster.kill_node, 3)
        yield dest.flush()
        yield defer.gatherResults(writes)
        yield threads.deferToThread(self.cluster.start_node, 3)
        yield self.count_on_every_replica("tracks", 500)
        [[c]] = yield self.rows(f"SELECT count() FROM `{self.db}`.tracks FINAL", 1)
        self.assertEqual(c, "500")

    @defer.inlineCallbacks
    def test_zookeeper_down_mid_load(self):
        """ZooKeeper killed mid-load: inserts into replicated tables fail
        meanwhile; the rows wait and every one lands once it is back. (DDL
        during such an outage is not part of this test: on 18.16 the servers'
        DDL queue stays stuck after their ZooKeeper sessions expired, see
        doc/scaling.md.)"""
        dest = yield self.destination(cache_threshold=50)
        yield self.write(dest, [ev("z0", properties={"n": 0})])
        yield threads.deferToThread(self.cluster.stop_zookeeper)
        d = dest.write([ev(f"z{i}", properties={"n": i}) for i in range(1, 200)])
        dest.flush()
        yield wait_for(lambda: not dest.health()["up"], timeout=30, interval=0.1)
        self.assertNoResult(d)
        yield threads.deferToThread(self.cluster.start_zookeeper)
        yield d
        yield self.count_on_every_replica("order_completed", 200)
        [[c]] = yield self.rows(f"SELECT count() FROM `{self.db}`.order_completed FINAL", 4)
        self.assertEqual(c, "200")
        [[c]] = yield self.rows(f"SELECT count() FROM `{self.db}`.order_completed WHERE n = 199", 2)
        self.assertEqual(c, "1")

    @defer.inlineCallbacks
    def test_the_node_in_use_killed(self):
        dest = yield self.destination()
        yield self.write(dest, [ev("n0")])
        nodes = dest._client.nodes
        self.assertEqual(nodes.status()[0]["state"], "up")
        yield threads.deferToThread(self.cluster.kill_node, 1)
        yield self.write(dest, [ev(f"n{i}") for i in range(1, 100)])
        states = [n["state"] for n in nodes.status()]
        self.assertEqual(states[0], "down")
        self.assertIn("up", states[1:])
        yield threads.deferToThread(self.cluster.start_node, 1)
        yield self.count_on_every_replica("tracks", 100)
        yield wait_for(lambda: nodes.status()[0]["state"] == "up", timeout=30, interval=0.5)


class ScaleOutTests(ClusterBase):
    """Three collectors behind haproxy into the cluster, one killed with kill -9 mid-load."""
    timeout = 300

    def setUp(self):
        super().setUp()
        from .scaleout import HAPROXY
        if not os.path.exists(HAPROXY):
            raise unittest.SkipTest("haproxy is not installed (scripts/run-tests installs it)")

    def check(self, outcome, in_flight):
        """Nothing acknowledged is missing. Copies come only from requests in flight at the
        kill -9 (spooled, answer not sent), which the client resent through the load balancer
        to another collector: a new ``received_at``, so FINAL keeps both (doc/scaling.md,
        "Reading exactly"). ``in_flight``: the most events the client has in flight at once."""
        self.assertEqual(outcome.missing, 0, outcome.line())
        self.assertLessEqual(outcome.duplicates, in_flight, outcome.line())
        self.assertGreater(outcome.acknowledged, 0)

    @defer.inlineCallbacks
    def test_load_client(self):
        from .scaleout import scaleout_scenario
        outcome = yield scaleout_scenario(self.mktemp(), self.cluster, total=3000)
        self.assertEqual(outcome.acknowledged, 3000, outcome.line())
        self.check(outcome, in_flight=4 * 50)     # tests/faults.Load: 4 requests of 50 at once

    @defer.inlineCallbacks
    def test_python_sdk(self):
        from .scaleout import scaleout_scenario
        from .test_sdks import need_python_sdk, python_sdk

        need_python_sdk()

        @defer.inlineCallbacks
        def sdk(base, events):
            calls = [{"method": "track", "kwargs": {
                "anonymous_id": e["anonymousId"], "event": e["event"], "properties": {"n": e["properties"]["n"]},
                "message_id": e["messageId"]}} for e in events]
            out = yield python_sdk(base, [{"writeKey": "k", "gzip": True, "maxRetries": 10, "calls": calls}],
                                   via_file=os.path.abspath(self.mktemp()))
            failed = {m for err in out["errors"] for m in err["messageIds"]}
            return {q["messageId"] for q in out["queued"] if q["ok"]} - failed
        outcome = yield scaleout_scenario(self.mktemp(), self.cluster, total=5000, sdk=sdk)
        self.check(outcome, in_flight=100)        # the Python SDK: one request of 100 at a time


class ErasureTests(ClusterBase):
    """Regulations in cluster mode (doc/privacy.md): mutations on every shard's local
    tables ON CLUSTER, followed on every node; the shared suppression table replicated."""

    @defer.inlineCallbacks
    def test_erase_a_user_on_every_shard_and_replica(self):
        from stilgar.regulations.clickhouse import ClickHouseErasure
        dest = yield self.destination()
        events = []
        for user in ("u1", "u2"):
            anon = "a" + user[1:]
            for i in range(20):
                events.append(ev(f"{user}-t{i}", userId=user, anonymousId=anon))
            events += [ev(f"{user}-i", kind="identify", userId=user, anonymousId=anon),
                       ev(f"{user}-p", kind="page", userId=user, anonymousId=anon)]
        yield self.write(dest, events)
        yield self.count_on_every_replica("tracks", 40)
        yield self.count_on_every_replica("order_completed", 40)
        erasable = ClickHouseErasure(dest)
        self.assertEqual(erasable.cluster, "stilgar")
        items = yield erasable.plan("USER_ID", ["u1"])
        self.assertIn("order_completed", {i.table for i in items})
        found = 0
        for item in items:
            found += yield erasable.count(item)
            yield erasable.delete(item)
        self.assertGreaterEqual(found, 42)          # 20 tracks + 20 order_completed + identify + page (+ users)

        @defer.inlineCallbacks
        def all_done():
            for item in items:
                if not (yield erasable.deleted(item)):
                    return False
            return True
        yield wait_for(all_done, timeout=60, interval=0.5)
        for n in (1, 2, 3, 4):
            for table in ("tracks_local", "order_completed_local", "identifies_local", "pages_local"):
                [[left]] = yield self.rows(f"SELECT count() FROM `{self.db}`.`{table}` WHERE user_id = 'u1'", n)
                self.assertEqual(left, "0", (n, table))
        [[kept]] = yield self.rows(f"SELECT count() FROM `{self.db}`.tracks FINAL WHERE user_id = 'u2'", 2)
        self.assertEqual(kept, "20")

    @defer.inlineCallbacks
    def test_suppressions_are_shared_through_the_cluster(self):
        from stilgar.regulations.clickhouse import ClickHouseErasure
        writer = yield self.destination(hosts=self.cluster.hosts[:1])
        reader = yield self.destination(hosts=self.cluster.hosts[3:])     # another node, another shard
        yield ClickHouseErasure(writer).publish([(1_000, "reg-1", "SUPPRESS", "k" * 64, "SUPPRESS", "USER_ID", "ops")])
        rows = yield ClickHouseErasure(reader).fetch()
        self.assertEqual(rows, [(1_000, "reg-1", "SUPPRESS", "k" * 64)])
