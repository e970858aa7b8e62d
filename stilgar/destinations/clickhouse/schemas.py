"""The schema manager of one ClickHouse destination: what the server can do
(probe), where the tables live (:mod:`.layout`: one server or a cluster),
the cached view of every table, and running the DDL that changes them.

It decides nothing about rows: the destination plans changes for its rows
(:mod:`.evolution`) and asks this manager to make them.
"""

import attr
from twisted.internet import defer
from twisted.logger import Logger

from .capabilities import OLD, PROBE_QUERY, parse_probe
from .client import ClickHouseError, TransportError, is_node_failure
from .evolution import Changes
from .nodes import NodeState
from .layout import ClusterLayout, DDLFailed, SingleServer, check_ddl_answer, parse_topology, topology_query
from .naming import BASE_TABLES, DISCARDS_TABLE
from .schema import ORDER_BUDGET_BYTES, PlanBudget, TableSchema, table_kind

__all__ = ["SchemaManager", "ALREADY", "DDL_TIMEOUT"]

log = Logger()

ALREADY = (44, 15, 57)    # column / table already exists: another writer (or node) was first
DDL_TIMEOUT = 159         # an ON CLUSTER statement not finished on every node in time
_DISTRIBUTED_NOT_ON_CLUSTER = 371


class SchemaManager:
    """Owns ``tables`` (logical name -> TableSchema), ``caps`` and ``layout``."""

    def __init__(self, name, settings, client):
        self.name = name
        self.settings = settings
        self.client = client
        self.database = settings.database
        self.caps = OLD
        self.layout = SingleServer()
        self.tables = {}
        self.event_tables = 0          # per-event tables (every non-base table) in ``tables``
        self.loaded = False
        self.plan_budget = PlanBudget()
        self.order_budget = PlanBudget(ORDER_BUDGET_BYTES)
        # an ON CLUSTER statement waits this long for every node (ClickHouse's
        # distributed_ddl_task_timeout); a node that is down is caught up by
        # ZooKeeper when it returns, the rows need only the nodes that answer
        self._ddl_wait = max(1, int(min(settings.alter_timeout * 0.9, 60)))
        self.missed = {}               # node url -> per-node statements it did not take, in order
        self.unfinished = None         # the timeout of the last ON CLUSTER statement not finished in time

    @defer.inlineCallbacks
    def connect(self):
        """Probe the server, choose the layout, create the database and the base tables."""
        single = self.settings.cluster is None
        if single:
            # the database first, as the original did
            yield self._create_database(SingleServer())
        caps = parse_probe((yield self.client.query(PROBE_QUERY, select=True)))
        self.caps = caps
        self.client.async_insert_known = caps.async_insert
        self.layout = SingleServer() if single else (yield self._cluster_layout(caps))
        self.client.insert_params = self.layout.insert_params
        if not single:
            yield self._create_database(self.layout)
        yield self.load()
        missing = [t for t in sorted(BASE_TABLES) + [DISCARDS_TABLE] if t not in self.tables]
        for table in missing:
            for statement in self.statements(Changes(table=table, create=True)):
                yield self.run(statement)
        if missing:
            yield self.load()

    @defer.inlineCallbacks
    def _create_database(self, layout):
        for statement in layout.create_database(self.database):
            yield self.run(statement)

    @defer.inlineCallbacks
    def _cluster_layout(self, caps):
        s = self.settings
        topology = parse_topology(s.cluster, (yield self.client.query(topology_query(s.cluster), select=True)))
        if not topology.replicas:
            raise ClickHouseError(None, f"the server knows no cluster {s.cluster!r} (remote_servers)")
        replicated = topology.replicated if s.replicated is None else s.replicated
        modern = caps.version[0] >= 20
        layout = ClusterLayout(s.cluster, replicated=replicated, replica_path=s.replica_path,
                               replica_name=s.replica_name, distributed_alter_on_cluster=modern,
                               comments=modern, insert_quorum=s.insert_quorum)
        log.info("ClickHouse {destination}: cluster {cluster}, {shards} shard(s), {replicas} node(s), "
                 "{kind}", destination=self.name, cluster=s.cluster, shards=len(topology.shards),
                 replicas=len(topology.replicas), kind="replicated" if replicated else "not replicated")
        return layout

    def statements(self, changes):
        return self.layout.ddl(changes, self.database, self.caps)

    @defer.inlineCallbacks
    def run(self, statement):
        """Run one DDL statement; a table or column that already exists is success.

        A per-node statement skips the nodes that do not answer: the schema
        is read from the nodes that do, and a node that comes back with an
        older Distributed table is altered again when its schema is read."""
        timeout = self.settings.alter_timeout
        if statement.each_node:
            for node in list(self.client.nodes.nodes):
                queue = self.missed.get(node.url)
                if queue:
                    queue.append(statement)        # after the changes it missed before
                elif not (yield self._try(node, statement)):
                    self.missed[node.url] = [statement]
            return
        params = {"distributed_ddl_task_timeout": str(self._ddl_wait)} if statement.on_cluster else None
        try:
            answer = yield self.client.query(statement.sql, timeout=timeout, params=params)
            if statement.on_cluster:
                check_ddl_answer(answer)
        except ClickHouseError as e:
            if e.code in ALREADY:
                return
            if e.code == DDL_TIMEOUT and statement.on_cluster:
                # the nodes that answer may have it (a replica that is down catches up
                # from ZooKeeper when it returns): the schema read next tells
                log.warn("ClickHouse {destination}: a schema change has not reached every node yet ({error})",
                         destination=self.name, error=str(e))
                self.unfinished = e
                return
            if e.code == _DISTRIBUTED_NOT_ON_CLUSTER and isinstance(self.layout, ClusterLayout) \
                    and self.layout.distributed_alter_on_cluster:
                # this server alters a Distributed table only node by node: remember it
                self.layout = attr.evolve(self.layout, distributed_alter_on_cluster=False)
                yield self.run(self.layout.per_node(statement))
                return
            raise
        except DDLFailed as e:
            # every node reported; those that failed did not take it: the
            # schema read next (from every node) shows what is still missing
            log.warn("ClickHouse {destination}: a schema change failed on some nodes ({error})",
                     destination=self.name, error=str(e))

    @defer.inlineCallbacks
    def _try(self, node, statement):
        """Run a per-node statement on one node: True when the node has it now,
        False when the node did not answer (it is replayed later)."""
        try:
            yield self.client.query(statement.sql, timeout=self.settings.alter_timeout, node=node)
        except (ClickHouseError, TransportError) as e:
            if isinstance(e, ClickHouseError) and e.code in ALREADY:
                return True
            if not is_node_failure(e):
                raise
            log.warn("ClickHouse {destination}: {url} did not take a schema change ({error}); it is "
                     "replayed once the node answers", destination=self.name, url=node.url, error=str(e))
            return False
        return True

    @defer.inlineCallbacks
    def check_nodes(self):
        """Probe the nodes marked down whose retry time has come, and replay on
        a node that answers again the per-node schema changes it missed."""
        nodes = self.client.nodes
        for node in list(nodes.nodes):
            queue = self.missed.get(node.url)
            if (node.state is NodeState.UP and not queue) or not node.available(nodes.clock.seconds()):
                continue
            try:
                yield self.client.query("SELECT 1", node=node)
            except (ClickHouseError, TransportError):
                continue
            while queue:
                try:
                    if not (yield self._try(node, queue[0])):
                        break
                except ClickHouseError as e:
                    log.error("ClickHouse {destination}: {url} refused a schema change it missed: {error}",
                              destination=self.name, url=node.url, error=str(e))
                queue.pop(0)
            if not queue:
                self.missed.pop(node.url, None)

    @defer.inlineCallbacks
    def load(self, table=None):
        """(Re)load the view of the whole database, or of one table: from the
        current node, or in cluster mode from every node that answers."""
        columns_sql, tables_sql = self.layout.schema_queries(self.database, table)
        nodes = [None] if self.layout.cluster is None else list(self.client.nodes.nodes)
        answers = []
        error = None
        for node in nodes:
            try:
                columns = yield self.client.query(columns_sql, select=True, node=node)
                tables = yield self.client.query(tables_sql, select=True, node=node)
            except (ClickHouseError, TransportError) as e:
                if node is None or not is_node_failure(e):
                    raise
                error = e
                continue
            answers.append((columns, tables))
        if not answers:
            raise error
        view = self.layout.read_schema(answers)
        fresh = {t: TableSchema.from_rows(self.database, t, rows, engine, self.caps, self.plan_budget,
                                          self.order_budget)
                 for t, (rows, engine) in view.items()}
        if table is None:
            self.tables = fresh
            self.event_tables = sum(1 for t in fresh if table_kind(t) == "event")
        else:
            was = self.tables.pop(table, None) is not None
            self.tables.update(fresh)
            if table_kind(table) == "event":
                self.event_tables += (table in fresh) - was
        self.loaded = True
        return fresh
