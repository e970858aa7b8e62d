"""Cluster mode (pure): the DDL text for a replicated and sharded ClickHouse
cluster, and the parsing of what the cluster answers (doc/scaling.md).

Every table the collector owns exists twice on every node: ``<name>_local``,
the ``Replicated…MergeTree`` variant of the single-server engine (same
ordering and partitioning), and ``<name>``, a ``Distributed`` table over it
sharded by ``cityHash64`` of the row's id, so a resent event lands on the
shard of its first copy and collapses with it there.

DDL goes ``ON CLUSTER`` where the server does it right. ClickHouse 18.16
refuses ``ALTER … ON CLUSTER`` on a Distributed table over replicated shards
(code 371): those statements are marked ``each_node`` and the caller runs
them on every node in turn.
"""

import re

import attr

from .naming import DISCARDS_TABLE, quote_ident, quote_string
from .tsv import parse_tsv

__all__ = ["Replica", "Topology", "topology_query", "parse_topology", "ClusterLayout", "Statement",
           "DDLFailed", "check_ddl_answer", "LOCAL_SUFFIX", "DEFAULT_REPLICA_PATH", "DEFAULT_REPLICA_NAME"]

LOCAL_SUFFIX = "_local"
DEFAULT_REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
DEFAULT_REPLICA_NAME = "{replica}"

_ENGINE_RE = re.compile(r"^ENGINE = (\w*MergeTree)\((.*?)\)(.*)\Z", re.S)


@attr.s(frozen=True, slots=True)
class Replica:
    shard = attr.ib()
    replica = attr.ib()
    host = attr.ib()
    port = attr.ib()          # the native TCP port (what remote_servers lists)


@attr.s(frozen=True, slots=True)
class Topology:
    """The shards and replicas of one ``remote_servers`` cluster."""
    name = attr.ib()
    replicas = attr.ib(converter=tuple)

    @property
    def shards(self):
        return sorted({r.shard for r in self.replicas})

    @property
    def replicated(self):
        """True when any shard has more than one replica."""
        per_shard = {}
        for r in self.replicas:
            per_shard[r.shard] = per_shard.get(r.shard, 0) + 1
        return any(n > 1 for n in per_shard.values())


def topology_query(cluster):
    return ("SELECT shard_num, replica_num, host_name, port FROM system.clusters "
            f"WHERE cluster = {quote_string(cluster)} ORDER BY shard_num, replica_num FORMAT TabSeparated")


def parse_topology(cluster, data):
    """The Topology from the answer to :func:`topology_query`; an empty one
    when the server does not know the cluster."""
    replicas = []
    for row in parse_tsv(data):
        if len(row) < 4:
            continue
        try:
            replicas.append(Replica(int(row[0]), int(row[1]), row[2], int(row[3])))
        except (TypeError, ValueError):
            continue
    return Topology(cluster, replicas)


class DDLFailed(Exception):
    """An ON CLUSTER statement did not complete on every node."""


def check_ddl_answer(data):
    """Raise DDLFailed unless every node of an ON CLUSTER answer reports status 0.

    The answer is one TSV line per node: host, port, status, error, hosts
    remaining, hosts active."""
    failed = []
    for row in parse_tsv(data):
        if len(row) < 4:
            continue
        if row[2] not in ("0", None):
            failed.append(f"{row[0]}:{row[1]}: {row[3] or 'status ' + str(row[2])}")
    if failed:
        raise DDLFailed("; ".join(failed)[:500])


@attr.s(frozen=True, slots=True)
class Statement:
    sql = attr.ib()
    each_node = attr.ib(default=False)   # run on every node in turn (not ON CLUSTER)


def _sharding_key(table):
    return "cityHash64(`row_id`)" if table == DISCARDS_TABLE else "cityHash64(`id`)"


@attr.s(frozen=True, slots=True)
class ClusterLayout:
    """How the logical tables map onto one cluster."""
    cluster = attr.ib()
    replicated = attr.ib(default=True)
    replica_path = attr.ib(default=DEFAULT_REPLICA_PATH)
    replica_name = attr.ib(default=DEFAULT_REPLICA_NAME)
    distributed_alter_on_cluster = attr.ib(default=False)   # modern servers: True

    @property
    def _on(self):
        return f" ON CLUSTER {quote_ident(self.cluster)}"

    def local(self, table):
        return table + LOCAL_SUFFIX

    def logical(self, table):
        """The logical name of a local table, or None for any other table."""
        if table.endswith(LOCAL_SUFFIX):
            return table[:-len(LOCAL_SUFFIX)]
        return None

    def create_database(self, database):
        return [Statement(f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}{self._on}")]

    def engine(self, engine, database, table):
        """The replicated variant of a single-server ``ENGINE = …MergeTree(…) …`` clause."""
        if not self.replicated:
            return engine
        m = _ENGINE_RE.match(engine)
        if m is None:
            raise ValueError(f"not a MergeTree engine: {engine!r}")
        name, args, rest = m.groups()
        path = self.replica_path.replace("{database}", database).replace("{table}", self.local(table))
        params = [quote_string(path), quote_string(self.replica_name)] + ([args] if args else [])
        return f"ENGINE = Replicated{name}({', '.join(params)}){rest}"

    def create_table(self, database, table, columns_sql, engine):
        """``columns_sql``: the parenthesised column list; ``engine``: the
        single-server engine clause."""
        db, local = quote_ident(database), quote_ident(self.local(table))
        return [
            Statement(f"CREATE TABLE IF NOT EXISTS {db}.{local}{self._on} {columns_sql} "
                      f"{self.engine(engine, database, table)}"),
            Statement(f"CREATE TABLE IF NOT EXISTS {db}.{quote_ident(table)}{self._on} AS {db}.{local} "
                      f"ENGINE = Distributed({quote_ident(self.cluster)}, {db}, {local}, "
                      f"{_sharding_key(table)})"),
        ]

    def alter_table(self, database, table, clauses):
        """``clauses``: the text after ``ALTER TABLE db.t`` (ADD/MODIFY/COMMENT …).

        The local table first, so the Distributed table never names a column
        its shards do not have."""
        db = quote_ident(database)
        out = [Statement(f"ALTER TABLE {db}.{quote_ident(self.local(table))}{self._on} {clauses}")]
        if self.distributed_alter_on_cluster:
            out.append(Statement(f"ALTER TABLE {db}.{quote_ident(table)}{self._on} {clauses}"))
        else:
            out.append(Statement(f"ALTER TABLE {db}.{quote_ident(table)} {clauses}", each_node=True))
        return out
