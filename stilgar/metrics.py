"""Prometheus metrics (contract section 7), one registry per process.

Every layer records into the objects below; ``/metrics`` renders the registry.
Labels are bounded on purpose: per-event tables are aggregated as
``table="event"`` (browser write keys are public, so an unbounded label would
be a denial of service).
"""

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "stilgar_http_requests", "HTTP requests answered, by route and status.",
    ["route", "status"], registry=REGISTRY)
EVENTS_RECEIVED = Counter(
    "stilgar_events_received", "Events received in requests that were read.", registry=REGISTRY)
EVENTS_ACCEPTED = Counter(
    "stilgar_events_accepted", "Events acknowledged with 200.", registry=REGISTRY)
EVENTS_BOTS = Counter(
    "stilgar_events_bots", "Events whose user agent is a crawler or automated client (enrich.bots),"
    " by the configured action (drop: not stored).", ["action"], registry=REGISTRY)
REQUESTS_REJECTED = Counter(
    "stilgar_requests_rejected", "Requests refused, by reason.", ["reason"], registry=REGISTRY)
SPOOL_BYTES = Gauge(
    "stilgar_spool_bytes", "Bytes held in the local spool.", registry=REGISTRY,
    multiprocess_mode="livesum")
DESTINATION_BACKLOG = Gauge(
    "stilgar_destination_backlog", "Events accepted and not yet confirmed by the destination.",
    ["destination"], registry=REGISTRY, multiprocess_mode="livesum")
DESTINATION_UP = Gauge(
    "stilgar_destination_up", "1 when the destination is reachable.", ["destination"], registry=REGISTRY,
    multiprocess_mode="livemin")
ROWS_INSERTED = Counter(
    "stilgar_rows_inserted", "Rows confirmed by a destination, by base table ('event' for per-event tables).",
    ["destination", "table"], registry=REGISTRY)
ROWS_DISCARDED = Counter(
    "stilgar_rows_discarded", "Rows or values recorded in rudder_discards, by base table.",
    ["destination", "table"], registry=REGISTRY)
INSERT_LATENCY = Histogram(
    "stilgar_insert_seconds", "Duration of one INSERT (or write) to a destination.",
    ["destination"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

BASE_TABLES = frozenset(
    ["tracks", "identifies", "users", "pages", "screens", "groups", "aliases", "rudder_discards"])


def count_bot(action):
    """One event from a bot, handled by ``enrich.bots.action``."""
    EVENTS_BOTS.labels(action=action).inc()


def table_label(table):
    """The bounded ``table`` label for a ClickHouse table name."""
    return table if table in BASE_TABLES else "event"


def render():
    """The registry in Prometheus text exposition format; with ``server.workers > 1``
    (``PROMETHEUS_MULTIPROC_DIR`` set by the parent) every worker's values, aggregated."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
