"""Where the logical tables live (pure): on one server (``SingleServer``), or
on a replicated and sharded cluster (``ClusterLayout``): the DDL text for
each, the schema queries and how their answers make one view, and the
parsing of what a cluster answers (doc/scaling.md).

Every table the collector owns exists twice on every node: ``<name>_local``,
the ``Replicated…MergeTree`` variant of the single-server engine (same
ordering and partitioning), and ``<name>``, a ``Distributed`` table over it
sharded by ``cityHash64`` of the row's id, so a resent event lands on the
shard of its first copy and collapses with it there.

DDL goes ``ON CLUSTER`` where the server does it right. ClickHouse 18.16
refuses ``ALTER … ON CLUSTER`` on a Distributed table over replicated shards
(code 371): those statements are marked ``each_node`` and the caller runs
them on every node in turn. 18.16 also refuses column comments on
Replicated tables (code 122 at CREATE, 48 for COMMENT COLUMN), so there the
collector's tables carry no 'stilgar' marker and every column of the local
tables counts as the collector's.
"""

import re

import attr

from .coltypes import STILGAR_COMMENT
from .naming import DISCARDS_TABLE, quote_ident, quote_string
from .schema import add_columns_clauses, create_table_parts, modify_column_clauses
from .tsv import parse_tsv

__all__ = ["Replica", "Topology", "topology_query", "parse_topology", "SingleServer", "ClusterLayout", "Statement",
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
    on_cluster = attr.ib(default=False)  # answers one status line per node


def _columns_query(database, tables):
    where = f"database = {quote_string(database)}"
    if tables:
        where += f" AND table IN ({', '.join(quote_string(t) for t in tables)})"
    return f"SELECT table, name, type, comment FROM system.columns WHERE {where} FORMAT TabSeparated"


def _tables_query(database, tables):
    where = f"database = {quote_string(database)}"
    if tables:
        where += f" AND name IN ({', '.join(quote_string(t) for t in tables)})"
    return f"SELECT name, engine FROM system.tables WHERE {where} FORMAT TabSeparated"


def _by_table(columns_answer):
    out = {}
    for r in parse_tsv(columns_answer):
        if len(r) >= 4:
            out.setdefault(r[0], []).append((r[1], r[2], r[3] or ""))
    return out


def _engines(tables_answer):
    return {r[0]: r[1] for r in parse_tsv(tables_answer) if len(r) >= 2}


@attr.s(frozen=True, slots=True)
class SingleServer:
    """One logical server (possibly several HTTP endpoints of it): tables as named."""
    cluster = None
    insert_params = {}

    def create_database(self, database):
        return [Statement(f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}")]

    def ddl(self, changes, database, caps):
        """The statements that make ``changes`` (evolution.Changes)."""
        target = f"{quote_ident(database)}.{quote_ident(changes.table)}"
        out = []
        if changes.create:
            columns, engine = create_table_parts(changes.table, caps, list(changes.add.items()))
            out.append(Statement(f"CREATE TABLE IF NOT EXISTS {target} {columns} {engine}"))
        elif changes.add:
            out.append(Statement(f"ALTER TABLE {target} " + add_columns_clauses(list(changes.add.items()), caps)))
        for col, t in changes.modify.items():
            out.append(Statement(f"ALTER TABLE {target} " + modify_column_clauses(col, t)))
        return out

    def schema_queries(self, database, table=None):
        tables = [table] if table is not None else []
        return _columns_query(database, tables), _tables_query(database, tables)

    def read_schema(self, answers):
        """{table: (rows of (name, type, comment), engine)} from the answers of
        :meth:`schema_queries` ((columns, tables) pairs, one per node asked)."""
        columns, tables = answers[0]
        engines = _engines(tables)
        return {t: (rows, engines.get(t, "")) for t, rows in _by_table(columns).items()}


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
    comments = attr.ib(default=False)                        # column comments on Replicated tables
    insert_quorum = attr.ib(default=0)

    @property
    def insert_params(self):
        # the INSERT returns once every shard's rows are in a local table (of
        # insert_quorum replicas when set): only then is a row confirmed
        params = {"insert_distributed_sync": "1"}
        if self.insert_quorum:
            params["insert_quorum"] = str(self.insert_quorum)
        return params

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
        return [Statement(f"CREATE DATABASE IF NOT EXISTS {quote_ident(database)}{self._on}", on_cluster=True)]

    def ddl(self, changes, database, caps):
        """The statements that make ``changes`` (evolution.Changes) on every node."""
        comments = self.comments or not self.replicated
        if changes.create:
            columns, engine = create_table_parts(changes.table, caps, list(changes.add.items()), comments)
            return self.create_table(database, changes.table, columns, engine)
        out = []
        if changes.add:
            out += self.alter_table(database, changes.table,
                                    add_columns_clauses(list(changes.add.items()), caps, comments))
        for col, t in changes.modify.items():
            out += self.alter_table(database, changes.table, modify_column_clauses(col, t, comments))
        return out

    def schema_queries(self, database, table=None):
        tables = [table, self.local(table)] if table is not None else []
        return _columns_query(database, tables), _tables_query(database, tables)

    def read_schema(self, answers):
        """{logical table: (rows, engine)} from every answering node's
        (columns, tables) answers: a column counts only when the local and the
        Distributed table have it on every node that answered, so no INSERT
        names a column some node lacks. The engine is the local table's
        without its ``Replicated`` prefix."""
        view = None
        for columns, tables in answers:
            by_table = _by_table(columns)
            engines = _engines(tables)
            node = {}
            for name, rows in by_table.items():
                logical = self.logical(name)
                if logical is None or logical not in by_table:
                    continue
                in_dist = {r[0] for r in by_table[logical]}
                kept = [r for r in rows if r[0] in in_dist]
                if not self.comments:
                    kept = [(n, t, STILGAR_COMMENT) for n, t, _c in kept]
                engine = engines.get(name, "")
                node[logical] = (kept, engine[len("Replicated"):] if engine.startswith("Replicated") else engine)
            if view is None:
                view = node
                continue
            merged = {}
            for logical, (rows, engine) in view.items():
                if logical in node:
                    names = {r[0] for r in node[logical][0]}
                    merged[logical] = ([r for r in rows if r[0] in names], engine)
            view = merged
        return view or {}

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
                      f"{self.engine(engine, database, table)}", on_cluster=True),
            Statement(f"CREATE TABLE IF NOT EXISTS {db}.{quote_ident(table)}{self._on} AS {db}.{local} "
                      f"ENGINE = Distributed({quote_ident(self.cluster)}, {db}, {local}, "
                      f"{_sharding_key(table)})", on_cluster=True),
        ]

    def per_node(self, statement):
        """The same statement without ON CLUSTER, to run on every node in turn."""
        return Statement(statement.sql.replace(self._on, "", 1), each_node=True)

    def alter_table(self, database, table, clauses):
        """``clauses``: the text after ``ALTER TABLE db.t`` (ADD/MODIFY/COMMENT …).

        The local table first, so the Distributed table never names a column
        its shards do not have."""
        db = quote_ident(database)
        out = [Statement(f"ALTER TABLE {db}.{quote_ident(self.local(table))}{self._on} {clauses}",
                         on_cluster=True)]
        if self.distributed_alter_on_cluster:
            out.append(Statement(f"ALTER TABLE {db}.{quote_ident(table)}{self._on} {clauses}", on_cluster=True))
        else:
            out.append(Statement(f"ALTER TABLE {db}.{quote_ident(table)} {clauses}", each_node=True))
        return out
