"""Several ClickHouse nodes and cluster mode, without sockets: node states
with a Clock, failover through a fake HTTP client, settings, and the DDL
layout (replicated local tables + Distributed tables)."""

from twisted.internet import defer, error as ierror, task
from twisted.trial import unittest

from stilgar.backoff import Backoff
from stilgar.destinations.clickhouse.capabilities import OLD
from stilgar.destinations.clickhouse.client import Client, ClickHouseError, TransportError, is_node_failure
from stilgar.destinations.clickhouse.layout import (
    ClusterLayout, DDLFailed, Statement, check_ddl_answer, parse_topology, topology_query)
from stilgar.destinations.clickhouse.nodes import NodeSet, NodeState
from stilgar.destinations.clickhouse.schema import _engine
from stilgar.units import ConfigError

from .test_clickhouse_destination import settings


class NodeSetTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.nodes = NodeSet(["http://a", "http://b", "http://c"], self.clock)
        for n in self.nodes.nodes:
            n.backoff = Backoff(rand=lambda: 0.5)

    def urls(self):
        return [n.url for n in self.nodes.candidates()]

    def test_sticks_to_the_current_node(self):
        self.assertEqual(self.urls(), ["http://a", "http://b", "http://c"])
        self.nodes.succeeded(self.nodes.nodes[0])
        self.assertEqual(self.nodes.current.url, "http://a")

    def test_a_failed_node_is_skipped_until_its_retry_time(self):
        a = self.nodes.nodes[0]
        self.nodes.failed(a, TransportError("refused"))
        self.assertIs(a.state, NodeState.DOWN)
        self.assertEqual(self.nodes.current.url, "http://b")
        self.assertEqual(self.urls(), ["http://b", "http://c"])
        self.clock.advance(1.0)
        self.assertEqual(self.urls(), ["http://b", "http://c", "http://a"])
        self.nodes.failed(a, TransportError("refused"))      # second failure: 2 s
        self.clock.advance(1.9)
        self.assertNotIn("http://a", self.urls())
        self.clock.advance(0.1)
        self.assertIn("http://a", self.urls())
        self.nodes.succeeded(a)
        self.assertIs(a.state, NodeState.UP)
        self.assertEqual(a.backoff.failures, 0)

    def test_all_down_still_offers_the_longest_waiting_node(self):
        for n in self.nodes.nodes:
            self.nodes.failed(n, TransportError("refused"))
            self.clock.advance(0.1)
        self.assertEqual(self.urls(), ["http://a"])
        self.assertAlmostEqual(self.nodes.next_retry(), 0.7)
        self.assertEqual([s["state"] for s in self.nodes.status()], ["down"] * 3)
        self.assertEqual(self.nodes.status()[0]["error"], "refused")

    def test_recovery_of_a_node_makes_it_current_when_the_current_is_down(self):
        a, b, c = self.nodes.nodes
        self.nodes.failed(a, TransportError("x"))
        self.nodes.failed(b, TransportError("x"))
        self.assertIs(self.nodes.current, c)
        self.nodes.failed(c, TransportError("x"))
        self.clock.advance(1.0)
        self.nodes.succeeded(b)
        self.assertIs(self.nodes.current, b)


class NodeFailureTests(unittest.TestCase):
    def test_classification(self):
        self.assertTrue(is_node_failure(TransportError("refused")))
        self.assertTrue(is_node_failure(ClickHouseError(None, "Bad Gateway", 502)))
        self.assertTrue(is_node_failure(ClickHouseError(242, "Table is in readonly mode", 500)))
        self.assertFalse(is_node_failure(ClickHouseError(60, "Table doesn't exist", 404)))
        self.assertFalse(is_node_failure(ClickHouseError(27, "Cannot parse input", 500)))
        self.assertFalse(is_node_failure(ClickHouseError(None, "Not Found", 404)))


class _Response:
    def __init__(self, code, body):
        self.code = code
        self._body = body
        from twisted.web.http_headers import Headers
        self.headers = Headers()


class ScriptedHTTP:
    """An HTTP client answering per URL: a list of (status, body) or an exception."""

    def __init__(self, script):
        self.script = script
        self.posts = []

    def post(self, url, data=None, headers=None):
        host = url.split("/")[2]
        self.posts.append(host)
        answer = self.script[host]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        status, body = answer
        return defer.succeed(_Response(status, body))


class FailoverTests(unittest.TestCase):
    def client(self, script):
        self.clock = task.Clock()
        self.http = ScriptedHTTP(script)
        self.patch(__import__("treq"), "content", lambda r: defer.succeed(r._body))
        return Client(self.clock, settings(host=None, hosts=["a:8123", "b:8123"], compression=False),
                      http=self.http)

    def test_moves_to_the_next_node_on_connection_refused(self):
        c = self.client({"a:8123": ierror.ConnectionRefusedError(), "b:8123": (200, b"1\n")})
        self.assertEqual(self.successResultOf(c.query("SELECT 1")), b"1\n")
        self.assertEqual(self.http.posts, ["a:8123", "b:8123"])
        self.assertEqual(c.nodes.current.url, "http://b:8123")
        self.successResultOf(c.query("SELECT 1"))
        self.assertEqual(self.http.posts[-1], "b:8123")     # stays on b

    def test_a_statement_error_does_not_fail_over(self):
        c = self.client({"a:8123": (404, b"Code: 60, e.displayText() = DB::Exception: no table\n"),
                         "b:8123": (200, b"")})
        self.failureResultOf(c.query("SELECT * FROM t"), ClickHouseError)
        self.assertEqual(self.http.posts, ["a:8123"])
        self.assertIs(c.nodes.nodes[0].state, NodeState.UP)

    def test_every_node_down_is_a_transport_error(self):
        c = self.client({"a:8123": ierror.ConnectionRefusedError(), "b:8123": (503, b"overloaded")})
        f = self.failureResultOf(c.query("SELECT 1"))
        self.assertIsInstance(f.value, ClickHouseError)
        self.assertEqual(self.http.posts, ["a:8123", "b:8123"])
        self.assertEqual([n["state"] for n in c.nodes.status()], ["down", "down"])

    def test_one_node_on_request(self):
        c = self.client({"a:8123": (200, b""), "b:8123": (200, b"ok")})
        self.assertEqual(self.successResultOf(c.query("ALTER", node=c.nodes.nodes[1])), b"ok")
        self.assertEqual(self.http.posts, ["b:8123"])


class SettingsTests(unittest.TestCase):
    def test_hosts(self):
        s = settings(host=None, hosts=["10.0.0.1:8123", "ch2", "[::1]:9000"])
        self.assertEqual(s.urls, ("http://10.0.0.1:8123", "http://ch2:8123", "http://[::1]:9000"))
        self.assertEqual(s.url, "http://10.0.0.1:8123")

    def test_urls(self):
        s = settings(host=None, urls=["https://a:8443/", "http://b:8123"])
        self.assertEqual(s.urls, ("https://a:8443", "http://b:8123"))

    def test_single_server_has_one_url(self):
        self.assertEqual(settings().urls, ("http://ch:8123",))

    def test_errors(self):
        for block, where in [({"hosts": ["a"], "urls": ["http://b"]}, "urls"),
                             ({"hosts": ["a"], "host": "b"}, "host"),
                             ({"hosts": []}, "hosts"),
                             ({"hosts": ["a", "a:8123"]}, "hosts"),
                             ({"urls": ["ftp://x"]}, "urls[0]"),
                             ({"hosts": ["a:99999"]}, "hosts[0]"),
                             ({"replica_path": "/clickhouse/tables/x"}, "replica_path")]:
            if "host" not in block and "replica_path" not in block:
                block = dict({"host": None}, **block)
            e = self.assertRaises(ConfigError, settings, **block)
            self.assertIn(f"d.{where}", str(e))

    def test_cluster_keys(self):
        s = settings(cluster="c", replicated=True, insert_quorum=2)
        self.assertEqual((s.cluster, s.replicated, s.insert_quorum), ("c", True, 2))
        self.assertIsNone(settings().replicated)


class TopologyTests(unittest.TestCase):
    def test_parse(self):
        self.assertIn("cluster = 'c'", topology_query("c"))
        t = parse_topology("c", b"1\t1\th1\t9000\n1\t2\th2\t9000\n2\t1\th3\t9000\n")
        self.assertEqual(t.shards, [1, 2])
        self.assertTrue(t.replicated)
        self.assertFalse(parse_topology("c", b"1\t1\th1\t9000\n2\t1\th3\t9000\n").replicated)
        self.assertEqual(parse_topology("c", b"").replicas, ())


class LayoutTests(unittest.TestCase):
    layout = ClusterLayout("stilgar")

    def test_replicated_engines(self):
        self.assertEqual(
            self.layout.engine(_engine("tracks", OLD), "db", "tracks"),
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/tracks_local', '{replica}') "
            "PARTITION BY toDate(`received_at`) ORDER BY (`received_at`, `id`)")
        self.assertEqual(
            self.layout.engine(_engine("users", OLD), "db", "users"),
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/users_local', '{replica}', "
            "`received_at`) ORDER BY (`id`)")
        plain = ClusterLayout("c", replicated=False)
        self.assertEqual(plain.engine(_engine("tracks", OLD), "db", "tracks"), _engine("tracks", OLD))

    def test_create_local_then_distributed(self):
        local, dist = self.layout.create_table("db", "rudder_discards", "(`row_id` String)",
                                               _engine("rudder_discards", OLD))
        self.assertTrue(local.sql.startswith(
            "CREATE TABLE IF NOT EXISTS `db`.`rudder_discards_local` ON CLUSTER `stilgar` (`row_id` String) "
            "ENGINE = ReplicatedReplacingMergeTree("))
        self.assertEqual(dist.sql, "CREATE TABLE IF NOT EXISTS `db`.`rudder_discards` ON CLUSTER `stilgar` AS "
                                   "`db`.`rudder_discards_local` ENGINE = Distributed(`stilgar`, `db`, "
                                   "`rudder_discards_local`, cityHash64(`row_id`))")
        self.assertFalse(local.each_node or dist.each_node)

    def test_alter_distributed_per_node_on_old_servers(self):
        self.assertEqual(self.layout.alter_table("db", "tracks", "ADD COLUMN `x` String"), [
            Statement("ALTER TABLE `db`.`tracks_local` ON CLUSTER `stilgar` ADD COLUMN `x` String", on_cluster=True),
            Statement("ALTER TABLE `db`.`tracks` ADD COLUMN `x` String", each_node=True)])
        modern = ClusterLayout("stilgar", distributed_alter_on_cluster=True)
        self.assertEqual(modern.alter_table("db", "tracks", "ADD COLUMN `x` String")[1],
                         Statement("ALTER TABLE `db`.`tracks` ON CLUSTER `stilgar` ADD COLUMN `x` String",
                                   on_cluster=True))

    def test_names(self):
        self.assertEqual(self.layout.local("tracks"), "tracks_local")
        self.assertEqual(self.layout.logical("tracks_local"), "tracks")
        self.assertIsNone(self.layout.logical("tracks"))

    def test_ddl_answer(self):
        check_ddl_answer(b"h1\t9000\t0\t\t1\t0\nh2\t9000\t0\t\t0\t0\n")
        e = self.assertRaises(DDLFailed, check_ddl_answer,
                              b"h1\t9000\t0\t\t1\t0\nh2\t9000\t60\tTable t doesn't exist\t0\t0\n")
        self.assertIn("h2:9000: Table t doesn't exist", str(e))


class ModernEngineParseTests(unittest.TestCase):
    """chdb cannot run Replicated or Distributed tables, but its parser checks
    the cluster DDL text a modern server would get (formatQuery)."""

    def test_cluster_ddl_parses(self):
        from stilgar.destinations.clickhouse.capabilities import MODERN
        from stilgar.destinations.clickhouse.evolution import Changes
        from stilgar.destinations.clickhouse.naming import BASE_TABLES, DISCARDS_TABLE

        from .test_clickhouse_chdb import q
        layout = ClusterLayout("stilgar", distributed_alter_on_cluster=True, comments=True)
        statements = []
        for table in sorted(BASE_TABLES) + [DISCARDS_TABLE, "order_completed"]:
            statements += layout.ddl(Changes(table=table, create=True, add={"price": "Nullable(Float64)"}),
                                     "db", MODERN)
        statements += layout.ddl(Changes(table="tracks", add={"x": "Nullable(String)"},
                                         modify={"y": "Nullable(Float64)"}), "db", MODERN)
        statements += layout.create_database("db")
        for st in statements:
            quoted = st.sql.replace("\\", "\\\\").replace("'", "\\'")
            formatted = q(f"SELECT formatQuery('{quoted}')").decode()
            self.assertIn("ON CLUSTER stilgar", formatted, st.sql)
