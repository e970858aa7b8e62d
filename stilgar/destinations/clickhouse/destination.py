"""The ``clickhouse`` destination (doc/clickhouse.md): the IDestination that
assembles its parts.

Flow: write(events) -> rows (:mod:`.rows`) -> :mod:`.router` encodes each row
against the cached table schema (:mod:`.schema`, :mod:`.coltypes`) into the
pending rows (:mod:`.batches`), or hands it to schema work (:mod:`.evolver`)
when its table or a column is missing or a column must widen. The insert
pipeline (:mod:`.pipeline`) sends the INSERTs (natural batching); the link
(:mod:`.link`) holds the connection state and re-initialises with backoff.
A write's Deferred fires when every one of its rows is confirmed (HTTP 200)
or recorded in rudder_discards. This destination is the one retry owner for
ClickHouse: its writes never fail (doc/clickhouse.md, "Who retries what").
"""

import random as _random

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from ..base import IDestination
from .client import Client
from .evolver import SchemaEvolver
from .link import Link
from .naming import quote_string
from .pipeline import InsertPipeline
from .router import MAX_ROUNDS, RowRouter
from .schemas import SchemaManager
from .tsv import parse_tsv

__all__ = ["ClickHouseDestination", "MAX_ROUNDS"]

log = Logger()

NODE_CHECK_INTERVAL = 2.0  # seconds between probes of the nodes marked down

_METRIC_FIELDS = {
    "active_queries": "Query",
    "active_mutations": "PartMutation",
    "delayed_inserts": "DelayedInserts",
    "async_insert_active_threads": "AsyncInsertThreadsActive",
    "pending_async_inserts": "PendingAsyncInsert",
}


@implementer(IDestination)
class ClickHouseDestination:
    def __init__(self, name, write_keys, settings, reactor, client=None, rand=_random.random):
        self.name = name
        self.write_keys = frozenset(write_keys)
        self.settings = settings
        self.reactor = reactor
        self._client = client if client is not None else Client(reactor, settings)
        self._db = settings.database
        self._schema = SchemaManager(name, settings, self._client)
        self._router = RowRouter(name, settings, reactor, self._schema)
        self._evolver = SchemaEvolver(name, settings, reactor, self._schema)
        self._pipeline = InsertPipeline(name, settings, reactor, self._client, self._schema)
        self._link = Link(name, reactor, self._init, self._resume, self._pipeline.check_idle, rand)
        for part in (self._router, self._evolver, self._pipeline):
            part.link = self._link
        self._router.evolver = self._evolver
        self._router.pipeline = self._pipeline
        self._evolver.router = self._router
        self._evolver.on_idle = self._pipeline.check_idle
        self._pipeline.router = self._router
        self._pipeline.evolver = self._evolver
        self._client.on_slot_free(self._pipeline.dispatch)
        self._node_watch = None         # several nodes: probes the down ones (LoopingCall)
        self._started = False
        self._server_metrics = {}
        self._server_metrics_at = None

    # -- IDestination ------------------------------------------------------------

    def start(self):
        if self._started:
            return defer.succeed(None)
        self._started = True
        if len(self._client.nodes.nodes) > 1:
            self._node_watch = task.LoopingCall(self._watch_nodes)
            self._node_watch.clock = self.reactor
            self._node_watch.start(NODE_CHECK_INTERVAL, now=False)
        return self._link.start()

    def write(self, events):
        if not events:
            return defer.succeed(None)
        d = self._router.write(events)
        return defer.succeed(None) if d is None else d

    def flush(self):
        return self._pipeline.flush()

    def stop(self):
        self._link.stopping = True
        d = self.flush() if self._link.up else defer.succeed(None)
        if self._node_watch is not None and self._node_watch.running:
            self._node_watch.stop()

        def done(_):
            self._pipeline.cancel()
            self._link.cancel()
            self._evolver.cancel()
            return self._client.close()
        return d.addBoth(done)

    def buffered(self):
        return self._router.buffered_events

    def health(self):
        return self._link.health()

    def status(self):
        self._refresh_server_metrics()
        link, router, pipeline, evolver = self._link, self._router, self._pipeline, self._evolver
        out = {
            "status": "OK" if link.up else "DOWN",
            "up": link.up,
            "since": link.since,
            "last_error": link.last_error,
            "buffered": router.buffered_events,
            "buffered_rows": pipeline.buffered_rows(),
            "buffered_bytes": pipeline.buffered_bytes(),
            "waiting_for_schema": evolver.waiting_rows() + len(router.preinit),
            "tables_waiting_for_schema_budget": len(evolver.parked),
            "inserts_in_flight": pipeline.inflight,
            "inserted": router.inserted,
            "discarded": router.discarded,
            "lost": router.lost,
            "database": self._db,
            "capabilities": self._schema.caps.describe(),
            "nodes": self._client.nodes.status(),
        }
        if self._schema.layout.cluster is not None:
            out["cluster"] = self._schema.layout.cluster
        for k in _METRIC_FIELDS:
            out[k] = self._server_metrics.get(k)
        return out

    # -- what other components read ---------------------------------------------

    @property
    def on_discards(self):
        """``hook(name, rows)`` called with the rudder_discards rows stored (the live view's)."""
        return self._router.on_discards

    @on_discards.setter
    def on_discards(self, hook):
        self._router.on_discards = hook

    @property
    def inserted(self):
        return self._router.inserted

    @property
    def discarded(self):
        return self._router.discarded

    @property
    def lost(self):
        return self._router.lost

    @property
    def last_error(self):
        return self._link.last_error

    # -- SQL for other components (regulations and retention: stilgar/regulations/) --

    @property
    def database(self):
        return self._db

    @property
    def capabilities(self):
        """What the server can do (probed at each connection)."""
        return self._schema.caps

    def run_sql(self, sql, select=False, timeout=None, node=None):
        """Run one statement with this destination's client; fires with the answer's bytes.
        ``node``: one of :meth:`nodes` (per-node reads), else the current healthy node."""
        return self._client.query(sql, timeout=timeout, select=select, node=node)

    @property
    def layout(self):
        """Where the tables live (:mod:`.layout`): ``layout.cluster`` is None on one server."""
        return self._schema.layout

    def nodes(self):
        return list(self._client.nodes.nodes)

    def table_columns(self):
        """The collector's tables as it sees them (logical names): table -> frozenset of columns."""
        return {name: frozenset(schema.columns) for name, schema in self._schema.tables.items()}

    # -- the link's callbacks ------------------------------------------------------

    @defer.inlineCallbacks
    def _init(self):
        yield self._schema.connect()
        self._evolver.connected()
        log.info("ClickHouse {destination}: connected to {url} (version {version}), database {database}",
                 destination=self.name, url=self._client.nodes.current.url,
                 version=self._schema.caps.describe()["version"], database=self._db)

    def _resume(self):
        """Up again: the rows that waited for the server go on."""
        if not self._pipeline.retries:
            # back-off grows while inserts keep failing; it resets on a success
            self._link.failures = 0
        self._router.resume()
        self._evolver.resume()
        self._pipeline.dispatch()

    def _load_schema(self, table=None):
        return self._evolver.load(table)

    def _watch_nodes(self):
        # returned, so that the LoopingCall never runs two probes at once
        if self._link.up:
            return self._schema.check_nodes().addErrback(self._link.bug)

    # -- status ----------------------------------------------------------------------

    def _refresh_server_metrics(self):
        now = self.reactor.seconds()
        if not self._link.up or (self._server_metrics_at is not None and now - self._server_metrics_at < 10):
            return
        self._server_metrics_at = now
        names = ", ".join(quote_string(m) for m in _METRIC_FIELDS.values())
        d = self._client.query(f"SELECT metric, value FROM system.metrics WHERE metric IN ({names}) "
                               "FORMAT TabSeparated", select=True)

        def got(data):
            values = {r[0]: r[1] for r in parse_tsv(data) if len(r) >= 2}
            self._server_metrics = {k: (int(values[m]) if values.get(m, "").lstrip("-").isdigit() else None)
                                    for k, m in _METRIC_FIELDS.items()}
        d.addCallbacks(got, lambda f: None)
